package driver

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/clearance"
)

// clearances remembers, by annotation key, the clearance value last
// handled. The annotations stay on the Node, which changes often (its
// status), and each value is acted on once: a refused value gets one
// Event, not one per Node update; an accepted one has cleared what it
// clears when first seen. A plugin restart handles each value once more,
// against the clock of then.
type clearances struct {
	mu   sync.Mutex
	seen map[string]string
}

// fresh returns the clearance annotations whose value was not handled
// yet, sorted by key, and forgets the keys the Node no longer has.
func (c *clearances) fresh(annotations map[string]string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil {
		c.seen = map[string]string{}
	}
	var keys []string
	for _, key := range slices.Sorted(maps.Keys(annotations)) {
		if !clearance.IsClearance(key) {
			continue
		}
		if seen, ok := c.seen[key]; ok && seen == annotations[key] {
			continue
		}
		c.seen[key] = annotations[key]
		keys = append(keys, key)
	}
	for key := range c.seen {
		if _, ok := annotations[key]; !ok {
			delete(c.seen, key)
		}
	}
	return keys
}

// watchClearances applies the admin clearances annotated on the node
// (package clearance) to the health monitor, and its labels of what it
// offers to the model (republished when they change), now and whenever the
// node changes, until ctx ends; stopWriters then waits for it.
func (d *Driver) watchClearances(ctx context.Context) {
	if d.cfg.KubeClient == nil {
		return
	}
	factory := informers.NewSharedInformerFactoryWithOptions(d.cfg.KubeClient, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + d.cfg.NodeName }))
	d.nodeInformers = factory // stopWriters waits for its handlers
	inf := factory.Core().V1().Nodes().Informer()
	apply := func(obj any) {
		if node, ok := obj.(*corev1.Node); ok {
			d.applyClearances(ctx, node.Annotations)
			if d.applyOffer(ctx, node.Labels) {
				select { // wakes the main loop to rebuild and republish
				case d.healthChanged <- struct{}{}:
				default: // a republish is already pending
				}
			}
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    apply,
		UpdateFunc: func(_, obj any) { apply(obj) },
	}); err != nil {
		klog.FromContext(ctx).Error(err, "Cannot watch the node for health clearances")
		return
	}
	factory.Start(ctx.Done())
}

// applyClearances clears sticky conditions per the node's clearance
// annotations that were not handled yet. A value it refuses (not a time,
// a time in the future, an unknown GPU) clears nothing and is reported
// as a Warning Event on the Node that names the annotation and value.
func (d *Driver) applyClearances(ctx context.Context, annotations map[string]string) {
	logger := klog.FromContext(ctx)
	for _, key := range d.clearances.fresh(annotations) {
		value := annotations[key]
		c, err := clearance.Parse(key, value, d.clock.Now())
		gpuUUID := ""
		if err == nil && !c.AllGPUs {
			if gpuUUID = d.gpuByMinor(c.Minor); gpuUUID == "" {
				err = errors.New("annotation " + key + ": the node has no GPU with this minor number")
			}
		}
		if err != nil {
			logger.Error(err, "Health clearance refused; sticky health taints stay")
			d.nodeEvent(ctx, corev1.EventTypeWarning, "HealthClearanceRefused",
				err.Error()+"; sticky health taints are not cleared (kubectl gpu clear writes a valid clearance)")
			continue
		}
		d.monitor.Clear(ctx, gpuUUID, c.At)
	}
}

// gpuByMinor is the UUID of the GPU with a minor number in the last
// inventory, or "".
func (d *Driver) gpuByMinor(minor int) string {
	inv, _ := d.state.current()
	if inv == nil {
		return ""
	}
	for _, g := range inv.GPUs {
		if g.Minor == minor {
			return g.UUID
		}
	}
	return ""
}
