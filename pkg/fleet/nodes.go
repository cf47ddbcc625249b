package fleet

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
)

// FleetLabel marks the Node objects the harness made, so that a later run
// can find and delete them.
const FleetLabel = "fleet.gpu-dra.test/node"

// leaseNamespace holds the nodes' heartbeats.
const leaseNamespace = corev1.NamespaceNodeLease

// nodeKeeper creates Node objects and keeps them Ready the way a kubelet
// does for the node lifecycle controller: a Ready condition and a Lease
// renewed well within the controller's grace period. It runs no pods: the
// workload marks its pods' phases itself.
type nodeKeeper struct {
	client kubernetes.Interface
	// renew is how often each node's Lease is renewed.
	renew time.Duration
}

// create makes the Node, its status and its Lease.
func (k *nodeKeeper) create(ctx context.Context, name string, labels map[string]string, taints []corev1.Taint) (*corev1.Node, error) {
	all := map[string]string{corev1.LabelHostname: name, corev1.LabelOSStable: "linux", FleetLabel: "true"}
	for key, v := range labels {
		all[key] = v
	}
	node, err := k.client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: all}, Spec: corev1.NodeSpec{Taints: taints}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create node %s: %w", name, err)
	}
	now := metav1.Now()
	res := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("128"),
		corev1.ResourceMemory: resource.MustParse("2Ti"),
		corev1.ResourcePods:   resource.MustParse("250"),
	}
	status := corev1.NodeStatus{
		Capacity:    res,
		Allocatable: res,
		Phase:       corev1.NodeRunning,
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "simulated by the fleet harness", LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}},
		NodeInfo:  corev1.NodeSystemInfo{KubeletVersion: "v1.37.2", OperatingSystem: "linux", Architecture: "amd64"},
	}
	// The controllers write new Nodes too (the TTL annotation): retry on conflict.
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := k.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Status = status
		node, err = k.client.CoreV1().Nodes().UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("set status of node %s: %w", name, err)
	}
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: leaseNamespace, OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "v1", Kind: "Node", Name: name, UID: node.UID,
		}}},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       ptr.To(name),
			LeaseDurationSeconds: ptr.To(int32(40)),
			RenewTime:            &metav1.MicroTime{Time: time.Now()},
		},
	}
	if _, err := k.client.CoordinationV1().Leases(leaseNamespace).Create(ctx, lease, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create lease of node %s: %w", name, err)
	}
	return node, nil
}

// keepAlive renews the Leases of nodes until ctx ends, each at its own
// phase of the period so that the writes are spread evenly.
func (k *nodeKeeper) keepAlive(ctx context.Context, nodes []string, wg *sync.WaitGroup) {
	logger := klog.FromContext(ctx)
	for _, name := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			timer := time.NewTimer(rand.N(k.renew))
			defer timer.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-timer.C:
				}
				if err := k.renewLease(ctx, name); err != nil && ctx.Err() == nil {
					logger.Error(err, "Renew node lease", "node", name)
				}
				timer.Reset(k.renew)
			}
		}()
	}
}

func (k *nodeKeeper) renewLease(ctx context.Context, name string) error {
	leases := k.client.CoordinationV1().Leases(leaseNamespace)
	lease, err := leases.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get lease of node %s: %w", name, err)
	}
	lease.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()}
	if _, err := leases.Update(ctx, lease, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("renew lease of node %s: %w", name, err)
	}
	return nil
}

// deleteFleet deletes every Node the harness made; their ResourceSlices
// and Leases go with them (owner references).
func deleteFleet(ctx context.Context, client kubernetes.Interface) error {
	err := client.CoreV1().Nodes().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: FleetLabel})
	if err != nil {
		return fmt.Errorf("delete the fleet's nodes: %w", err)
	}
	return nil
}
