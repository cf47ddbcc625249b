package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/plugin"
)

// probeMux serves /metrics, /healthz (the process is alive) and /readyz
// (it recovered, published and serves the kubelet).
func probeMux(m *plugin.Metrics, ready *atomic.Bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not serving yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// serveHTTP serves mux on endpoint until ctx ends. A port in use (by the
// plugin being replaced, on the host's network) is retried every second.
func serveHTTP(ctx context.Context, endpoint string, mux *http.ServeMux) error {
	logger := klog.FromContext(ctx)
	ln, err := net.Listen("tcp", endpoint)
	if err != nil && !errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("listen on --http-endpoint %s: %w", endpoint, err)
	}
	go func() {
		for ln == nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			if ln, err = net.Listen("tcp", endpoint); err != nil && !errors.Is(err, syscall.EADDRINUSE) {
				logger.Error(err, "HTTP endpoint not served", "endpoint", endpoint)
				return
			}
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			<-ctx.Done()
			_ = srv.Close()
		}()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error(err, "HTTP endpoint stopped", "endpoint", endpoint)
		}
	}()
	return nil
}
