package fleet

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"
)

// TestIsMIGNodeSpreadsExactlyThatMany: for fleets of several sizes, the
// nodes picked to offer MIG are exactly as many as asked, none when none
// are asked, and spread (not the first ones).
func TestIsMIGNodeSpreadsExactlyThatMany(t *testing.T) {
	for _, tc := range []struct{ nodes, mig int }{
		{1000, 100}, {50, 5}, {20, 3}, {7, 7}, {6, 4}, {10, 0}, {1, 1},
	} {
		t.Run(fmt.Sprintf("%d of %d", tc.mig, tc.nodes), func(t *testing.T) {
			var picked []int
			for i := range tc.nodes {
				if isMIGNode(i, tc.nodes, tc.mig) {
					picked = append(picked, i)
				}
			}
			if len(picked) != tc.mig {
				t.Fatalf("%d nodes picked, want %d: %v", len(picked), tc.mig, picked)
			}
			if tc.mig > 1 && tc.mig < tc.nodes && picked[len(picked)-1] < tc.nodes/2 {
				t.Errorf("the MIG nodes are not spread: %v", picked)
			}
		})
	}
}

// TestSteeredPodsLandOnlyWhereTheRecipeSays checks the recipe as the
// scheduler's node-affinity and taint filters apply it: a steered MIG pod
// tolerates the MIG node's taint and matches only MIG nodes; a whole-GPU
// pod is not steered and does not tolerate the taint.
func TestSteeredPodsLandOnlyWhereTheRecipeSays(t *testing.T) {
	migNode := &corev1.Node{Spec: corev1.NodeSpec{Taints: steerTaints(true, true)}}
	migNode.Labels = map[string]string{SteerKey: "true"}
	wholeNode := &corev1.Node{Spec: corev1.NodeSpec{Taints: steerTaints(true, false)}}
	if len(wholeNode.Spec.Taints) != 0 || len(steerTaints(false, true)) != 0 {
		t.Fatalf("taints on a node without MIG or in a fleet not steered: %v %v", wholeNode.Spec.Taints, steerTaints(false, true))
	}
	for _, tc := range []struct {
		workload          string
		onMIG, onWholeGPU bool
	}{
		{"mig-1g", true, false},
		{"mig-7g", true, false},
		{"whole", false, true},
		{"first-available", false, true},
	} {
		t.Run(tc.workload, func(t *testing.T) {
			pod := &corev1.Pod{}
			if steeredWorkload(tc.workload) {
				steerPod(pod)
			}
			fits := func(n *corev1.Node) bool {
				for _, taint := range n.Spec.Taints {
					tolerated := false
					for _, tol := range pod.Spec.Tolerations {
						tolerated = tolerated || tol.ToleratesTaint(klog.FromContext(t.Context()), &taint, false)
					}
					if !tolerated {
						return false
					}
				}
				ok, err := nodeaffinity.GetRequiredNodeAffinity(pod).Match(n)
				if err != nil {
					t.Fatal(err)
				}
				return ok
			}
			if got := fits(migNode); got != tc.onMIG {
				t.Errorf("fits a MIG node: %t, want %t", got, tc.onMIG)
			}
			if got := fits(wholeNode); got != tc.onWholeGPU {
				t.Errorf("fits a node without MIG: %t, want %t", got, tc.onWholeGPU)
			}
		})
	}
}

// TestMisplacedNamesPodsOffTheRecipe: the burst check lists a MIG pod on a
// node without MIG and a whole-GPU pod on a MIG node, and nothing else.
func TestMisplacedNamesPodsOffTheRecipe(t *testing.T) {
	h := &harness{migNodes: map[string]bool{"n-mig": true}, pods: &podTracker{
		boundAt: map[string]time.Time{"a": {}, "b": {}, "c": {}, "d": {}},
		node:    map[string]string{"a": "n-mig", "b": "n-whole", "c": "n-mig", "d": "n-whole"},
	}}
	got := h.misplaced([]string{"a", "b", "pending"}, "mig-1g")
	if len(got) != 1 || !strings.Contains(got[0], "pod b ") {
		t.Errorf("MIG pods misplaced: %v, want only b", got)
	}
	got = h.misplaced([]string{"c", "d"}, "whole")
	if len(got) != 1 || !strings.Contains(got[0], "pod c ") {
		t.Errorf("whole-GPU pods misplaced: %v, want only c", got)
	}
	if got := h.misplaced([]string{"a"}, "mig-3g"); !reflect.DeepEqual(got, []string(nil)) {
		t.Errorf("a MIG pod on a MIG node is misplaced: %v", got)
	}
}
