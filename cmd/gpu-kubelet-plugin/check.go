package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/gpu-dra/gpu-dra-driver/pkg/flags"
	"github.com/gpu-dra/gpu-dra-driver/pkg/hwcheck"
)

// errCheckFailed makes the command exit 1 once the report is written.
var errCheckFailed = errors.New("the hardware check found failures (FAIL lines above)")

func newCheckCommand(opts *options) *cobra.Command {
	var (
		output string
		cfg    hwcheck.Config
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check, read-only, that this node's GPUs and driver suit the plugin",
		Long: `Check the node before installing the driver: NVML (library, initialisation,
versions, GPU count), every GPU (identity, MIG mode and pending mode, MIG
profiles next to the devices the plugin would publish), the driver files and
device nodes CDI specs would carry, and the driver's tools. Each item is PASS,
WARN or FAIL with the reason; the exit status is 1 when any item FAILs.

The check changes nothing: it calls NVML getters only (never sets MIG mode,
creates or destroys instances, resets a GPU or sets a time slice), reads files
and runs no program. See docs/hardware-check.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("-o/--output must be text or json, not %q", output)
			}
			cfg.GPUs = opts.gpuOptions()
			cfg.NVMLLibrary = opts.nvmlLibrary
			cfg.StaticMIGOnly, cfg.SharedGPUs, cfg.ConsumableShares = opts.staticMIGOnly, opts.sharedGPUs, opts.consumableShares
			report, err := hwcheck.Run(cmd.Context(), cfg)
			if err != nil {
				return fmt.Errorf("hardware check: %w", err)
			}
			if output == "json" {
				err = report.WriteJSON(cmd.OutOrStdout())
			} else {
				err = report.WriteText(cmd.OutOrStdout())
			}
			if err != nil {
				return fmt.Errorf("write the report: %w", err)
			}
			if report.Failed() {
				return errCheckFailed
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVarP(&output, "output", "o", "text", "output format: text (for people) or json (for machines)")
	fs.StringVar(&cfg.DriverRoot, "driver-root", "/", "host path of the NVIDIA driver installation (libraries and binaries); NVML is found under it unless --nvml-library is given")
	fs.StringVar(&cfg.DriverRootMount, "driver-root-mount", "", "where this process finds --driver-root when it runs in a container (the chart mounts it at /driver-root); empty means --driver-root")
	fs.StringVar(&cfg.DevRoot, "dev-root", "/", "host root under which /dev/nvidia* are found")
	fs.StringVar(&cfg.ProcRoot, "proc-root", "/", "host root under which /proc/devices and /proc/driver/nvidia* are found")
	flags.DocumentEnv(fs)
	return cmd
}
