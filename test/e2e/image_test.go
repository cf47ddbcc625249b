//go:build e2e

package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestImageRunsInTheCluster builds the driver's image (test/cluster/image.sh,
// which imports it into the cluster's containerd) and runs its three
// commands in a pod: the plugin reads the node's inventory through the
// driver root's libnvidia-ml.so.1, mounted read-only as the chart mounts it
// (cgo, the C library and the libraries NVIDIA's NVML needs are in the
// image), the webhook and kubectl-gpu start.
func TestImageRunsInTheCluster(t *testing.T) {
	if out, err := exec.Command(filepath.Join(repoRoot, "test/cluster/image.sh")).CombinedOutput(); err != nil {
		t.Fatalf("image.sh: %v\n%s", err, out)
	}
	const ns = "gpu-image"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	container := func(name string, args ...string) string {
		return fmt.Sprintf("  - {name: %s, image: gpu-dra-driver:0.1.0, imagePullPolicy: Never, command: [%s], volumeMounts: [{name: driver-root, mountPath: /driver-root, readOnly: true}]}\n", name, `"`+strings.Join(args, `", "`)+`"`)
	}
	applyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: gpu-image}\n---\n"+
		"apiVersion: v1\nkind: Pod\nmetadata: {name: commands, namespace: gpu-image}\nspec:\n  restartPolicy: Never\n  containers:\n"+
		container("plugin", "gpu-kubelet-plugin", "inventory", "--nvml-library=/driver-root/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "--node-name=node-a")+
		container("webhook", "gpu-dra-webhook", "--help")+
		container("kubectl-gpu", "kubectl-gpu", "--help")+
		"  volumes: [{name: driver-root, hostPath: {path: "+filepath.Join(runDir, "sim/host/driver")+", type: Directory}}]\n")
	eventually(t, 60*time.Second, "the image's commands ran", func() (bool, error) {
		p, err := client.CoreV1().Pods(ns).Get(ctx(), "commands", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if p.Status.Phase == corev1.PodFailed {
			t.Fatalf("pod failed: %+v", p.Status.ContainerStatuses)
		}
		return p.Status.Phase == corev1.PodSucceeded, fmt.Errorf("phase %s", p.Status.Phase)
	})
	for container, want := range map[string]string{
		"plugin":      "name: gpu-7-mig-1g10gb-6",
		"webhook":     "--tls-cert-file",
		"kubectl-gpu": "drain",
	} {
		log, err := client.CoreV1().Pods(ns).GetLogs("commands", &corev1.PodLogOptions{Container: container}).DoRaw(ctx())
		if err != nil || !strings.Contains(string(log), want) {
			t.Errorf("%s's output lacks %q (%v):\n%.2000s", container, want, err, log)
		}
	}
}

// TestPluginRunsTheProductionPath checks that the harness's plugin runs as
// on a GPU node: no --simulate flag, NVML loaded from the driver root's
// libnvidia-ml.so.1 (the simulated installation's, whose kernel side is
// gpu-sim serve).
func TestPluginRunsTheProductionPath(t *testing.T) {
	pod := pluginPod(t)
	for _, c := range pod.Spec.Containers {
		for _, arg := range append(append([]string{}, c.Command...), c.Args...) {
			if strings.HasPrefix(arg, "--simulate") || strings.HasPrefix(arg, "--sim-state-dir") {
				t.Errorf("container %s runs with %s", c.Name, arg)
			}
		}
	}
	log, err := client.CoreV1().Pods(pod.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{Container: "plugin"}).DoRaw(ctx())
	if err != nil {
		t.Fatal(err)
	}
	const want = `nvml="/driver-root/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"`
	if !strings.Contains(string(log), want) {
		t.Errorf("the plugin's log lacks %s:\n%.3000s", want, log)
	}
}
