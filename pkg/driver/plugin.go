package driver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"
)

// PrepareResourceClaims implements kubeletplugin.DRAPlugin: claims are
// prepared concurrently; the Preparer orders what shares a GPU.
func (d *Driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	results := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, claim := range claims {
		wg.Go(func() {
			start := time.Now()
			devices, err := d.preparer.Prepare(ctx, claim)
			d.cfg.Metrics.observe("prepare", start, err)
			if err != nil {
				klog.FromContext(ctx).Error(err, "Prepare failed", "claim", klog.KObj(claim))
			}
			mu.Lock()
			results[claim.UID] = kubeletplugin.PrepareResult{Devices: devices, Err: err}
			mu.Unlock()
		})
	}
	wg.Wait()
	d.claimsPrepared(claims, results) // sets the prepared-claims metrics too
	return results, nil
}

// UnprepareResourceClaims implements kubeletplugin.DRAPlugin.
func (d *Driver) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	results := make(map[types.UID]error, len(claims))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, claim := range claims {
		wg.Go(func() {
			start := time.Now()
			err := d.preparer.Unprepare(ctx, claim)
			d.cfg.Metrics.observe("unprepare", start, err)
			mu.Lock()
			results[claim.UID] = err
			mu.Unlock()
		})
	}
	wg.Wait()
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
