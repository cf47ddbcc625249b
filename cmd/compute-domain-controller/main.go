// Command compute-domain-controller runs the ComputeDomain controller of
// the compute-domain.nvidia.com driver (pkg/computedomain/controller) as a
// leader-elected Deployment. This file only parses flags.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/command"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/controller"
	"github.com/gpu-dra/gpu-dra-driver/pkg/flags"
)

// options are the command's flags.
type options struct {
	namespace         string
	image             string
	imagePullPolicy   string
	priorityClass     string
	kubeconfig        string
	kubeAPIQPS        float32
	kubeAPIBurst      int
	leaderElect       bool
	leaseName         string
	leaseDuration     time.Duration
	renewDeadline     time.Duration
	retryPeriod       time.Duration
	statusMinInterval time.Duration
	workers           int
	httpEndpoint      string
	networkPolicy     bool
}

func (o *options) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.namespace, "namespace", os.Getenv("POD_NAMESPACE"), "the driver's namespace: domain daemons, their claim templates and the leader Lease live there (default: env POD_NAMESPACE)")
	fs.StringVar(&o.image, "image", "", "image of the domain daemons (runs compute-domain-daemon); required")
	fs.StringVar(&o.imagePullPolicy, "image-pull-policy", "", "pull policy of the daemons' image: Always, IfNotPresent or Never; empty leaves Kubernetes' default")
	fs.StringVar(&o.priorityClass, "daemon-priority-class", "", "priority class of the daemon pods; empty for none")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; empty uses the in-cluster configuration")
	fs.Float32Var(&o.kubeAPIQPS, "kube-api-qps", 20, "queries per second to the API server")
	fs.IntVar(&o.kubeAPIBurst, "kube-api-burst", 40, "burst of queries to the API server")
	fs.BoolVar(&o.leaderElect, "leader-elect", true, "elect a leader with a Lease in --namespace; only the leader reconciles")
	fs.StringVar(&o.leaseName, "leader-election-lease-name", "compute-domain-controller", "name of the leader election Lease")
	fs.DurationVar(&o.leaseDuration, "leader-election-lease-duration", 15*time.Second, "how long a lost leader's Lease holds off the others")
	fs.DurationVar(&o.renewDeadline, "leader-election-renew-deadline", 10*time.Second, "how long the leader tries to renew before it stops leading")
	fs.DurationVar(&o.retryPeriod, "leader-election-retry-period", 2*time.Second, "how often candidates try to acquire or renew the Lease")
	fs.DurationVar(&o.statusMinInterval, "status-min-interval", controller.DefaultStatusMinInterval, "least time between two status writes of one ComputeDomain (coalesces bursts of daemon pod changes)")
	fs.IntVar(&o.workers, "workers", 4, "reconciles run at once")
	fs.StringVar(&o.httpEndpoint, "http-endpoint", ":8080", "host:port serving /metrics (Prometheus) and /healthz; empty serves nothing")
	fs.BoolVar(&o.networkPolicy, "network-policy", false, "make, per domain, a NetworkPolicy that admits to its daemons only its own daemons' IMEX peer port (needs the right to manage NetworkPolicies in --namespace)")
}

// validate checks the flags after the environment was applied.
func (o *options) validate() error {
	if o.namespace == "" {
		return errors.New("--namespace (or env POD_NAMESPACE) is required")
	}
	if o.image == "" {
		return errors.New("--image is required")
	}
	switch corev1.PullPolicy(o.imagePullPolicy) {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		return fmt.Errorf("--image-pull-policy: %q is not Always, IfNotPresent or Never", o.imagePullPolicy)
	}
	if o.workers < 1 {
		return fmt.Errorf("--workers: %d must be at least 1", o.workers)
	}
	if o.statusMinInterval < 0 {
		return fmt.Errorf("--status-min-interval: %s must not be negative", o.statusMinInterval)
	}
	if o.leaderElect && (o.leaseName == "" || o.renewDeadline >= o.leaseDuration || o.retryPeriod <= 0) {
		return errors.New("--leader-election-*: need a lease name, a renew deadline shorter than the lease duration and a positive retry period")
	}
	return nil
}

func main() {
	command.Main(newRootCommand(run))
}

// newRootCommand makes the command; runFn runs the controller with the
// checked options (tests pass their own).
func newRootCommand(runFn func(context.Context, *options) error) *cobra.Command {
	opts := &options{}
	root := &cobra.Command{
		Use:   "compute-domain-controller",
		Short: "ComputeDomain controller of the compute-domain.nvidia.com DRA driver",
		Long: `Keeps, for every ComputeDomain, the workload's claim template, the IMEX
daemons' claim template and DaemonSet, the node labels that place the
daemons, and the domain's status. Leader-elected; only the leader works.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return flags.ApplyEnv(cmd.Flags())
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := opts.validate(); err != nil {
				return err
			}
			return runFn(cmd.Context(), opts)
		},
	}
	opts.addFlags(root.Flags())
	command.AddKlogFlags(root.PersistentFlags())
	root.AddCommand(command.Version("Print the controller's release"))
	flags.DocumentEnv(root.Flags())
	return root
}
