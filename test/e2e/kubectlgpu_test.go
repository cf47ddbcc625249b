//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// kubectlGPUReport is the part of `kubectl gpu ls -o json` (GPUReport) the
// test reads. It is declared here, not imported, as a script would: the
// field names are the tool's stable interface.
type kubectlGPUReport struct {
	Kind  string `json:"kind"`
	Nodes []struct {
		Name string `json:"name"`
		GPUs []struct {
			Name    string `json:"name"`
			Minor   int    `json:"minor"`
			Devices []struct {
				Name   string `json:"name"`
				Type   string `json:"type"`
				Taints []struct {
					Key    string `json:"key"`
					Value  string `json:"value"`
					Effect string `json:"effect"`
					Source string `json:"source"`
					Rule   string `json:"rule"`
				} `json:"taints"`
			} `json:"devices"`
		} `json:"gpus"`
	} `json:"nodes"`
}

// buildKubectlGPU builds the plugin binary into a temporary directory.
func buildKubectlGPU(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kubectl-gpu")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/kubectl-gpu")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_CFLAGS=-Wno-deprecated-declarations")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/kubectl-gpu: %v\n%s", err, out)
	}
	return bin
}

// runKubectlGPU runs the binary as the cluster admin and returns stdout,
// stderr and the exit code.
func runKubectlGPU(t *testing.T, bin string, args ...string) (string, string, int) {
	t.Helper()
	full := append([]string{"--kubeconfig", filepath.Join(runDir, "kubeconfig/admin.kubeconfig")}, args...)
	cmd := exec.Command(bin, full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &exit):
		return stdout.String(), stderr.String(), exit.ExitCode()
	}
	t.Fatalf("kubectl-gpu %s: %v", strings.Join(args, " "), err)
	return "", "", -1
}

// maintenanceTaints returns, for every device of GPU gpu on our node, the
// effects of its gpu.nvidia.com/maintenance taints from rules, as
// `kubectl gpu ls -o json` reports them.
func maintenanceTaints(t *testing.T, bin, gpu string) map[string][]string {
	t.Helper()
	stdout, stderr, code := runKubectlGPU(t, bin, "ls", nodeName+"/"+gpu, "-o", "json")
	if code != 0 {
		t.Fatalf("kubectl-gpu ls: exit code %d: %s", code, stderr)
	}
	var report kubectlGPUReport
	if err := json.Unmarshal([]byte(stdout), &report); err != nil {
		t.Fatalf("kubectl-gpu ls -o json: %v\n%s", err, stdout)
	}
	if report.Kind != "GPUReport" || len(report.Nodes) != 1 || len(report.Nodes[0].GPUs) != 1 || report.Nodes[0].GPUs[0].Name != gpu {
		t.Fatalf("report for %s/%s: %s", nodeName, gpu, stdout)
	}
	out := map[string][]string{}
	for _, d := range report.Nodes[0].GPUs[0].Devices {
		out[d.Name] = nil
		for _, tn := range d.Taints {
			if tn.Key == "gpu.nvidia.com/maintenance" && tn.Source == "rule" {
				out[d.Name] = append(out[d.Name], tn.Effect)
			}
		}
	}
	return out
}

// TestKubectlGPU drains the GPU of one pod with the kubectl plugin: that pod
// is evicted, a pod on another GPU and a MIG pod keep running, the GPU and
// its MIG devices show the maintenance taint, new work avoids the GPU, and
// untaint removes the rules again.
func TestKubectlGPU(t *testing.T) {
	const ns = "gpu-kubectl"
	bin := buildKubectlGPU(t)
	t.Cleanup(func() {
		cleanNamespace(t, ns)
		// Deletes every rule kubectl-gpu made for the node, if any is left.
		if out, stderr, code := runKubectlGPU(t, bin, "untaint", nodeName); code != 0 {
			t.Errorf("cleanup: kubectl-gpu untaint: exit code %d: %s%s", code, out, stderr)
		}
	})

	// Unknown nodes and GPUs are usage errors: exit code 2.
	for _, args := range [][]string{{"ls", "no-such-node"}, {"drain", "no-such-node/gpu-0", "--timeout=5s"}, {"taint", nodeName + "/gpu-99", "--reason=x"}} {
		_, stderr, code := runKubectlGPU(t, bin, args...)
		if code != 2 || !strings.HasPrefix(stderr, "error: unknown") {
			t.Errorf("kubectl-gpu %s: exit code %d, stderr %q; want 2 and \"error: unknown …\"", strings.Join(args, " "), code, stderr)
		}
	}

	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata: {name: gpu-kubectl}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: one-gpu, namespace: gpu-kubectl}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}]}}}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: one-mig, namespace: gpu-kubectl}
spec:
  spec:
    devices:
      requests:
      - name: gpu
        exactly:
          deviceClassName: mig.nvidia.com
          selectors:
          - cel: {expression: 'device.attributes["gpu.nvidia.com"].profile == "1g.10gb"'}
`)
	applyYAML(t, claimPod("gpu-kubectl", "pod-a", "one-gpu")+claimPod("gpu-kubectl", "pod-b", "one-gpu")+claimPod("gpu-kubectl", "pod-mig", "one-mig"))
	podA := waitPodRunning(t, ns, "pod-a")
	podB := waitPodRunning(t, ns, "pod-b")
	podMIG := waitPodRunning(t, ns, "pod-mig")
	gpuA := claimOf(t, podA, "gpu").Status.Allocation.Devices.Results[0].Device
	gpuB := claimOf(t, podB, "gpu").Status.Allocation.Devices.Results[0].Device
	migDev := claimOf(t, podMIG, "gpu").Status.Allocation.Devices.Results[0].Device
	t.Logf("pod-a on %s, pod-b on %s, pod-mig on %s", gpuA, gpuB, migDev)
	if gpuA == gpuB || strings.HasPrefix(migDev, gpuA+"-") {
		t.Fatalf("pods share a GPU: %s, %s, %s", gpuA, gpuB, migDev)
	}

	start := time.Now()
	stdout, stderr, code := runKubectlGPU(t, bin, "drain", nodeName+"/"+gpuA, "--timeout=90s", "--reason=e2e-drain")
	t.Logf("kubectl-gpu drain (%s):\n%s%s", time.Since(start).Round(time.Millisecond), stdout, stderr)
	if code != 0 || !strings.Contains(stdout, "drained") {
		t.Fatalf("drain: exit code %d", code)
	}

	// pod-a is gone; pod-b and the MIG pod still run.
	p, err := client.CoreV1().Pods(ns).Get(ctx(), "pod-a", metav1.GetOptions{})
	if err == nil && p.UID == podA.UID && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
		t.Errorf("pod-a still %s after drain", p.Status.Phase)
	} else if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	for _, name := range []string{"pod-b", "pod-mig"} {
		p, err := client.CoreV1().Pods(ns).Get(ctx(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
			t.Errorf("%s: phase %s, deletion %v after draining %s", name, p.Status.Phase, p.DeletionTimestamp, gpuA)
		}
	}

	// The GPU and every MIG device on it carry the NoExecute maintenance
	// taint; the other GPU does not.
	taints := maintenanceTaints(t, bin, gpuA)
	migs := 0
	for dev, effects := range taints {
		if strings.HasPrefix(dev, gpuA+"-mig-") {
			migs++
		}
		if len(effects) != 1 || effects[0] != "NoExecute" {
			t.Errorf("%s: maintenance taints %v, want [NoExecute]", dev, effects)
		}
	}
	if _, ok := taints[gpuA]; !ok || migs == 0 {
		t.Errorf("ls shows %d devices of %s (%d MIG): %v", len(taints), gpuA, migs, taints)
	}
	for dev, effects := range maintenanceTaints(t, bin, gpuB) {
		if len(effects) > 0 {
			t.Errorf("%s on the other GPU has maintenance taints %v", dev, effects)
		}
	}

	// New work avoids the drained GPU.
	applyYAML(t, claimPod("gpu-kubectl", "pod-c", "one-gpu"))
	podC := waitPodRunning(t, ns, "pod-c")
	if got := claimOf(t, podC, "gpu").Status.Allocation.Devices.Results[0].Device; got == gpuA {
		t.Errorf("pod-c got the drained GPU %s", got)
	}

	// untaint removes the rules; a second untaint has nothing to do.
	stdout, stderr, code = runKubectlGPU(t, bin, "untaint", nodeName+"/"+gpuA)
	if code != 0 || !strings.Contains(stdout, fmt.Sprintf("%d DeviceTaintRules deleted", len(taints))) {
		t.Fatalf("untaint: exit code %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	rules, err := client.ResourceV1().DeviceTaintRules().List(ctx(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/managed-by=kubectl-gpu"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rules.Items) != 0 {
		t.Errorf("%d DeviceTaintRules left after untaint", len(rules.Items))
	}
	for dev, effects := range maintenanceTaints(t, bin, gpuA) {
		if len(effects) > 0 {
			t.Errorf("%s still has maintenance taints %v after untaint", dev, effects)
		}
	}
	stdout, _, code = runKubectlGPU(t, bin, "untaint", nodeName+"/"+gpuA)
	if code != 0 || !strings.Contains(stdout, "no DeviceTaintRules") {
		t.Errorf("second untaint: exit code %d, stdout %q", code, stdout)
	}
}
