//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestChurnWithForcedDeletion fills the node with a Deployment of eight
// whole-GPU pods and force-deletes pods (grace period 0) one after another
// and two at once: each replacement gets the GPU of a pod whose claim is
// still prepared when it is allocated, and must run without waiting out
// the kubelet's retry backoff; nothing leaks.
func TestChurnWithForcedDeletion(t *testing.T) {
	const ns = "gpu-churn"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata: {name: gpu-churn}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: gpu, namespace: gpu-churn}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}]}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: churn, namespace: gpu-churn}
spec:
  replicas: 8
  selector: {matchLabels: {app: churn}}
  template:
    metadata: {labels: {app: churn}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: ctr, image: busybox:local, imagePullPolicy: Never, command: ["sleep", "3600"], resources: {claims: [{name: gpu}]}}
      resourceClaims: [{name: gpu, resourceClaimTemplateName: gpu}]
`)
	running := func() ([]corev1.Pod, error) {
		pods, err := client.CoreV1().Pods(ns).List(ctx(), metav1.ListOptions{LabelSelector: "app=churn"})
		if err != nil {
			return nil, err
		}
		var out []corev1.Pod
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
				out = append(out, p)
			}
		}
		return out, nil
	}
	waitAll := func(what string) time.Duration {
		start := time.Now()
		eventually(t, 120*time.Second, what, func() (bool, error) {
			pods, err := running()
			return len(pods) == 8, errors.Join(err, fmt.Errorf("%d of 8 running", len(pods)))
		})
		return time.Since(start)
	}
	waitAll("eight pods on eight GPUs")
	zero := int64(0)
	for round, n := range []int{1, 1, 2, 1, 3} {
		pods, err := running()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods[:n] {
			if err := client.CoreV1().Pods(ns).Delete(ctx(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
				t.Fatal(err)
			}
		}
		took := waitAll(fmt.Sprintf("round %d: %d replacements running", round, n))
		t.Logf("round %d: %d pods force-deleted, all 8 running again after %s", round, n, took.Round(100*time.Millisecond))
	}
	eventually(t, 60*time.Second, "one prepared claim and one CDI spec per pod", func() (bool, error) {
		cp, specs := checkpointClaims(t), cdiSpecs(t)
		return len(cp) == 8 && len(specs) == 8, fmt.Errorf("%d claims in the checkpoint, %d CDI specs", len(cp), len(specs))
	})
}
