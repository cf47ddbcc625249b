package fleet

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// SteerKey is the label and NoSchedule taint that docs/fleet.md's recipe
// puts on the nodes offering MIG, with the key an operator would choose.
// A steered fleet gives the pods of MIG workloads its toleration and a
// required node affinity to its label: whole-GPU pods then never try a
// MIG node (the taint filter refuses it before the DRA filter walks its
// devices), and MIG pods try only MIG nodes.
const SteerKey = "fleet.gpu-dra.test/mig-node"

// isMIGNode reports whether node i of a fleet of n offers MIG when
// migNodes of them do, spread evenly: exactly migNodes of the indexes
// 0..n-1 satisfy it (every tenth node for 100 of 1000).
func isMIGNode(i, n, migNodes int) bool {
	return migNodes > 0 && (i*migNodes)%n < migNodes
}

// steeredWorkload reports whether the recipe sends a workload's pods to
// the MIG nodes: those whose claims ask for MIG devices only.
// "first-available" may take a whole GPU and is not steered.
func steeredWorkload(workload string) bool {
	return strings.HasPrefix(workload, "mig-")
}

// steerPod adds the recipe's toleration and node affinity to a pod.
func steerPod(pod *corev1.Pod) {
	pod.Spec.Tolerations = append(pod.Spec.Tolerations, corev1.Toleration{
		Key: SteerKey, Operator: corev1.TolerationOpEqual, Value: "true", Effect: corev1.TaintEffectNoSchedule,
	})
	pod.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: SteerKey, Operator: corev1.NodeSelectorOpIn, Values: []string{"true"}}},
		}}},
	}}
}

// steerTaints are the taints of a node in a fleet: the recipe's on a MIG
// node of a steered fleet, none otherwise.
func steerTaints(steer, migNode bool) []corev1.Taint {
	if !steer || !migNode {
		return nil
	}
	return []corev1.Taint{{Key: SteerKey, Value: "true", Effect: corev1.TaintEffectNoSchedule}}
}

// misplaced lists the pods of a steered workload that are not where the
// recipe puts them: a MIG workload's on a node without MIG, another's on
// a MIG node. Pods not bound are not listed (the burst counts them).
func (h *harness) misplaced(pods []string, workload string) []string {
	var out []string
	for _, pod := range pods {
		node, ok := h.pods.nodeOf(pod)
		if !ok {
			continue
		}
		if want, got := steeredWorkload(workload), h.migNodes[node]; want != got {
			out = append(out, fmt.Sprintf("pod %s (%s) on node %s, which offers MIG: %t", pod, workload, node, got))
		}
	}
	return out
}
