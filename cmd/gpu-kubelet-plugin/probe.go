package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/gpu-dra/gpu-dra-driver/pkg/httpserve"
)

// Probes and metrics. During a rolling update two plugin pods run on the
// node, both on the host's network (the chart's hostNetwork): a fixed
// host port can be bound by one of them only. So the liveness and
// readiness probes do not use a port: the plugin serves them on a Unix
// socket in its own pod (--probe-socket, an emptyDir in the chart) and the
// kubelet runs "gpu-kubelet-plugin probe" in the container, which asks
// that socket. Each pod's probes reach that pod, whatever else runs on the
// node. /metrics stays on --http-endpoint, for scrapers that expect it on
// the node's address; a pod that finds the port taken (its predecessor's,
// during the roll) binds it once the predecessor is gone.

// probeSocketMode: only the plugin's own container (root) asks the socket.
const probeSocketMode fs.FileMode = 0o600

// notReady is what /readyz answers until the plugin owns the node and has
// published (see driver.RunHandingOver).
const notReady = "not owning the node, registered and published"

// serveProbes serves the probes on a Unix socket at path until ctx ends.
func serveProbes(ctx context.Context, path string, mux *http.ServeMux) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("--probe-socket: remove stale socket: %w", err)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "unix", path)
	if err != nil {
		return fmt.Errorf("--probe-socket: %w", err)
	}
	if err := os.Chmod(path, probeSocketMode); err != nil {
		ln.Close()
		return fmt.Errorf("--probe-socket: set the mode of %s: %w", path, err)
	}
	httpserve.Serve(ctx, "probe socket", ln, mux)
	return nil
}

// newProbeCommand is the chart's liveness and readiness probe: it asks the
// plugin's probe socket for a path and succeeds on 200 OK.
func newProbeCommand() *cobra.Command {
	var socket string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "probe PATH",
		Short: "Ask the plugin's --probe-socket for /healthz or /readyz; exit 0 on 200 OK",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return probe(cmd.Context(), socket, args[0], timeout, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&socket, "socket", defaultProbeSocket, "the plugin's --probe-socket")
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "how long to wait for the answer")
	return cmd
}

// defaultProbeSocket is where the chart has the plugin serve its probes.
const defaultProbeSocket = "/run/gpu-kubelet-plugin/probe.sock"

func probe(ctx context.Context, socket, path string, timeout time.Duration, out io.Writer) error {
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://plugin"+path, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("probe %s on %s: %w", path, socket, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("probe %s: %s: %s", path, resp.Status, body)
	}
	_, _ = out.Write(body)
	return nil
}
