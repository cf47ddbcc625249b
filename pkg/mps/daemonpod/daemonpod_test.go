package daemonpod

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

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
