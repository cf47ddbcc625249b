//go:build e2e

// Package e2e runs the driver on a real local cluster (test/cluster): the
// real scheduler allocates from our slices, the real kubelet calls our
// plugin, the real containerd injects our CDI devices into containers.
//
// TestMain starts the cluster and the driver (unless GPU_DRA_E2E_REUSE=1
// and one is running) and stops them at the end (unless
// GPU_DRA_E2E_KEEP=1). With GPU_DRA_E2E_NODES=3 the cluster has three nodes
// of three GPU models (clusterModels), for the TestCluster tests, run with
// -run '^TestCluster' (the others are written for one node). With
// GPU_DRA_E2E_RACK=1 as well, the three nodes are GB200 nodes of an NVL72
// rack (rackModels, rackCliques) with ComputeDomains on, for the
// TestComputeDomain tests, run with -run '^TestComputeDomain'.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
)

var (
	repoRoot string
	runDir   string
	client   kubernetes.Interface
	nodeName = "127.0.0.1"
	model    = "dgxh100"
	// clusterNodes is the number of nodes of the suite's cluster.
	clusterNodes = 1
)

// clusterModels are the simulated nodes of a cluster of several nodes, in
// node order (127.0.0.1, 127.0.0.2, 127.0.0.3): two GPUs each, so that a
// test fills a node with two pods; the third has no MIG.
var clusterModels = []string{"dgxh100:2", "dgxa100:2", "l40s:2"}

// rackModels and rackCliques are the nodes of the rack cluster
// (GPU_DRA_E2E_RACK=1): three GB200 nodes of two GPUs each, the first two
// in one NVLink clique and the third in another.
var (
	rackModels  = []string{"gb200:2", "gb200:2", "gb200:2"}
	rackCliques = []string{"1", "1", "2"}
	// rack says whether this run's cluster is the rack.
	rack bool
)

func TestMain(m *testing.M) {
	_, file, _, _ := runtime.Caller(0)
	repoRoot = filepath.Clean(filepath.Join(filepath.Dir(file), "../.."))
	runDir = os.Getenv("GPU_DRA_RUN_DIR")
	if runDir == "" {
		runDir = "/tmp/gpu-dra-cluster"
		os.Setenv("GPU_DRA_RUN_DIR", runDir)
	}
	if n := os.Getenv("GPU_DRA_E2E_NODES"); n != "" && n != "1" {
		if n != strconv.Itoa(len(clusterModels)) {
			fmt.Fprintf(os.Stderr, "GPU_DRA_E2E_NODES=%s: the suite runs one node or %d\n", n, len(clusterModels))
			os.Exit(2)
		}
		if os.Getenv("GPU_DRA_E2E_RACK") == "1" {
			rack = true
			clusterModels = rackModels
			os.Setenv("GPU_DRA_CLIQUES", strings.Join(rackCliques, ","))
		}
		clusterNodes = len(clusterModels)
		model = clusterModels[0]
		os.Setenv("GPU_DRA_NODES", n)
		os.Setenv("GPU_DRA_SIMULATE", strings.Join(clusterModels, ","))
	} else {
		os.Setenv("GPU_DRA_NODES", "1")
		os.Setenv("GPU_DRA_SIMULATE", model)
	}
	reuse := os.Getenv("GPU_DRA_E2E_REUSE") == "1" && fileExists(filepath.Join(runDir, "env"))
	if reuse {
		// The running cluster must be the one this run expects.
		got, _ := os.ReadFile(filepath.Join(runDir, "node-count"))
		if n := strings.TrimSpace(string(got)); n != strconv.Itoa(clusterNodes) && (n != "" || clusterNodes != 1) {
			fmt.Fprintf(os.Stderr, "GPU_DRA_E2E_REUSE=1: the cluster at %s has %q nodes, this run wants %d (GPU_DRA_E2E_NODES)\n", runDir, n, clusterNodes)
			os.Exit(2)
		}
	}
	start := time.Now()
	if !reuse {
		if err := script("up.sh"); err != nil {
			fmt.Fprintln(os.Stderr, "cluster up:", err)
			os.Exit(1)
		}
		// The suite's chart values (values.yaml beside this file) stay in
		// force for every later start and restart of this cluster.
		values := []string{"start", "-f", filepath.Join(repoRoot, "test/e2e/values.yaml")}
		if rack {
			values = append(values, "-f", filepath.Join(repoRoot, "test/cluster/rack-values.yaml"))
		}
		if err := script("driver.sh", values...); err != nil {
			fmt.Fprintln(os.Stderr, "driver start:", err)
			script("down.sh")
			os.Exit(1)
		}
	}
	fmt.Printf("cluster and driver ready in %s\n", time.Since(start).Round(time.Millisecond))
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(runDir, "kubeconfig/admin.kubeconfig"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	client = kubernetes.NewForConfigOrDie(cfg)
	code := m.Run()
	if os.Getenv("GPU_DRA_E2E_KEEP") != "1" && !reuse {
		if err := script("down.sh"); err != nil {
			fmt.Fprintln(os.Stderr, "cluster down:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// script runs one of the cluster scripts, streaming its output.
func script(name string, args ...string) error {
	cmd := exec.Command(filepath.Join(repoRoot, "test/cluster", name), args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

// kubectl runs the cluster's kubectl as admin and returns stdout.
func kubectl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := kubectlErr(args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func kubectlErr(args ...string) (string, error) {
	cache := os.Getenv("GPU_DRA_CACHE")
	if cache == "" {
		home, _ := os.UserCacheDir()
		cache = filepath.Join(home, "gpu-dra-driver")
	}
	bin := filepath.Join(runDir, "bin", "kubectl")
	if !fileExists(bin) {
		matches, _ := filepath.Glob(filepath.Join(cache, "kubernetes-*/bin/kubectl"))
		if len(matches) == 0 {
			return "", fmt.Errorf("no kubectl in %s or %s", bin, cache)
		}
		bin = matches[0]
	}
	full := append([]string{"--kubeconfig", filepath.Join(runDir, "kubeconfig/admin.kubeconfig"), "--cache-dir", filepath.Join(runDir, "kube-cache")}, args...)
	cmd := exec.Command(bin, full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, stderr.String())
	}
	return stdout.String(), nil
}

// eventually polls cond until it returns true or the timeout ends.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok {
			return
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s (last error: %v)", timeout, what, last)
}

func ctx() context.Context { return context.Background() }

// waitPodRunning waits for a pod to run and returns it.
func waitPodRunning(t testing.TB, ns, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	defer diagnoseOnFailure(t, ns, name)()
	eventually(t, 90*time.Second, fmt.Sprintf("pod %s/%s Running", ns, name), func() (bool, error) {
		p, err := client.CoreV1().Pods(ns).Get(ctx(), name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pod = p
		return p.Status.Phase == corev1.PodRunning, fmt.Errorf("phase %s, conditions %+v", p.Status.Phase, p.Status.Conditions)
	})
	return pod
}

// diagnoseOnFailure returns a function for defer that, when the test has
// failed by then (t.Fatalf unwinds through deferred calls), logs what a
// reader of a CI log needs to find why a pod did not start: the pod's
// events, which carry the kubelet's prepare errors, and the tail of the
// driver's plugin log. A pod that never got a sandbox leaves nothing else.
func diagnoseOnFailure(t testing.TB, ns, name string) func() {
	failedBefore := t.Failed()
	return func() {
		if failedBefore || !t.Failed() {
			return
		}
		events, err := kubectlErr("get", "events", "-n", ns, "--field-selector", "involvedObject.name="+name,
			"-o", "custom-columns=LAST:.lastTimestamp,COUNT:.count,REASON:.reason,MESSAGE:.message")
		t.Logf("events of pod %s/%s:\n%s%v", ns, name, events, errOrEmpty(err))
		logs, err := kubectlErr("logs", "-n", driverNamespace, "--all-containers", "--prefix", "--tail=60",
			"-l", "app.kubernetes.io/instance="+driverRelease+",app.kubernetes.io/component=kubelet-plugin")
		t.Logf("the plugin's log, last lines:\n%s%v", logs, errOrEmpty(err))
	}
}

// errOrEmpty formats an error for a diagnostic log line, or nothing.
func errOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return "(" + err.Error() + ")"
}

// podLogs waits until the pod's log contains want and returns the log.
func podLogs(t testing.TB, ns, name, want string) string {
	t.Helper()
	return podLogsOf(t, ns, name, "", want)
}

// podLogsOf is podLogs of one container of the pod.
func podLogsOf(t testing.TB, ns, name, container, want string) string {
	t.Helper()
	var log string
	eventually(t, 30*time.Second, fmt.Sprintf("log of %s/%s %s to contain %q", ns, name, container, want), func() (bool, error) {
		data, err := client.CoreV1().Pods(ns).GetLogs(name, &corev1.PodLogOptions{Container: container}).DoRaw(ctx())
		log = string(data)
		return err == nil && strings.Contains(log, want), err
	})
	return log
}

// claimOf returns the ResourceClaim of a pod's claim entry.
func claimOf(t testing.TB, pod *corev1.Pod, entry string) *resourceapi.ResourceClaim {
	t.Helper()
	for _, s := range pod.Status.ResourceClaimStatuses {
		if s.Name == entry && s.ResourceClaimName != nil {
			c, err := client.ResourceV1().ResourceClaims(pod.Namespace).Get(ctx(), *s.ResourceClaimName, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
	}
	for _, rc := range pod.Spec.ResourceClaims {
		if rc.Name == entry && rc.ResourceClaimName != nil {
			c, err := client.ResourceV1().ResourceClaims(pod.Namespace).Get(ctx(), *rc.ResourceClaimName, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
	}
	t.Fatalf("pod %s has no claim %q", pod.Name, entry)
	return nil
}

// simState reads the simulated node's state.
func simState(t testing.TB) *sim.State {
	t.Helper()
	n, err := sim.Open(model, filepath.Join(runDir, "sim/state"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := n.State()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// liveMIGs are the UUIDs of the MIG devices on the simulated node.
func liveMIGs(t testing.TB) map[string]bool {
	out := map[string]bool{}
	for _, g := range simState(t).GPUs {
		for _, gi := range g.GPUInstances {
			for _, ci := range gi.ComputeInstances {
				out[ci.UUID] = true
			}
		}
	}
	return out
}

// migCount counts live MIG devices on the simulated node.
func migCount(t testing.TB) int {
	return len(liveMIGs(t))
}

// cdiSpecs lists the plugin's CDI spec files.
func cdiSpecs(t testing.TB) []string {
	matches, err := filepath.Glob(filepath.Join(runDir, "cdi", "k8s.gpu.nvidia.com-claim_*"))
	if err != nil {
		t.Fatal(err)
	}
	return matches
}

// checkpointClaims returns the claim UIDs in the plugin's checkpoint.
func checkpointClaims(t testing.TB) map[string]string {
	data, err := os.ReadFile(filepath.Join(runDir, "kubelet/plugins/gpu.nvidia.com/checkpoint.json"))
	if err != nil {
		t.Fatal(err)
	}
	var env struct {
		Data struct {
			Claims map[string]struct {
				State string `json:"state"`
			} `json:"claims"`
		} `json:"data"`
	}
	if err := json.Unmarshal(data, &env); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for uid, c := range env.Data.Claims {
		out[uid] = c.State
	}
	return out
}

// cleanNamespace deletes a namespace and waits until the plugin has
// unprepared everything in it.
func cleanNamespace(t testing.TB, ns string) {
	t.Helper()
	kubectlErr("delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=120s")
}

func gpuUUIDs(t testing.TB) map[string]string {
	out := map[string]string{}
	for i, g := range simState(t).GPUs {
		out[fmt.Sprintf("gpu-%d", i)] = g.UUID
	}
	return out
}

// The harness's release of the chart (test/cluster/driver.sh).
const (
	driverNamespace = "gpu-dra-driver"
	driverRelease   = "gpu-dra-driver"
	// harnessPluginLabel on the node lets the harness's plugin run there;
	// driver.sh stop removes it.
	harnessPluginLabel = "gpu-dra.local/harness-plugin"
)

// pluginPod returns the running pod of the harness's plugin DaemonSet.
func pluginPod(t testing.TB) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	eventually(t, 30*time.Second, "the harness's plugin pod", func() (bool, error) {
		l, err := client.CoreV1().Pods(driverNamespace).List(ctx(), metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/instance=" + driverRelease + ",app.kubernetes.io/component=kubelet-plugin",
		})
		if err != nil || len(l.Items) != 1 {
			return false, errors.Join(err, fmt.Errorf("%d pods", len(l.Items)))
		}
		pod = &l.Items[0]
		return true, nil
	})
	return pod
}

// processPIDs returns the host PIDs of the processes whose command is
// name: the driver's containers run as processes of this machine.
func processPIDs(name string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if argv0, _, _ := bytes.Cut(cmdline, []byte{0}); filepath.Base(string(argv0)) == name {
			pids = append(pids, pid)
		}
	}
	return pids
}

// claimPod is a pod (a YAML document, with its "---") in namespace ns whose
// container prints GPU_DRA_DEVICE_UUIDS and sleeps, holding one claim,
// named "gpu", from the template.
func claimPod(ns, name, template string) string {
	return fmt.Sprintf(`---
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: ctr
    image: busybox:local
    imagePullPolicy: Never
    command: ["sh", "-c", "echo GPU_DRA_DEVICE_UUIDS=$GPU_DRA_DEVICE_UUIDS; sleep 3600"]
    resources: {claims: [{name: gpu}]}
  resourceClaims:
  - {name: gpu, resourceClaimTemplateName: %s}
`, name, ns, template)
}

// waitPoolComplete waits until the node's pool is complete (as many slices
// as each says the pool has) and returns the number of slices.
func waitPoolComplete(t testing.TB) int {
	t.Helper()
	var n int
	eventually(t, 30*time.Second, "the node's pool complete", func() (bool, error) {
		list, err := client.ResourceV1().ResourceSlices().List(ctx(), metav1.ListOptions{
			FieldSelector: "spec.nodeName=" + nodeName + ",spec.driver=gpu.nvidia.com",
		})
		if err != nil {
			return false, err
		}
		n = len(list.Items)
		for _, s := range list.Items {
			if s.Spec.Pool.ResourceSliceCount != int64(n) {
				return false, fmt.Errorf("%d slices, pool of %d", n, s.Spec.Pool.ResourceSliceCount)
			}
		}
		return n > 0, fmt.Errorf("%d slices", n)
	})
	return n
}
