// Package httpserve serves the kubelet plugins' HTTP endpoints: /metrics,
// /healthz and /readyz, on a TCP endpoint whose port a predecessor may
// still hold, or on any listener.
package httpserve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"
)

// ProbeMux serves /metrics from reg, /healthz (the process is alive) and
// /readyz: 200 OK once ready says so, else 503 Service Unavailable with
// notReady, which says what the process waits for.
func ProbeMux(reg *prometheus.Registry, ready func() bool, notReady string) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, notReady, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// ServeTCP serves handler on endpoint (host:port, the --http-endpoint
// flag) until ctx ends. A port in use is retried every second in the
// background: a plugin on the host's network finds it its predecessor's,
// during a roll, until that one exits. Other errors are returned.
func ServeTCP(ctx context.Context, endpoint string, handler http.Handler) error {
	endpoint = BracketIPv6(endpoint)
	ln, err := net.Listen("tcp", endpoint)
	switch {
	case err == nil:
		Serve(ctx, "HTTP endpoint", ln, handler)
		return nil
	case !errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("listen on --http-endpoint %s: %w", endpoint, err)
	}
	logger := klog.FromContext(ctx)
	logger.Info("The HTTP endpoint's port is in use (by the plugin being replaced?); retrying until it is free", "endpoint", endpoint)
	go func() {
		_ = wait.PollUntilContextCancel(ctx, time.Second, false, func(context.Context) (bool, error) {
			ln, err := net.Listen("tcp", endpoint)
			switch {
			case errors.Is(err, syscall.EADDRINUSE):
				return false, nil
			case err != nil:
				logger.Error(err, "HTTP endpoint not served", "endpoint", endpoint)
			default:
				logger.Info("Serving the HTTP endpoint", "endpoint", endpoint)
				Serve(ctx, "HTTP endpoint", ln, handler)
			}
			return true, nil
		})
	}()
	return nil
}

// BracketIPv6 turns "fd00::1:8088", as the chart writes the node's IPv6
// address (status.hostIP) before the port, into "[fd00::1]:8088"; every
// other endpoint is returned as it is.
func BracketIPv6(endpoint string) string {
	if _, _, err := net.SplitHostPort(endpoint); err == nil {
		return endpoint
	}
	i := strings.LastIndex(endpoint, ":")
	if i < 0 {
		return endpoint
	}
	host, port := endpoint[:i], endpoint[i+1:]
	if ip := net.ParseIP(host); ip == nil || ip.To4() != nil {
		return endpoint
	}
	return net.JoinHostPort(host, port)
}

// Serve serves handler on ln, in the background, until ctx ends; what
// names the endpoint in the log of a failure.
func Serve(ctx context.Context, what string, ln net.Listener, handler http.Handler) {
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.FromContext(ctx).Error(err, what+" stopped")
		}
	}()
}
