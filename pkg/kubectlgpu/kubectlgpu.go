// Package kubectlgpu is the kubectl plugin kubectl-gpu (kubectl gpu …) for cluster
// admins of the gpu.nvidia.com DRA driver: it lists GPUs with their taints
// and holders, fences GPUs for maintenance with DeviceTaintRules, drains
// them, and asks the node plugin to clear sticky health taints.
//
// Exit codes, which scripts may rely on:
//
//	0  success
//	1  API or other failure
//	2  usage error, or unknown node or GPU
//	3  drain timed out with pods still on the devices
package kubectlgpu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/clock"
)

// Exit codes of the command; see the package documentation.
const (
	exitOK           = 0
	exitFailure      = 1
	exitUsage        = 2
	exitDrainTimeout = 3
)

// exitCodesHelp documents the exit codes in --help.
const exitCodesHelp = `Exit codes:
  0  success
  1  API or other failure
  2  usage error, or unknown node or GPU
  3  drain timed out with pods still on the devices`

// exitError carries the exit code an error should end the command with.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErrorf returns an error that ends the command with exitUsage.
func usageErrorf(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// exitCode maps an error returned by a command to the process exit code:
// exitOK for nil, the code of an exitError, exitFailure otherwise.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitFailure
}

// Clock is the part of a clock the commands use: ages in ls, the
// annotation time in clear, the deadline and polling in drain.
// k8s.io/utils/clock.RealClock implements it.
type Clock interface {
	Now() time.Time
	Since(t time.Time) time.Duration
	After(d time.Duration) <-chan time.Time
}

// app holds what the commands share: output streams, the way to reach the
// API server, and the clock. Tests replace newClient, clock and
// pollInterval.
type app struct {
	out, errOut io.Writer
	// newClient returns the clientset; it is called once a command runs,
	// after flags are parsed.
	newClient func() (kubernetes.Interface, error)
	clock     Clock
	// pollInterval is how often drain checks progress.
	pollInterval time.Duration
}

// Run executes the command line args and returns the exit code. Errors are
// printed to errOut as "error: …". newClient may be nil to build the client
// from the kubeconfig flags the way kubectl does.
func Run(ctx context.Context, args []string, out, errOut io.Writer, newClient func() (kubernetes.Interface, error)) int {
	a := &app{out: out, errOut: errOut, newClient: newClient, clock: clock.RealClock{}, pollInterval: 2 * time.Second}
	return a.execute(ctx, args)
}

// execute runs the root command with args and maps its error to an exit
// code.
func (a *app) execute(ctx context.Context, args []string) int {
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(a.out)
	root.SetErr(a.errOut)
	err := root.ExecuteContext(ctx)
	if err != nil {
		// Errors may quote what the API returned (names, messages).
		fmt.Fprintf(a.errOut, "error: %s\n", printable(err.Error()))
	}
	return exitCode(err)
}

// rootCommand builds the command tree.
func (a *app) rootCommand() *cobra.Command {
	loading := clientcmd.NewDefaultClientConfigLoadingRules()
	overrides := &clientcmd.ConfigOverrides{}
	root := &cobra.Command{
		Use:   "kubectl-gpu",
		Short: "Inspect, fence, drain and clear the GPUs of the gpu.nvidia.com DRA driver",
		Long: `kubectl gpu inspects and maintains the GPUs that the gpu.nvidia.com DRA driver
publishes: which devices are tainted and why, which claims and pods hold them,
and maintenance taints (DeviceTaintRules) for a node or one GPU with its MIG
devices.

A target is NODE (every GPU of the node) or NODE/gpu-<minor> (one GPU and all
of its MIG devices).

` + exitCodesHelp,
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl gpu"},
		Args:          cobra.ArbitraryArgs,
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErrorf("unknown command %q; run 'kubectl gpu --help'", args[0])
			}
			return cmd.Help()
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &exitError{code: exitUsage, err: err}
	})
	fl := root.PersistentFlags()
	fl.StringVar(&loading.ExplicitPath, "kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	fl.StringVar(&overrides.CurrentContext, "context", "", "the kubeconfig context to use")
	fl.StringVar(&overrides.Context.Cluster, "cluster", "", "the kubeconfig cluster to use")
	fl.StringVar(&overrides.Context.AuthInfo, "user", "", "the kubeconfig user to use")
	fl.StringVar(&overrides.Timeout, "request-timeout", "", "how long to wait for one API request (e.g. 30s; 0 waits forever)")

	if a.newClient == nil {
		a.newClient = func() (kubernetes.Interface, error) {
			cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(loading, overrides).ClientConfig()
			if err != nil {
				return nil, fmt.Errorf("load kubeconfig: %w", err)
			}
			cfg.UserAgent = "kubectl-gpu"
			// A GPU has one rule per device: allow bursts like kubectl does.
			cfg.QPS, cfg.Burst = 50, 100
			c, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return nil, fmt.Errorf("create client: %w", err)
			}
			return c, nil
		}
	}
	root.AddCommand(a.lsCommand(), a.describeCommand(), a.taintCommand(), a.untaintCommand(), a.drainCommand(), a.clearCommand())
	for _, c := range root.Commands() {
		c.Long = strings.TrimSpace(c.Long) + "\n\n" + exitCodesHelp
	}
	return root
}

// targetArgs accepts exactly one NODE[/GPU] argument.
func targetArgs(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usageErrorf("%s takes exactly one NODE or NODE/gpu-<minor> argument, got %d", cmd.Name(), len(args))
	}
	return nil
}

// onTarget is the RunE of a command whose one argument is NODE[/GPU]: it
// parses the target, connects, and calls run.
func (a *app) onTarget(run func(ctx context.Context, c kubernetes.Interface, t Target) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		t, err := ParseTarget(args[0])
		if err != nil {
			return err
		}
		c, err := a.newClient()
		if err != nil {
			return err
		}
		return run(cmd.Context(), c, t)
	}
}
