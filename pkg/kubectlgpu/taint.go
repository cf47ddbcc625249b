package kubectlgpu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	"github.com/spf13/cobra"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
)

// How this tool marks the DeviceTaintRules it creates; their taint key,
// node and GPU labels and node annotation are in package names.
const (
	// labelManagedBy marks rules as ours; untaint deletes nothing else.
	labelManagedBy = "app.kubernetes.io/managed-by"
	// managedByValue is the value of labelManagedBy.
	managedByValue = "kubectl-gpu"
	// nodeRuleSuffix ends the name of the one rule for a whole node.
	nodeRuleSuffix = "all"
)

func (a *app) taintCommand() *cobra.Command {
	var effect, reason string
	cmd := &cobra.Command{
		Use:   "taint NODE[/gpu-<minor>] --effect=NoSchedule|NoExecute|None --reason=REASON",
		Short: "Taint a node's GPUs, or one GPU and all its MIG devices, for maintenance",
		Long: `Create DeviceTaintRules with the taint gpu.nvidia.com/maintenance=REASON:EFFECT.

For NODE, one rule selects every device of the driver in the node's pool. For
NODE/gpu-<minor>, one rule per device selects the GPU, each of its MIG
devices and its shared device (a taint on a GPU does not cover the devices
carved from it). Rule names are
deterministic: running taint again updates the effect and reason of the
existing rules and adds rules for devices published since.

Effects: NoSchedule keeps new pods off the devices, NoExecute also evicts the
pods using them, None only informs. The reason must be a valid label value (at
most 63 characters: letters, digits, '-', '_', '.').`,
		Args: targetArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := ParseTarget(args[0])
			if err != nil {
				return err
			}
			eff, err := parseEffect(effect)
			if err != nil {
				return err
			}
			if reason == "" {
				return usageErrorf("--reason is required")
			}
			if err := validateReason(reason); err != nil {
				return err
			}
			c, err := a.newClient()
			if err != nil {
				return err
			}
			return a.taint(cmd.Context(), c, t, eff, reason)
		},
	}
	cmd.Flags().StringVar(&effect, "effect", string(resourceapi.DeviceTaintEffectNoSchedule), "taint effect: NoSchedule, NoExecute or None")
	cmd.Flags().StringVar(&reason, "reason", "", "why the GPU is tainted; the taint's value (a label value, at most 63 characters)")
	return cmd
}

func (a *app) untaintCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "untaint NODE[/gpu-<minor>]",
		Short: "Delete the maintenance DeviceTaintRules that kubectl gpu created",
		Long: `Delete the DeviceTaintRules that "kubectl gpu taint" or "kubectl gpu drain"
created for the target. For NODE this deletes the node's rule and the rules of
each of its GPUs; for NODE/gpu-<minor>, the rules of that GPU only. Rules that
others created are left alone. Having nothing to delete is not an error.`,
		Args: targetArgs,
		RunE: a.onTarget(a.untaint),
	}
}

// parseEffect validates --effect.
func parseEffect(s string) (resourceapi.DeviceTaintEffect, error) {
	switch e := resourceapi.DeviceTaintEffect(s); e {
	case resourceapi.DeviceTaintEffectNoSchedule, resourceapi.DeviceTaintEffectNoExecute, resourceapi.DeviceTaintEffectNone:
		return e, nil
	}
	return "", usageErrorf("invalid --effect %q: want NoSchedule, NoExecute or None", s)
}

// validateReason checks that --reason can be a taint value, which must be a
// label value.
func validateReason(reason string) error {
	if errs := validation.IsValidLabelValue(reason); len(errs) > 0 {
		return usageErrorf("invalid --reason %q: a taint value must be a label value: %s", reason, strings.Join(errs, "; "))
	}
	return nil
}

// shortHash returns the first n hex digits of the SHA-256 of s.
func shortHash(s string, n int) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:n]
}

// nodeLabelValue is the node name if it is a valid label value, otherwise
// a prefix of it plus a hash of the full name, so that it is one.
func nodeLabelValue(node string) string {
	if len(validation.IsValidLabelValue(node)) == 0 {
		return node
	}
	prefix := node
	if len(prefix) > 50 {
		prefix = prefix[:50]
	}
	prefix = strings.TrimRight(strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_' {
			return r
		}
		return '-'
	}, prefix), "-._")
	prefix = strings.TrimLeft(prefix, "-._")
	if prefix == "" {
		return "h" + shortHash(node, 12)
	}
	return prefix + "-" + shortHash(node, 12)
}

// ruleName is the deterministic name of the rule for one device of a node,
// or for the whole node when device is empty. Node names are DNS
// subdomains, so "gpu-maintenance-<node>-<device>" is one unless it is too
// long; then the node part is shortened with a hash.
func ruleName(node, device string) string {
	suffix := device
	if suffix == "" {
		suffix = nodeRuleSuffix
	}
	name := "gpu-maintenance-" + node + "-" + suffix
	if len(validation.IsDNS1123Subdomain(name)) == 0 {
		return name
	}
	return "gpu-maintenance-" + strings.ToLower(nodeLabelValue(node)) + "-" + suffix
}

// ourSelector selects the rules of this tool for a target: all rules of the
// node (including per-GPU ones) for a node, those of the GPU for a GPU.
func ourSelector(t Target) labels.Selector {
	set := labels.Set{labelManagedBy: managedByValue, names.TaintRuleNodeLabel: nodeLabelValue(t.Node)}
	if t.HasGPU {
		set[names.TaintRuleGPULabel] = names.GPUDevice(t.GPU)
	}
	return labels.SelectorFromSet(set)
}

// rulesFor computes the DeviceTaintRules that taint the target: one rule
// with driver and pool for a whole node, one per device (the GPU's devices
// as Inventory.Resolve returns them) for a GPU. It has no side effects.
func rulesFor(t Target, devices []string, effect resourceapi.DeviceTaintEffect, reason string) []resourceapi.DeviceTaintRule {
	meta := func(device string) metav1.ObjectMeta {
		m := metav1.ObjectMeta{
			Name:        ruleName(t.Node, device),
			Labels:      map[string]string{labelManagedBy: managedByValue, names.TaintRuleNodeLabel: nodeLabelValue(t.Node)},
			Annotations: map[string]string{names.TaintRuleNodeAnnotation: t.Node},
		}
		if t.HasGPU {
			m.Labels[names.TaintRuleGPULabel] = names.GPUDevice(t.GPU)
		}
		return m
	}
	taint := resourceapi.DeviceTaint{Key: names.MaintenanceTaintKey, Value: reason, Effect: effect}
	selector := func(device string) *resourceapi.DeviceTaintSelector {
		s := &resourceapi.DeviceTaintSelector{Driver: ptr(names.DriverName), Pool: ptr(t.Node)}
		if device != "" {
			s.Device = ptr(device)
		}
		return s
	}
	if !t.HasGPU {
		return []resourceapi.DeviceTaintRule{{
			ObjectMeta: meta(""),
			Spec:       resourceapi.DeviceTaintRuleSpec{DeviceSelector: selector(""), Taint: taint},
		}}
	}
	sorted := append([]string(nil), devices...)
	sort.Strings(sorted)
	var rules []resourceapi.DeviceTaintRule
	for _, d := range sorted {
		rules = append(rules, resourceapi.DeviceTaintRule{
			ObjectMeta: meta(d),
			Spec:       resourceapi.DeviceTaintRuleSpec{DeviceSelector: selector(d), Taint: taint},
		})
	}
	return rules
}

func ptr[T any](v T) *T { return &v }

// applyResult counts what applyRules did.
type applyResult struct{ created, updated, unchanged int }

// applyRules creates the rules that do not exist and updates those whose
// selector, taint value or effect differ; t is the target they are for. A
// rule with the same name that this tool does not manage is an error.
func applyRules(ctx context.Context, c kubernetes.Interface, t Target, rules []resourceapi.DeviceTaintRule) (applyResult, error) {
	var res applyResult
	api := c.ResourceV1().DeviceTaintRules()
	existing, err := listOurRules(ctx, c, t)
	if err != nil {
		return res, err
	}
	byName := map[string]*resourceapi.DeviceTaintRule{}
	for i := range existing {
		byName[existing[i].Name] = &existing[i]
	}
	for i := range rules {
		want := &rules[i]
		have := byName[want.Name]
		if have == nil {
			_, err := api.Create(ctx, want, metav1.CreateOptions{})
			if err == nil {
				res.created++
				continue
			}
			if !apierrors.IsAlreadyExists(err) {
				return res, fmt.Errorf("create DeviceTaintRule %s: %w", want.Name, err)
			}
			if have, err = api.Get(ctx, want.Name, metav1.GetOptions{}); err != nil {
				return res, fmt.Errorf("get DeviceTaintRule %s: %w", want.Name, err)
			}
			if have.Labels[labelManagedBy] != managedByValue {
				return res, fmt.Errorf("DeviceTaintRule %s exists but is not managed by %s; delete or rename it", want.Name, managedByValue)
			}
		}
		if sameRule(have, want) {
			res.unchanged++
			continue
		}
		upd := have.DeepCopy()
		if upd.Labels == nil {
			upd.Labels = map[string]string{}
		}
		for k, v := range want.Labels {
			upd.Labels[k] = v
		}
		if upd.Annotations == nil {
			upd.Annotations = map[string]string{}
		}
		for k, v := range want.Annotations {
			upd.Annotations[k] = v
		}
		upd.Spec.DeviceSelector = want.Spec.DeviceSelector
		// Keep TimeAdded: the API server moves it when the effect changes.
		upd.Spec.Taint.Key, upd.Spec.Taint.Value, upd.Spec.Taint.Effect = want.Spec.Taint.Key, want.Spec.Taint.Value, want.Spec.Taint.Effect
		if _, err := api.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
			return res, fmt.Errorf("update DeviceTaintRule %s: %w", want.Name, err)
		}
		res.updated++
	}
	return res, nil
}

// sameRule tells whether an existing rule already is what we want.
func sameRule(have, want *resourceapi.DeviceTaintRule) bool {
	eq := func(a, b *string) bool { return (a == nil && b == nil) || (a != nil && b != nil && *a == *b) }
	hs, ws := have.Spec.DeviceSelector, want.Spec.DeviceSelector
	if hs == nil || ws == nil || !eq(hs.Driver, ws.Driver) || !eq(hs.Pool, ws.Pool) || !eq(hs.Device, ws.Device) {
		return false
	}
	for k, v := range want.Labels {
		if have.Labels[k] != v {
			return false
		}
	}
	ht, wt := have.Spec.Taint, want.Spec.Taint
	return ht.Key == wt.Key && ht.Value == wt.Value && ht.Effect == wt.Effect
}

// resolveTarget lists the target node's slices and returns the target's
// devices; an unknown node or GPU is a usage error.
func resolveTarget(ctx context.Context, c kubernetes.Interface, t Target) ([]string, error) {
	slices, err := listSlices(ctx, c, &t)
	if err != nil {
		return nil, err
	}
	inv := NewInventory(slices)
	if inv.Nodes[t.Node] == nil {
		// Unknown node: list every pool, so that the error names the
		// nodes that exist.
		all, err := listSlices(ctx, c, nil)
		if err != nil {
			return nil, err
		}
		inv = NewInventory(all)
	}
	return inv.Resolve(t)
}

// taint creates or updates the rules for the target and reports what it
// did.
func (a *app) taint(ctx context.Context, c kubernetes.Interface, t Target, effect resourceapi.DeviceTaintEffect, reason string) error {
	devices, err := resolveTarget(ctx, c, t)
	if err != nil {
		return err
	}
	rules := rulesFor(t, devices, effect, reason)
	res, err := applyRules(ctx, c, t, rules)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.out, "%s tainted %s=%s:%s: %d DeviceTaintRules created, %d updated, %d unchanged\n",
		t, names.MaintenanceTaintKey, reason, effect, res.created, res.updated, res.unchanged)
	return nil
}

// listOurRules lists the rules this tool created for the target. Besides
// the labels, the rule's pool must be the node, so that two long node names
// with the same shortened label never mix.
func listOurRules(ctx context.Context, c kubernetes.Interface, t Target) ([]resourceapi.DeviceTaintRule, error) {
	list, err := c.ResourceV1().DeviceTaintRules().List(ctx, metav1.ListOptions{LabelSelector: ourSelector(t).String()})
	if err != nil {
		return nil, fmt.Errorf("list DeviceTaintRules of %s: %w", t, err)
	}
	sel := ourSelector(t)
	var out []resourceapi.DeviceTaintRule
	for _, r := range list.Items {
		s := r.Spec.DeviceSelector
		if !sel.Matches(labels.Set(r.Labels)) || s == nil || s.Pool == nil || *s.Pool != t.Node {
			continue
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// untaint deletes this tool's rules for the target and says how many.
func (a *app) untaint(ctx context.Context, c kubernetes.Interface, t Target) error {
	rules, err := listOurRules(ctx, c, t)
	if err != nil {
		return err
	}
	deleted := 0
	for _, r := range rules {
		err := c.ResourceV1().DeviceTaintRules().Delete(ctx, r.Name, metav1.DeleteOptions{
			Preconditions: &metav1.Preconditions{UID: &r.UID},
		})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("delete DeviceTaintRule %s: %w", r.Name, err)
		}
		deleted++
	}
	if deleted == 0 {
		fmt.Fprintf(a.out, "%s: no DeviceTaintRules of kubectl gpu to delete\n", t)
	} else {
		fmt.Fprintf(a.out, "%s untainted: %d DeviceTaintRules deleted\n", t, deleted)
	}
	if t.HasGPU {
		node, err := listOurRules(ctx, c, Target{Node: t.Node})
		if err != nil {
			return err
		}
		for _, r := range node {
			if r.Labels[names.TaintRuleGPULabel] == "" {
				fmt.Fprintf(a.out, "note: DeviceTaintRule %s still taints every GPU of %s; run 'kubectl gpu untaint %s' to remove it\n", r.Name, t.Node, t.Node)
			}
		}
	}
	return nil
}
