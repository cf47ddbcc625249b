package prepare

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/mps"
)

// EnsureDaemons starts again every MPS control daemon that a prepared
// claim or a shared GPU's shares use and that does not run: its pod was
// evicted or deleted, or its supervisor gave up. The kubelet restarts a
// supervisor that fails, not a pod that is gone; the driver calls this
// periodically. Each daemon is started under the locks a prepare holds,
// so a claim being unprepared is not given a daemon again. The errors are
// one per daemon that could not be started.
func (p *Preparer) EnsureDaemons(ctx context.Context) error {
	if p.opts.MPS == nil {
		return nil
	}
	claims, shared := p.daemonKeys()
	var errs []error
	for _, uid := range claims {
		if !p.opts.MPS.Running(uid) {
			errs = append(errs, p.ensureClaimDaemon(ctx, uid))
		}
	}
	for _, uuid := range shared {
		if !p.opts.MPS.Running(sharedDaemon(uuid)) {
			errs = append(errs, p.ensureSharedDaemon(ctx, uuid))
		}
	}
	return errors.Join(errs...)
}

// daemonKeys lists, sorted, the prepared claims that use a daemon of
// their own and the GPUs that a prepared claim holds a legacy share of
// (served by its GPU's daemon, legacyShare), read
// under the lock rather than from a copy of the checkpoint (this runs at
// every inventory refresh).
func (p *Preparer) daemonKeys() (claims, sharedGPUs []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for uid, c := range p.cp.Claims {
		if c.State != checkpoint.PrepareCompleted {
			continue
		}
		if slices.ContainsFunc(c.Devices, claimDaemon) {
			claims = append(claims, uid)
		}
		for _, uuid := range legacySharedGPUs(c) {
			if !slices.Contains(sharedGPUs, uuid) {
				sharedGPUs = append(sharedGPUs, uuid)
			}
		}
	}
	slices.Sort(claims)
	slices.Sort(sharedGPUs)
	return claims, sharedGPUs
}

// ensureClaimDaemon starts a prepared claim's own daemon, if the claim is
// still prepared once its lock is held.
func (p *Preparer) ensureClaimDaemon(ctx context.Context, uid string) error {
	defer p.lockClaim(uid)()
	c := p.Claim(uid)
	if c == nil || c.State != checkpoint.PrepareCompleted || p.opts.MPS.Running(uid) {
		return nil
	}
	defer p.lockGPUs(c)()
	klog.FromContext(ctx).Info("A prepared claim's MPS control daemon is gone; starting it again", "claimUID", uid)
	if err := startClaimDaemon(ctx, p.opts.MPS, c); err != nil {
		return fmt.Errorf("claim %s: start its MPS control daemon again: %w", uid, err)
	}
	return nil
}

// ensureSharedDaemon starts a previous release's daemon of a shared GPU,
// if a claim still holds a legacy share of it once the GPU's lock is
// held. It has no limits: that release set them in the containers'
// environment only.
func (p *Preparer) ensureSharedDaemon(ctx context.Context, uuid string) error {
	defer p.lockGPUs(&checkpoint.Claim{Devices: []checkpoint.Device{{GPUUUID: uuid}}})()
	key := sharedDaemon(uuid)
	if p.opts.MPS.Running(key) {
		return nil
	}
	if _, held := p.daemonKeys(); !slices.Contains(held, uuid) {
		return nil // only shares being prepared or undone: theirs to start or stop
	}
	klog.FromContext(ctx).Info("The MPS control daemon of a shared GPU's shares is gone; starting it again", "gpu", uuid)
	if err := p.opts.MPS.Start(ctx, key, []string{uuid}, mps.Limits{}); err != nil {
		return fmt.Errorf("GPU %s: start the MPS control daemon of its shares again: %w", uuid, err)
	}
	return nil
}
