package driver

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
)

// readOffer reads what the node offers from its labels before the first
// publication, so that a node labelled to offer less never publishes more,
// and reports whether that changed the offer. Without the Node (no client,
// not readable) it offers everything until the node watch delivers it.
func (d *Driver) readOffer(ctx context.Context) bool {
	if d.cfg.KubeClient == nil {
		return false
	}
	node, err := d.cfg.KubeClient.CoreV1().Nodes().Get(ctx, d.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		klog.FromContext(ctx).Error(err, "Cannot read the node's labels of what it offers; offering every device until the node is watched")
		return false
	}
	return d.applyOffer(ctx, node.Labels)
}

// applyOffer sets what the node offers from its labels
// (devicemodel.ParseOffer) and reports whether that changed. A label it
// cannot read keeps the offer as it was and is reported as a Warning Event.
func (d *Driver) applyOffer(ctx context.Context, labels map[string]string) bool {
	offer, err := devicemodel.ParseOffer(labels)
	if err != nil {
		d.nodeEvent(ctx, corev1.EventTypeWarning, "OfferLabelRefused", fmt.Sprintf("%v; the node keeps offering what it did", err))
		return false
	}
	if !d.state.setOffer(offer) {
		return false
	}
	consumable := d.cfg.ConsumableShares
	if offer.ConsumableShares != nil {
		consumable = *offer.ConsumableShares
	}
	klog.FromContext(ctx).Info("Node offers", "whole", offer.Whole, "mig", offer.MIG, "shared", offer.Shared, "migProfiles", offer.MIGProfiles,
		"consumableShares", consumable.String())
	return true
}
