package controller

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	kubeinformers "k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	cdv1 "github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/controller/nodelabels"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// Index names.
const (
	byUID        = "uid"        // ComputeDomains by UID
	byDomain     = "domain"     // claims, pods, templates, daemon sets by domain UID
	byNode       = "node"       // claims, slices, pods by node name
	byDomainNode = "domainNode" // nodes by the domain UIDs of their labels
)

// informers are the controller's caches:
//   - ComputeDomains, cluster-wide (dynamic client);
//   - ResourceClaims, ResourceSlices and Nodes, cluster-wide;
//   - ResourceClaimTemplates carrying names.ComputeDomainLabel,
//     cluster-wide (workload templates live in the domains' namespaces);
//   - daemon Pods and DaemonSets carrying names.ComputeDomainLabel, in the
//     driver's namespace only.
type informers struct {
	dynFactory dynamicinformer.DynamicSharedInformerFactory
	all        kubeinformers.SharedInformerFactory
	labelled   kubeinformers.SharedInformerFactory
	driverNS   kubeinformers.SharedInformerFactory
	domains    cache.SharedIndexInformer
	claims     cache.SharedIndexInformer
	slices     cache.SharedIndexInformer
	nodes      cache.SharedIndexInformer
	// nodeView (made at start) is the nodes as the informer has them, or as the
	// controller's own label patches returned them when the informer has
	// not caught up yet: a node synced twice in quick succession is then
	// not patched twice with the same labels.
	nodeView   cache.MutationCache
	templates  cache.SharedIndexInformer
	pods       cache.SharedIndexInformer
	daemonSets cache.SharedIndexInformer
	// policies is nil unless the controller makes NetworkPolicies.
	policies     cache.SharedIndexInformer
	synced       []namedSynced
	enqueue      func(key)
	driverNSName string
}

func newInformers(kube kubernetes.Interface, dyn dynamic.Interface, namespace string, networkPolicies bool, enqueue func(key)) (*informers, error) {
	labelled := func(o *metav1.ListOptions) { o.LabelSelector = names.ComputeDomainLabel }
	inf := &informers{
		dynFactory:   dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0),
		all:          kubeinformers.NewSharedInformerFactory(kube, 0),
		labelled:     kubeinformers.NewSharedInformerFactoryWithOptions(kube, 0, kubeinformers.WithTweakListOptions(labelled)),
		driverNS:     kubeinformers.NewSharedInformerFactoryWithOptions(kube, 0, kubeinformers.WithNamespace(namespace), kubeinformers.WithTweakListOptions(labelled)),
		enqueue:      enqueue,
		driverNSName: namespace,
	}
	inf.domains = inf.dynFactory.ForResource(cdv1.Resource).Informer()
	inf.claims = inf.all.Resource().V1().ResourceClaims().Informer()
	inf.slices = inf.all.Resource().V1().ResourceSlices().Informer()
	inf.nodes = inf.all.Core().V1().Nodes().Informer()
	inf.templates = inf.labelled.Resource().V1().ResourceClaimTemplates().Informer()
	inf.pods = inf.driverNS.Core().V1().Pods().Informer()
	inf.daemonSets = inf.driverNS.Apps().V1().DaemonSets().Informer()
	if networkPolicies {
		inf.policies = inf.driverNS.Networking().V1().NetworkPolicies().Informer()
	}

	type indexed struct {
		informer cache.SharedIndexInformer
		indexers cache.Indexers
	}
	indexes := []indexed{
		{inf.domains, cache.Indexers{byUID: domainUIDIndex}},
		{inf.claims, cache.Indexers{byDomain: claimDomainIndex, byNode: claimNodeIndex}},
		{inf.slices, cache.Indexers{byNode: sliceNodeIndex}},
		{inf.nodes, cache.Indexers{byDomainNode: nodeDomainIndex}},
		{inf.templates, cache.Indexers{byDomain: labelDomainIndex}},
		{inf.pods, cache.Indexers{byDomain: labelDomainIndex, byNode: podNodeIndex}},
		{inf.daemonSets, cache.Indexers{byDomain: labelDomainIndex}},
	}
	if inf.policies != nil {
		indexes = append(indexes, indexed{inf.policies, cache.Indexers{byDomain: labelDomainIndex}})
	}
	for _, i := range indexes {
		if err := i.informer.AddIndexers(i.indexers); err != nil {
			return nil, fmt.Errorf("add indexers: %w", err)
		}
	}

	type handled struct {
		what     string
		informer cache.SharedIndexInformer
		handle   func(obj any)
	}
	handlers := []handled{
		{"computedomains", inf.domains, inf.domainChanged},
		{"resourceclaims", inf.claims, inf.claimChanged},
		{"resourceslices", inf.slices, inf.sliceChanged},
		{"nodes", inf.nodes, inf.nodeChanged},
		{"resourceclaimtemplates", inf.templates, inf.labelledChanged},
		{"pods in " + namespace, inf.pods, inf.labelledChanged},
		{"daemonsets in " + namespace, inf.daemonSets, inf.labelledChanged},
	}
	if inf.policies != nil {
		handlers = append(handlers, handled{"networkpolicies in " + namespace, inf.policies, inf.labelledChanged})
	}
	for _, h := range handlers {
		handle := h.handle
		reg, err := h.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: handle,
			UpdateFunc: func(old, cur any) {
				handle(old)
				handle(cur)
			},
			DeleteFunc: func(obj any) {
				if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
					obj = d.Obj
				}
				handle(obj)
			},
		})
		if err != nil {
			return nil, fmt.Errorf("add event handler: %w", err)
		}
		inf.synced = append(inf.synced, namedSynced{h.what, reg.HasSynced})
	}
	return inf, nil
}

func (inf *informers) start(ctx context.Context) {
	inf.nodeView = cache.NewIntegerResourceVersionMutationCacheWithOptions(klog.FromContext(ctx), inf.nodes.GetStore(), cache.MutationCacheOptions{
		Indexer: inf.nodes.GetIndexer(), TTL: time.Minute, MaxCacheSize: 4096,
	})
	inf.dynFactory.Start(ctx.Done())
	inf.all.Start(ctx.Done())
	inf.labelled.Start(ctx.Done())
	inf.driverNS.Start(ctx.Done())
}

// namedSynced is an informer's HasSynced, with what it lists.
type namedSynced struct {
	what   string
	synced cache.InformerSynced
}

// waitForSync waits until every cache is filled or ctx is done, and
// returns what it lists of each cache not filled.
func (inf *informers) waitForSync(ctx context.Context) []string {
	fns := make([]cache.InformerSynced, 0, len(inf.synced))
	for _, s := range inf.synced {
		fns = append(fns, s.synced)
	}
	if cache.WaitForCacheSync(ctx.Done(), fns...) {
		return nil
	}
	var missing []string
	for _, s := range inf.synced {
		if !s.synced() {
			missing = append(missing, s.what)
		}
	}
	return missing
}

// Index functions. Each tolerates objects of another type (returns none).

func domainUIDIndex(obj any) ([]string, error) {
	if m, err := metaOf(obj); err == nil {
		return []string{string(m.GetUID())}, nil
	}
	return nil, nil
}

func claimDomainIndex(obj any) ([]string, error) {
	claim, ok := obj.(*resourcev1.ResourceClaim)
	if !ok {
		return nil, nil
	}
	var out []string
	for _, p := range nodelabels.Placements(claim) {
		out = append(out, p.DomainUID)
	}
	return out, nil
}

func claimNodeIndex(obj any) ([]string, error) {
	claim, ok := obj.(*resourcev1.ResourceClaim)
	if !ok {
		return nil, nil
	}
	var out []string
	for _, p := range nodelabels.Placements(claim) {
		out = append(out, p.Node)
	}
	return out, nil
}

func sliceNodeIndex(obj any) ([]string, error) {
	slice, ok := obj.(*resourcev1.ResourceSlice)
	if !ok {
		return nil, nil
	}
	if node, _, ok := nodelabels.SliceClique(slice); ok {
		return []string{node}, nil
	}
	return nil, nil
}

func nodeDomainIndex(obj any) ([]string, error) {
	node, ok := obj.(*corev1.Node)
	if !ok {
		return nil, nil
	}
	var out []string
	for k := range node.Labels {
		if uid, ok := nodelabels.DomainOfLabel(k); ok {
			out = append(out, uid)
		}
	}
	return out, nil
}

func labelDomainIndex(obj any) ([]string, error) {
	m, err := metaOf(obj)
	if err != nil {
		return nil, nil
	}
	if uid, ok := m.GetLabels()[names.ComputeDomainLabel]; ok && uid != "" {
		return []string{uid}, nil
	}
	return nil, nil
}

func podNodeIndex(obj any) ([]string, error) {
	if pod, ok := obj.(*corev1.Pod); ok && pod.Spec.NodeName != "" {
		return []string{pod.Spec.NodeName}, nil
	}
	return nil, nil
}

func metaOf(obj any) (metav1.Object, error) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no object metadata", obj)
	}
	return m, nil
}

// Event handlers: each maps an object to the work items it concerns.

// domainChanged: the domain itself, and every node whose labels may follow
// it (nodes with its claims or its label).
func (inf *informers) domainChanged(obj any) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	inf.enqueue(key{kind: kindDomain, namespace: u.GetNamespace(), name: u.GetName()})
	inf.enqueueDomainNodes(string(u.GetUID()))
}

func (inf *informers) enqueueDomainNodes(uid string) {
	claims, _ := inf.claims.GetIndexer().ByIndex(byDomain, uid)
	for _, o := range claims {
		for _, p := range nodelabels.Placements(o.(*resourcev1.ResourceClaim)) {
			if p.DomainUID == uid {
				inf.enqueue(key{kind: kindNode, name: p.Node})
			}
		}
	}
	nodes, _ := inf.nodes.GetIndexer().ByIndex(byDomainNode, uid)
	for _, o := range nodes {
		inf.enqueue(key{kind: kindNode, name: o.(*corev1.Node).Name})
	}
}

func (inf *informers) claimChanged(obj any) {
	claim, ok := obj.(*resourcev1.ResourceClaim)
	if !ok {
		return
	}
	for _, p := range nodelabels.Placements(claim) {
		inf.enqueue(key{kind: kindNode, name: p.Node})
	}
}

// sliceChanged: the slice's node (clique label) and the domains with a
// daemon there (their status names the node's clique).
func (inf *informers) sliceChanged(obj any) {
	slice, ok := obj.(*resourcev1.ResourceSlice)
	if !ok {
		return
	}
	node, _, ok := nodelabels.SliceClique(slice)
	if !ok {
		return
	}
	inf.enqueue(key{kind: kindNode, name: node})
	pods, _ := inf.pods.GetIndexer().ByIndex(byNode, node)
	for _, o := range pods {
		inf.enqueueByUID(o.(*corev1.Pod).Labels[names.ComputeDomainLabel])
	}
}

func (inf *informers) nodeChanged(obj any) {
	if node, ok := obj.(*corev1.Node); ok {
		inf.enqueue(key{kind: kindNode, name: node.Name})
	}
}

// labelledChanged: a template, daemon set or daemon pod concerns the
// domain its label names, or, when no such domain is cached, the orphan
// clean-up of that UID.
func (inf *informers) labelledChanged(obj any) {
	m, err := metaOf(obj)
	if err != nil {
		return
	}
	inf.enqueueByUID(m.GetLabels()[names.ComputeDomainLabel])
}

func (inf *informers) enqueueByUID(uid string) {
	if !nodelabels.ValidDomainUID(uid) {
		return
	}
	objs, _ := inf.domains.GetIndexer().ByIndex(byUID, uid)
	if len(objs) == 0 {
		inf.enqueue(key{kind: kindOrphan, name: uid})
		return
	}
	for _, o := range objs {
		if m, err := metaOf(o); err == nil {
			inf.enqueue(key{kind: kindDomain, namespace: m.GetNamespace(), name: m.GetName()})
		}
	}
}

// Typed reads from the caches.

func (inf *informers) domainByUID(uid string) (*unstructured.Unstructured, bool) {
	objs, _ := inf.domains.GetIndexer().ByIndex(byUID, uid)
	for _, o := range objs {
		if u, ok := o.(*unstructured.Unstructured); ok {
			return u, true
		}
	}
	return nil, false
}

func (inf *informers) domain(namespace, name string) (*unstructured.Unstructured, bool) {
	o, ok, _ := inf.domains.GetIndexer().GetByKey(namespace + "/" + name)
	if !ok {
		return nil, false
	}
	u, ok := o.(*unstructured.Unstructured)
	return u, ok
}

func (inf *informers) claimsOnNode(node string) []*resourcev1.ResourceClaim {
	objs, _ := inf.claims.GetIndexer().ByIndex(byNode, node)
	out := make([]*resourcev1.ResourceClaim, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.(*resourcev1.ResourceClaim))
	}
	return out
}

func (inf *informers) slicesOfNode(node string) []*resourcev1.ResourceSlice {
	objs, _ := inf.slices.GetIndexer().ByIndex(byNode, node)
	out := make([]*resourcev1.ResourceSlice, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.(*resourcev1.ResourceSlice))
	}
	return out
}

func (inf *informers) node(name string) (*corev1.Node, bool) {
	o, ok, _ := inf.nodeView.GetByKey(name)
	if !ok {
		return nil, false
	}
	n, ok := o.(*corev1.Node)
	return n, ok
}

// patchedNode records a node as the controller's own patch returned it,
// until the informer has it (see nodeView).
func (inf *informers) patchedNode(n *corev1.Node) { inf.nodeView.Mutation(n) }

func (inf *informers) nodesLabelled(uid string) []*corev1.Node {
	objs, _ := inf.nodeView.ByIndex(byDomainNode, uid)
	out := make([]*corev1.Node, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.(*corev1.Node))
	}
	return out
}

func (inf *informers) templatesOf(uid string) []*resourcev1.ResourceClaimTemplate {
	objs, _ := inf.templates.GetIndexer().ByIndex(byDomain, uid)
	out := make([]*resourcev1.ResourceClaimTemplate, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.(*resourcev1.ResourceClaimTemplate))
	}
	return out
}

func (inf *informers) template(namespace, name string) (*resourcev1.ResourceClaimTemplate, bool) {
	o, ok, _ := inf.templates.GetIndexer().GetByKey(namespace + "/" + name)
	if !ok {
		return nil, false
	}
	t, ok := o.(*resourcev1.ResourceClaimTemplate)
	return t, ok
}

func (inf *informers) podsOf(uid string) []*corev1.Pod {
	objs, _ := inf.pods.GetIndexer().ByIndex(byDomain, uid)
	out := make([]*corev1.Pod, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.(*corev1.Pod))
	}
	return out
}

func (inf *informers) daemonSetsOf(uid string) []*appsv1.DaemonSet {
	objs, _ := inf.daemonSets.GetIndexer().ByIndex(byDomain, uid)
	out := make([]*appsv1.DaemonSet, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.(*appsv1.DaemonSet))
	}
	return out
}

// policiesOf are the domain's NetworkPolicies (none when the controller
// makes none).
func (inf *informers) policiesOf(uid string) []*networkingv1.NetworkPolicy {
	if inf.policies == nil {
		return nil
	}
	objs, _ := inf.policies.GetIndexer().ByIndex(byDomain, uid)
	out := make([]*networkingv1.NetworkPolicy, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.(*networkingv1.NetworkPolicy))
	}
	return out
}

// cliqueOf is the clique ID the node's compute-domain.nvidia.com slices
// publish, "" if none or if they disagree.
func (inf *informers) cliqueOf(node string) string {
	clique, _ := inf.nodeClique(node)
	return clique
}

func (inf *informers) nodeClique(node string) (clique string, haveSlice bool) {
	for i, s := range inf.slicesOfNode(node) {
		_, c, ok := nodelabels.SliceClique(s)
		if !ok {
			continue
		}
		haveSlice = true
		if c == "" {
			continue
		}
		if clique != "" && c != clique && i > 0 {
			return "", true
		}
		clique = c
	}
	return clique, haveSlice
}
