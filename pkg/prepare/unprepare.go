package prepare

import (
	"context"
	"fmt"

	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"
)

// Unprepare undoes Prepare for a claim. Unknown claims succeed. It
// succeeds only once the checkpoint on disk no longer holds the claim, so
// the kubelet retries until then.
func (p *Preparer) Unprepare(ctx context.Context, ref kubeletplugin.NamespacedObject) error {
	uid := string(ref.UID)
	logger := klog.FromContext(ctx).WithValues("claim", ref.NamespacedName, "claimUID", uid)
	ctx = klog.NewContext(ctx, logger)
	unlock := p.lockClaim(uid)
	defer unlock()
	rec := p.Claim(uid)
	if rec == nil {
		// Nothing recorded; a spec file may still exist if the plugin
		// crashed before recording. Removing it is harmless.
		if err := p.cdi.DeleteClaimSpec(uid); err != nil {
			return fmt.Errorf("unprepare claim %s: delete CDI spec: %w", ref.NamespacedName, err)
		}
		logger.V(2).Info("Claim not prepared; nothing to do")
		return nil
	}
	if err := p.rollback(ctx, rec); err != nil {
		return fmt.Errorf("unprepare claim %s: %w", ref.NamespacedName, err)
	}
	logger.Info("Unprepared claim")
	return nil
}
