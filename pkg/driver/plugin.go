package driver

import (
	"context"
	"errors"
	"fmt"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/draplugin"
)

// PrepareResourceClaims implements kubeletplugin.DRAPlugin: claims are
// prepared concurrently; the Preparer orders what shares a GPU.
func (d *Driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	results := draplugin.PrepareAll(claims, func(claim *resourceapi.ResourceClaim) kubeletplugin.PrepareResult {
		start := time.Now()
		devices, err := d.preparer.Prepare(ctx, claim)
		d.cfg.Metrics.observe("prepare", start, err)
		if err != nil {
			klog.FromContext(ctx).Error(err, "Prepare failed", "claim", klog.KObj(claim))
		}
		return kubeletplugin.PrepareResult{Devices: devices, Err: err}
	})
	d.claimsPrepared(claims, results) // sets the prepared-claims metrics too
	return results, nil
}

// UnprepareResourceClaims implements kubeletplugin.DRAPlugin.
func (d *Driver) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	results := draplugin.UnprepareAll(claims, func(claim kubeletplugin.NamespacedObject) error {
		start := time.Now()
		err := d.preparer.Unprepare(ctx, claim)
		d.cfg.Metrics.observe("unprepare", start, err)
		return err
	})
	d.claimsUnprepared(claims) // sets the prepared-claims metrics too
	return results, nil
}

// HandleError implements kubeletplugin.DRAPlugin: recoverable errors are
// logged; others stop the plugin (the DaemonSet restarts it).
func (d *Driver) HandleError(ctx context.Context, err error, msg string) {
	runtime.HandleErrorWithContext(ctx, err, msg)
	if !errors.Is(err, kubeletplugin.ErrRecoverable) {
		d.cancel(fmt.Errorf("fatal error: %s: %w", msg, err))
	}
}
