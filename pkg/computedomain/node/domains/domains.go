// Package domains watches the cluster's ComputeDomains through the dynamic
// client and answers, from the informer's cache, which domain has a UID.
package domains

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
)

const uidIndex = "uid"

// Informer is a cluster-wide ComputeDomain informer indexed by UID.
type Informer struct {
	factory  dynamicinformer.DynamicSharedInformerFactory
	informer cache.SharedIndexInformer
	cancel   context.CancelFunc
}

// New returns an informer that starts with Start.
func New(client dynamic.Interface) (*Informer, error) {
	factory := dynamicinformer.NewDynamicSharedInformerFactory(client, 0)
	inf := factory.ForResource(v1beta1.Resource).Informer()
	err := inf.AddIndexers(cache.Indexers{uidIndex: func(obj any) ([]string, error) {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			return nil, nil
		}
		return []string{string(u.GetUID())}, nil
	}})
	if err != nil {
		return nil, fmt.Errorf("index ComputeDomains: %w", err)
	}
	return &Informer{factory: factory, informer: inf}, nil
}

// OnChange calls f with the UID of every domain added, changed or deleted.
func (i *Informer) OnChange(f func(uid string)) error {
	uid := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if u, ok := obj.(*unstructured.Unstructured); ok {
			f(string(u.GetUID()))
		}
	}
	_, err := i.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    uid,
		UpdateFunc: func(_, obj any) { uid(obj) },
		DeleteFunc: uid,
	})
	if err != nil {
		return fmt.Errorf("watch ComputeDomains: %w", err)
	}
	return nil
}

// Start starts the informer and waits for its cache.
func (i *Informer) Start(ctx context.Context) error {
	ctx, i.cancel = context.WithCancel(ctx)
	i.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), i.informer.HasSynced) {
		return fmt.Errorf("ComputeDomain informer did not sync: %w", context.Cause(ctx))
	}
	klog.FromContext(ctx).V(2).Info("ComputeDomain informer synced")
	return nil
}

// Shutdown stops the informer and waits for it.
func (i *Informer) Shutdown() {
	if i.cancel != nil {
		i.cancel()
	}
	i.factory.Shutdown()
}

// Get returns the domain with the UID; nil, nil when there is none.
func (i *Informer) Get(uid string) (*v1beta1.ComputeDomain, error) {
	objs, err := i.informer.GetIndexer().ByIndex(uidIndex, uid)
	if err != nil {
		return nil, fmt.Errorf("look up ComputeDomain %s: %w", uid, err)
	}
	for _, obj := range objs {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		return v1beta1.FromUnstructured(u)
	}
	return nil, nil
}
