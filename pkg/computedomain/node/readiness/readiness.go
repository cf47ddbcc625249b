// Package readiness tells whether a ComputeDomain's daemon pod on this node
// is Ready: a channel claim is handed out only then, so that the workload
// starts with a working IMEX domain.
//
// It watches only the pods it may ask about: in the driver's namespace, on
// this node (field selector spec.nodeName), with the domain label
// (resource.nvidia.com/computeDomain).
package readiness

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// DefaultPollInterval is how often Wait looks at the informer's cache.
const DefaultPollInterval = 100 * time.Millisecond

// Options configure a Watcher.
type Options struct {
	Client    kubernetes.Interface
	NodeName  string
	Namespace string
	// PollInterval defaults to DefaultPollInterval.
	PollInterval time.Duration
}

// Watcher answers whether domains' daemon pods on the node are Ready.
type Watcher struct {
	opts     Options
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
	lister   listersv1.PodLister
	cancel   context.CancelFunc
}

// New returns a Watcher that starts with Start.
func New(opts Options) *Watcher {
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	factory := informers.NewSharedInformerFactoryWithOptions(opts.Client, 0,
		informers.WithNamespace(opts.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", opts.NodeName).String()
			o.LabelSelector = names.ComputeDomainLabel
		}))
	pods := factory.Core().V1().Pods()
	return &Watcher{opts: opts, factory: factory, informer: pods.Informer(), lister: pods.Lister()}
}

// Start starts the informer and waits for its cache.
func (w *Watcher) Start(ctx context.Context) error {
	ctx, w.cancel = context.WithCancel(ctx)
	w.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), w.informer.HasSynced) {
		return fmt.Errorf("daemon pod informer did not sync: %w", context.Cause(ctx))
	}
	return nil
}

// Shutdown stops the informer and waits for it.
func (w *Watcher) Shutdown() {
	if w.cancel != nil {
		w.cancel()
	}
	w.factory.Shutdown()
}

// Ready reports whether a Ready daemon pod of the domain runs on the node,
// and describes what it found otherwise.
func (w *Watcher) Ready(domainUID string) (bool, string) {
	req, err := labels.NewRequirement(names.ComputeDomainLabel, selection.Equals, []string{domainUID})
	if err != nil {
		return false, fmt.Sprintf("invalid ComputeDomain UID %q: %v", domainUID, err)
	}
	pods, err := w.lister.Pods(w.opts.Namespace).List(labels.NewSelector().Add(*req))
	if err != nil {
		return false, err.Error()
	}
	if len(pods) == 0 {
		return false, "no daemon pod on the node yet"
	}
	for _, p := range pods {
		if p.Spec.NodeName == w.opts.NodeName && p.DeletionTimestamp == nil && podReady(p) {
			return true, ""
		}
	}
	return false, fmt.Sprintf("daemon pod %s/%s is not Ready", pods[0].Namespace, pods[0].Name)
}

// Wait waits at most timeout for Ready. The error says what it last saw;
// the kubelet retries a prepare that returns it.
func (w *Watcher) Wait(ctx context.Context, domainUID string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ticker := time.NewTicker(w.opts.PollInterval)
	defer ticker.Stop()
	for {
		ok, why := w.Ready(domainUID)
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("IMEX daemon of ComputeDomain %s on node %s not ready after %s (%s); the kubelet retries", domainUID, w.opts.NodeName, timeout, why)
		case <-ticker.C:
		}
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
