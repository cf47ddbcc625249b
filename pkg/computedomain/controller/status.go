package controller

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/klog/v2"

	cdv1 "github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/controller/cdstatus"
)

// statusWrite is the controller's last status write of a domain.
type statusWrite struct {
	at time.Time
	// fromRV is the resourceVersion the write replaced: while the cache
	// still holds that version, the written status is the current one.
	fromRV string
	status cdv1.ComputeDomainStatus
}

// writeStatus writes want as u's status if it differs from the current
// one, through the status subresource and with u's resourceVersion (a
// conflict is an error: the key is retried on a fresher copy). Writes of
// one domain are at least StatusMinInterval apart: a change within the
// interval is put off (the key comes back when it ends), so a burst of pod
// updates makes few writes.
func (c *Controller) writeStatus(ctx context.Context, k key, u *unstructured.Unstructured, current, want cdv1.ComputeDomainStatus) error {
	c.mu.Lock()
	last, had := c.writes[k]
	c.mu.Unlock()
	if had && last.fromRV == u.GetResourceVersion() {
		current = last.status
	}
	if cdstatus.Equal(current, want) {
		return nil
	}
	if had {
		if wait := last.at.Add(c.opts.StatusMinInterval).Sub(c.clock.Now()); wait > 0 {
			return &errRequeue{after: wait, reason: "status write coalesced"}
		}
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&want)
	if err != nil {
		return fmt.Errorf("encode status of ComputeDomain %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	obj := u.DeepCopy()
	obj.Object["status"] = m
	_, err = c.dyn.Resource(cdv1.Resource).Namespace(u.GetNamespace()).UpdateStatus(ctx, obj, metav1.UpdateOptions{})
	switch {
	case apierrors.IsConflict(err):
		c.metrics.StatusWrites.WithLabelValues("conflict").Inc()
		return fmt.Errorf("update status of ComputeDomain %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	case apierrors.IsNotFound(err):
		return nil
	case err != nil:
		c.metrics.StatusWrites.WithLabelValues("error").Inc()
		c.metrics.Errors.WithLabelValues("update-status").Inc()
		return fmt.Errorf("update status of ComputeDomain %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	c.metrics.StatusWrites.WithLabelValues("ok").Inc()
	c.mu.Lock()
	c.writes[k] = statusWrite{at: c.clock.Now(), fromRV: u.GetResourceVersion(), status: want}
	c.mu.Unlock()
	klog.FromContext(ctx).V(2).Info("Wrote ComputeDomain status", "status", want.Status, "nodes", len(want.Nodes))
	return nil
}

// forget drops what the controller remembers of a domain that is gone.
func (c *Controller) forget(k key) {
	c.mu.Lock()
	delete(c.writes, k)
	c.mu.Unlock()
}
