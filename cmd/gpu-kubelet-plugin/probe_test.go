package main

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/driver"
)

func TestProbeAsksThePodsOwnSocket(t *testing.T) {
	var ready atomic.Bool
	mux := probeMux(driver.NewMetrics(), &ready)
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

// TestBracketIPv6: the node's address before the port, as the chart writes
// it, is a valid endpoint for both families; others are left alone.
func TestBracketIPv6(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{":8088", ":8088"},
		{"10.0.0.7:8088", "10.0.0.7:8088"},
		{"fd00::7:8088", "[fd00::7]:8088"},
		{"[fd00::7]:8088", "[fd00::7]:8088"},
		{"localhost:8088", "localhost:8088"},
		{"nonsense", "nonsense"},
	} {
		if got := bracketIPv6(tc.in); got != tc.want {
			t.Errorf("bracketIPv6(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestHTTPEndpointWaitsForThePredecessorsPort: a port in use, as the
// predecessor's during a roll, is not an error; it is served once free.
func TestHTTPEndpointWaitsForThePredecessorsPort(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := held.Addr().String()
	var ready atomic.Bool
	if err := serveHTTP(t.Context(), addr, probeMux(driver.NewMetrics(), &ready)); err != nil {
		t.Fatalf("port in use: %v", err)
	}
	held.Close()
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get("http://" + addr + "/healthz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(body), "ok") {
				t.Fatalf("healthz: %q", body)
			}
			return
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("the freed port was never served: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
