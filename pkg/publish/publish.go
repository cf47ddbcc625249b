// Package publish keeps one node's pool of ResourceSlices in the API server
// equal to the device model, and removes it on uninstall.
//
// It runs the upstream ResourceSlice controller
// (k8s.io/dynamic-resource-allocation/resourceslice) with the node as owner,
// so that deleting the Node garbage-collects its slices. That controller
// already changes as few slices as it can: a change confined to one slice
// (a taint on one GPU) is one update that keeps the pool's generation; it
// retries failed API calls with backoff. What this package adds:
//
//   - a short repair delay: a slice deleted or edited by someone else is
//     put back within RepairDelay, not the controller's 30 s default;
//   - no API traffic when the model did not change;
//   - RemovePool for a clean uninstall.
package publish

import (
	"context"
	"fmt"
	"sync"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/utils/ptr"
)

// DefaultRepairDelay is how long after a change by someone else the pool
// is synced again. It also batches the controller's own echoes.
const DefaultRepairDelay = time.Second

// Options configure a Publisher.
type Options struct {
	DriverName string
	NodeName   string
	Client     kubernetes.Interface
	// RepairDelay defaults to DefaultRepairDelay.
	RepairDelay time.Duration
	// ErrorHandler receives every failure to publish; the controller
	// retries after it returns. Nil logs.
	ErrorHandler func(ctx context.Context, err error, msg string)
}

// Publisher publishes the pool named after its node.
type Publisher struct {
	opts Options

	mu   sync.Mutex
	ctrl *resourceslice.Controller
	last []resourceslice.Slice
}

// New returns a publisher that publishes nothing until Publish.
func New(opts Options) *Publisher {
	if opts.RepairDelay <= 0 {
		opts.RepairDelay = DefaultRepairDelay
	}
	return &Publisher{opts: opts}
}

// Publish makes slices the node's pool. The first call starts the
// controller, which waits for its informer; later calls hand over the new
// slices and return at once. It reports whether anything changed.
func (p *Publisher) Publish(ctx context.Context, slices []resourceslice.Slice) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctrl != nil && apiequality.Semantic.DeepEqual(p.last, slices) {
		return false, nil
	}
	resources := &resourceslice.DriverResources{Pools: map[string]resourceslice.Pool{p.opts.NodeName: {Slices: slices}}}
	if p.ctrl == nil {
		ctrl, err := resourceslice.StartController(ctx, resourceslice.Options{
			DriverName:   p.opts.DriverName,
			KubeClient:   p.opts.Client,
			Owner:        &resourceslice.Owner{APIVersion: "v1", Kind: "Node", Name: p.opts.NodeName},
			Resources:    resources,
			SyncDelay:    ptr.To(p.opts.RepairDelay),
			ErrorHandler: p.opts.ErrorHandler,
		})
		if err != nil {
			return false, fmt.Errorf("start publishing ResourceSlices of node %s: %w", p.opts.NodeName, err)
		}
		p.ctrl = ctrl
	} else {
		p.ctrl.Update(resources)
	}
	p.last = slices
	return true, nil
}

// Stats counts the API calls made so far.
func (p *Publisher) Stats() resourceslice.Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctrl == nil {
		return resourceslice.Stats{}
	}
	return p.ctrl.GetStats()
}

// Stop stops publishing and leaves the slices in place: a restarting
// plugin must not make its devices disappear from the scheduler.
// It is idempotent.
func (p *Publisher) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctrl != nil {
		p.ctrl.Stop()
		p.ctrl = nil
	}
}

// RemovePool deletes every ResourceSlice of the driver on the node (on
// every node for ""): a clean uninstall, run after the plugin has stopped.
// It returns how many it deleted.
func RemovePool(ctx context.Context, client kubernetes.Interface, driverName, nodeName string) (int, error) {
	selector := resourceapi.ResourceSliceSelectorDriver + "=" + driverName
	if nodeName != "" {
		selector = resourceapi.ResourceSliceSelectorNodeName + "=" + nodeName + "," + selector
	}
	sel := metav1.ListOptions{FieldSelector: selector}
	list, err := client.ResourceV1().ResourceSlices().List(ctx, sel)
	if err != nil {
		return 0, fmt.Errorf("list ResourceSlices of node %s: %w", nodeName, err)
	}
	for _, s := range list.Items {
		err := client.ResourceV1().ResourceSlices().Delete(ctx, s.Name, metav1.DeleteOptions{
			Preconditions: &metav1.Preconditions{UID: &s.UID},
		})
		if err != nil && !apierrors.IsNotFound(err) {
			return 0, fmt.Errorf("delete ResourceSlice %s: %w", s.Name, err)
		}
	}
	return len(list.Items), nil
}
