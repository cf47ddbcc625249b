package fleet

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// Namespace holds the harness's claim templates and pods.
const Namespace = "fleet"

// PauseImage is the pods' image; no kubelet ever pulls it.
const PauseImage = "registry.k8s.io/pause:3.10.2"

// Workloads are the claim templates the harness offers, as users write
// them, by name.
var Workloads = []string{"whole", "mig-1g", "mig-3g", "mig-7g", "first-available", "cel", "share"}

func attr(name string) string {
	return fmt.Sprintf("device.attributes[%q].%s", names.DriverName, name)
}

func profileSize(size string) string {
	return fmt.Sprintf("%s.startsWith(%q)", attr(names.AttrProfile), size+".")
}

func selector(expr string) []resourceapi.DeviceSelector {
	return []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{Expression: expr}}}
}

// template is the claim template of a workload.
func template(workload string) (*resourceapi.ResourceClaimTemplate, error) {
	exactly := func(class, expr string) resourceapi.DeviceRequest {
		r := resourceapi.DeviceRequest{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: class}}
		if expr != "" {
			r.Exactly.Selectors = selector(expr)
		}
		return r
	}
	var req resourceapi.DeviceRequest
	switch workload {
	case "whole":
		req = exactly(names.GPUDeviceClass, "")
	case "mig-1g", "mig-3g", "mig-7g":
		req = exactly(names.MIGDeviceClass, profileSize(strings.TrimPrefix(workload, "mig-")))
	case "first-available":
		req = resourceapi.DeviceRequest{Name: "gpu", FirstAvailable: []resourceapi.DeviceSubRequest{
			{Name: "mig3g", DeviceClassName: names.MIGDeviceClass, Selectors: selector(profileSize("3g"))},
			{Name: "whole", DeviceClassName: names.GPUDeviceClass},
		}}
	case "cel":
		// GPUs with at least 64 GiB: every H100, H200 and B200, no A100 40GB.
		req = exactly(names.GPUDeviceClass, fmt.Sprintf("device.capacity[%q].%s.compareTo(quantity(\"64Gi\")) >= 0", names.DriverName, names.CapacityMemory))
	case "share":
		req = exactly(names.SharedDeviceClass, "")
		req.Exactly.Capacity = &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{
			names.CapacityMemory: resource.MustParse("10Gi"),
		}}
	default:
		return nil, fmt.Errorf("unknown workload %q, want one of %s", workload, strings.Join(Workloads, ", "))
	}
	return &resourceapi.ResourceClaimTemplate{
		ObjectMeta: metav1.ObjectMeta{Name: workload, Namespace: Namespace},
		Spec: resourceapi.ResourceClaimTemplateSpec{Spec: resourceapi.ResourceClaimSpec{
			Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{req}},
		}},
	}, nil
}

// deviceClasses are the chart's DeviceClasses (deployments/helm).
func deviceClasses() []*resourceapi.DeviceClass {
	class := func(name, typ string) *resourceapi.DeviceClass {
		expr := fmt.Sprintf("device.driver == %q && %s == %q", names.DriverName, attr(names.AttrType), typ)
		return &resourceapi.DeviceClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: resourceapi.DeviceClassSpec{Selectors: selector(expr)}}
	}
	return []*resourceapi.DeviceClass{
		class(names.GPUDeviceClass, names.TypeGPU),
		class(names.MIGDeviceClass, names.TypeMIG),
		class(names.SharedDeviceClass, names.TypeShared),
	}
}

// podTracker watches the harness's pods, plays the kubelet's part (a
// bound pod is marked Running) and records when each pod was bound.
type podTracker struct {
	client kubernetes.Interface

	mu      sync.Mutex
	boundAt map[string]time.Time
	node    map[string]string
	marked  map[string]bool
	changed chan struct{}
}

func newPodTracker(ctx context.Context, client kubernetes.Interface) (*podTracker, error) {
	t := &podTracker{client: client, boundAt: map[string]time.Time{}, node: map[string]string{}, marked: map[string]bool{}, changed: make(chan struct{}, 1)}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(Namespace))
	inf := factory.Core().V1().Pods().Informer()
	logger := klog.FromContext(ctx)
	handle := func(obj any) {
		pod, ok := obj.(*corev1.Pod)
		if !ok || pod.Spec.NodeName == "" {
			return
		}
		t.mu.Lock()
		if _, seen := t.boundAt[pod.Name]; !seen {
			t.boundAt[pod.Name] = time.Now()
			t.node[pod.Name] = pod.Spec.NodeName
		}
		mark := !t.marked[pod.Name] && pod.Status.Phase == corev1.PodPending
		t.marked[pod.Name] = true
		t.mu.Unlock()
		select {
		case t.changed <- struct{}{}:
		default:
		}
		if mark {
			go func() {
				if err := t.setPhase(ctx, pod, corev1.PodRunning); err != nil && ctx.Err() == nil {
					logger.Error(err, "Mark pod Running", "pod", pod.Name)
				}
			}()
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    handle,
		UpdateFunc: func(_, obj any) { handle(obj) },
	}); err != nil {
		return nil, fmt.Errorf("watch pods: %w", err)
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil, fmt.Errorf("watch pods: %w", ctx.Err())
	}
	return t, nil
}

// setPhase writes a pod's phase as its kubelet would.
func (t *podTracker) setPhase(ctx context.Context, pod *corev1.Pod, phase corev1.PodPhase) error {
	return wait.ExponentialBackoffWithContext(ctx, wait.Backoff{Duration: 100 * time.Millisecond, Factor: 2, Steps: 6}, func(ctx context.Context) (bool, error) {
		cur, err := t.client.CoreV1().Pods(Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, fmt.Errorf("get pod %s: %w", pod.Name, err)
		}
		now := metav1.Now()
		cur.Status.Phase = phase
		ready := corev1.ConditionTrue
		if phase != corev1.PodRunning {
			ready = corev1.ConditionFalse
		}
		cur.Status.Conditions = append(cur.Status.Conditions, corev1.PodCondition{Type: corev1.PodReady, Status: ready, LastTransitionTime: now})
		if phase == corev1.PodRunning {
			cur.Status.StartTime = &now
		}
		_, err = t.client.CoreV1().Pods(Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("set phase %s of pod %s: %w", phase, pod.Name, err)
		}
		return true, nil
	})
}

// nodeOf returns the node a pod was bound to.
func (t *podTracker) nodeOf(pod string) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, ok := t.node[pod]
	return n, ok
}

// boundTime is when the named pod was seen bound.
func (t *podTracker) boundTime(pod string) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	at, ok := t.boundAt[pod]
	return at, ok
}

// bound returns the bind times of the named pods that are bound.
func (t *podTracker) bound(pods []string) []time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []time.Time
	for _, p := range pods {
		if at, ok := t.boundAt[p]; ok {
			out = append(out, at)
		}
	}
	return out
}

// BurstResult is what one burst of pods measured.
type BurstResult struct {
	Workload string
	Pods     int
	// Bound counts the pods the scheduler bound.
	Bound int
	// Seconds is from the first pod created to the last bound.
	Seconds float64
	// PodsPerSecond is Bound / Seconds.
	PodsPerSecond float64
	// SchedulerQuantiles are over the burst.
	SchedulerQuantiles
	// Violations are over-commitments found while every pod was running.
	Violations []string
	// Misplaced are the pods of a steered fleet that are not where the
	// recipe puts them (SteerKey).
	Misplaced []string `json:",omitempty"`
	// Released says that every claim of the burst was gone after its pods.
	Released bool
}

// runBurst creates pods pods of a workload at once, waits until they are
// bound (or until timeout), checks the allocations, then finishes and
// deletes the pods and waits for their claims to be released.
func (h *harness) runBurst(ctx context.Context, workload string, pods int, timeout time.Duration) (BurstResult, error) {
	logger := klog.FromContext(ctx)
	res := BurstResult{Workload: workload, Pods: pods}
	mark, err := h.schedulerHistograms(ctx)
	if err != nil {
		return res, err
	}
	podNames := make([]string, pods)
	start := time.Now()
	errs := make(chan error, pods)
	sem := make(chan struct{}, 16)
	for i := range pods {
		podNames[i] = fmt.Sprintf("%s-%d-%d", workload, h.bursts, i)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			errs <- h.createPod(ctx, podNames[i], workload)
		}()
	}
	for range pods {
		if err := <-errs; err != nil {
			return res, err
		}
	}
	h.bursts++
	deadline := time.After(timeout)
	for len(h.pods.bound(podNames)) < pods {
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-deadline:
			logger.Info("Burst timed out", "workload", workload, "bound", len(h.pods.bound(podNames)), "pods", pods)
		case <-h.pods.changed:
			continue
		case <-time.After(time.Second):
			continue
		}
		break
	}
	times := h.pods.bound(podNames)
	res.Bound = len(times)
	if res.Bound > 0 {
		sort.Slice(times, func(a, b int) bool { return times[a].Before(times[b]) })
		res.Seconds = times[len(times)-1].Sub(start).Seconds()
		res.PodsPerSecond = float64(res.Bound) / res.Seconds
	}
	if res.SchedulerQuantiles, err = h.schedulerQuantilesSince(ctx, mark); err != nil {
		return res, err
	}

	res.Violations, err = h.checkAllocations(ctx)
	if err != nil {
		return res, err
	}
	if h.cfg.Steer {
		res.Misplaced = h.misplaced(podNames, workload)
	}
	res.Released, err = h.finish(ctx, podNames, timeout)
	if err != nil {
		return res, err
	}
	logger.Info("Burst done", "workload", workload, "pods", pods, "bound", res.Bound, "podsPerSecond", res.PodsPerSecond,
		"violations", len(res.Violations), "misplaced", len(res.Misplaced), "released", res.Released)
	return res, nil
}

func (h *harness) createPod(ctx context.Context, name, workload string) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: Namespace, Labels: map[string]string{"workload": workload}},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken:  ptr.To(false),
			TerminationGracePeriodSeconds: ptr.To(int64(0)),
			Containers: []corev1.Container{{
				Name: "c", Image: PauseImage,
				Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}},
			}},
			ResourceClaims: []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: ptr.To(workload)}},
		},
	}
	if h.cfg.Steer && steeredWorkload(workload) {
		steerPod(pod)
	}
	if _, err := h.client.CoreV1().Pods(Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create pod %s: %w", name, err)
	}
	return nil
}

// finish marks the pods Succeeded, deletes them and waits until no claim
// is left in the namespace: the resource claim controller releases and
// deletes the claims it made from templates.
func (h *harness) finish(ctx context.Context, pods []string, timeout time.Duration) (bool, error) {
	if err := h.finishPods(ctx, pods); err != nil {
		return false, err
	}
	err := wait.PollUntilContextTimeout(ctx, time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		claims, err := h.client.ResourceV1().ResourceClaims(Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, fmt.Errorf("list claims: %w", err)
		}
		return len(claims.Items) == 0, nil
	})
	if wait.Interrupted(err) {
		return false, nil
	}
	return err == nil, err
}

// finishPods marks the pods Succeeded, as their kubelet would once their
// containers exit, and deletes them; pods already gone are skipped.
func (h *harness) finishPods(ctx context.Context, pods []string) error {
	sem := make(chan struct{}, 16)
	errs := make(chan error, len(pods))
	for _, name := range pods {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}}
			if err := h.pods.setPhase(ctx, pod, corev1.PodSucceeded); err != nil && !apierrors.IsNotFound(err) {
				errs <- err
				return
			}
			err := h.client.CoreV1().Pods(Namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))})
			if err != nil && !apierrors.IsNotFound(err) {
				errs <- fmt.Errorf("delete pod %s: %w", name, err)
				return
			}
			errs <- nil
		}()
	}
	var first error
	for range pods {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// checkAllocations lists every claim and checks the allocations against
// the published devices: an exclusive device is allocated at most once, a
// shared device's shares fit its capacity, and no GPU's counters are
// consumed beyond their values. It returns what it found wrong.
func (h *harness) checkAllocations(ctx context.Context) ([]string, error) {
	claims, err := h.client.ResourceV1().ResourceClaims(Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list claims: %w", err)
	}
	var problems []string
	type key struct{ pool, name string }
	exclusive := map[key]string{}
	shares := map[key]int64{}
	charged := map[key]bool{}
	consumed := map[key]map[string]int64{} // (pool, counter set) -> counter -> used
	for _, c := range claims.Items {
		if c.Status.Allocation == nil {
			continue
		}
		for _, r := range c.Status.Allocation.Devices.Results {
			if r.Driver == names.ComputeDomainDriverName {
				// Channels and daemons are allocatable many times, without capacity.
				continue
			}
			p, ok := h.pools[r.Pool]
			if !ok {
				problems = append(problems, fmt.Sprintf("claim %s: pool %s is not the fleet's", c.Name, r.Pool))
				continue
			}
			d, ok := p.device(r.Device)
			if !ok {
				problems = append(problems, fmt.Sprintf("claim %s: device %s/%s is not published", c.Name, r.Pool, r.Device))
				continue
			}
			k := key{r.Pool, r.Device}
			multi := ptr.Deref(d.AllowMultipleAllocations, false)
			if !multi {
				if other, dup := exclusive[k]; dup {
					problems = append(problems, fmt.Sprintf("device %s/%s allocated to claims %s and %s", r.Pool, r.Device, other, c.Name))
				}
				exclusive[k] = c.Name
			} else {
				mem := r.ConsumedCapacity[names.CapacityMemory]
				shares[k] += mem.Value()
				limit := d.Capacity[names.CapacityMemory].Value
				if shares[k] > limit.Value() {
					problems = append(problems, fmt.Sprintf("shared device %s/%s: shares use %d bytes of %d", r.Pool, r.Device, shares[k], limit.Value()))
				}
				if charged[k] {
					continue // a shared device charges its counters once
				}
				charged[k] = true
			}
			for _, cc := range d.ConsumesCounters {
				ck := key{r.Pool, cc.CounterSet}
				if consumed[ck] == nil {
					consumed[ck] = map[string]int64{}
				}
				for name, v := range cc.Counters {
					consumed[ck][name] += v.Value.Value()
				}
			}
		}
	}
	for k, used := range consumed {
		set, ok := h.pools[k.pool].counterSets()[k.name]
		if !ok {
			problems = append(problems, fmt.Sprintf("counter set %s/%s is not published", k.pool, k.name))
			continue
		}
		for name, n := range used {
			have := set.Counters[name].Value
			if n > have.Value() {
				problems = append(problems, fmt.Sprintf("counter %s of %s/%s: %d consumed of %d", name, k.pool, k.name, n, have.Value()))
			}
		}
	}
	sort.Strings(problems)
	return problems, nil
}
