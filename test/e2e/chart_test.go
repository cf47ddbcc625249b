//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// TestChartAgainstTheAPIServer renders the Helm chart (test/helm/check.sh
// lints it and provides helm), has the real API server validate every
// object (server-side dry run, CEL of the admission policy included), and
// proves the node-scoped slice policy: the plugin's identity on one node
// may write that node's ResourceSlices and is refused another node's.
func TestChartAgainstTheAPIServer(t *testing.T) {
	helm := helmBinary(t)
	const ns = "gpu-dra-chart"
	rendered, err := exec.Command(helm, "template", "e2e", filepath.Join(repoRoot, "deployments/helm/gpu-dra-driver"),
		"--namespace", ns, "--kube-version", "1.37.2", "--set", "deviceClasses.create=false").Output()
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	f := filepath.Join(t.TempDir(), "chart.yaml")
	if err := os.WriteFile(f, rendered, 0o600); err != nil {
		t.Fatal(err)
	}
	applyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n")
	t.Cleanup(func() {
		kubectlErr("delete", "-f", f, "--ignore-not-found", "--wait=false")
		cleanNamespace(t, ns)
	})
	if out, err := kubectlErr("apply", "--dry-run=server", "-f", f); err != nil {
		t.Fatalf("the API server refuses the chart's objects: %v\n%s", err, out)
	}
	// Only the plugin's identity and the policy for real: no pods.
	policyOnly, err := exec.Command(helm, "template", "e2e", filepath.Join(repoRoot, "deployments/helm/gpu-dra-driver"),
		"--namespace", ns, "--kube-version", "1.37.2", "--set", "deviceClasses.create=false", "--set", "webhook.enabled=false",
		"--show-only", "templates/slice-policy.yaml", "--show-only", "templates/kubelet-plugin.yaml").Output()
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	var keep []string
	for _, doc := range strings.Split(string(policyOnly), "\n---") {
		if !strings.Contains(doc, "kind: DaemonSet") {
			keep = append(keep, doc)
		}
	}
	applyYAML(t, strings.Join(keep, "\n---"))

	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(runDir, "kubeconfig/admin.kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	asPluginOn := func(node string) kubernetes.Interface {
		c := rest.CopyConfig(cfg)
		c.Impersonate = rest.ImpersonationConfig{
			UserName: "system:serviceaccount:" + ns + ":e2e-kubelet-plugin",
			Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
			Extra:    map[string][]string{"authentication.kubernetes.io/node-name": {node}},
		}
		return kubernetes.NewForConfigOrDie(c)
	}
	slice := func(node string) *resourceapi.ResourceSlice {
		return &resourceapi.ResourceSlice{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "chart-e2e-"},
			Spec: resourceapi.ResourceSliceSpec{Driver: "gpu.nvidia.com", NodeName: &node,
				Pool:    resourceapi.ResourcePool{Name: node, ResourceSliceCount: 1},
				Devices: []resourceapi.Device{{Name: "gpu-0"}}},
		}
	}
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	if _, err := asPluginOn("node-a").ResourceV1().ResourceSlices().Create(ctx(), slice("node-a"), dryRun); err != nil {
		t.Errorf("the plugin on node-a may not write node-a's slice: %v", err)
	}
	// A new policy takes a moment to be enforced.
	eventually(t, 30*time.Second, "the plugin on node-a refused node-b's slice", func() (bool, error) {
		_, err := asPluginOn("node-a").ResourceV1().ResourceSlices().Create(ctx(), slice("node-b"), dryRun)
		return err != nil && strings.Contains(err.Error(), "may only write gpu.nvidia.com ResourceSlices of its own node"), err
	})
}

// helmBinary lints the chart (test/helm/check.sh) and returns the helm it
// built.
func helmBinary(t *testing.T) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(repoRoot, "test/helm/check.sh")).Output()
	if err != nil {
		t.Fatalf("test/helm/check.sh: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

// TestChartInstallsTheDriver stops the harness's plugin (its release keeps
// the webhook and the classes) for a second release installed with the
// chart's defaults but for the local paths: the DaemonSet's plugin
// registers with the kubelet, publishes the node's slices through the
// node-scoped admission policy, and prepares a claim for a pod; helm
// uninstall removes it, and the plugin, seeing its DaemonSet gone, removes
// the node's slices. The simulated node, the CDI directory and the
// kubelet's directories are the local cluster's, given as chart values.
func TestChartInstallsTheDriver(t *testing.T) {
	helm := helmBinary(t)
	if out, err := exec.Command(filepath.Join(repoRoot, "test/cluster/image.sh")).CombinedOutput(); err != nil {
		t.Fatalf("image.sh: %v\n%s", err, out)
	}
	useChartOnTheNode(t)
	const ns = "gpu-dra-helm"
	kubeconfig := filepath.Join(runDir, "kubeconfig/admin.kubeconfig")
	args := append([]string{"install", "e2e", filepath.Join(repoRoot, "deployments/helm/gpu-dra-driver"),
		"--kubeconfig", kubeconfig, "--namespace", ns, "--create-namespace"}, chartValues()...)
	installed := time.Now()
	if out, err := exec.Command(helm, args...).CombinedOutput(); err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	uninstalled := false
	uninstall := func() {
		if out, err := exec.Command(helm, "uninstall", "e2e", "--kubeconfig", kubeconfig, "--namespace", ns, "--wait").CombinedOutput(); err != nil {
			t.Errorf("helm uninstall: %v\n%s", err, out)
		}
		uninstalled = true
	}
	t.Cleanup(func() {
		if !uninstalled {
			uninstall()
		}
		cleanNamespace(t, ns)
	})
	waitChartPlugin(t, ns)
	eventually(t, 30*time.Second, "the node's slices published by the chart's plugin", func() (bool, error) {
		l, err := client.ResourceV1().ResourceSlices().List(ctx(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeName})
		return err == nil && len(l.Items) == 5, errors.Join(err, fmt.Errorf("%d slices", len(l.Items)))
	})
	t.Logf("MEASURE helm install to the node's 5 slices published: %s", time.Since(installed).Round(10*time.Millisecond))
	const podNS = "gpu-helm-pods"
	t.Cleanup(func() { cleanNamespace(t, podNS) })
	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata: {name: gpu-helm-pods}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: one-gpu, namespace: gpu-helm-pods}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}]}}}
`+claimPod(podNS, "on-chart-driver", "one-gpu"))
	pod := waitPodRunning(t, podNS, "on-chart-driver")
	dev := claimOf(t, pod, "gpu").Status.Allocation.Devices.Results[0].Device
	podLogs(t, podNS, "on-chart-driver", "GPU_DRA_DEVICE_UUIDS="+gpuUUIDs(t)[dev])
	kubectl(t, "delete", "pod", "-n", podNS, "on-chart-driver", "--wait=true")
	eventually(t, 60*time.Second, "the claim unprepared by the chart's plugin", func() (bool, error) {
		return len(cdiSpecs(t)) == 0, fmt.Errorf("%d CDI specs", len(cdiSpecs(t)))
	})

	// helm uninstall deletes the DaemonSet: the stopping plugin sees it gone
	// and removes the node's slices, so nothing stale can be allocated.
	uninstall()
	eventually(t, 30*time.Second, "the node's slices removed by the uninstalled plugin", func() (bool, error) {
		l, err := client.ResourceV1().ResourceSlices().List(ctx(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeName})
		return err == nil && len(l.Items) == 0, errors.Join(err, fmt.Errorf("%d slices", len(l.Items)))
	})
}

// useChartOnTheNode stops the harness's plugin for a release of the test's
// own, whose plugin the chart's default node selector (the
// nvidia.com/gpu.present label GPU feature discovery sets, which driver.sh
// helmIn returns a function that runs helm (helmBinary's) with args as
// the cluster's admin in namespace ns, failing the test on an error.
func helmIn(t *testing.T, helm, ns string) func(args ...string) {
	t.Helper()
	kubeconfig := filepath.Join(runDir, "kubeconfig/admin.kubeconfig")
	return func(args ...string) {
		t.Helper()
		args = append(args, "--kubeconfig", kubeconfig, "--namespace", ns)
		if out, err := exec.Command(helm, args...).CombinedOutput(); err != nil {
			t.Fatalf("helm %s: %v\n%s", args[0], err, out)
		}
	}
}

// installRelease installs chart as release in namespace ns with the local
// cluster's chart values (values, or chartValues when none are given) and
// the image tag, and at the test's end
// uninstalls it (waiting for its pods) and cleans the namespace. It returns
// helmIn(t, helm, ns) for the test's upgrades.
func installRelease(t *testing.T, helm, ns, release, chart, tag string, values ...string) func(args ...string) {
	t.Helper()
	helmRun := helmIn(t, helm, ns)
	if len(values) == 0 {
		values = chartValues()
	}
	helmRun(append([]string{"install", release, chart, "--create-namespace", "--set", "image.tag=" + tag}, values...)...)
	kubeconfig := filepath.Join(runDir, "kubeconfig/admin.kubeconfig")
	t.Cleanup(func() {
		if out, err := exec.Command(helm, "uninstall", release, "--kubeconfig", kubeconfig, "--namespace", ns, "--wait").CombinedOutput(); err != nil {
			t.Errorf("helm uninstall: %v\n%s", err, out)
		}
		cleanNamespace(t, ns)
	})
	return helmRun
}

// set) puts on the node; a cleanup starts the harness's plugin again.
func useChartOnTheNode(t *testing.T) {
	t.Helper()
	if err := script("driver.sh", "stop"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := script("driver.sh", "restart"); err != nil {
			t.Errorf("restart the harness's plugin: %v", err)
		}
		waitPoolComplete(t)
	})
}

// chartValues are the helm flags that run the chart's plugin on the local
// cluster: its simulated driver installation (the plugin loads NVML from
// its driver root as on a GPU node), CDI directory and kubelet directories,
// the kubelet's kubeconfig to read claims with, the image imported by
// image.sh, and its own HTTP port (8089).
func chartValues() []string {
	sim := filepath.Join(runDir, "sim")
	return []string{
		"--set", "image.pullPolicy=Never",
		"--set", "kubeletPlugin.hostPaths.pluginsDir=" + filepath.Join(runDir, "kubelet/plugins"),
		"--set", "kubeletPlugin.hostPaths.registryDir=" + filepath.Join(runDir, "kubelet/plugins_registry"),
		"--set", "kubeletPlugin.hostPaths.cdiRoot=" + filepath.Join(runDir, "cdi"),
		"--set", "kubeletPlugin.hostPaths.driverRoot=" + filepath.Join(sim, "host/driver"),
		"--set", "kubeletPlugin.hostPaths.devRoot=" + filepath.Join(sim, "host/dev"),
		"--set", "kubeletPlugin.hostPaths.procRoot=" + filepath.Join(sim, "host/proc"),
		"--set", "kubeletPlugin.hostPaths.sysRoot=" + filepath.Join(sim, "host/sys"),
		"--set", "kubeletPlugin.apiServer=127.0.0.1:6443", "--set", "kubeletPlugin.httpPort=8089",
		// Claims read as the node, as the harness's release reads them.
		"--set", "kubeletPlugin.claimReads.kubeletKubeconfig=" + filepath.Join(runDir, "kubeconfig/kubelet.kubeconfig"),
		"--set", "kubeletPlugin.claimReads.hostPaths={" + filepath.Join(runDir, "pki/ca.crt") + "}",
		// The harness's release has the webhook and the classes.
		"--set", "webhook.enabled=false", "--set", "deviceClasses.create=false",
	}
}

// waitChartPlugin waits for the chart's one plugin pod in namespace ns to
// be Ready and returns it.
func waitChartPlugin(t *testing.T, ns string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	eventually(t, 120*time.Second, "the chart's plugin ready", func() (bool, error) {
		pods, err := client.CoreV1().Pods(ns).List(ctx(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=kubelet-plugin"})
		if err != nil || len(pods.Items) != 1 {
			return false, errors.Join(err, fmt.Errorf("%d pods", len(pods.Items)))
		}
		pod = &pods.Items[0]
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, fmt.Errorf("pod %s: %s %+v", pod.Name, pod.Status.Phase, pod.Status.ContainerStatuses)
	})
	return pod
}
