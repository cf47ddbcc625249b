package kubectlgpu

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

func (a *app) drainCommand() *cobra.Command {
	var reason string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "drain NODE[/gpu-<minor>] [--timeout=5m] [--reason=drain]",
		Short: "Taint NoExecute and wait until no pod uses the devices",
		Long: `Taint the target NoExecute, as "kubectl gpu taint --effect=NoExecute" does,
so that Kubernetes evicts the pods that use its devices, then wait until no pod
holds a claim allocated on them. While waiting, print the EvictionInProgress
message of the rules when it changes, and the pods still on the devices.

A pod counts as gone when it is deleted or has phase Succeeded or Failed.
Pods that tolerate the taint are not evicted: drain then times out (exit 3).
The taint stays after drain; remove it with "kubectl gpu untaint".`,
		Args: targetArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := ParseTarget(args[0])
			if err != nil {
				return err
			}
			if reason == "" {
				return usageErrorf("--reason must not be empty")
			}
			if err := validateReason(reason); err != nil {
				return err
			}
			if timeout <= 0 {
				return usageErrorf("invalid --timeout %s: must be positive", timeout)
			}
			c, err := a.newClient()
			if err != nil {
				return err
			}
			return a.drain(cmd.Context(), c, t, reason, timeout)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "drain", "the taint's value (a label value, at most 63 characters)")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait for the pods to go")
	return cmd
}

// holder is a pod that still uses a device of the target through a claim.
type holder struct {
	Namespace, Pod, Device string
}

func (h holder) String() string {
	return printable(h.Namespace + "/" + h.Pod + " (" + h.Device + ")")
}

// podGone tells whether a pod no longer uses its devices: it is deleted
// (nil, or another pod with the same name) or has terminated.
func podGone(p *corev1.Pod, uid string) bool {
	return p == nil || string(p.UID) != uid || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// podGetter returns a pod, or nil if it does not exist.
type podGetter func(ctx context.Context, namespace, name string) (*corev1.Pod, error)

// apiPodGetter gets pods from the API server.
func apiPodGetter(c kubernetes.Interface) podGetter {
	return func(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
		p, err := c.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
		}
		return p, nil
	}
}

// holders returns the pods that still use a device of the target: those a
// claim allocated on the target's devices is reserved for, and that are
// not gone. devices is the target's device set; for a whole node every
// device of the pool counts. The result is sorted.
func holders(ctx context.Context, claims []resourceapi.ResourceClaim, t Target, devices map[string]bool, getPod podGetter) ([]holder, error) {
	var out []holder
	seen := map[holder]bool{}
	for i := range claims {
		c := &claims[i]
		if c.Status.Allocation == nil {
			continue
		}
		var onTarget []string
		for _, r := range c.Status.Allocation.Devices.Results {
			if r.Driver == names.DriverName && r.Pool == t.Node && (!t.HasGPU || devices[r.Device]) {
				onTarget = append(onTarget, r.Device)
			}
		}
		if len(onTarget) == 0 {
			continue
		}
		for _, ref := range c.Status.ReservedFor {
			if ref.Resource != "pods" || ref.APIGroup != "" {
				continue
			}
			p, err := getPod(ctx, c.Namespace, ref.Name)
			if err != nil {
				return nil, err
			}
			if podGone(p, string(ref.UID)) {
				continue
			}
			for _, d := range onTarget {
				h := holder{Namespace: c.Namespace, Pod: ref.Name, Device: d}
				if !seen[h] {
					seen[h] = true
					out = append(out, h)
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b holder) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Pod, b.Pod), cmp.Compare(a.Device, b.Device))
	})
	return out, nil
}

// drain taints the target NoExecute and waits until no pod holds its
// devices or the timeout ends (exit code exitDrainTimeout). It polls every
// a.pollInterval on a.clock; API errors while polling are printed and
// retried until the timeout.
func (a *app) drain(ctx context.Context, c kubernetes.Interface, t Target, reason string, timeout time.Duration) error {
	start := a.clock.Now()
	devices, err := resolveTarget(ctx, c, t)
	if err != nil {
		return err
	}
	rules := rulesFor(t, devices, resourceapi.DeviceTaintEffectNoExecute, reason)
	res, err := applyRules(ctx, c, t, rules)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.out, "%s tainted %s=%s:NoExecute: %d DeviceTaintRules created, %d updated, %d unchanged\n",
		t, names.MaintenanceTaintKey, reason, res.created, res.updated, res.unchanged)

	deviceSet := map[string]bool{}
	for _, d := range devices {
		deviceSet[d] = true
	}
	ruleNames := map[string]bool{}
	for _, r := range rules {
		ruleNames[r.Name] = true
	}
	messages := map[string]bool{}
	lastHolders := "-"
	var remaining []holder
	for {
		rem, err := a.drainStep(ctx, c, t, deviceSet, ruleNames, messages)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("drain %s: %w", t, ctx.Err())
			}
			fmt.Fprintf(a.errOut, "warning: %s\n", printable(err.Error()))
		} else {
			remaining = rem
			if len(remaining) == 0 {
				fmt.Fprintf(a.out, "%s drained: no pod uses its devices\n", t)
				return nil
			}
			if s := joinHolders(remaining); s != lastHolders {
				lastHolders = s
				fmt.Fprintf(a.out, "waiting for %d pod(s): %s\n", len(remaining), s)
			}
		}
		if a.clock.Since(start) >= timeout {
			what := "pods could not be checked"
			if remaining != nil {
				what = fmt.Sprintf("%d pod(s) still on the devices: %s", len(remaining), joinHolders(remaining))
			}
			return &exitError{code: exitDrainTimeout, err: fmt.Errorf("drain %s timed out after %s: %s", t, timeout, what)}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain %s: %w", t, ctx.Err())
		case <-a.clock.After(a.pollInterval):
		}
	}
}

// drainStep prints changed EvictionInProgress messages of the drain's rules
// and returns the pods still on the devices.
func (a *app) drainStep(ctx context.Context, c kubernetes.Interface, t Target, devices, ruleNames, messages map[string]bool) ([]holder, error) {
	ours, err := listOurRules(ctx, c, t)
	if err != nil {
		return nil, err
	}
	// A GPU has one rule per device: group rules by message so that the
	// output stays short, and print only groups that changed.
	groups := map[string][]string{}
	for _, r := range ours {
		if msg := evictionMessage(&r); ruleNames[r.Name] && msg != "" {
			groups[msg] = append(groups[msg], r.Name)
		}
	}
	for _, line := range evictionLines(groups) {
		if !messages[line] {
			fmt.Fprintln(a.out, line)
		}
	}
	clear(messages)
	for _, line := range evictionLines(groups) {
		messages[line] = true
	}
	claims, err := c.ResourceV1().ResourceClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list ResourceClaims: %w", err)
	}
	return holders(ctx, claims.Items, t, devices, apiPodGetter(c))
}

// joinHolders formats holders as "ns/pod (device), …".
func joinHolders(hs []holder) string {
	parts := make([]string, len(hs))
	for i, h := range hs {
		parts[i] = h.String()
	}
	return strings.Join(parts, ", ")
}

// evictionLines formats EvictionInProgress messages grouped by text, each
// with the rule (or the number of rules) that reports it, sorted.
func evictionLines(groups map[string][]string) []string {
	var lines []string
	for msg, rules := range groups {
		who := "rule " + rules[0]
		if len(rules) > 1 {
			who = fmt.Sprintf("%d rules", len(rules))
		}
		lines = append(lines, fmt.Sprintf("eviction (%s): %s", printable(who), printable(msg)))
	}
	sort.Strings(lines)
	return lines
}
