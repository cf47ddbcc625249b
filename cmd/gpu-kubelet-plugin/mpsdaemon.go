package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/mps"
)

// terminationLog is where the kubelet reads a container's termination
// message: the supervisor's reason for failing, shown in the pod's status
// and to the plugin that waits for the daemon.
const terminationLog = "/dev/termination-log"

// daemonKey is what a daemon's key (a claim UID, or a previous release's
// shared-<GPU UUID>)
// may be, the last element of its directory.
var daemonKey = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]*$`)

// newMPSDaemonCommand is the container of an MPS control daemon's pod
// (package daemonpod): it runs the daemon of one directory until the pod
// is deleted.
func newMPSDaemonCommand() *cobra.Command {
	s := &mps.Supervisor{ProcRoot: "/"}
	var gpus string
	cmd := &cobra.Command{
		Use:   "mps-daemon",
		Short: "Run one MPS control daemon in the foreground (the container of its pod)",
		Long: `Runs nvidia-cuda-mps-control for the daemon directory --dir, made by the
plugin, records it there for the plugin, and stops it on SIGTERM. It fails,
and the kubelet restarts it, when the daemon exits; it ends without failing
when the directory is gone (the claim was unprepared).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !filepath.IsAbs(s.Dir) || filepath.Clean(s.Dir) != s.Dir || !daemonKey.MatchString(filepath.Base(s.Dir)) {
				return fmt.Errorf("--dir %q: not a daemon's directory (an absolute, clean path ending in a daemon's key)", s.Dir)
			}
			if gpus != "" {
				s.GPUs = strings.Split(gpus, ",")
			}
			ctx := klog.NewContext(cmd.Context(), klog.Background().WithValues("dir", s.Dir))
			protectFromOOMKiller(klog.FromContext(ctx), "/proc/self/oom_score_adj")
			// Run returns once its daemon is gone.
			defer removeToolLinks(klog.FromContext(ctx))
			err := s.Run(ctx)
			if errors.Is(err, mps.ErrDirectoryGone) {
				klog.FromContext(ctx).Info("Not running the MPS control daemon", "reason", err.Error())
				return nil
			}
			if err != nil {
				// Best effort: outside a container there is no such file.
				_ = os.WriteFile(terminationLog, []byte(err.Error()), 0o644)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&s.Dir, "dir", "", "the daemon's directory, made by the plugin (<plugin data dir>/mps/<key>)")
	cmd.Flags().StringVar(&s.DriverRoot, "driver-root", "/", "where nvidia-cuda-mps-control is found: the driver root as this container mounts it")
	cmd.Flags().StringVar(&gpus, "gpus", "", "comma-separated UUIDs of the GPUs or MIG devices the daemon is given (CUDA_VISIBLE_DEVICES); where the plugin wrote the daemon's spec in --dir, they must be its GPUs, which, with its limits, the spec decides")
	cmd.Flags().DurationVar(&s.Timeout, "timeout", 0, "the most the quit command, and the daemon's stop after it, may take (0: 10s)")
	return cmd
}

// guaranteedOOMScoreAdj is the oom_score_adj the kubelet gives the
// processes of Guaranteed pods.
const guaranteedOOMScoreAdj = "-997"

// protectFromOOMKiller gives the supervisor, and so the MPS control daemon
// and servers it starts (they inherit it), the OOM score of a Guaranteed
// pod's processes: a daemon pod whose requests are lowered by what its
// shares' pods reserve (kubeletPlugin.nodeAllocatableOverhead) is
// Burstable, which the kubelet scores near 1000, and an MPS server killed
// takes every client of the claim with it. Its memory stays bounded by its
// pod's limit. A failure (outside a privileged container) is logged only.
func protectFromOOMKiller(logger klog.Logger, file string) {
	if err := os.WriteFile(file, []byte(guaranteedOOMScoreAdj), 0o644); err != nil {
		logger.Info("Warning: the MPS control daemon keeps its pod's OOM score", "err", err.Error())
	}
}
