package kubectlgpu

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clienttesting "k8s.io/client-go/testing"
)

var (
	podsGVR  = corev1.SchemeGroupVersion.WithResource("pods")
	rulesGVR = resourceapi.SchemeGroupVersion.WithResource("devicetaintrules")
)

// drainFixture: on node-a, pod trainer uses a MIG device of GPU 3, pod w
// the whole GPU 3, pod p30 GPU 30 (which must not hold up a drain of GPU
// 3), and pod done (Succeeded) GPU 4.
func drainFixture() ([]resourceapi.ResourceClaim, []corev1.Pod) {
	return []resourceapi.ResourceClaim{
			claim("team", "train", "node-a", []string{"gpu-3-mig-1g10gb-0"}, "trainer:uid-1"),
			claim("team", "whole", "node-a", []string{"gpu-3"}, "w:uid-2"),
			claim("team", "thirty", "node-a", []string{"gpu-30"}, "p30:uid-3"),
			claim("team", "four", "node-a", []string{"gpu-4"}, "done:uid-4"),
			claim("team", "unused", "node-a", []string{"gpu-3"}),
		}, []corev1.Pod{
			pod("team", "trainer", "uid-1", corev1.PodRunning),
			pod("team", "w", "uid-2", corev1.PodRunning),
			pod("team", "p30", "uid-3", corev1.PodRunning),
			pod("team", "done", "uid-4", corev1.PodSucceeded),
		}
}

func TestHolders(t *testing.T) {
	claims, pods := drainFixture()
	c := fakeClient(t, nil, nil, nil, pods)
	inv := NewInventory(nodeSlices())
	tests := []struct {
		target Target
		want   []holder
	}{
		{Target{Node: "node-a", GPU: 3, HasGPU: true}, []holder{{"team", "trainer", "gpu-3-mig-1g10gb-0"}, {"team", "w", "gpu-3"}}},
		{Target{Node: "node-a", GPU: 30, HasGPU: true}, []holder{{"team", "p30", "gpu-30"}}},
		{Target{Node: "node-a", GPU: 4, HasGPU: true}, nil},
		{Target{Node: "node-a"}, []holder{{"team", "p30", "gpu-30"}, {"team", "trainer", "gpu-3-mig-1g10gb-0"}, {"team", "w", "gpu-3"}}},
		{Target{Node: "node-b"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.target.String(), func(t *testing.T) {
			devices, err := inv.Resolve(tt.target)
			if err != nil {
				t.Fatal(err)
			}
			set := map[string]bool{}
			for _, d := range devices {
				set[d] = true
			}
			got, err := holders(context.Background(), claims, tt.target, set, apiPodGetter(c))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("holders %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPodGone(t *testing.T) {
	running := pod("ns", "p", "uid", corev1.PodRunning)
	failed := pod("ns", "p", "uid", corev1.PodFailed)
	succeeded := pod("ns", "p", "uid", corev1.PodSucceeded)
	pending := pod("ns", "p", "uid", corev1.PodPending)
	tests := []struct {
		name string
		pod  *corev1.Pod
		uid  string
		want bool
	}{
		{"deleted", nil, "uid", true},
		{"replaced by a pod with the same name", &running, "other", true},
		{"running", &running, "uid", false},
		{"pending", &pending, "uid", false},
		{"failed", &failed, "uid", true},
		{"succeeded", &succeeded, "uid", true},
	}
	for _, tt := range tests {
		if got := podGone(tt.pod, tt.uid); got != tt.want {
			t.Errorf("%s: podGone = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestDrainFinishesWhenPodsGo(t *testing.T) {
	claims, pods := drainFixture()
	c := fakeClient(t, nodeSlices(), claims, nil, pods)
	tracker := c.Tracker()
	polls := 0
	// The fake API server "evicts": on the first poll the rule reports
	// progress, on the second trainer is deleted and w has terminated.
	c.PrependReactor("list", "resourceclaims", func(clienttesting.Action) (bool, runtime.Object, error) {
		polls++
		switch polls {
		case 1:
			obj, err := tracker.Get(rulesGVR, "", "gpu-maintenance-node-a-gpu-3")
			if err != nil {
				t.Fatal(err)
			}
			r := obj.(*resourceapi.DeviceTaintRule)
			r.Status.Conditions = []metav1.Condition{{Type: resourceapi.DeviceTaintConditionEvictionInProgress, Status: metav1.ConditionTrue, Message: "1 pod needs to be evicted in 1 namespace."}}
			if err := tracker.Update(rulesGVR, r, ""); err != nil {
				t.Fatal(err)
			}
		case 2:
			if err := tracker.Delete(podsGVR, "team", "trainer"); err != nil {
				t.Fatal(err)
			}
			w := pods[1].DeepCopy()
			w.Status.Phase = corev1.PodSucceeded
			if err := tracker.Update(podsGVR, w, "team"); err != nil {
				t.Fatal(err)
			}
		}
		return false, nil, nil
	})
	a, out, _ := testApp(c)
	err := a.drain(context.Background(), c, Target{Node: "node-a", GPU: 3, HasGPU: true}, "drain", time.Hour)
	if err != nil {
		t.Fatalf("drain: %v\n%s", err, out)
	}
	for _, want := range []string{
		"node-a/gpu-3 tainted gpu.nvidia.com/maintenance=drain:NoExecute: 3 DeviceTaintRules created",
		"waiting for 2 pod(s): team/trainer (gpu-3-mig-1g10gb-0), team/w (gpu-3)",
		"eviction (rule gpu-maintenance-node-a-gpu-3): 1 pod needs to be evicted in 1 namespace.",
		"node-a/gpu-3 drained",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out.String(), "waiting for") != 1 {
		t.Errorf("unchanged pods printed again:\n%s", out)
	}
	rules, err := c.ResourceV1().DeviceTaintRules().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules.Items {
		if r.Spec.Taint.Effect != resourceapi.DeviceTaintEffectNoExecute || r.Spec.Taint.Value != "drain" {
			t.Errorf("rule %s taint %+v", r.Name, r.Spec.Taint)
		}
	}
}

func TestDrainTimesOut(t *testing.T) {
	claims, pods := drainFixture()
	c := fakeClient(t, nodeSlices(), claims, nil, pods)
	a, out, _ := testApp(c)
	err := a.drain(context.Background(), c, Target{Node: "node-a", GPU: 3, HasGPU: true}, "drain", time.Minute)
	if exitCode(err) != exitDrainTimeout {
		t.Fatalf("drain = %v (exit code %d), want exit code %d\n%s", err, exitCode(err), exitDrainTimeout, out)
	}
	want := "drain node-a/gpu-3 timed out after 1m0s: 2 pod(s) still on the devices: team/trainer (gpu-3-mig-1g10gb-0), team/w (gpu-3)"
	if err.Error() != want {
		t.Errorf("error %q\nwant  %q", err, want)
	}
}

func TestDrainRetriesAPIErrors(t *testing.T) {
	claims, pods := drainFixture()
	c := fakeClient(t, nodeSlices(), claims, nil, pods[2:])
	failures := 2
	c.PrependReactor("list", "resourceclaims", func(clienttesting.Action) (bool, runtime.Object, error) {
		if failures > 0 {
			failures--
			return true, nil, context.DeadlineExceeded
		}
		return false, nil, nil
	})
	a, out, errOut := testApp(c)
	if err := a.drain(context.Background(), c, Target{Node: "node-a", GPU: 3, HasGPU: true}, "drain", time.Hour); err != nil {
		t.Fatalf("drain: %v", err)
	}
	if strings.Count(errOut.String(), "warning: list ResourceClaims") != 2 || !strings.Contains(out.String(), "drained") {
		t.Errorf("stdout:\n%s\nstderr:\n%s", out, errOut)
	}
}

func TestEvictionLines(t *testing.T) {
	got := evictionLines(map[string][]string{
		"0 pods need to be evicted": {"r1", "r2"},
		"1 pod needs to be evicted": {"r3"},
	})
	want := []string{"eviction (2 rules): 0 pods need to be evicted", "eviction (rule r3): 1 pod needs to be evicted"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}
