// Package controller is the ComputeDomain controller: for every
// ComputeDomain it keeps the workload's claim template, the daemons' claim
// template and DaemonSet, the node labels that place the daemons, and the
// domain's status. It is the only writer of ComputeDomain status and of
// the domains' node labels. Reconciles are level-based and idempotent: a
// controller restarted at any point (mid-creation, mid-deletion) converges.
//
// The files split the work: informers.go (caches, indexes, and which
// events concern which domain or node), domain.go (one domain: objects,
// status, deletion), node.go (one node's labels), orphan.go (daemon
// objects whose domain is gone), status.go (coalesced status writes).
package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/controller/templates"
)

// DefaultStatusMinInterval is the least time between two status writes of
// one domain.
const DefaultStatusMinInterval = 500 * time.Millisecond

// Options configure the controller.
type Options struct {
	// Daemon are the daemons' settings; Daemon.Namespace is the driver's
	// namespace, where daemons, their templates and pods live.
	Daemon templates.DaemonOptions
	// StatusMinInterval coalesces status writes: a domain's status is
	// written at most once per interval (DefaultStatusMinInterval if 0).
	StatusMinInterval time.Duration
	// Workers is the number of reconciles run at once (1 if 0).
	Workers int
	// Recorder records Events on ComputeDomains; required.
	Recorder record.EventRecorder
	// Metrics counts what the controller does; nil counts nothing.
	Metrics *Metrics
	// Clock is for tests; nil is the real clock.
	Clock clock.WithTicker
	// CacheSyncTimeout bounds Start's wait for the informers' caches
	// (DefaultCacheSyncTimeout if 0).
	CacheSyncTimeout time.Duration
	// NetworkPolicy makes, for each domain, a NetworkPolicy that admits to
	// its daemons only its own daemons' IMEX traffic
	// (templates.NetworkPolicy). It needs the right to manage
	// NetworkPolicies in Daemon.Namespace.
	NetworkPolicy bool
}

// keyKind says what a work item reconciles.
type keyKind string

const (
	kindDomain keyKind = "domain"
	kindNode   keyKind = "node"
	kindOrphan keyKind = "orphan"
)

// key is a work item: a domain (namespace/name), a node (name), or the
// daemon objects of a domain UID whose domain is gone (name = UID).
type key struct {
	kind      keyKind
	namespace string
	name      string
}

func (k key) String() string {
	if k.namespace != "" {
		return string(k.kind) + ":" + k.namespace + "/" + k.name
	}
	return string(k.kind) + ":" + k.name
}

// errRequeue asks for the key to be processed again after a delay, without
// counting as a failure.
type errRequeue struct {
	after  time.Duration
	reason string
}

func (e *errRequeue) Error() string { return "requeue after " + e.after.String() + ": " + e.reason }

// Controller reconciles ComputeDomains. Make it with New; Run runs it.
type Controller struct {
	kube    kubernetes.Interface
	dyn     dynamic.Interface
	opts    Options
	clock   clock.Clock
	metrics *Metrics
	inf     *informers
	queue   workqueue.TypedRateLimitingInterface[key]

	mu sync.Mutex
	// writes remembers each domain's last status write, for coalescing
	// and to read our own write while the cache lags behind it.
	writes map[key]statusWrite
}

// DefaultCacheSyncTimeout is how long Start waits for the informers'
// caches by default.
const DefaultCacheSyncTimeout = 2 * time.Minute

// New makes a controller over the clients. It starts nothing.
func New(kube kubernetes.Interface, dyn dynamic.Interface, opts Options) (*Controller, error) {
	if opts.Daemon.Namespace == "" {
		return nil, errors.New("daemon namespace: required")
	}
	if opts.Daemon.Image == "" {
		return nil, errors.New("daemon image: required")
	}
	if opts.Recorder == nil {
		return nil, errors.New("event recorder: required")
	}
	if opts.StatusMinInterval <= 0 {
		opts.StatusMinInterval = DefaultStatusMinInterval
	}
	if opts.Workers <= 0 {
		opts.Workers = 1
	}
	if opts.CacheSyncTimeout <= 0 {
		opts.CacheSyncTimeout = DefaultCacheSyncTimeout
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(nil)
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	c := &Controller{
		kube:    kube,
		dyn:     dyn,
		opts:    opts,
		clock:   opts.Clock,
		metrics: opts.Metrics,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[key](),
			workqueue.TypedRateLimitingQueueConfig[key]{Name: "compute-domain-controller", Clock: opts.Clock},
		),
		writes: map[key]statusWrite{},
	}
	inf, err := newInformers(kube, dyn, opts.Daemon.Namespace, opts.NetworkPolicy, c.enqueue)
	if err != nil {
		return nil, err
	}
	c.inf = inf
	return c, nil
}

// Start starts the informers and waits until their caches are filled, at
// most Options.CacheSyncTimeout: a cache that stays empty (most often a
// list the controller's RBAC forbids) is an error naming it, rather than a
// controller that waits silently forever.
func (c *Controller) Start(ctx context.Context) error {
	c.inf.start(ctx)
	wctx, cancel := context.WithTimeout(ctx, c.opts.CacheSyncTimeout)
	defer cancel()
	missing := c.inf.waitForSync(wctx)
	switch {
	case len(missing) == 0:
		return nil
	case ctx.Err() != nil:
		return errors.New("wait for informer caches: cancelled before they synced")
	default:
		return fmt.Errorf("informer caches of %s not filled within %s: can the controller list and watch them? (its RBAC is in the chart's compute-domains.yaml; NetworkPolicies need computeDomains.controller.networkPolicy's rule)",
			strings.Join(missing, ", "), c.opts.CacheSyncTimeout)
	}
}

// Run starts the informers, and runs the workers until ctx is done.
func (c *Controller) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	defer runtime.HandleCrashWithContext(ctx)
	defer c.queue.ShutDown()
	if err := c.Start(ctx); err != nil {
		return err
	}
	logger.Info("Reconciling ComputeDomains", "namespace", c.opts.Daemon.Namespace, "image", c.opts.Daemon.Image, "workers", c.opts.Workers)
	var wg sync.WaitGroup
	for range c.opts.Workers {
		wg.Go(func() {
			wait.UntilWithContext(ctx, func(ctx context.Context) {
				for c.processNext(ctx) {
				}
			}, time.Second)
		})
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
	return nil
}

func (c *Controller) enqueue(k key) { c.queue.Add(k) }

func (c *Controller) processNext(ctx context.Context) bool {
	k, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(k)
	err := c.sync(ctx, k)
	var rq *errRequeue
	switch {
	case err == nil:
		c.queue.Forget(k)
	case errors.As(err, &rq):
		c.queue.Forget(k)
		c.queue.AddAfter(k, rq.after)
	default:
		klog.FromContext(ctx).Error(err, "Reconcile failed; retrying", "key", k.String())
		c.queue.AddRateLimited(k)
	}
	return true
}

// sync reconciles one key and counts it.
func (c *Controller) sync(ctx context.Context, k key) error {
	logger := klog.LoggerWithValues(klog.FromContext(ctx), "key", k.String())
	ctx = klog.NewContext(ctx, logger)
	var err error
	switch k.kind {
	case kindDomain:
		err = c.syncDomain(ctx, k)
	case kindNode:
		err = c.syncNode(ctx, k.name)
	case kindOrphan:
		err = c.syncOrphan(ctx, k.name)
	default:
		err = fmt.Errorf("unknown work item %q", k.String())
	}
	result := "ok"
	var rq *errRequeue
	if err != nil && !errors.As(err, &rq) {
		result = "error"
	}
	c.metrics.Reconciles.WithLabelValues(string(k.kind), result).Inc()
	return err
}
