package fleet

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"

	cdslices "github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/slices"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// TestComputeDomainClasses: the DeviceClasses select, among a node's
// ComputeDomain devices, the channel for the channel class and the daemon
// for the daemon class, and nothing of the GPU driver.
func TestComputeDomainClasses(t *testing.T) {
	ctx := context.Background()
	devices := cdslices.Devices(sim.DefaultFabricClusterUUID + ".1")
	want := map[string]string{names.ChannelDeviceClass: names.ChannelDevice, names.DomainDaemonDeviceClass: names.DomainDaemonDevice}
	classes := computeDomainClasses()
	if len(classes) != len(want) {
		t.Fatalf("%d classes, want %d", len(classes), len(want))
	}
	for _, class := range classes {
		expr := class.Spec.Selectors[0].CEL.Expression
		compiled := cel.GetCompiler(cel.Features{}).CompileCELExpression(expr, cel.Options{})
		if compiled.Error != nil {
			t.Fatalf("class %s: compile %q: %v", class.Name, expr, compiled.Error)
		}
		for _, driver := range []string{names.ComputeDomainDriverName, names.DriverName} {
			for _, d := range devices {
				got, _, err := compiled.DeviceMatches(ctx, cel.Device{Driver: driver, Attributes: d.Attributes})
				if err != nil {
					t.Fatalf("class %s, device %s: %v", class.Name, d.Name, err)
				}
				if wantMatch := driver == names.ComputeDomainDriverName && want[class.Name] == d.Name; got != wantMatch {
					t.Errorf("class %s, driver %s, device %s: matches %t, want %t", class.Name, driver, d.Name, got, wantMatch)
				}
			}
		}
	}
}

// TestClique: nodes are placed in cliques of CliqueSize, in order, all in
// one without a size.
func TestClique(t *testing.T) {
	tests := []struct {
		size, node int
		want       string
	}{
		{size: 0, node: 0, want: sim.DefaultFabricClusterUUID + ".1"},
		{size: 0, node: 63, want: sim.DefaultFabricClusterUUID + ".1"},
		{size: 18, node: 17, want: sim.DefaultFabricClusterUUID + ".1"},
		{size: 18, node: 18, want: sim.DefaultFabricClusterUUID + ".2"},
		{size: 18, node: 63, want: sim.DefaultFabricClusterUUID + ".4"},
	}
	for _, tt := range tests {
		r := &ComputeDomainRun{CliqueSize: tt.size}
		if got := r.clique(tt.node); got != tt.want {
			t.Errorf("clique size %d, node %d: %s, want %s", tt.size, tt.node, got, tt.want)
		}
	}
}

// TestDaemonIP: every node of a large fleet gets its own daemon address.
func TestDaemonIP(t *testing.T) {
	seen := map[string]int{}
	for i := range 70000 {
		ip := daemonIP(i)
		if j, dup := seen[ip]; dup {
			t.Fatalf("nodes %d and %d both get %s", j, i, ip)
		}
		seen[ip] = i
	}
	if got := daemonIP(257); got != "10.64.1.1" {
		t.Errorf("daemonIP(257) = %s, want 10.64.1.1", got)
	}
}

// TestSetCondition: a condition is added once, and its transition time
// moves only when its status changes.
func TestSetCondition(t *testing.T) {
	t0, t1 := metav1.NewTime(time.Unix(100, 0)), metav1.NewTime(time.Unix(200, 0))
	var s corev1.PodStatus
	setCondition(&s, corev1.PodReady, corev1.ConditionFalse, t0)
	setCondition(&s, corev1.PodReady, corev1.ConditionFalse, t1)
	if len(s.Conditions) != 1 || !s.Conditions[0].LastTransitionTime.Equal(&t0) {
		t.Fatalf("unchanged status: %+v", s.Conditions)
	}
	setCondition(&s, corev1.PodReady, corev1.ConditionTrue, t1)
	if len(s.Conditions) != 1 || s.Conditions[0].Status != corev1.ConditionTrue || !s.Conditions[0].LastTransitionTime.Equal(&t1) {
		t.Fatalf("changed status: %+v", s.Conditions)
	}
}

// TestTimeline: milestones are the first and last key of an event, only
// once enough keys saw it, from the start.
func TestTimeline(t *testing.T) {
	start := time.Unix(1000, 0)
	tl := newTimeline(start)
	tl.mark("e", "a", start.Add(2*time.Second))
	tl.mark("e", "b", start.Add(5*time.Second))
	tl.mark("e", "a", start.Add(9*time.Second)) // not the first time: ignored
	tests := []struct {
		name string
		got  float64
		want float64
	}{
		{"first", tl.first("e", 0), 2},
		{"last of 2", tl.last("e", 2), 5},
		{"last of 3", tl.last("e", 3), -1},
		{"no event", tl.last("other", 0), -1},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, tt.got, tt.want)
		}
	}
	if !tl.has("e", "b") || tl.has("e", "c") || tl.count("e") != 2 {
		t.Errorf("has/count wrong")
	}
}

// TestDaemonKeeper: a bound daemon pod is marked Running with its node's
// address and not Ready; in quorum mode it turns Ready once the domain's
// status lists its node, also when the listing came first; a terminating
// pod is deleted.
func TestDaemonKeeper(t *testing.T) {
	_, tctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(tctx)
	defer cancel()
	pod := func(name, node string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: DriverNamespace, UID: types.UID(name), Labels: map[string]string{names.ComputeDomainLabel: "uid"}},
			Spec:       corev1.PodSpec{NodeName: node},
			Status:     corev1.PodStatus{Phase: corev1.PodPending},
		}
	}
	client := fake.NewClientset(pod("d-a", "node-a"), pod("d-b", "node-b"))
	tl := newTimeline(time.Now())
	k := &daemonKeeper{client: client, namespace: DriverNamespace, ready: DaemonReadyQuorum, probe: 10 * time.Millisecond,
		nodeIndex: map[string]int{"node-a": 0, "node-b": 1}, tl: tl}
	// node-b is listed before its pod is seen running.
	tl.mark(evListed, "node-b", time.Now())
	if err := k.start(ctx); err != nil {
		t.Fatal(err)
	}
	get := func(name string) *corev1.Pod {
		p, err := client.CoreV1().Pods(DriverNamespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) { return cond(), nil }); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	ready := func(p *corev1.Pod) bool {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady {
				return c.Status == corev1.ConditionTrue
			}
		}
		return false
	}
	waitFor("d-a running", func() bool { return get("d-a").Status.Phase == corev1.PodRunning })
	if p := get("d-a"); p.Status.PodIP != daemonIP(0) || ready(p) {
		t.Fatalf("d-a: IP %s ready %t, want %s and not ready", p.Status.PodIP, ready(p), daemonIP(0))
	}
	waitFor("d-b ready (listed first)", func() bool { return ready(get("d-b")) })
	tl.mark(evListed, "node-a", time.Now())
	k.listed(ctx, []string{"node-a"})
	waitFor("d-a ready once listed", func() bool { return ready(get("d-a")) })
	// The keeper marks the timeline after its status write returns, so a
	// Ready pod can be seen a moment before its mark.
	waitFor("timeline: 2 running, 2 ready", func() bool {
		return tl.count(evDaemonReady) == 2 && tl.count(evDaemonRunning) == 2
	})

	terminating := get("d-a")
	terminating.DeletionTimestamp = ptr.To(metav1.Now())
	if _, err := client.CoreV1().Pods(DriverNamespace).Update(ctx, terminating, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("d-a deleted", func() bool {
		_, err := client.CoreV1().Pods(DriverNamespace).Get(ctx, "d-a", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
}
