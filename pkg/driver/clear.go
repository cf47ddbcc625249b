package driver

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// watchClearances applies the admin clearances annotated on the node
// (names.HealthClearedAnnotation and names.HealthClearedGPUAnnotationPrefix) to the
// health monitor, now and whenever the node changes, until ctx ends.
func (d *Driver) watchClearances(ctx context.Context) {
	if d.cfg.KubeClient == nil {
		return
	}
	factory := informers.NewSharedInformerFactoryWithOptions(d.cfg.KubeClient, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + d.cfg.NodeName }))
	inf := factory.Core().V1().Nodes().Informer()
	apply := func(obj any) {
		if node, ok := obj.(*corev1.Node); ok {
			d.applyClearances(ctx, node.Annotations)
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

// applyClearances clears sticky conditions per the node's annotations.
// Clearing is idempotent, so seeing the same annotation again is harmless.
func (d *Driver) applyClearances(ctx context.Context, annotations map[string]string) {
	logger := klog.FromContext(ctx)
	inv, _ := d.state.current()
	for key, value := range annotations {
		var gpuUUID string
		switch {
		case key == names.HealthClearedAnnotation:
		case strings.HasPrefix(key, names.HealthClearedGPUAnnotationPrefix):
			minor, err := strconv.Atoi(strings.TrimPrefix(key, names.HealthClearedGPUAnnotationPrefix))
			if err != nil || inv == nil {
				logger.Info("Ignoring a health clearance for an unknown GPU", "annotation", key)
				continue
			}
			for _, g := range inv.GPUs {
				if g.Minor == minor {
					gpuUUID = g.UUID
				}
			}
			if gpuUUID == "" {
				logger.Info("Ignoring a health clearance for an unknown GPU", "annotation", key)
				continue
			}
		default:
			continue
		}
		at, err := time.Parse(time.RFC3339, value)
		if err != nil {
			logger.Info("Ignoring a health clearance whose value is not an RFC 3339 time", "annotation", key, "value", value)
			continue
		}
		d.monitor.Clear(ctx, gpuUUID, at)
	}
}
