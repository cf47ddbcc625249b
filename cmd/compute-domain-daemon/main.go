// Command compute-domain-daemon is the ComputeDomain daemon: "run"
// supervises the node's IMEX daemon for one domain, "check" is the pod's
// probe. It has no Kubernetes client; the node plugin gives it the
// domain's directory (--dir, /imexd) through CDI. This file only parses
// flags; the work is done in pkg/computedomain/daemon. Build it static
// (CGO_ENABLED=0): its image has no C library.
package main

import (
	"time"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/command"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/daemon"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

func main() {
	command.Main(newRootCommand())
}

func newRootCommand() *cobra.Command {
	var o daemon.Options
	root := &cobra.Command{
		Use:   "compute-domain-daemon",
		Short: "ComputeDomain daemon: runs and probes the node's IMEX daemon of one domain",
		Long: `The ComputeDomain daemon, run by each domain's DaemonSet. "run" starts
nvidia-imex -c <dir>/imexd.cfg once <dir>/nodes.cfg exists and restarts it
when nodes.cfg changes or it exits; "check" succeeds iff
nvidia-imex-ctl -c <dir>/imexd.cfg -q prints READY.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	command.AddKlogFlags(root.PersistentFlags())
	root.PersistentFlags().StringVar(&o.Dir, "dir", names.IMEXDaemonDir, "the domain's directory, with imexd.cfg and nodes.cfg")

	run := &cobra.Command{
		Use:   "run",
		Short: "Run the IMEX daemon until SIGTERM",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := klog.NewContext(cmd.Context(), klog.Background().WithValues("dir", o.Dir))
			return daemon.Run(ctx, o)
		},
	}
	run.Flags().StringVar(&o.IMEX, "imex", "nvidia-imex", "the IMEX daemon's program (a name is looked up on PATH)")

	check := &cobra.Command{
		Use:   "check",
		Short: "Exit 0 iff the local IMEX daemon reports READY (the pod's probe)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return daemon.Check(cmd.Context(), o)
		},
	}
	check.Flags().StringVar(&o.Ctl, "imex-ctl", "nvidia-imex-ctl", "the IMEX query tool (a name is looked up on PATH)")
	check.Flags().DurationVar(&o.CheckTimeout, "timeout", 4*time.Second, "how long to wait for the answer; keep it below the probe's timeoutSeconds")

	root.AddCommand(run, check)
	return root
}
