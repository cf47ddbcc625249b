package fleet

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// DaemonReady says when the harness, playing the kubelet and the IMEX
// daemon, marks a domain daemon pod Ready.
type DaemonReady string

const (
	// DaemonReadyQuorum: Ready at the first startup-probe tick after the
	// domain's status lists the pod's node, as the daemon whose nodes.cfg
	// (the status's nodes, written by the node plugin) lists itself and
	// peers that all run a daemon reaches quorum.
	DaemonReadyQuorum DaemonReady = "quorum"
	// DaemonReadyRunning: Ready as soon as the pod runs.
	DaemonReadyRunning DaemonReady = "running"
)

// Timeline events of a ComputeDomain run.
const (
	evBound          = "bound"          // workload pod bound, by pod
	evLabelled       = "labelled"       // node labelled for the domain, by node
	evDaemonCreated  = "daemon-created" // daemon pod created, by pod
	evDaemonBound    = "daemon-bound"   // daemon pod bound, by node
	evDaemonRunning  = "daemon-running" // daemon pod marked Running, by node
	evDaemonReady    = "daemon-ready"   // daemon pod marked Ready, by node
	evListed         = "listed"         // node in the domain's status, by node
	evListedReady    = "listed-ready"   // node Ready in the domain's status, by node
	evDomainReady    = "domain-ready"   // domain Ready with enough nodes
	domainReadyKey   = "domain"         // the one key of evDomainReady
	daemonIPFirstTwo = 64               // daemon pod IPs are 10.64.0.0/10 and up
)

// daemonKeeper plays the kubelet (and the IMEX daemon behind its probe)
// for the domain daemon pods the DaemonSet controller makes in the
// driver's namespace: a bound pod is marked Running with a pod IP; it is
// marked Ready as ready says; a terminating pod is deleted at once, as a
// kubelet does once its containers stopped.
type daemonKeeper struct {
	client    kubernetes.Interface
	namespace string
	ready     DaemonReady
	// probe is the startup probe's period: quorum is seen at a tick.
	probe time.Duration
	// nodeIndex numbers the fleet's nodes, for pod IPs.
	nodeIndex map[string]int
	tl        *timeline

	mu sync.Mutex
	// running are the Running pods by node; readying holds the nodes whose
	// pod is being (or was) made Ready.
	running  map[string]*corev1.Pod
	readying map[string]bool
	marked   map[string]bool
}

// daemonIP is the pod IP of the daemon on node number i.
func daemonIP(i int) string {
	return fmt.Sprintf("10.%d.%d.%d", daemonIPFirstTwo+i/65536, i/256%256, i%256)
}

func (k *daemonKeeper) start(ctx context.Context) error {
	k.running, k.readying, k.marked = map[string]*corev1.Pod{}, map[string]bool{}, map[string]bool{}
	factory := informers.NewSharedInformerFactoryWithOptions(k.client, 0, informers.WithNamespace(k.namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = names.ComputeDomainLabel }))
	inf := factory.Core().V1().Pods().Informer()
	handle := func(obj any) {
		if pod, ok := obj.(*corev1.Pod); ok {
			k.podChanged(ctx, pod)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    handle,
		UpdateFunc: func(_, obj any) { handle(obj) },
	}); err != nil {
		return fmt.Errorf("watch daemon pods: %w", err)
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("watch daemon pods: %w", ctx.Err())
	}
	return nil
}

func (k *daemonKeeper) podChanged(ctx context.Context, pod *corev1.Pod) {
	logger := klog.FromContext(ctx)
	now := time.Now()
	if pod.DeletionTimestamp != nil {
		go func() {
			err := k.client.CoreV1().Pods(k.namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
				GracePeriodSeconds: ptr.To(int64(0)), Preconditions: &metav1.Preconditions{UID: &pod.UID},
			})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) && ctx.Err() == nil {
				logger.Error(err, "Delete terminating daemon pod", "pod", klog.KObj(pod))
			}
		}()
		k.mu.Lock()
		if p := k.running[pod.Spec.NodeName]; p != nil && p.UID == pod.UID {
			delete(k.running, pod.Spec.NodeName)
			delete(k.readying, pod.Spec.NodeName)
		}
		k.mu.Unlock()
		return
	}
	k.tl.mark(evDaemonCreated, pod.Name, now)
	node := pod.Spec.NodeName
	if node == "" {
		return
	}
	k.tl.mark(evDaemonBound, node, now)
	k.mu.Lock()
	mark := !k.marked[string(pod.UID)] && pod.Status.Phase == corev1.PodPending
	k.marked[string(pod.UID)] = true
	running := pod.Status.Phase == corev1.PodRunning
	if running {
		k.running[node] = pod
	}
	k.mu.Unlock()
	if running && k.tl.has(evListed, node) {
		// The status listed the node before this pod was seen running.
		k.listed(ctx, []string{node})
	}
	if !mark {
		return
	}
	go func() {
		ready := k.ready == DaemonReadyRunning
		if err := k.setStatus(ctx, pod, ready); err != nil {
			if ctx.Err() == nil {
				logger.Error(err, "Mark daemon pod Running", "pod", klog.KObj(pod))
			}
			return
		}
		k.tl.mark(evDaemonRunning, node, time.Now())
		if ready {
			k.tl.mark(evDaemonReady, node, time.Now())
		}
	}()
}

// listed is told the domain's status nodes: in quorum mode, the daemon of
// every listed node that runs and is not Ready yet becomes Ready at its
// next probe tick.
func (k *daemonKeeper) listed(ctx context.Context, nodes []string) {
	if k.ready != DaemonReadyQuorum {
		return
	}
	for _, node := range nodes {
		k.mu.Lock()
		pod, ok := k.running[node]
		if !ok || k.readying[node] {
			k.mu.Unlock()
			continue
		}
		k.readying[node] = true
		k.mu.Unlock()
		go func() {
			// The probe runs at its own phase of the period.
			select {
			case <-ctx.Done():
				return
			case <-time.After(rand.N(k.probe + 1)):
			}
			if err := k.setStatus(ctx, pod, true); err != nil {
				if ctx.Err() == nil {
					klog.FromContext(ctx).Error(err, "Mark daemon pod Ready", "pod", klog.KObj(pod))
				}
				return
			}
			k.tl.mark(evDaemonReady, node, time.Now())
		}()
	}
}

// setStatus writes a daemon pod's status as its kubelet would: Running,
// with the node's pod IP, Ready or not.
func (k *daemonKeeper) setStatus(ctx context.Context, pod *corev1.Pod, ready bool) error {
	ip := daemonIP(k.nodeIndex[pod.Spec.NodeName])
	return wait.ExponentialBackoffWithContext(ctx, wait.Backoff{Duration: 100 * time.Millisecond, Factor: 2, Steps: 6}, func(ctx context.Context) (bool, error) {
		cur, err := k.client.CoreV1().Pods(k.namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, fmt.Errorf("get daemon pod %s: %w", pod.Name, err)
		}
		now := metav1.Now()
		cur.Status.Phase = corev1.PodRunning
		cur.Status.PodIP, cur.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
		cur.Status.HostIP, cur.Status.HostIPs = ip, []corev1.HostIP{{IP: ip}}
		if cur.Status.StartTime == nil {
			cur.Status.StartTime = &now
		}
		status := corev1.ConditionFalse
		if ready {
			status = corev1.ConditionTrue
		}
		setCondition(&cur.Status, corev1.PodInitialized, corev1.ConditionTrue, now)
		setCondition(&cur.Status, corev1.ContainersReady, status, now)
		setCondition(&cur.Status, corev1.PodReady, status, now)
		_, err = k.client.CoreV1().Pods(k.namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("set status of daemon pod %s: %w", pod.Name, err)
		}
		return true, nil
	})
}

// setCondition sets the pod condition of type t, keeping its transition
// time when the status did not change.
func setCondition(s *corev1.PodStatus, t corev1.PodConditionType, status corev1.ConditionStatus, now metav1.Time) {
	for i := range s.Conditions {
		if s.Conditions[i].Type == t {
			if s.Conditions[i].Status != status {
				s.Conditions[i].Status, s.Conditions[i].LastTransitionTime = status, now
			}
			return
		}
	}
	s.Conditions = append(s.Conditions, corev1.PodCondition{Type: t, Status: status, LastTransitionTime: now})
}
