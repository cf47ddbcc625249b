package main

import (
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/driver"
	"github.com/gpu-dra/gpu-dra-driver/pkg/httpserve"
)

func TestProbeAsksThePodsOwnSocket(t *testing.T) {
	var ready atomic.Bool
	mux := httpserve.ProbeMux(driver.NewMetrics().Registry, ready.Load, notReady)
	// Short: Unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "probe")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "p.sock")
	if err := serveProbes(t.Context(), sock, mux); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != probeSocketMode {
		t.Fatalf("probe socket: %v %v", fi, err)
	}
	for _, tc := range []struct {
		path  string
		ready bool
		ok    bool
	}{
		{"/healthz", false, true},
		{"/readyz", false, false},
		{"/readyz", true, true},
		{"/metrics", false, true},
	} {
		ready.Store(tc.ready)
		err := probe(t.Context(), sock, tc.path, 5*time.Second, io.Discard)
		if (err == nil) != tc.ok {
			t.Errorf("probe %s (ready %v): %v, want ok %v", tc.path, tc.ready, err, tc.ok)
		}
	}
	if err := probe(t.Context(), filepath.Join(dir, "none.sock"), "/healthz", time.Second, io.Discard); err == nil {
		t.Error("a probe of a socket nobody serves succeeded")
	}
}
