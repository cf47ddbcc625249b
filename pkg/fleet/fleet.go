// Package fleet is the scale harness: it runs a fleet of simulated GPU
// nodes against a real control plane (test/cluster/up.sh without kubelet)
// and measures what the driver's ResourceSlices cost there.
//
// Every node's pool is built and published by the plugin's own code
// (devicemodel.Build and publish.Publisher, one per node, all in this
// process), so the bytes and the update pattern are the plugin's. The
// harness makes the Node objects and keeps them Ready (a Ready condition
// and a renewed Lease, what the node lifecycle controller reads), plays the
// kubelet's part for pods (bound pods are marked Running, then Succeeded,
// then deleted), and lets the real scheduler and resource claim controller
// do the rest: allocate, bind, release.
//
// A ComputeDomain run (Config.ComputeDomain, computedomain.go) adds each
// node's ComputeDomain pool (the node plugin's own slices), runs the
// ComputeDomain controller in this process, and plays the kubelet and the
// IMEX daemon for the domain's daemon pods (daemons.go).
package fleet

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/fleet/peer"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// Config is one run of the harness.
type Config struct {
	// Client reaches the API server as its admin.
	Client kubernetes.Interface
	// Token is the admin's bearer token, for the scheduler's metrics.
	Token string
	// RunDir is the cluster's run directory (PID files).
	RunDir string
	// Nodes is the fleet's size; node i has Models[i % len(Models)].
	Nodes  int
	Models []string
	// Labels are every node's labels, e.g. names.DeviceKindsLabel: the
	// plugin's knob of what a node offers.
	Labels map[string]string
	// MIGNodes, when positive, is how many of the nodes offer MIG: they
	// are spread evenly (every tenth for 100 of 1000) and carry MIGLabels
	// instead of Labels.
	MIGNodes  int
	MIGLabels map[string]string
	// Steer applies docs/fleet.md's recipe to a fleet with MIGNodes: the
	// MIG nodes carry the label and NoSchedule taint SteerKey, and pods of
	// MIG workloads its toleration and a required node affinity; every
	// burst then checks that its pods went where the recipe says.
	Steer bool
	// SharedGPUs is the plugin's option of the same name.
	SharedGPUs bool
	// Peer publishes, on every node, the pool NVIDIA's driver publishes
	// for the same hardware (package peer) instead of ours, with NVIDIA's
	// DeviceClasses; Labels and SharedGPUs then do not apply, and the
	// workloads are those NVIDIA's driver serves (not "share").
	Peer bool
	// Inventories reads a simulated node's inventory.
	Inventories Inventories
	// ComputeDomain, if set, is a ComputeDomain run: every node also
	// publishes the ComputeDomain driver's pool, and the run comes first,
	// before the bursts.
	ComputeDomain *ComputeDomainRun
	// Bursts are the workloads run one after the other, with their pods
	// per node.
	Bursts []Burst
	// Churns are steady traffic, run one after the other after the
	// bursts; ChurnCheck is how often each checks the allocations while
	// its pods run.
	Churns     []Churn
	ChurnCheck time.Duration
	// LeaseRenew is how often each node renews its Lease.
	LeaseRenew time.Duration
	// Settle is how long the harness waits after publishing before it
	// reads memory, so that the scheduler has taken in every slice.
	Settle time.Duration
	// Timeout bounds each wait (all slices published, a burst bound, its
	// claims released).
	Timeout time.Duration
}

// Burst is a workload and how many pods of it, per node of the fleet.
type Burst struct {
	Workload    string
	PodsPerNode float64
}

// Report is what a run measured.
type Report struct {
	Nodes  int
	Models []string
	Labels map[string]string
	// MIGNodes, MIGLabels and Steer are the run's, if it had MIG nodes.
	MIGNodes  int               `json:",omitempty"`
	MIGLabels map[string]string `json:",omitempty"`
	Steer     bool              `json:",omitempty"`
	// Peer is NVIDIA's driver's release whose pool the fleet published;
	// empty for ours.
	Peer string `json:",omitempty"`
	// Per node, averaged over the fleet.
	SlicesPerNode, DevicesPerNode float64
	// SliceBytesPerNode is the JSON size of a node's ResourceSlices.
	SliceBytesPerNode float64
	// StartupSeconds is from the first publisher started to every slice
	// of the fleet created.
	StartupSeconds float64
	// RSSBefore is each process's resident memory with the nodes and no
	// slices, RSSAfter with every slice published and settled, RSSEnd
	// after the bursts; RSSPerNode is (RSSAfter-RSSBefore)/Nodes.
	RSSBefore, RSSAfter, RSSEnd, RSSPerNode map[string]int64
	// HarnessRSS is this process's resident memory at the end: the fleet's
	// publishers, their informers and models.
	HarnessRSS int64
	// EtcdDBBytes is etcd's database in use after publishing.
	EtcdDBBytes float64
	// Taint is the write traffic of one health taint on one GPU.
	Taint TaintTraffic
	// ComputeDomain is the ComputeDomain run's, if there was one.
	ComputeDomain *ComputeDomainResult `json:",omitempty"`
	// Bursts in the order they ran.
	Bursts []BurstResult
	// Churns in the order they ran.
	Churns []ChurnResult
}

type harness struct {
	cfg     Config
	client  kubernetes.Interface
	metrics *metricsClient
	pools   map[string]*pool
	order   []*pool
	pods    *podTracker
	bursts  int
	// migNodes are the nodes that offer MIG (Config.MIGNodes).
	migNodes map[string]bool
}

// Run runs the fleet: nodes, their pools, the bursts; it deletes the
// fleet before it returns.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	logger := klog.FromContext(ctx)
	h := &harness{cfg: cfg, client: cfg.Client, metrics: newMetricsClient(cfg.Token), pools: map[string]*pool{}, migNodes: map[string]bool{}}
	rep := &Report{Nodes: cfg.Nodes, Models: cfg.Models, Labels: cfg.Labels}
	offer, err := devicemodel.ParseOffer(cfg.Labels)
	if err != nil {
		return nil, err
	}
	migOffer := offer
	if cfg.MIGNodes > 0 {
		if cfg.MIGNodes > cfg.Nodes {
			return nil, fmt.Errorf("%d MIG nodes in a fleet of %d", cfg.MIGNodes, cfg.Nodes)
		}
		if migOffer, err = devicemodel.ParseOffer(cfg.MIGLabels); err != nil {
			return nil, fmt.Errorf("the MIG nodes' labels: %w", err)
		}
		rep.MIGNodes, rep.MIGLabels, rep.Steer = cfg.MIGNodes, cfg.MIGLabels, cfg.Steer
	} else if cfg.Steer {
		return nil, errors.New("steering needs MIG nodes")
	}
	if cfg.Peer {
		if err := checkPeer(cfg); err != nil {
			return nil, err
		}
		rep.Peer = peer.Release
	}
	if err := h.setup(ctx); err != nil {
		return nil, err
	}
	defer func() {
		// The fleet goes even when the run failed or was interrupted.
		ctx := context.WithoutCancel(ctx)
		if err := deleteFleet(ctx, h.client); err != nil {
			logger.Error(err, "Delete the fleet")
		}
	}()

	// Nodes first, then their pools: the Node owns its slices.
	keeper := &nodeKeeper{client: h.client, renew: cfg.LeaseRenew}
	nodeNames := make([]string, cfg.Nodes)
	for i := range cfg.Nodes {
		nodeNames[i] = fmt.Sprintf("gpu-node-%04d", i)
		model := cfg.Models[i%len(cfg.Models)]
		inv, err := cfg.Inventories(ctx, model)
		if err != nil {
			return nil, fmt.Errorf("inventory of model %s: %w", model, err)
		}
		nodeOffer := offer
		if isMIGNode(i, cfg.Nodes, cfg.MIGNodes) {
			h.migNodes[nodeNames[i]] = true
			nodeOffer = migOffer
		}
		p, err := newPool(nodeNames[i], inv, nodeOffer, cfg.SharedGPUs, cfg.Peer)
		if err != nil {
			return nil, err
		}
		if cfg.ComputeDomain != nil {
			p.clique = cfg.ComputeDomain.clique(i)
		}
		h.pools[p.node] = p
		h.order = append(h.order, p)
	}
	// The MIG nodes' labels: their own, and the recipe's when steered.
	migLabels := maps.Clone(cfg.MIGLabels)
	if cfg.Steer {
		if migLabels == nil {
			migLabels = map[string]string{}
		}
		migLabels[SteerKey] = "true"
	}
	if err := parallel(ctx, nodeNames, func(ctx context.Context, name string) error {
		labels, migNode := cfg.Labels, h.migNodes[name]
		if migNode {
			labels = migLabels
		}
		_, err := keeper.create(ctx, name, labels, steerTaints(cfg.Steer, migNode))
		return err
	}); err != nil {
		return nil, err
	}
	aliveCtx, stopAlive := context.WithCancel(ctx)
	var alive sync.WaitGroup
	keeper.keepAlive(aliveCtx, nodeNames, &alive)
	defer func() { stopAlive(); alive.Wait() }()
	logger.Info("Fleet's nodes are up", "nodes", cfg.Nodes)

	if rep.RSSBefore, err = h.settledRSS(ctx); err != nil {
		return nil, err
	}
	var slices, devices, bytes, cdSlices int
	for _, p := range h.order {
		s, d := p.stats()
		slices += s
		devices += d
		b, err := p.bytes()
		if err != nil {
			return nil, err
		}
		bytes += b
		if p.clique != "" {
			cdSlices++ // the ComputeDomain driver's one slice
		}
	}
	n := float64(cfg.Nodes)
	rep.SlicesPerNode, rep.DevicesPerNode, rep.SliceBytesPerNode = float64(slices)/n, float64(devices)/n, float64(bytes)/n

	start := time.Now()
	// The publishers run on the run's context, not on parallel's.
	if err := parallel(ctx, nodeNames, func(_ context.Context, name string) error {
		return h.pools[name].start(ctx, h.client)
	}); err != nil {
		return nil, err
	}
	defer func() {
		for _, p := range h.order {
			p.stop()
		}
	}()
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, cfg.Timeout, true, func(context.Context) (bool, error) {
		var created int64
		for _, p := range h.order {
			created += p.created()
		}
		return created >= int64(slices+cdSlices), nil
	}); err != nil {
		return nil, fmt.Errorf("wait for %d slices to be published: %w", slices+cdSlices, err)
	}
	rep.StartupSeconds = time.Since(start).Seconds()
	logger.Info("Fleet's slices are published", "slices", slices, "seconds", rep.StartupSeconds)

	if rep.RSSAfter, err = h.settledRSS(ctx); err != nil {
		return nil, err
	}
	rep.RSSPerNode = map[string]int64{}
	for name, after := range rep.RSSAfter {
		rep.RSSPerNode[name] = (after - rep.RSSBefore[name]) / int64(cfg.Nodes)
	}
	if text, err := h.metrics.scrape(ctx, etcdMetricsURL); err == nil {
		rep.EtcdDBBytes, _ = gauge(text, "etcd_mvcc_db_total_size_in_use_in_bytes")
	}

	// A health taint is our publisher's traffic; the peer's is not modelled.
	if !cfg.Peer {
		if rep.Taint, err = h.taintTraffic(ctx, h.order[0]); err != nil {
			return nil, err
		}
	}

	if h.pods, err = newPodTracker(ctx, h.client); err != nil {
		return nil, err
	}
	if cfg.ComputeDomain != nil {
		res, err := h.runComputeDomain(ctx, cfg.Timeout)
		if err != nil {
			return nil, fmt.Errorf("ComputeDomain: %w", err)
		}
		rep.ComputeDomain = &res
	}
	for _, b := range cfg.Bursts {
		pods := int(b.PodsPerNode*n + 0.5)
		res, err := h.runBurst(ctx, b.Workload, pods, cfg.Timeout)
		if err != nil {
			return nil, fmt.Errorf("burst %s: %w", b.Workload, err)
		}
		rep.Bursts = append(rep.Bursts, res)
	}
	checkEvery := cfg.ChurnCheck
	if checkEvery <= 0 {
		checkEvery = 10 * time.Second
	}
	for _, c := range cfg.Churns {
		res, err := h.runChurn(ctx, c, checkEvery, cfg.Timeout)
		if err != nil {
			return nil, fmt.Errorf("churn %s: %w", MixString(c.Mix), err)
		}
		rep.Churns = append(rep.Churns, res)
	}
	if rep.RSSEnd, err = RSS(cfg.RunDir); err != nil {
		return nil, err
	}
	if status, err := os.ReadFile("/proc/self/status"); err == nil {
		rep.HarnessRSS, _ = vmRSS(string(status))
	}
	return rep, nil
}

// setup makes the namespace, the chart's DeviceClasses and the claim
// templates, and removes what an earlier, interrupted run left.
func (h *harness) setup(ctx context.Context) error {
	if err := deleteFleet(ctx, h.client); err != nil {
		return err
	}
	_, err := h.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", Namespace, err)
	}
	classes := deviceClasses()
	if h.cfg.Peer {
		classes = peer.DeviceClasses()
	}
	for _, c := range classes {
		_, err := h.client.ResourceV1().DeviceClasses().Create(ctx, c, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create device class %s: %w", c.Name, err)
		}
	}
	for _, w := range Workloads {
		if h.cfg.Peer && !PeerServes(w) {
			continue
		}
		t, err := template(w)
		if err != nil {
			return err
		}
		_, err = h.client.ResourceV1().ResourceClaimTemplates(Namespace).Create(ctx, t, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create claim template %s: %w", w, err)
		}
	}
	// Pods are admitted once the namespace's default service account exists.
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, h.cfg.Timeout, true, func(ctx context.Context) (bool, error) {
		_, err := h.client.CoreV1().ServiceAccounts(Namespace).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil || h.cfg.ComputeDomain == nil {
		return err
	}
	return h.setupComputeDomain(ctx)
}

// PeerServes reports whether NVIDIA's driver serves a workload: all but
// "share", whose device class is ours alone.
func PeerServes(workload string) bool { return workload != "share" }

// checkPeer refuses a peer run with what only our driver has: node
// labels, a ComputeDomain, workloads NVIDIA's driver does not serve.
func checkPeer(cfg Config) error {
	if len(cfg.Labels) > 0 || cfg.MIGNodes > 0 || cfg.ComputeDomain != nil {
		return errors.New("a peer fleet takes no node labels, no MIG nodes and no ComputeDomain")
	}
	for _, b := range cfg.Bursts {
		if !PeerServes(b.Workload) {
			return fmt.Errorf("a peer fleet cannot run burst %s: NVIDIA's driver has no such class", b.Workload)
		}
	}
	for _, c := range cfg.Churns {
		for _, w := range c.Mix {
			if !PeerServes(w.Workload) {
				return fmt.Errorf("a peer fleet cannot run churn %s: NVIDIA's driver has no class for %s", MixString(c.Mix), w.Workload)
			}
		}
	}
	return nil
}

// settledRSS waits Settle and reads the control plane's memory.
func (h *harness) settledRSS(ctx context.Context) (map[string]int64, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(h.cfg.Settle):
	}
	return RSS(h.cfg.RunDir)
}

// SchedulerQuantiles are quantiles of the scheduler's own histograms over
// a run, in seconds: AttemptP50, AttemptP99 of
// scheduler_scheduling_attempt_duration_seconds{result="scheduled"};
// SLIP50, SLIP99 of scheduler_pod_scheduling_sli_duration_seconds (from
// the pod's first attempt, queueing included).
type SchedulerQuantiles struct {
	AttemptP50, AttemptP99, SLIP50, SLIP99 float64
}

// schedulerMark is the scheduler's histograms when a run starts.
type schedulerMark struct{ attempt, sli Histogram }

// schedulerQuantilesSince reads the scheduler's histograms again and
// returns the quantiles of what they counted since mark.
func (h *harness) schedulerQuantilesSince(ctx context.Context, mark schedulerMark) (SchedulerQuantiles, error) {
	now, err := h.schedulerHistograms(ctx)
	if err != nil {
		return SchedulerQuantiles{}, err
	}
	a, s := now.attempt.Sub(mark.attempt), now.sli.Sub(mark.sli)
	return SchedulerQuantiles{AttemptP50: a.Quantile(0.5), AttemptP99: a.Quantile(0.99), SLIP50: s.Quantile(0.5), SLIP99: s.Quantile(0.99)}, nil
}

func (h *harness) schedulerHistograms(ctx context.Context) (schedulerMark, error) {
	text, err := h.metrics.scrape(ctx, schedulerMetricsURL)
	if err != nil {
		return schedulerMark{}, err
	}
	var m schedulerMark
	if m.attempt, err = parseHistogram(text, "scheduler_scheduling_attempt_duration_seconds", `result="scheduled"`); err != nil {
		return schedulerMark{}, err
	}
	if m.sli, err = parseHistogram(text, "scheduler_pod_scheduling_sli_duration_seconds"); err != nil {
		return schedulerMark{}, err
	}
	return m, nil
}

// parallel runs fn for every item, 16 at a time, and returns the first error.
func parallel(ctx context.Context, items []string, fn func(context.Context, string) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, 16)
	errs := make(chan error, len(items))
	for _, it := range items {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			errs <- fn(ctx, it)
		}()
	}
	var first error
	for range items {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}

// TaintTraffic is what one health taint appearing on one GPU, then
// clearing, made the publisher write.
type TaintTraffic struct {
	// Objects and Bytes are the ResourceSlices rewritten (created or
	// updated) and their JSON size, for the taint and for its clearing.
	TaintObjects, ClearObjects int
	TaintBytes, ClearBytes     int
	// GenerationBumps is how much the pool's generation grew over both.
	GenerationBumps int64
}

// taintTraffic taints GPU 0 of one pool as the health monitor would, waits
// until the publisher is done, clears it, and counts what changed.
func (h *harness) taintTraffic(ctx context.Context, p *pool) (TaintTraffic, error) {
	var tt TaintTraffic
	before, err := h.poolSlices(ctx, p.node)
	if err != nil {
		return tt, err
	}
	gen0 := generation(before)
	g := p.in.Inventory.GPUs[0]
	taint := resourceapi.DeviceTaint{Key: names.HealthTaintKey("xid"), Value: "79", Effect: resourceapi.DeviceTaintEffectNoSchedule}
	steps := []map[string][]resourceapi.DeviceTaint{{g.UUID: {taint}}, nil}
	for i, taints := range steps {
		p.in.GPUTaints = taints
		if err := p.rebuild(); err != nil {
			return tt, err
		}
		if _, err := p.pub.Publish(ctx, p.slices); err != nil {
			return tt, fmt.Errorf("publish taint: %w", err)
		}
		var after map[string]resourceapi.ResourceSlice
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, h.cfg.Timeout, false, func(ctx context.Context) (bool, error) {
			var err error
			if after, err = h.poolSlices(ctx, p.node); err != nil {
				return false, err
			}
			return taintsPublished(after, taints), nil
		})
		if err != nil {
			return tt, fmt.Errorf("wait for the taint on %s: %w", p.node, err)
		}
		objects, bytes := rewritten(before, after)
		if i == 0 {
			tt.TaintObjects, tt.TaintBytes = objects, bytes
		} else {
			tt.ClearObjects, tt.ClearBytes = objects, bytes
			tt.GenerationBumps = generation(after) - gen0
		}
		before = after
	}
	return tt, nil
}
