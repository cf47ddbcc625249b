package daemonpod

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	qoshelper "k8s.io/kubernetes/pkg/apis/core/v1/helper/qos"

	"github.com/gpu-dra/gpu-dra-driver/pkg/mps"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

const key = "2f0e0a4c-0000-4000-8000-000000000001"

// newLauncher is a Launcher of node-a over a fake API server that names
// the pods it creates (the fake ignores generateName).
func newLauncher(t *testing.T) (*Launcher, *fake.Clientset) {
	t.Helper()
	client := fake.NewClientset()
	n := 0
	client.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p := a.(k8stesting.CreateAction).GetObject().(*corev1.Pod)
		if p.Name != "" {
			return false, nil, nil
		}
		n++
		p.Name = p.GenerateName + strings.Repeat("x", n)
		p.UID = types.UID("uid-" + p.Name)
		return false, nil, nil
	})
	l := &Launcher{Client: client, Namespace: "gpu-dra", NodeName: "node-a", Image: "gpu-dra-driver:v1",
		PriorityClassName: "system-node-critical", DriverRoot: "/run/nvidia/driver"}
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	return l, client
}

func pods(t *testing.T, client *fake.Clientset) []corev1.Pod {
	t.Helper()
	list, err := client.CoreV1().Pods("gpu-dra").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// TestLaunchMakesOnePodPerDaemon: the pod runs the supervisor of the
// daemon's directory on the node, in the host's PID namespace, restarted
// on failure; a second Launch keeps it; Remove deletes it.
func TestLaunchMakesOnePodPerDaemon(t *testing.T) {
	ctx := context.Background()
	l, client := newLauncher(t)
	d := mps.Daemon{Key: key, Dir: "/var/lib/kubelet/plugins/gpu.nvidia.com/mps/" + key, GPUs: []string{"GPU-a", "MIG-b"}}
	for range 2 {
		if err := l.Launch(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	got := pods(t, client)
	if len(got) != 1 {
		t.Fatalf("%d pods, want 1", len(got))
	}
	p := got[0]
	c := p.Spec.Containers[0]
	wantCmd := []string{"gpu-kubelet-plugin", "mps-daemon", "--dir=" + d.Dir, "--driver-root=/driver-root", "--gpus=GPU-a,MIG-b"}
	switch {
	case p.Spec.NodeName != "node-a" || !p.Spec.HostPID || p.Spec.RestartPolicy != corev1.RestartPolicyOnFailure:
		t.Errorf("spec: node %q hostPID %v restart %q", p.Spec.NodeName, p.Spec.HostPID, p.Spec.RestartPolicy)
	case p.Labels[names.MPSDaemonLabel] != key || p.Labels[componentLabel] != names.MPSDaemonComponent:
		t.Errorf("labels %v", p.Labels)
	case !slices.Equal(c.Command, wantCmd):
		t.Errorf("command %q, want %q", c.Command, wantCmd)
	case c.Image != "gpu-dra-driver:v1" || p.Spec.PriorityClassName != "system-node-critical":
		t.Errorf("image %q, priority class %q", c.Image, p.Spec.PriorityClassName)
	case p.Spec.AutomountServiceAccountToken == nil || *p.Spec.AutomountServiceAccountToken:
		t.Error("the daemon's pod gets an API token")
	case p.Spec.Volumes[0].HostPath.Path != filepath.Dir(d.Dir) || c.VolumeMounts[0].MountPath != filepath.Dir(d.Dir) || p.Spec.Volumes[1].HostPath.Path != "/run/nvidia/driver" || !c.VolumeMounts[1].ReadOnly:
		t.Errorf("volumes %+v, mounts %+v", p.Spec.Volumes, c.VolumeMounts)
	}
	if keys, err := l.Keys(ctx); err != nil || !slices.Equal(keys, []string{key}) {
		t.Errorf("keys %v (%v)", keys, err)
	}
	if stopping, err := l.Remove(ctx, key); err != nil || !stopping {
		t.Fatalf("remove: stopping %v, %v", stopping, err)
	}
	if got := pods(t, client); len(got) != 0 {
		t.Errorf("%d pods left", len(got))
	}
	if stopping, err := l.Remove(ctx, key); err != nil || stopping {
		t.Errorf("second remove: stopping %v, %v", stopping, err)
	}
}

// TestLaunchReplacesAnEndedPod: a supervisor that ended (its directory
// was gone, say after a previous release stopped the daemon) leaves a
// Succeeded pod, which a new launch replaces. Other nodes' pods and
// other keys' are not touched.
func TestLaunchReplacesAnEndedPod(t *testing.T) {
	ctx := context.Background()
	l, client := newLauncher(t)
	ended := l.Pod(mps.Daemon{Key: key, Dir: "/d", GPUs: []string{"GPU-a"}})
	ended.Name, ended.Status.Phase = "gpu-mps-ended", corev1.PodSucceeded
	otherNode := l.Pod(mps.Daemon{Key: key, Dir: "/d", GPUs: []string{"GPU-a"}})
	otherNode.Name, otherNode.Spec.NodeName = "gpu-mps-other-node", "node-b"
	otherKey := l.Pod(mps.Daemon{Key: "shared-GPU-b", Dir: "/e", GPUs: []string{"GPU-b"}})
	otherKey.Name = "gpu-mps-other-key"
	for _, p := range []*corev1.Pod{ended, otherNode, otherKey} {
		if _, err := client.CoreV1().Pods("gpu-dra").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Launch(ctx, mps.Daemon{Key: key, Dir: "/d", GPUs: []string{"GPU-a"}}); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range pods(t, client) {
		names = append(names, p.Name)
	}
	slices.Sort(names)
	if want := []string{"gpu-mps-other-key", "gpu-mps-other-node", "gpu-mps-x"}; !slices.Equal(names, want) {
		t.Errorf("pods %v, want %v", names, want)
	}
}

func TestFailure(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status corev1.ContainerStatus
		want   string // "" for none
	}{
		{"creating", corev1.ContainerStatus{State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}}, ""},
		{"running", corev1.ContainerStatus{State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}, ""},
		{"image", corev1.ContainerStatus{State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: "no such image"}}}, "ErrImagePull: no such image"},
		{"crash loop", corev1.ContainerStatus{
			State:                corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}},
			LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1, Message: "record: no space left on device"}},
		}, "CrashLoopBackOff: ; it last exited with code 1: record: no space left on device"},
		{"restarted", corev1.ContainerStatus{
			State:                corev1.ContainerState{Running: &corev1.ContainerStateRunning{}},
			LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1, Message: "daemon exited"}},
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			l, client := newLauncher(t)
			p := l.Pod(mps.Daemon{Key: key, Dir: "/d", GPUs: []string{"GPU-a"}})
			p.Name = "gpu-mps-a"
			tc.status.Name = ContainerName
			p.Status.ContainerStatuses = []corev1.ContainerStatus{tc.status}
			if _, err := client.CoreV1().Pods("gpu-dra").Create(ctx, p, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			err := l.Failure(ctx, key)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("failure %v, want none", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("failure %v, want one with %q", err, tc.want)
			}
		})
	}
	l, _ := newLauncher(t)
	if err := l.Failure(context.Background(), key); err == nil || !strings.Contains(err.Error(), "no MPS control daemon pod") {
		t.Errorf("without a pod: %v", err)
	}
}

func TestLaunchRefusesAKeyThatCannotLabelAPod(t *testing.T) {
	l, client := newLauncher(t)
	err := l.Launch(context.Background(), mps.Daemon{Key: strings.Repeat("k", 64), Dir: "/d", GPUs: []string{"GPU-a"}})
	if err == nil || !strings.Contains(err.Error(), "cannot label a pod") {
		t.Errorf("error %v", err)
	}
	if got := pods(t, client); len(got) != 0 {
		t.Errorf("%d pods made", len(got))
	}
}

// TestPodIsGuaranteed: a daemon pod's requests and limits are equal, the
// Launcher's or the defaults, so the pod is Guaranteed (the last evicted
// under node pressure) and the chart's admission policy, which admits
// exactly those, admits it. The kubelet's own QoS classification judges.
// TestPodResources: a daemon's pod is Guaranteed, requests equal to
// limits, unless it serves only shares and the node reserves its cost
// through the shares' pods (Reserved): then it requests the rest, never
// below zero, with the same limits.
func TestPodResources(t *testing.T) {
	d := mps.Daemon{Key: key, Dir: "/var/lib/kubelet/plugins/gpu.nvidia.com/mps/" + key, GPUs: []string{"GPU-a"}}
	shares := d
	shares.SharesOnly = true
	for _, tc := range []struct {
		name               string
		cpu, memory        string
		reserved           corev1.ResourceList
		daemon             mps.Daemon
		wantCPU, wantMem   string
		wantReqs, wantReqM string
		wantQoS            corev1.PodQOSClass
	}{
		{name: "defaults", daemon: d, wantCPU: "250m", wantMem: "512Mi"},
		{name: "set", cpu: "1500m", memory: "2Gi", daemon: d, wantCPU: "1500m", wantMem: "2Gi"},
		{name: "memory only", memory: "1Gi", daemon: d, wantCPU: "250m", wantMem: "1Gi"},
		{name: "shares, nothing reserved", daemon: shares, wantCPU: "250m", wantMem: "512Mi"},
		{name: "not only shares, reserved", daemon: d, reserved: list("250m", "512Mi"), wantCPU: "250m", wantMem: "512Mi"},
		{name: "shares, all reserved", daemon: shares, reserved: list("250m", "512Mi"),
			wantCPU: "250m", wantMem: "512Mi", wantReqs: "0", wantReqM: "0", wantQoS: corev1.PodQOSBurstable},
		{name: "shares, part reserved", daemon: shares, reserved: list("100m", "128Mi"),
			wantCPU: "250m", wantMem: "512Mi", wantReqs: "150m", wantReqM: "384Mi", wantQoS: corev1.PodQOSBurstable},
		{name: "shares, more reserved", daemon: shares, reserved: list("1", "1Gi"),
			wantCPU: "250m", wantMem: "512Mi", wantReqs: "0", wantReqM: "0", wantQoS: corev1.PodQOSBurstable},
		{name: "shares, memory reserved", daemon: shares, reserved: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
			wantCPU: "250m", wantMem: "512Mi", wantReqs: "250m", wantReqM: "0", wantQoS: corev1.PodQOSBurstable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, _ := newLauncher(t)
			if tc.cpu != "" {
				l.CPU = resource.MustParse(tc.cpu)
			}
			if tc.memory != "" {
				l.Memory = resource.MustParse(tc.memory)
			}
			l.Reserved = tc.reserved
			if tc.wantReqs == "" {
				tc.wantReqs, tc.wantReqM, tc.wantQoS = tc.wantCPU, tc.wantMem, corev1.PodQOSGuaranteed
			}
			p := l.Pod(tc.daemon)
			if qos := qoshelper.ComputePodQOS(p); qos != tc.wantQoS {
				t.Errorf("QoS class %s, want %s", qos, tc.wantQoS)
			}
			r := p.Spec.Containers[0].Resources
			if len(r.Limits) != 2 || r.Limits.Cpu().String() != tc.wantCPU || r.Limits.Memory().String() != tc.wantMem {
				t.Errorf("limits %v, want cpu %s and memory %s only", r.Limits, tc.wantCPU, tc.wantMem)
			}
			if len(r.Requests) != 2 || r.Requests.Cpu().String() != tc.wantReqs || r.Requests.Memory().String() != tc.wantReqM {
				t.Errorf("requests %v, want cpu %s and memory %s only", r.Requests, tc.wantReqs, tc.wantReqM)
			}
			if len(p.Finalizers) != 0 || len(p.OwnerReferences) != 0 {
				t.Errorf("finalizers %v, owners %v", p.Finalizers, p.OwnerReferences)
			}
		})
	}
	l, _ := newLauncher(t)
	l.Reserved = list("250m", "512Mi")
	_ = l.Pod(shares)
	if got := l.Reserved.Cpu().String(); got != "250m" {
		t.Errorf("Pod changed Reserved to %s", got)
	}
}

func list(cpu, memory string) corev1.ResourceList {
	return corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(memory)}
}

// TestValidateRefusesNegativeResources: a negative request would be
// refused by the API server at every prepare; the plugin refuses to start.
func TestValidateRefusesNegativeResources(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(l *Launcher)
	}{
		{"cpu", func(l *Launcher) { l.CPU = resource.MustParse("-1") }},
		{"memory", func(l *Launcher) { l.Memory = resource.MustParse("-1Mi") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, _ := newLauncher(t)
			tc.change(l)
			if err := l.Validate(); err == nil || !strings.Contains(err.Error(), "negative resources") {
				t.Errorf("Validate: %v, want negative resources", err)
			}
		})
	}
}

// TestPodSeesItsDaemonsFilesystem: a daemon with a tmpfs gets the
// daemons' tmpfs root, where its pipe/ and shm/ lead, propagated from the
// host (one mounted later is seen too), and its own shm/ as /dev/shm,
// which the claim's containers have as theirs; one without gets neither.
func TestPodSeesItsDaemonsFilesystem(t *testing.T) {
	l, _ := newLauncher(t)
	dir := "/var/lib/kubelet/plugins/gpu.nvidia.com/mps/" + key
	fsDir := "/var/lib/kubelet/plugins/gpu.nvidia.com/mps-fs/" + key
	p := l.Pod(mps.Daemon{Key: key, Dir: dir, GPUs: []string{"GPU-a"}, Filesystem: fsDir})
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range p.Spec.Containers[0].VolumeMounts {
		mounts[m.Name] = m
	}
	paths := map[string]string{}
	for _, v := range p.Spec.Volumes {
		paths[v.Name] = v.HostPath.Path
	}
	if m := mounts["filesystems"]; m.MountPath != filepath.Dir(fsDir) || m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationHostToContainer || paths["filesystems"] != filepath.Dir(fsDir) {
		t.Errorf("the tmpfs root: mount %+v of %q", m, paths["filesystems"])
	}
	if m := mounts["shm"]; m.MountPath != "/dev/shm" || paths["shm"] != fsDir+"/shm" {
		t.Errorf("the daemon's shared memory: mount %+v of %q", m, paths["shm"])
	}
	if len(p.Spec.Volumes) != 4 || len(mounts) != 4 {
		t.Errorf("%d volumes, %d mounts: want the daemons', the driver root, the tmpfs root and shm", len(p.Spec.Volumes), len(mounts))
	}
	plain := l.Pod(mps.Daemon{Key: key, Dir: dir, GPUs: []string{"GPU-a"}})
	if len(plain.Spec.Volumes) != 2 || len(plain.Spec.Containers[0].VolumeMounts) != 2 {
		t.Errorf("a daemon without a tmpfs: %d volumes, want 2", len(plain.Spec.Volumes))
	}
}

// TestLaunchFallsBackToFullRequests: a daemon pod with lowered requests
// that the API server refuses (the chart's policy of a release that turned
// the overhead off, reached before this node's plugin rolled) is created
// with requests equal to its limits; any other refusal, or one of a pod
// already at its limits, stays an error.
func TestLaunchFallsBackToFullRequests(t *testing.T) {
	d := mps.Daemon{Key: key, Dir: "/mps/" + key, GPUs: []string{"GPU-a"}, SharesOnly: true}
	for _, tc := range []struct {
		name     string
		reserved corev1.ResourceList
		refuse   func(p *corev1.Pod) error
		wantErr  bool
		wantReqs string // cpu request of the pod created
	}{
		{name: "lowered, refused by the policy, then full", reserved: list("250m", "512Mi"),
			refuse: func(p *corev1.Pod) error {
				if p.Spec.Containers[0].Resources.Requests.Cpu().IsZero() {
					return apierrors.NewForbidden(corev1.Resource("pods"), "", errors.New("denied by the MPS daemon pod policy"))
				}
				return nil
			}, wantReqs: "250m"},
		{name: "lowered and admitted", reserved: list("250m", "512Mi"), refuse: func(*corev1.Pod) error { return nil }, wantReqs: "0"},
		{name: "not lowered, refused", refuse: func(*corev1.Pod) error {
			return apierrors.NewForbidden(corev1.Resource("pods"), "", errors.New("denied"))
		}, wantErr: true},
		{name: "lowered, refused for another reason", reserved: list("250m", "512Mi"), refuse: func(*corev1.Pod) error {
			return apierrors.NewServiceUnavailable("no")
		}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, client := newLauncher(t)
			l.Reserved = tc.reserved
			client.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
				if err := tc.refuse(a.(k8stesting.CreateAction).GetObject().(*corev1.Pod)); err != nil {
					return true, nil, err
				}
				return false, nil, nil
			})
			err := l.Launch(context.Background(), d)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Launch: %v, want error %v", err, tc.wantErr)
			}
			ps := pods(t, client)
			if tc.wantErr {
				if len(ps) != 0 {
					t.Errorf("%d pods created", len(ps))
				}
				return
			}
			if len(ps) != 1 || ps[0].Spec.Containers[0].Resources.Requests.Cpu().String() != tc.wantReqs {
				t.Fatalf("pods %d, want one requesting cpu %s", len(ps), tc.wantReqs)
			}
		})
	}
}
