package cdstatus

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	cdv1 "github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
)

type podSpec struct {
	name, node, ip string
	ready          bool
	created        int
	deleting       bool
}

func pods(specs ...podSpec) []*corev1.Pod {
	var out []*corev1.Pod
	for _, s := range specs {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: s.name, CreationTimestamp: metav1.NewTime(time.Unix(int64(s.created), 0))},
			Spec:       corev1.PodSpec{NodeName: s.node},
			Status:     corev1.PodStatus{PodIP: s.ip, Phase: corev1.PodRunning},
		}
		st := corev1.ConditionFalse
		if s.ready {
			st = corev1.ConditionTrue
		}
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}
		if s.deleting {
			p.DeletionTimestamp = &metav1.Time{}
		}
		out = append(out, p)
	}
	return out
}

func node(name, ip, clique string, index int, ready bool) *cdv1.ComputeDomainNode {
	st := cdv1.StatusNotReady
	if ready {
		st = cdv1.StatusReady
	}
	return &cdv1.ComputeDomainNode{Name: name, IPAddress: ip, CliqueID: clique, Index: index, Status: st}
}

func TestCompute(t *testing.T) {
	cliques := map[string]string{"a": "c1", "b": "c1", "c": "c1", "d": "c2"}
	cliqueOf := func(n string) string { return cliques[n] }
	tests := []struct {
		name     string
		current  []*cdv1.ComputeDomainNode
		pods     []*corev1.Pod
		numNodes int
		want     cdv1.ComputeDomainStatus
	}{
		{
			name: "no pods: NotReady, no nodes",
			want: cdv1.ComputeDomainStatus{Status: cdv1.StatusNotReady},
		},
		{
			name: "new nodes get the lowest free index per clique, sorted by name",
			pods: pods(podSpec{name: "p-b", node: "b", ip: "10.0.0.2", ready: true}, podSpec{name: "p-a", node: "a", ip: "10.0.0.1", ready: true}, podSpec{name: "p-d", node: "d", ip: "10.0.0.4", ready: true}),
			want: cdv1.ComputeDomainStatus{Status: cdv1.StatusReady, Nodes: []*cdv1.ComputeDomainNode{
				node("a", "10.0.0.1", "c1", 0, true), node("b", "10.0.0.2", "c1", 1, true), node("d", "10.0.0.4", "c2", 0, true),
			}},
		},
		{
			name:    "indices are kept; a new node fills the gap a departed one left",
			current: []*cdv1.ComputeDomainNode{node("a", "10.0.0.1", "c1", 0, true), node("b", "10.0.0.2", "c1", 1, true), node("c", "10.0.0.3", "c1", 2, true)},
			pods:    pods(podSpec{name: "p-c", node: "c", ip: "10.0.0.3", ready: true}, podSpec{name: "p-b2", node: "b", ip: "10.0.0.9", ready: false}, podSpec{name: "p-d", node: "d", ip: "10.0.0.4", ready: true}),
			want: cdv1.ComputeDomainStatus{Status: cdv1.StatusNotReady, Nodes: []*cdv1.ComputeDomainNode{
				node("b", "10.0.0.9", "c1", 1, false), node("c", "10.0.0.3", "c1", 2, true), node("d", "10.0.0.4", "c2", 0, true),
			}},
		},
		{
			name:    "a node that left and came back to a freed lower slot gets the lowest free",
			current: []*cdv1.ComputeDomainNode{node("b", "10.0.0.2", "c1", 1, true)},
			pods:    pods(podSpec{name: "p-b", node: "b", ip: "10.0.0.2", ready: true}, podSpec{name: "p-c", node: "c", ip: "10.0.0.3", ready: true}),
			want: cdv1.ComputeDomainStatus{Status: cdv1.StatusReady, Nodes: []*cdv1.ComputeDomainNode{
				node("b", "10.0.0.2", "c1", 1, true), node("c", "10.0.0.3", "c1", 0, true),
			}},
		},
		{
			name:     "fewer nodes than numNodes: NotReady",
			pods:     pods(podSpec{name: "p-a", node: "a", ip: "10.0.0.1", ready: true}),
			numNodes: 2,
			want:     cdv1.ComputeDomainStatus{Status: cdv1.StatusNotReady, Nodes: []*cdv1.ComputeDomainNode{node("a", "10.0.0.1", "c1", 0, true)}},
		},
		{
			name: "pods without node or IP, and terminating pods, are no nodes",
			pods: pods(podSpec{name: "p-x", ip: "10.0.0.7"}, podSpec{name: "p-a", node: "a"}, podSpec{name: "p-b", node: "b", ip: "10.0.0.2", ready: true, deleting: true}),
			want: cdv1.ComputeDomainStatus{Status: cdv1.StatusNotReady},
		},
		{
			name: "two pods on one node: the ready one counts",
			pods: pods(podSpec{name: "new", node: "a", ip: "10.0.0.8", created: 2}, podSpec{name: "old", node: "a", ip: "10.0.0.1", ready: true, created: 1}),
			want: cdv1.ComputeDomainStatus{Status: cdv1.StatusReady, Nodes: []*cdv1.ComputeDomainNode{node("a", "10.0.0.1", "c1", 0, true)}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Compute(cdv1.ComputeDomainStatus{Nodes: tt.current}, tt.pods, cliqueOf, tt.numNodes)
			if !Equal(tt.want, got) {
				t.Errorf("status:\n got %s\nwant %s", show(got), show(tt.want))
			}
		})
	}
}

func TestEqual(t *testing.T) {
	a := cdv1.ComputeDomainStatus{Status: cdv1.StatusReady, Nodes: []*cdv1.ComputeDomainNode{node("a", "1", "c", 0, true)}}
	b := cdv1.ComputeDomainStatus{Status: cdv1.StatusReady, Nodes: []*cdv1.ComputeDomainNode{node("a", "1", "c", 1, true)}}
	if Equal(a, b) {
		t.Error("different indices are equal")
	}
	if !Equal(cdv1.ComputeDomainStatus{Status: "x", Nodes: []*cdv1.ComputeDomainNode{}}, cdv1.ComputeDomainStatus{Status: "x"}) {
		t.Error("empty and nil node lists differ")
	}
}

func show(s cdv1.ComputeDomainStatus) string {
	out := s.Status + " ["
	for _, n := range s.Nodes {
		out += fmt.Sprintf(" %+v", *n)
	}
	return out + " ]"
}
