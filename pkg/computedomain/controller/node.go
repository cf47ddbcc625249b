package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/controller/nodelabels"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// syncNode makes one node's labels what its claims and slices say: a
// domain label for each live domain (present, not being deleted) with an
// allocated channel on the node from a claim in the domain's own namespace
// (a claim naming another namespace's domain does not place that domain's
// daemon), and the clique label from the node's slice. Labels of domains
// that are gone are removed.
func (c *Controller) syncNode(ctx context.Context, name string) error {
	node, ok := c.inf.node(name)
	if !ok {
		return nil
	}
	domains := sets.New[string]()
	for _, claim := range c.inf.claimsOnNode(name) {
		for _, p := range nodelabels.Placements(claim) {
			if p.Node != name || domains.Has(p.DomainUID) {
				continue
			}
			u, ok := c.inf.domainByUID(p.DomainUID)
			if !ok || u.GetDeletionTimestamp() != nil {
				continue
			}
			if u.GetNamespace() != claim.Namespace {
				klog.FromContext(ctx).V(2).Info("Ignoring a claim for a domain of another namespace", "claim", klog.KObj(claim), "domain", klog.KObj(u))
				continue
			}
			domains.Insert(p.DomainUID)
		}
	}
	// A domain being deleted keeps the labels it has until its clean-up
	// removes them (after its daemons are gone), and gets no new ones.
	for k := range node.Labels {
		uid, ok := nodelabels.DomainOfLabel(k)
		if !ok {
			continue
		}
		if u, ok := c.inf.domainByUID(uid); ok && u.GetDeletionTimestamp() != nil && slices.Contains(u.GetFinalizers(), names.ComputeDomainFinalizer) {
			domains.Insert(uid)
		}
	}
	clique, haveSlice := c.inf.nodeClique(name)
	return c.patchNodeLabels(ctx, name, nodelabels.Desired(node.Labels, domains, haveSlice, clique))
}

// patchNodeLabels applies p to the node with a JSON merge patch of its
// labels only (null removes a key). A node that is gone needs nothing.
func (c *Controller) patchNodeLabels(ctx context.Context, name string, p nodelabels.Patch) error {
	if p.Empty() {
		return nil
	}
	labels := map[string]any{}
	for k, v := range p.Set {
		labels[k] = v
	}
	for _, k := range p.Remove {
		labels[k] = nil
	}
	data, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
	if err != nil {
		return fmt.Errorf("encode label patch of node %s: %w", name, err)
	}
	patched, err := c.kube.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, data, metav1.PatchOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil
	case err != nil:
		c.metrics.NodePatches.WithLabelValues("error").Inc()
		return fmt.Errorf("patch labels of node %s: %w", name, err)
	}
	c.inf.patchedNode(patched)
	c.metrics.NodePatches.WithLabelValues("ok").Inc()
	klog.FromContext(ctx).V(2).Info("Patched node labels", "node", name, "set", p.Set, "removed", p.Remove)
	return nil
}
