// Package cdstatus computes a ComputeDomain's status from its daemon pods:
// one node per scheduled, running daemon pod, with a stable index within
// the node's clique, and the domain Ready when every node's daemon is.
package cdstatus

import (
	"reflect"
	"sort"

	corev1 "k8s.io/api/core/v1"

	cdv1 "github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
)

// Compute returns the status the domain should have. current is the status
// the domain has: indices of nodes that stay (same name and clique) are
// kept; a new node gets the lowest index free in its clique. cliqueOf gives
// a node's clique ID ("" when unknown). Pods without a node or an IP, and
// pods that are terminating or finished, are not nodes of the domain; of
// several pods on one node (a rolling update) the ready one, else the
// newest, counts. numNodes is the spec's NumNodes.
func Compute(current cdv1.ComputeDomainStatus, pods []*corev1.Pod, cliqueOf func(node string) string, numNodes int) cdv1.ComputeDomainStatus {
	byNode := map[string]*corev1.Pod{}
	for _, p := range pods {
		if p.Spec.NodeName == "" || p.Status.PodIP == "" || p.DeletionTimestamp != nil ||
			p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		if prev, ok := byNode[p.Spec.NodeName]; ok && !better(p, prev) {
			continue
		}
		byNode[p.Spec.NodeName] = p
	}

	type key struct {
		clique string
		index  int
	}
	kept := map[string]int{}
	used := map[key]bool{}
	for _, n := range current.Nodes {
		if n == nil || n.Index < 0 {
			continue
		}
		p, ok := byNode[n.Name]
		if !ok || cliqueOf(p.Spec.NodeName) != n.CliqueID || used[key{n.CliqueID, n.Index}] {
			continue
		}
		kept[n.Name] = n.Index
		used[key{n.CliqueID, n.Index}] = true
	}

	nodeNames := make([]string, 0, len(byNode))
	for name := range byNode {
		nodeNames = append(nodeNames, name)
	}
	sort.Strings(nodeNames)

	out := cdv1.ComputeDomainStatus{Status: cdv1.StatusNotReady}
	allReady := true
	for _, name := range nodeNames {
		p := byNode[name]
		clique := cliqueOf(name)
		idx, ok := kept[name]
		if !ok {
			for used[key{clique, idx}] {
				idx++
			}
			used[key{clique, idx}] = true
		}
		st := cdv1.StatusNotReady
		if podReady(p) {
			st = cdv1.StatusReady
		} else {
			allReady = false
		}
		out.Nodes = append(out.Nodes, &cdv1.ComputeDomainNode{
			Name: name, IPAddress: p.Status.PodIP, CliqueID: clique, Index: idx, Status: st,
		})
	}
	if len(out.Nodes) > 0 && allReady && len(out.Nodes) >= numNodes {
		out.Status = cdv1.StatusReady
	}
	return out
}

// better reports whether pod a should stand for its node rather than b.
func better(a, b *corev1.Pod) bool {
	if ra, rb := podReady(a), podReady(b); ra != rb {
		return ra
	}
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return b.CreationTimestamp.Before(&a.CreationTimestamp)
	}
	return a.Name > b.Name
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Equal reports whether two statuses are the same as written: nil and
// empty node lists are equal.
func Equal(a, b cdv1.ComputeDomainStatus) bool {
	if a.Status != b.Status || len(a.Nodes) != len(b.Nodes) {
		return false
	}
	for i := range a.Nodes {
		if !reflect.DeepEqual(a.Nodes[i], b.Nodes[i]) {
			return false
		}
	}
	return true
}
