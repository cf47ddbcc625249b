package fleet

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	cdv1 "github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/controller"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/controller/nodelabels"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/controller/templates"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// DriverNamespace is the driver's namespace of a ComputeDomain run: the
// controller makes the domain's daemons there.
const DriverNamespace = "fleet-driver"

// Names of the ComputeDomain run's objects.
const (
	domainName      = "fleet-domain"
	domainTemplate  = "fleet-domain-channel"
	domainPodPrefix = "cd-worker-"
	channelClaim    = "channel"
)

// ComputeDomainRun is the ComputeDomain measurement (issue 26): the
// ComputeDomain controller runs in this process; the harness creates one
// domain and its workload pods at once, each pod asking for the domain's
// channel and one whole GPU (as NVIDIA's MPI workers do), plays the
// kubelet for the workload pods and for the daemon pods the DaemonSet
// controller makes, and measures from the domain's creation to the domain
// Ready with every workload pod bound.
type ComputeDomainRun struct {
	// Pods is the number of workload pods.
	Pods int
	// NumNodes is the domain's spec.numNodes: it is Ready once that many
	// nodes' daemons are.
	NumNodes int
	// CliqueSize is the number of nodes (in order) per NVLink clique; 0
	// puts every node in one clique.
	CliqueSize int
	// DaemonReady and ProbePeriod say when a daemon pod becomes Ready.
	DaemonReady DaemonReady
	ProbePeriod time.Duration
	// Client and Dynamic are the controller's own clients (its rate limits).
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	// Workers and StatusMinInterval are the controller's options.
	Workers           int
	StatusMinInterval time.Duration
}

// clique is node i's "<cluster UUID>.<clique ID>" (the simulated fabric's
// cluster, as a gb200 node reports it).
func (r *ComputeDomainRun) clique(i int) string {
	id := sim.DefaultFabricCliqueID
	if r.CliqueSize > 0 {
		id += i / r.CliqueSize
	}
	return fmt.Sprintf("%s.%d", sim.DefaultFabricClusterUUID, id)
}

// ComputeDomainResult is what a ComputeDomain run measured. Times are in
// seconds from the domain's creation; -1 where it did not happen.
type ComputeDomainResult struct {
	Pods, Bound int
	// NumNodes is the domain's spec.numNodes; Nodes are the nodes in its
	// status when it turned Ready, PodNodes the nodes of the bound pods.
	NumNodes, Nodes, PodNodes int
	Ready                     bool
	// Seconds is until the domain was Ready and every pod bound.
	Seconds float64
	// Milestones: the first and last workload pod bound; the last node
	// labelled for the domain; the last daemon pod created, bound, marked
	// Running, marked Ready; the status listing every node, with every
	// node Ready; the domain Ready.
	FirstBound, LastBound, Labelled, DaemonsCreated, DaemonsBound, DaemonsRunning, DaemonsReady, Listed, ListedReady, DomainReady float64
	// The controller's counters until the domain was Ready and bound:
	// ComputeDomain status writes (ok, and conflicts), node label patches
	// for the domain (the clique labels of every node, written before the
	// domain, are CliquePatches), reconciles.
	StatusWrites, StatusConflicts, NodePatches, CliquePatches, Reconciles float64
	// StatusWritesAfter are status writes from Ready until the clean-up
	// began (after the allocation check): none while nothing changes.
	StatusWritesAfter float64
	SchedulerQuantiles
	// Violations are over-commitments of GPUs found once every pod was bound.
	Violations []string
	// CleanupSeconds is from the pods' and the domain's deletion until the
	// domain, its daemons, its claims and its node labels were gone;
	// Released says that they went.
	CleanupSeconds float64
	Released       bool
}

// computeDomainClasses are the chart's DeviceClasses of the ComputeDomain
// driver (deployments/helm/gpu-dra-driver/templates/compute-domains.yaml).
func computeDomainClasses() []*resourceapi.DeviceClass {
	cdAttr := func(name string) string {
		return fmt.Sprintf("device.attributes[%q].%s", names.ComputeDomainDriverName, name)
	}
	class := func(name, expr string) *resourceapi.DeviceClass {
		return &resourceapi.DeviceClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: resourceapi.DeviceClassSpec{Selectors: selector(expr)}}
	}
	driver := fmt.Sprintf("device.driver == %q", names.ComputeDomainDriverName)
	return []*resourceapi.DeviceClass{
		class(names.ChannelDeviceClass, fmt.Sprintf("%s && %s == %q && %s == 0", driver, cdAttr(names.AttrType), names.TypeChannel, cdAttr(names.AttrID))),
		class(names.DomainDaemonDeviceClass, fmt.Sprintf("%s && %s == %q", driver, cdAttr(names.AttrType), names.TypeDomainDaemon)),
	}
}

// setupComputeDomain checks that the ComputeDomain CRD is served, and
// makes the driver's namespace and the driver's DeviceClasses.
func (h *harness) setupComputeDomain(ctx context.Context) error {
	cd := h.cfg.ComputeDomain
	if _, err := cd.Dynamic.Resource(cdv1.Resource).Namespace(Namespace).List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
		return fmt.Errorf("list ComputeDomains (is the CRD installed? test/scale/compute-domain.sh applies the chart's): %w", err)
	}
	_, err := h.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DriverNamespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", DriverNamespace, err)
	}
	for _, c := range computeDomainClasses() {
		_, err := h.client.ResourceV1().DeviceClasses().Create(ctx, c, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create device class %s: %w", c.Name, err)
		}
	}
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, h.cfg.Timeout, true, func(ctx context.Context) (bool, error) {
		_, err := h.client.CoreV1().ServiceAccounts(DriverNamespace).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
}

// runComputeDomain runs the controller, waits until it labelled every
// node with its clique, then creates the domain and its pods at once and
// measures until the domain is Ready and every pod bound; then it deletes
// both and measures the clean-up.
func (h *harness) runComputeDomain(ctx context.Context, timeout time.Duration) (ComputeDomainResult, error) {
	logger := klog.FromContext(ctx)
	run := h.cfg.ComputeDomain
	numNodes := run.NumNodes
	res := ComputeDomainResult{Pods: run.Pods, NumNodes: numNodes}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	reg := prometheus.NewRegistry()
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: run.Client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	ctrl, err := controller.New(run.Client, run.Dynamic, controller.Options{
		Daemon:            templates.DaemonOptions{Namespace: DriverNamespace, Image: PauseImage},
		StatusMinInterval: run.StatusMinInterval,
		Workers:           run.Workers,
		Recorder:          broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "compute-domain-controller"}),
		Metrics:           controller.NewMetrics(reg),
	})
	if err != nil {
		return res, err
	}
	ctrlDone := make(chan error, 1)
	go func() {
		ctrlDone <- ctrl.Run(klog.NewContext(ctx, klog.LoggerWithName(logger, "compute-domain-controller")))
	}()
	defer func() {
		cancel()
		if err := <-ctrlDone; err != nil {
			logger.Error(err, "ComputeDomain controller")
		}
	}()

	tl := newTimeline(time.Now())
	nodeIndex := map[string]int{}
	for i, p := range h.order {
		nodeIndex[p.node] = i
	}
	keeper := &daemonKeeper{client: h.client, namespace: DriverNamespace, ready: run.DaemonReady, probe: run.ProbePeriod, nodeIndex: nodeIndex, tl: tl}
	if err := keeper.start(ctx); err != nil {
		return res, err
	}
	cliqued, err := h.watchNodeLabels(ctx, tl)
	if err != nil {
		return res, err
	}
	// The controller labels every node with its clique first.
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		return cliqued() >= len(h.order), nil
	}); err != nil {
		return res, fmt.Errorf("wait for the controller to label %d nodes with their clique: %w", len(h.order), err)
	}
	before := counters(reg)
	res.CliquePatches = before.nodePatches
	mark, err := h.schedulerHistograms(ctx)
	if err != nil {
		return res, err
	}

	// The domain and its pods, at once, as a user applies a job's manifest.
	cd := &cdv1.ComputeDomain{
		ObjectMeta: metav1.ObjectMeta{Name: domainName, Namespace: Namespace},
		Spec: cdv1.ComputeDomainSpec{NumNodes: numNodes, Channel: &cdv1.ComputeDomainChannelSpec{
			ResourceClaimTemplate: cdv1.ComputeDomainResourceClaimTemplate{Name: domainTemplate},
		}},
	}
	obj, err := cdv1.ToUnstructured(cd)
	if err != nil {
		return res, err
	}
	start := time.Now()
	tl.restart(start)
	domains := run.Dynamic.Resource(cdv1.Resource).Namespace(Namespace)
	if _, err := domains.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		return res, fmt.Errorf("create ComputeDomain %s/%s: %w", Namespace, domainName, err)
	}
	var readyNodes atomic.Int64
	if err := watchDomain(ctx, run.Dynamic, numNodes, tl, keeper, &readyNodes); err != nil {
		return res, err
	}
	podNames := make([]string, run.Pods)
	for i := range podNames {
		podNames[i] = fmt.Sprintf("%s%d", domainPodPrefix, i)
	}
	if err := parallel(ctx, podNames, func(ctx context.Context, name string) error {
		if _, err := h.client.CoreV1().Pods(Namespace).Create(ctx, workerPod(name), metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create pod %s: %w", name, err)
		}
		return nil
	}); err != nil {
		return res, err
	}
	logger.Info("ComputeDomain and its pods created", "pods", run.Pods, "seconds", time.Since(start).Seconds())

	done := func() bool {
		return tl.has(evDomainReady, domainReadyKey) && len(h.pods.bound(podNames)) == run.Pods
	}
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, timeout, true, func(context.Context) (bool, error) { return done(), nil })
	if err != nil && !wait.Interrupted(err) {
		return res, err
	}
	end := time.Now()
	at := counters(reg)
	for _, p := range podNames {
		if t, ok := h.pods.boundTime(p); ok {
			tl.mark(evBound, p, t)
		}
	}
	nodes := map[string]bool{}
	pods, err := h.client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "workload=compute-domain"})
	if err != nil {
		return res, fmt.Errorf("list workload pods: %w", err)
	}
	for _, p := range pods.Items {
		if p.Spec.NodeName != "" {
			nodes[p.Spec.NodeName] = true
		}
	}
	n := len(nodes)
	res.Bound, res.PodNodes, res.Ready = tl.count(evBound), n, tl.has(evDomainReady, domainReadyKey)
	res.Nodes = int(readyNodes.Load())
	if res.Ready && res.Bound == run.Pods {
		res.Seconds = end.Sub(start).Seconds()
	} else {
		res.Seconds = -1
		logger.Info("ComputeDomain run timed out", "ready", res.Ready, "bound", res.Bound, "pods", run.Pods)
	}
	res.FirstBound, res.LastBound = tl.first(evBound, 0), tl.last(evBound, run.Pods)
	res.Labelled = tl.last(evLabelled, n)
	res.DaemonsCreated = tl.last(evDaemonCreated, n)
	res.DaemonsBound = tl.last(evDaemonBound, n)
	res.DaemonsRunning = tl.last(evDaemonRunning, n)
	res.DaemonsReady = tl.last(evDaemonReady, n)
	res.Listed = tl.last(evListed, n)
	res.ListedReady = tl.last(evListedReady, n)
	res.DomainReady = tl.last(evDomainReady, 1)
	res.StatusWrites = at.statusWrites - before.statusWrites
	res.StatusConflicts = at.statusConflicts - before.statusConflicts
	res.NodePatches = at.nodePatches - before.nodePatches
	res.Reconciles = at.reconciles - before.reconciles
	if res.SchedulerQuantiles, err = h.schedulerQuantilesSince(ctx, mark); err != nil {
		return res, err
	}
	if res.Violations, err = h.checkAllocations(ctx); err != nil {
		return res, err
	}
	res.StatusWritesAfter = counters(reg).statusWrites - at.statusWrites
	logger.Info("ComputeDomain measured", "seconds", res.Seconds, "ready", res.Ready, "bound", res.Bound,
		"statusWrites", res.StatusWrites, "nodePatches", res.NodePatches)

	// Clean-up: the job and the domain go at once.
	cleanup := time.Now()
	if err := domains.Delete(ctx, domainName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return res, fmt.Errorf("delete ComputeDomain %s/%s: %w", Namespace, domainName, err)
	}
	if res.Released, err = h.finish(ctx, podNames, timeout); err != nil {
		return res, err
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		return h.domainGone(ctx, domains)
	})
	switch {
	case wait.Interrupted(err):
		res.Released = false
	case err != nil:
		return res, err
	}
	res.CleanupSeconds = time.Since(cleanup).Seconds()
	return res, nil
}

// domainGone reports whether the domain, its daemon pods and claims, and
// every node's domain label are gone.
func (h *harness) domainGone(ctx context.Context, domains dynamic.ResourceInterface) (bool, error) {
	if _, err := domains.Get(ctx, domainName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		return false, nil
	}
	pods, err := h.client.CoreV1().Pods(DriverNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return false, fmt.Errorf("list daemon pods: %w", err)
	}
	claims, err := h.client.ResourceV1().ResourceClaims(DriverNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return false, fmt.Errorf("list daemon claims: %w", err)
	}
	if len(pods.Items)+len(claims.Items) > 0 {
		return false, nil
	}
	nodes, err := h.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: FleetLabel})
	if err != nil {
		return false, fmt.Errorf("list nodes: %w", err)
	}
	for _, n := range nodes.Items {
		for k := range n.Labels {
			if _, ok := nodelabels.DomainOfLabel(k); ok {
				return false, nil
			}
		}
	}
	return true, nil
}

// workerPod is a workload pod of the domain: the domain's channel and a
// whole GPU.
func workerPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: Namespace, Labels: map[string]string{"workload": "compute-domain"}},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken:  ptr.To(false),
			TerminationGracePeriodSeconds: ptr.To(int64(0)),
			Containers: []corev1.Container{{
				Name: "c", Image: PauseImage,
				Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: channelClaim}, {Name: "gpu"}}},
			}},
			ResourceClaims: []corev1.PodResourceClaim{
				{Name: channelClaim, ResourceClaimTemplateName: ptr.To(domainTemplate)},
				{Name: "gpu", ResourceClaimTemplateName: ptr.To("whole")},
			},
		},
	}
}

// watchNodeLabels records when each node got a domain label; the function
// it returns counts the nodes with a clique label.
func (h *harness) watchNodeLabels(ctx context.Context, tl *timeline) (func() int, error) {
	factory := informers.NewSharedInformerFactoryWithOptions(h.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = FleetLabel }))
	inf := factory.Core().V1().Nodes().Informer()
	handle := func(obj any) {
		node, ok := obj.(*corev1.Node)
		if !ok {
			return
		}
		now := time.Now()
		if _, ok := node.Labels[names.GPUCliqueLabel]; ok {
			tl.mark("cliqued", node.Name, now)
		}
		for k := range node.Labels {
			if _, ok := nodelabels.DomainOfLabel(k); ok {
				tl.mark(evLabelled, node.Name, now)
			}
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: handle, UpdateFunc: func(_, obj any) { handle(obj) }}); err != nil {
		return nil, fmt.Errorf("watch nodes: %w", err)
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil, fmt.Errorf("watch nodes: %w", ctx.Err())
	}
	return func() int { return tl.count("cliqued") }, nil
}

// watchDomain records when nodes appear in the domain's status, turn
// Ready there, and when the domain is Ready with numNodes nodes; it tells
// the daemon keeper which nodes are listed.
func watchDomain(ctx context.Context, dyn dynamic.Interface, numNodes int, tl *timeline, keeper *daemonKeeper, readyNodes *atomic.Int64) error {
	factory := dynamicinformer.NewFilteredDynamicSharedInformerFactory(dyn, 0, Namespace, nil)
	inf := factory.ForResource(cdv1.Resource).Informer()
	handle := func(obj any) {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok || u.GetName() != domainName {
			return
		}
		cd, err := cdv1.FromUnstructured(u)
		if err != nil {
			return
		}
		now := time.Now()
		var listed []string
		for _, n := range cd.Status.Nodes {
			if n == nil {
				continue
			}
			tl.mark(evListed, n.Name, now)
			if n.Status == cdv1.StatusReady {
				tl.mark(evListedReady, n.Name, now)
			}
			listed = append(listed, n.Name)
		}
		if cd.Status.Status == cdv1.StatusReady && len(cd.Status.Nodes) >= numNodes && !tl.has(evDomainReady, domainReadyKey) {
			readyNodes.Store(int64(len(cd.Status.Nodes)))
			tl.mark(evDomainReady, domainReadyKey, now)
		}
		keeper.listed(ctx, listed)
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: handle, UpdateFunc: func(_, obj any) { handle(obj) }}); err != nil {
		return fmt.Errorf("watch ComputeDomains: %w", err)
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("watch ComputeDomains: %w", ctx.Err())
	}
	return nil
}

// controllerCounters are the controller's counters at one moment.
type controllerCounters struct {
	statusWrites, statusConflicts, nodePatches, reconciles float64
}

// counters reads the controller's counters from its registry.
func counters(reg prometheus.Gatherer) controllerCounters {
	var c controllerCounters
	families, err := reg.Gather()
	if err != nil {
		return c
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			result := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" {
					result = l.GetValue()
				}
			}
			v := m.GetCounter().GetValue()
			switch {
			case f.GetName() == "compute_domain_controller_status_writes_total" && result == "ok":
				c.statusWrites += v
			case f.GetName() == "compute_domain_controller_status_writes_total" && result == "conflict":
				c.statusConflicts += v
			case f.GetName() == "compute_domain_controller_node_label_patches_total" && result == "ok":
				c.nodePatches += v
			case strings.HasPrefix(f.GetName(), "compute_domain_controller_reconciles_total"):
				c.reconciles += v
			}
		}
	}
	return c
}
