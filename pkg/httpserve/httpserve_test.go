package httpserve

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestProbeMux(t *testing.T) {
	var ready atomic.Bool
	mux := ProbeMux(prometheus.NewRegistry(), ready.Load, "waiting for the node")
	for _, tc := range []struct {
		path     string
		ready    bool
		wantCode int
		wantBody string
	}{
		{"/healthz", false, http.StatusOK, "ok"},
		{"/readyz", false, http.StatusServiceUnavailable, "waiting for the node"},
		{"/readyz", true, http.StatusOK, "ok"},
		{"/metrics", false, http.StatusOK, ""},
		{"/other", true, http.StatusNotFound, ""},
	} {
		ready.Store(tc.ready)
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
		if rec.Code != tc.wantCode || !strings.Contains(rec.Body.String(), tc.wantBody) {
			t.Errorf("GET %s (ready %v): %d %q, want %d with %q", tc.path, tc.ready, rec.Code, rec.Body, tc.wantCode, tc.wantBody)
		}
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
		if got := BracketIPv6(tc.in); got != tc.want {
			t.Errorf("BracketIPv6(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestServeTCPWaitsForThePredecessorsPort: a port in use, as the
// predecessor's during a roll, is not an error; it is served once free.
func TestServeTCPWaitsForThePredecessorsPort(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := held.Addr().String()
	if err := ServeTCP(t.Context(), addr, ProbeMux(prometheus.NewRegistry(), func() bool { return true }, "")); err != nil {
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

// TestServeTCPFails: an endpoint that cannot be listened on, for another
// reason than a port in use, is an error.
func TestServeTCPFails(t *testing.T) {
	if err := ServeTCP(t.Context(), "256.0.0.1:0", http.NewServeMux()); err == nil || !strings.Contains(err.Error(), "listen on --http-endpoint") {
		t.Errorf("ServeTCP on a bad address: %v", err)
	}
}
