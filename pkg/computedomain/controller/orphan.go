package controller

import (
	"context"
	"fmt"

	"k8s.io/klog/v2"
)

// syncOrphan removes the daemon objects of a domain UID that no cached
// ComputeDomain has (the domain went while the controller was away and
// its finalizer was removed by hand): the DaemonSet, then, once its pods
// are gone, the daemons' template and the nodes' labels. Workload
// templates are owned by the domain and go with it.
func (c *Controller) syncOrphan(ctx context.Context, uid string) error {
	if _, ok := c.inf.domainByUID(uid); ok {
		return nil
	}
	if err := c.deleteDaemons(ctx, uid); err != nil {
		return err
	}
	if n := len(c.inf.podsOf(uid)); n > 0 {
		return &errRequeue{after: DeletionPollInterval, reason: fmt.Sprintf("%d daemon pods of a deleted domain left", n)}
	}
	if err := c.deleteDaemonTemplate(ctx, uid); err != nil {
		return err
	}
	if err := c.unlabelNodes(ctx, uid); err != nil {
		return err
	}
	klog.FromContext(ctx).V(2).Info("Cleaned up after a deleted domain", "domainUID", uid)
	return nil
}
