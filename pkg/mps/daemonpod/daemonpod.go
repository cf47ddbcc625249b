// Package daemonpod runs each MPS control daemon's supervisor
// (mps.Supervisor, "gpu-kubelet-plugin mps-daemon") as a pod of its own on
// the plugin's node, so that the daemon, and the MPS server it starts for
// the claim's containers, are not in the plugin's container: a restart,
// upgrade or crash of the plugin leaves them running, and the next plugin
// finds them by their record. The kubelet restarts a supervisor that
// fails (restartPolicy OnFailure), which restarts a crashed daemon.
//
// A pod is bare (no controller): the plugin is its controller. It is
// created in the plugin's namespace, bound to the node (spec.nodeName, no
// scheduling), labelled with the daemon's key, and deleted by
// Launcher.Remove when the claim is unprepared. The chart's admission
// policy lets a node's plugin create and delete only such pods, on its
// own node, running the chart's image.
package daemonpod

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/gpu-dra/gpu-dra-driver/pkg/mps"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// Labels every daemon pod has.
const (
	componentLabel = "app.kubernetes.io/component"
	managedByLabel = "app.kubernetes.io/managed-by"
	managedBy      = "gpu-kubelet-plugin"
)

// ContainerName is the name of the supervisor's container.
const ContainerName = "mps-control-daemon"

// DriverRootMount is where a daemon pod mounts the driver root.
const DriverRootMount = "/driver-root"

// DefaultCommand runs the supervisor in the plugin's image.
var DefaultCommand = []string{"gpu-kubelet-plugin", "mps-daemon"}

// The defaults of Launcher.CPU and Launcher.Memory (the chart's too).
var (
	DefaultCPU    = resource.MustParse("250m")
	DefaultMemory = resource.MustParse("512Mi")
)

// terminationGracePeriod is what a daemon pod's supervisor gets to stop
// its daemon: the quit command's time limit and then the wait for the
// daemon to end, mps.Supervisor.Timeout (10 s) each, and a little more.
const terminationGracePeriod = 25

// Launcher creates, inspects and deletes the daemon pods of one node. It
// implements mps.Launcher.
type Launcher struct {
	// Client reaches the API server with the plugin's identity.
	Client kubernetes.Interface
	// Namespace is where the pods are made: the plugin's.
	Namespace string
	// NodeName is the plugin's node.
	NodeName string
	// Image runs the supervisor: the plugin's own.
	Image string
	// ImagePullPolicy of the pods; empty is the cluster's default.
	ImagePullPolicy corev1.PullPolicy
	// PriorityClassName of the pods: a high class (the chart's own)
	// keeps the daemons of running workloads from being preempted or
	// evicted before workloads. Not a critical one: the kubelet evicts
	// other pods to admit a critical pod.
	PriorityClassName string
	// CPU and Memory are each pod's limits, and its requests, equal so
	// that the pod is Guaranteed (DefaultCPU and DefaultMemory if zero),
	// unless Reserved lowers them. The MPS servers of the daemon's clients
	// run in the pod and count against them.
	CPU, Memory resource.Quantity
	// Reserved is what every pod that uses a share of a shared GPU
	// already reserves on the node for its claim's daemon: the
	// node-allocatable overhead the plugin publishes on shared GPUs
	// (KEP-5517), or nil. The pod of a daemon that serves only shares
	// (mps.Daemon.SharesOnly) requests only what it does not cover, so
	// that the node counts the daemon once; its limits stay CPU and
	// Memory (the pod is then Burstable).
	Reserved corev1.ResourceList
	// Command runs the supervisor (DefaultCommand if empty); the
	// daemon's flags follow it.
	Command []string
	// DriverRoot is the host's driver root, mounted read-only at
	// DriverRootMount.
	DriverRoot string
}

var _ mps.Launcher = (*Launcher)(nil)

// Validate reports the first setting a Launcher cannot work without.
func (l *Launcher) Validate() error {
	switch {
	case l.Client == nil:
		return errors.New("MPS daemon pods: no API client")
	case l.Namespace == "":
		return errors.New("MPS daemon pods: no namespace")
	case l.NodeName == "":
		return errors.New("MPS daemon pods: no node name")
	case l.Image == "":
		return errors.New("MPS daemon pods: no image")
	case l.DriverRoot == "":
		return errors.New("MPS daemon pods: no driver root")
	case l.CPU.Sign() < 0 || l.Memory.Sign() < 0:
		return fmt.Errorf("MPS daemon pods: negative resources: cpu %s, memory %s", l.CPU.String(), l.Memory.String())
	}
	return nil
}

// resources are a daemon's pod's limits, and its requests: equal to them,
// or for a daemon that serves only shares, less what its clients' pods
// reserve for it (Reserved), never below zero.
func (l *Launcher) resources(d mps.Daemon) corev1.ResourceRequirements {
	cpu, memory := l.CPU, l.Memory
	if cpu.IsZero() {
		cpu = DefaultCPU
	}
	if memory.IsZero() {
		memory = DefaultMemory
	}
	limits := corev1.ResourceList{corev1.ResourceCPU: cpu, corev1.ResourceMemory: memory}
	requests := limits.DeepCopy()
	if d.SharesOnly {
		for name, q := range requests {
			if r, ok := l.Reserved[name]; ok {
				q.Sub(r)
				if q.Sign() < 0 {
					q = resource.Quantity{Format: q.Format}
				}
				requests[name] = q
			}
		}
	}
	return corev1.ResourceRequirements{Requests: requests, Limits: limits}
}

// lowered reports whether the pod requests less than its limits.
func lowered(p *corev1.Pod) bool {
	for _, c := range p.Spec.Containers {
		for name, limit := range c.Resources.Limits {
			if r, ok := c.Resources.Requests[name]; ok && r.Cmp(limit) < 0 {
				return true
			}
		}
	}
	return false
}

// list lists the daemon pods of key on the node, or all of the node's
// with key "".
func (l *Launcher) list(ctx context.Context, key string) ([]corev1.Pod, error) {
	set := labels.Set{componentLabel: names.MPSDaemonComponent}
	if key != "" {
		set[names.MPSDaemonLabel] = key
	}
	pods, err := l.Client.CoreV1().Pods(l.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(set).String(),
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", l.NodeName).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("list the MPS daemon pods of node %s: %w", l.NodeName, err)
	}
	// The field selector already did; a client that ignores it (a
	// test's) must not hand this node another node's pods.
	return slices.DeleteFunc(pods.Items, func(p corev1.Pod) bool { return p.Spec.NodeName != l.NodeName }), nil
}

// live reports whether a pod runs or will: not being deleted, not ended.
func live(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

// Launch implements mps.Launcher: a live pod of d.Key is kept; ended ones
// (a supervisor that found its directory gone) are deleted.
func (l *Launcher) Launch(ctx context.Context, d mps.Daemon) error {
	logger := klog.FromContext(ctx)
	if errs := validation.IsValidLabelValue(d.Key); len(errs) > 0 {
		return fmt.Errorf("MPS daemon key %q cannot label a pod: %s", d.Key, strings.Join(errs, "; "))
	}
	pods, err := l.list(ctx, d.Key)
	if err != nil {
		return err
	}
	for i := range pods {
		p := &pods[i]
		switch {
		case live(p):
			logger.V(2).Info("MPS control daemon pod already there", "key", d.Key, "pod", klog.KObj(p))
			return nil
		case p.DeletionTimestamp == nil:
			if err := l.delete(ctx, p); err != nil {
				return err
			}
		}
	}
	pod := l.Pod(d)
	p, err := l.Client.CoreV1().Pods(l.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil && d.SharesOnly && (apierrors.IsForbidden(err) || apierrors.IsInvalid(err)) && lowered(pod) {
		// During a roll that turned the overhead off (or lowered it),
		// the chart's new policy already refuses the lowered requests
		// this older setting asks for: requests equal to the limits
		// pass every version of it, and never over-commit the node.
		logger.Info("MPS control daemon pod with lowered requests refused; creating it with requests equal to its limits", "key", d.Key, "err", err.Error())
		full := d
		full.SharesOnly = false
		p, err = l.Client.CoreV1().Pods(l.Namespace).Create(ctx, l.Pod(full), metav1.CreateOptions{})
	}
	if err != nil {
		return fmt.Errorf("create the MPS control daemon's pod: %w", err)
	}
	logger.Info("MPS control daemon pod created", "key", d.Key, "pod", klog.KObj(p), "gpus", d.GPUs)
	return nil
}

// Pod is the pod that Launch creates to run d's supervisor: exactly what
// the chart's admission policy admits (mps-daemon-policy.yaml), so a
// change here is a change there.
func (l *Launcher) Pod(d mps.Daemon) *corev1.Pod {
	cmd := l.Command
	if len(cmd) == 0 {
		cmd = DefaultCommand
	}
	cmd = append(append([]string(nil), cmd...),
		"--dir="+d.Dir,
		"--driver-root="+DriverRootMount,
		"--gpus="+strings.Join(d.GPUs, ","))
	// The directory above the daemon's, not the daemon's own: mounted
	// itself, the daemon's directory would stay in the container after
	// the plugin removed it on the host, and the supervisor could not see
	// that its claim was unprepared (nor could the kubelet restart it
	// without the mount's source).
	root := filepath.Dir(d.Dir)
	hostPath := func(path string) corev1.VolumeSource {
		return corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: path, Type: ptr.To(corev1.HostPathDirectory)}}
	}
	mounts := []corev1.VolumeMount{
		{Name: "daemons", MountPath: root},
		{Name: "driver-root", MountPath: DriverRootMount, ReadOnly: true},
	}
	volumes := []corev1.Volume{
		{Name: "daemons", VolumeSource: hostPath(root)},
		{Name: "driver-root", VolumeSource: hostPath(l.DriverRoot)},
	}
	if d.Filesystem != "" {
		// The daemons' tmpfs, where pipe/ and shm/ of the daemon's
		// directory lead (HostToContainer: one the plugin mounts later,
		// for a restarted daemon, is seen too), and the daemon's shm/ as
		// the /dev/shm of the daemon and the MPS servers it starts, which
		// the claim's containers have as theirs.
		fsRoot := filepath.Dir(d.Filesystem)
		mounts = append(mounts,
			corev1.VolumeMount{Name: "filesystems", MountPath: fsRoot, MountPropagation: ptr.To(corev1.MountPropagationHostToContainer)},
			corev1.VolumeMount{Name: "shm", MountPath: mps.ContainerShmDir})
		volumes = append(volumes,
			corev1.Volume{Name: "filesystems", VolumeSource: hostPath(fsRoot)},
			corev1.Volume{Name: "shm", VolumeSource: hostPath(mps.ShmDirIn(d.Filesystem))})
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "gpu-mps-",
			Namespace:    l.Namespace,
			Labels: map[string]string{
				componentLabel:       names.MPSDaemonComponent,
				managedByLabel:       managedBy,
				names.MPSDaemonLabel: d.Key,
			},
		},
		Spec: corev1.PodSpec{
			NodeName:          l.NodeName,
			PriorityClassName: l.PriorityClassName,
			// The PIDs the supervisor records must mean the same to the
			// plugin, which runs with hostPID too.
			HostPID: true,
			// MPS speaks over the pipe directory only: no pod address
			// is spent on a daemon.
			HostNetwork:                   true,
			RestartPolicy:                 corev1.RestartPolicyOnFailure,
			Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			AutomountServiceAccountToken:  ptr.To(false),
			EnableServiceLinks:            ptr.To(false),
			TerminationGracePeriodSeconds: ptr.To[int64](terminationGracePeriod),
			Containers: []corev1.Container{{
				Name:            ContainerName,
				Image:           l.Image,
				ImagePullPolicy: l.ImagePullPolicy,
				Command:         cmd,
				// The supervisor writes why it failed there; its log
				// otherwise.
				TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
				// The control daemon and its servers open /dev/nvidia*.
				SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)},
				// Requests equal to limits: Guaranteed, the last class
				// evicted under node pressure, and a known share of the
				// node; lowered by what the shares' pods reserve
				// (Launcher.Reserved), Burstable. The MPS servers of the
				// claim's clients run in this container: the limits bound
				// them too (Launcher.CPU, Memory). The chart's admission
				// policy admits exactly these.
				Resources:    l.resources(d),
				VolumeMounts: mounts,
			}},
			Volumes: volumes,
		},
	}
}

// Failure implements mps.Launcher from the live pod's status: a
// container that cannot start, or a supervisor that exited in failure
// and waits to be restarted.
func (l *Launcher) Failure(ctx context.Context, key string) error {
	pods, err := l.list(ctx, key)
	if err != nil {
		return err
	}
	for i := range pods {
		if p := &pods[i]; live(p) {
			return podFailure(p)
		}
	}
	return fmt.Errorf("no MPS control daemon pod for %s on node %s", key, l.NodeName)
}

// waitingFailures are the reasons a container waits that need someone to
// act; a container that is being created waits too, and is not failing.
var waitingFailures = map[string]bool{
	"ErrImagePull": true, "ImagePullBackOff": true, "InvalidImageName": true,
	"CreateContainerConfigError": true, "CreateContainerError": true, "RunContainerError": true,
	"CrashLoopBackOff": true,
}

func podFailure(p *corev1.Pod) error {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name != ContainerName {
			continue
		}
		last := ""
		if t := cs.LastTerminationState.Terminated; t != nil && t.ExitCode != 0 {
			last = fmt.Sprintf("; it last exited with code %d: %s", t.ExitCode, strings.TrimSpace(t.Message))
		}
		if w := cs.State.Waiting; w != nil && waitingFailures[w.Reason] {
			return fmt.Errorf("pod %s/%s: %s: %s%s", p.Namespace, p.Name, w.Reason, strings.TrimSpace(w.Message), last)
		}
		if t := cs.State.Terminated; t != nil && t.ExitCode != 0 {
			return fmt.Errorf("pod %s/%s: the supervisor exited with code %d: %s", p.Namespace, p.Name, t.ExitCode, strings.TrimSpace(t.Message))
		}
		// Running again after a failure: not failing (yet).
	}
	return nil
}

// Remove implements mps.Launcher: it deletes the key's pods, whose
// supervisors then stop their daemons.
func (l *Launcher) Remove(ctx context.Context, key string) (bool, error) {
	pods, err := l.list(ctx, key)
	if err != nil {
		return false, err
	}
	stopping := false
	for i := range pods {
		p := &pods[i]
		if p.DeletionTimestamp != nil {
			stopping = true
			continue
		}
		if err := l.delete(ctx, p); err != nil {
			return false, err
		}
		stopping = stopping || live(p)
	}
	return stopping, nil
}

// delete deletes p, the very pod listed (not one made since under its
// name); one already gone is not an error.
func (l *Launcher) delete(ctx context.Context, p *corev1.Pod) error {
	err := l.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &p.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("delete MPS control daemon pod %s: %w", p.Name, err)
	}
	klog.FromContext(ctx).Info("MPS control daemon pod deleted", "pod", klog.KObj(p), "key", p.Labels[names.MPSDaemonLabel])
	return nil
}

// Keys implements mps.Launcher: the keys of the node's daemon pods that
// are not being deleted.
func (l *Launcher) Keys(ctx context.Context) ([]string, error) {
	pods, err := l.list(ctx, "")
	if err != nil {
		return nil, err
	}
	var keys []string
	for i := range pods {
		if p := &pods[i]; p.DeletionTimestamp == nil && p.Labels[names.MPSDaemonLabel] != "" {
			keys = append(keys, p.Labels[names.MPSDaemonLabel])
		}
	}
	return keys, nil
}
