//go:build e2e

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	out, err := exec.Command(filepath.Join(repoRoot, "test/helm/check.sh")).Output()
	if err != nil {
		t.Fatalf("test/helm/check.sh: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	helm := lines[len(lines)-1]
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
