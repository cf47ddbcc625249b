// Command mkimage writes a single-layer container image as a docker image archive that
// `ctr images import` accepts, so the local test cluster needs no registry and no Docker.
//
// Usage:
//
//	mkimage -ref REF -out FILE [-add DST=SRC]... [-link DST=TARGET]... [-dir DIR]... [-entrypoint ARG]... [-cmd ARG]...
//
// -add copies the host file SRC into the image at DST, keeping its permission bits; -link makes
// DST a symbolic link to TARGET; -dir makes an empty directory (mode 0755; /tmp gets 1777).
// Parent directories are created as needed. The layer is deterministic: owner 0:0, fixed times.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// listFlag collects a repeated string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// entry is one path of the layer.
type entry struct {
	typ    byte   // tar.TypeReg, tar.TypeSymlink or tar.TypeDir
	src    string // host file, for tar.TypeReg
	target string // link target, for tar.TypeSymlink
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	ref := fs.String("ref", "", "image reference, e.g. docker.io/library/busybox:local")
	out := fs.String("out", "", "path of the docker image archive to write")
	var adds, links, dirs, entrypoint, cmd listFlag
	fs.Var(&adds, "add", "DST=SRC: copy host file SRC to DST in the image (repeatable)")
	fs.Var(&links, "link", "DST=TARGET: symbolic link DST -> TARGET (repeatable)")
	fs.Var(&dirs, "dir", "DIR: empty directory (repeatable)")
	fs.Var(&entrypoint, "entrypoint", "one entrypoint argument (repeatable)")
	fs.Var(&cmd, "cmd", "one cmd argument (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *ref == "" || *out == "" {
		return errors.New("-ref and -out are required")
	}
	tag, err := name.NewTag(*ref)
	if err != nil {
		return fmt.Errorf("parse reference %q: %w", *ref, err)
	}

	entries := map[string]entry{}
	for _, d := range dirs {
		entries[clean(d)] = entry{typ: tar.TypeDir}
	}
	for _, a := range adds {
		dst, src, ok := strings.Cut(a, "=")
		if !ok {
			return fmt.Errorf("-add %q: want DST=SRC", a)
		}
		entries[clean(dst)] = entry{typ: tar.TypeReg, src: src}
	}
	for _, l := range links {
		dst, target, ok := strings.Cut(l, "=")
		if !ok {
			return fmt.Errorf("-link %q: want DST=TARGET", l)
		}
		entries[clean(dst)] = entry{typ: tar.TypeSymlink, target: target}
	}
	// Every parent directory is in the layer too.
	for p := range entries {
		for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				entries[d] = entry{typ: tar.TypeDir}
			}
		}
	}

	layerTar, err := buildLayer(entries)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return fmt.Errorf("make layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return fmt.Errorf("append layer: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS = "linux"
	cfg.Architecture = runtime.GOARCH
	cfg.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cfg.Config.Entrypoint = entrypoint
	cfg.Config.Cmd = cmd
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return fmt.Errorf("set config: %w", err)
	}

	tmp := *out + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	return os.Rename(tmp, *out)
}

func clean(p string) string { return path.Clean("/" + p) }

// buildLayer writes the entries, sorted by path so parents come first, as an uncompressed tar.
func buildLayer(entries map[string]entry) ([]byte, error) {
	paths := make([]string, 0, len(entries))
	for p := range entries {
		paths = append(paths, p)
	}
	sort.Strings(paths)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	for _, p := range paths {
		e := entries[p]
		hdr := &tar.Header{Name: strings.TrimPrefix(p, "/"), Typeflag: e.typ, ModTime: mtime, Format: tar.FormatPAX}
		var data []byte
		switch e.typ {
		case tar.TypeDir:
			hdr.Name += "/"
			hdr.Mode = 0o755
			if p == "/tmp" {
				hdr.Mode = 0o1777
			}
		case tar.TypeSymlink:
			hdr.Mode = 0o777
			hdr.Linkname = e.target
		case tar.TypeReg:
			st, err := os.Stat(e.src)
			if err != nil {
				return nil, err
			}
			if data, err = os.ReadFile(e.src); err != nil {
				return nil, err
			}
			hdr.Mode = int64(st.Mode().Perm())
			hdr.Size = int64(len(data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("tar header %s: %w", p, err)
		}
		if _, err := tw.Write(data); err != nil {
			return nil, fmt.Errorf("tar data %s: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
