// Command mkimage writes a single-layer container image as an archive that `ctr images import`
// accepts, so the local test cluster needs no registry and no Docker.
//
// Usage:
//
//	mkimage -ref REF -out FILE [-add DST=SRC]... [-link DST=TARGET]... [-dir DIR]... [-entrypoint ARG]... [-cmd ARG]...
//	        [-platform OS/ARCH [-add ...]... [-link ...]... [-dir ...]...]...
//
// -add copies the host file SRC into the image at DST, keeping its permission bits; -link makes
// DST a symbolic link to TARGET; -dir makes an empty directory (mode 0755; /tmp gets 1777).
// Parent directories are created as needed. The layer is deterministic: owner 0:0, fixed times.
//
// Without -platform the archive is a docker image archive of one image for this machine's
// architecture. Each -platform starts an image for that platform: the -add, -link and -dir
// after it are its own, those before the first -platform are in every image. The archive is
// then an OCI image layout (a tar of oci-layout, index.json and blobs/) whose index.json names
// one image index, REF, listing an image per platform, as a multi-arch image in a registry is;
// `ctr images import` unpacks the one for its host (see test/cluster/image.sh). The archive is
// deterministic too: equal inputs give equal bytes.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// entry is one path of the layer.
type entry struct {
	typ    byte   // tar.TypeReg, tar.TypeSymlink or tar.TypeDir
	src    string // host file, for tar.TypeReg
	target string // link target, for tar.TypeSymlink
}

// platformFiles is what one -platform adds to the entries every image has.
type platformFiles struct {
	os, arch string
	entries  map[string]entry
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
	out := fs.String("out", "", "path of the image archive to write")
	// The flags are applied in their order: -add, -link and -dir go to the last -platform's
	// image, or to every image before the first -platform.
	common := map[string]entry{}
	var platforms []*platformFiles
	current := func() map[string]entry {
		if len(platforms) == 0 {
			return common
		}
		return platforms[len(platforms)-1].entries
	}
	var entrypoint, cmd []string
	fs.Func("platform", "OS/ARCH: start the image of this platform (repeatable; see the package comment)", func(v string) error {
		osName, arch, ok := strings.Cut(v, "/")
		if !ok || osName == "" || arch == "" || strings.Contains(arch, "/") {
			return fmt.Errorf("want OS/ARCH, e.g. linux/arm64")
		}
		for _, p := range platforms {
			if p.os == osName && p.arch == arch {
				return fmt.Errorf("%s given twice", v)
			}
		}
		platforms = append(platforms, &platformFiles{os: osName, arch: arch, entries: map[string]entry{}})
		return nil
	})
	fs.Func("add", "DST=SRC: copy host file SRC to DST in the image (repeatable)", func(v string) error {
		dst, src, ok := strings.Cut(v, "=")
		if !ok {
			return errors.New("want DST=SRC")
		}
		current()[clean(dst)] = entry{typ: tar.TypeReg, src: src}
		return nil
	})
	fs.Func("link", "DST=TARGET: symbolic link DST -> TARGET (repeatable)", func(v string) error {
		dst, target, ok := strings.Cut(v, "=")
		if !ok {
			return errors.New("want DST=TARGET")
		}
		current()[clean(dst)] = entry{typ: tar.TypeSymlink, target: target}
		return nil
	})
	fs.Func("dir", "DIR: empty directory (repeatable)", func(v string) error {
		current()[clean(v)] = entry{typ: tar.TypeDir}
		return nil
	})
	fs.Func("entrypoint", "one entrypoint argument (repeatable)", func(v string) error { entrypoint = append(entrypoint, v); return nil })
	fs.Func("cmd", "one cmd argument (repeatable)", func(v string) error { cmd = append(cmd, v); return nil })
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *ref == "" || *out == "" {
		return errors.New("-ref and -out are required")
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	tag, err := name.NewTag(*ref)
	if err != nil {
		return fmt.Errorf("parse reference %q: %w", *ref, err)
	}
	cfg := imageConfig{entrypoint: entrypoint, cmd: cmd}

	tmp := *out + ".tmp"
	if len(platforms) == 0 {
		img, err := buildImage(common, "linux", runtime.GOARCH, cfg, false)
		if err != nil {
			return err
		}
		if err := tarball.WriteToFile(tmp, tag, img); err != nil {
			return fmt.Errorf("write %s: %w", tmp, err)
		}
		return os.Rename(tmp, *out)
	}

	var adds []mutate.IndexAddendum
	for _, p := range platforms {
		entries := map[string]entry{}
		for k, v := range common {
			entries[k] = v
		}
		for k, v := range p.entries {
			entries[k] = v
		}
		img, err := buildImage(entries, p.os, p.arch, cfg, true)
		if err != nil {
			return fmt.Errorf("%s/%s: %w", p.os, p.arch, err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: p.os, Architecture: p.arch},
		}})
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
	// index.json lists the one multi-platform index under the image's name: containerd names
	// an imported image after io.containerd.image.name, OCI tools after the tag in
	// org.opencontainers.image.ref.name.
	top := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), mutate.IndexAddendum{
		Add: idx,
		Descriptor: v1.Descriptor{Annotations: map[string]string{
			"io.containerd.image.name":          containerdName(tag),
			"org.opencontainers.image.ref.name": tag.TagStr(),
		}},
	})
	return writeOCIArchive(*out, top)
}

// containerdName is the reference as containerd normalizes it (docker.io/library/busybox:local):
// it ignores a name annotation that its normalization would change.
func containerdName(tag name.Tag) string {
	registry := tag.RegistryStr()
	if registry == name.DefaultRegistry {
		registry = "docker.io"
	}
	return registry + "/" + tag.RepositoryStr() + ":" + tag.TagStr()
}

// imageConfig is what every image's configuration carries beside its platform.
type imageConfig struct {
	entrypoint, cmd []string
}

// buildImage makes the one-layer image of the entries for a platform, with OCI media types when
// oci is set (in an OCI index) and docker's otherwise (in a docker archive).
func buildImage(entries map[string]entry, osName, arch string, c imageConfig, oci bool) (v1.Image, error) {
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
		return nil, err
	}
	var opts []tarball.LayerOption
	base := empty.Image
	if oci {
		opts = append(opts, tarball.WithMediaType(types.OCILayer))
		base = mutate.MediaType(mutate.ConfigMediaType(base, types.OCIConfigJSON), types.OCIManifestSchema1)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, opts...)
	if err != nil {
		return nil, fmt.Errorf("make layer: %w", err)
	}
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS = osName
	cfg.Architecture = arch
	cfg.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cfg.Config.Entrypoint = c.entrypoint
	cfg.Config.Cmd = c.cmd
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("set config: %w", err)
	}
	return img, nil
}

// writeOCIArchive writes idx as an OCI image layout in a directory beside out, then that
// directory as the tar out, its files sorted, owner 0:0 and fixed times, and removes the
// directory.
func writeOCIArchive(out string, idx v1.ImageIndex) error {
	dir, err := os.MkdirTemp(filepath.Dir(out), ".mkimage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if _, err := layout.Write(dir, idx); err != nil {
		return fmt.Errorf("write OCI layout: %w", err)
	}
	var files []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(files)
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, p := range files {
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: filepath.ToSlash(rel), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		var data []byte
		switch {
		case st.IsDir():
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, hdr.Name+"/", 0o755
		case st.Mode().IsRegular():
			if data, err = os.ReadFile(p); err != nil {
				return err
			}
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, 0o644, int64(len(data))
		default:
			return fmt.Errorf("OCI layout: %s is not a file or directory", rel)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("tar header %s: %w", rel, err)
		}
		if _, err := tw.Write(data); err != nil {
			return fmt.Errorf("tar data %s: %w", rel, err)
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, out)
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
