package kubectlgpu

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// The clearance annotations are those of package clearance. Their value
// is written in RFC 3339 (UTC) with fractional seconds, so that a
// condition raised a moment before the admin ran clear, within the same
// second, is cleared too.

func (a *app) clearCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "clear NODE[/gpu-<minor>]",
		Short: "Ask the node plugin to clear sticky health taints (fatal XID, ECC)",
		Long: `After checking a GPU, ask the node's plugin to clear its sticky health taints
(fatal XID and ECC errors do not clear by themselves). This sets the Node
annotation gpu.nvidia.com/health-cleared (whole node) or
gpu.nvidia.com/health-cleared-gpu-<minor> (one GPU) to the current time (RFC
3339, UTC); the plugin on the node then removes the taints raised up to then. A fault that
persists taints the GPU again.`,
		Args: targetArgs,
		RunE: a.onTarget(a.clearHealth),
	}
}

// healthClearedAnnotation is the Node annotation key that clears the
// target's sticky health taints.
func healthClearedAnnotation(t Target) string {
	if !t.HasGPU {
		return names.HealthClearedAnnotation
	}
	return names.HealthClearedGPUAnnotation(t.GPU)
}

// healthClearedPatch is the merge patch that sets the annotation to now.
func healthClearedPatch(t Target, now time.Time) ([]byte, error) {
	patch := map[string]any{
		"metadata": map[string]any{
			"annotations": map[string]string{healthClearedAnnotation(t): now.UTC().Format(time.RFC3339Nano)},
		},
	}
	data, err := json.Marshal(patch)
	if err != nil {
		return nil, fmt.Errorf("encode patch: %w", err)
	}
	return data, nil
}

// clearHealth checks that the target exists and annotates its Node.
func (a *app) clearHealth(ctx context.Context, c kubernetes.Interface, t Target) error {
	if _, err := resolveTarget(ctx, c, t); err != nil {
		return err
	}
	now := a.clock.Now()
	patch, err := healthClearedPatch(t, now)
	if err != nil {
		return err
	}
	_, err = c.CoreV1().Nodes().Patch(ctx, t.Node, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return usageErrorf("unknown node %q: no Node object", t.Node)
	}
	if err != nil {
		return fmt.Errorf("annotate node %s: %w", t.Node, err)
	}
	fmt.Fprintf(a.out, "%s: asked the plugin to clear sticky health taints (%s=%s)\n",
		t, healthClearedAnnotation(t), now.UTC().Format(time.RFC3339Nano))
	return nil
}
