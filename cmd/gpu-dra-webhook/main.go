// Command gpu-dra-webhook is the validating admission webhook for the
// opaque configuration of gpu.nvidia.com (see pkg/webhook). It serves TLS
// 1.2 or later only.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/webhook"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	var listen, certFile, keyFile string
	var maxInFlight int
	root := &cobra.Command{
		Use:           "gpu-dra-webhook",
		Short:         "Validating admission webhook for gpu.nvidia.com configuration in ResourceClaims, ResourceClaimTemplates and DeviceClasses",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return serve(ctx, listen, certFile, keyFile, maxInFlight)
		},
	}
	fs := root.Flags()
	fs.StringVar(&listen, "listen", envOr("GPU_DRA_WEBHOOK_LISTEN", ":8443"), "host:port to serve HTTPS on [env GPU_DRA_WEBHOOK_LISTEN]")
	fs.StringVar(&certFile, "tls-cert-file", envOr("GPU_DRA_WEBHOOK_TLS_CERT_FILE", "/etc/gpu-dra-webhook/tls.crt"), "serving certificate (PEM) [env GPU_DRA_WEBHOOK_TLS_CERT_FILE]")
	fs.IntVar(&maxInFlight, "max-in-flight", webhook.DefaultMaxInFlight, "admission reviews read and decided at a time; more wait (memory: about 1.2 MiB each at most)")
	fs.StringVar(&keyFile, "tls-key-file", envOr("GPU_DRA_WEBHOOK_TLS_KEY_FILE", "/etc/gpu-dra-webhook/tls.key"), "serving key (PEM) [env GPU_DRA_WEBHOOK_TLS_KEY_FILE]")

	var dir, hosts string
	var validFor time.Duration
	certs := &cobra.Command{
		Use:   "certs",
		Short: "Write a self-signed CA (ca.crt) and a serving certificate and key (tls.crt, tls.key) for --hosts into --dir",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if dir == "" {
				return errors.New("--dir is required")
			}
			var list []string
			for _, h := range strings.Split(hosts, ",") {
				if h = strings.TrimSpace(h); h != "" {
					list = append(list, h)
				}
			}
			return webhook.WriteSelfSigned(dir, list, validFor)
		},
	}
	certs.Flags().StringVar(&dir, "dir", "", "directory to write ca.crt, tls.crt and tls.key into")
	certs.Flags().StringVar(&hosts, "hosts", "", "comma-separated DNS names and IP addresses the webhook is reached at")
	certs.Flags().DurationVar(&validFor, "valid-for", 365*24*time.Hour, "validity of the certificates")
	root.AddCommand(certs)
	return root
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func serve(ctx context.Context, listen, certFile, keyFile string, maxInFlight int) error {
	logger := klog.FromContext(ctx)
	certs, err := webhook.NewCertReloader(logger, certFile, keyFile)
	if err != nil {
		return fmt.Errorf("--tls-cert-file/--tls-key-file: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle(webhook.Path, webhook.NewHandler(maxInFlight))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen on --listen %s: %w", listen, err)
	}
	srv := webhook.NewServer(ctx, mux, certs.GetCertificate)
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	logger.Info("Serving", "address", ln.Addr().String(), "path", webhook.Path)
	if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
