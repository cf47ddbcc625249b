// Package command holds what the driver's cobra commands share beyond
// their flags: running the root command until SIGINT or SIGTERM, klog's
// flags on the command line, and the "version" subcommand.
package command

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/version"
)

// Main is a command's main: it runs root with a context that ends on
// SIGINT or SIGTERM, and exits 1 with the error on stderr when root fails.
func Main(root *cobra.Command) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := root.ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

// AddKlogFlags adds klog's flags (-v, --vmodule, ...) to fs: a root
// command's persistent flags, so that every subcommand has them.
func AddKlogFlags(fs *pflag.FlagSet) {
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	fs.AddGoFlagSet(klogFlags)
}

// Version is the "version" subcommand, which prints the release (package
// version); short is its one-line help.
func Version(short string) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: short,
		Args:  cobra.NoArgs,
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), version.Get()) },
	}
}

// CrashAfter returns the AfterStep hook of a fault-injection test
// (--test-crash-at): it kills the process with SIGKILL right after step
// at, as a node failure would, with no deferred cleanup run; it logs why
// to logger first.
func CrashAfter[S ~string](logger klog.Logger, at S) func(S) {
	return func(s S) {
		if s == at {
			logger.Info("Killing the plugin for a fault-injection test", "step", s)
			klog.Flush()
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
	}
}
