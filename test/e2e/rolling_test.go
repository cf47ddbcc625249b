//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestRollsWithoutAGap installs the chart (its default surge roll) and,
// while a new whole-GPU pod is created every second, rolls the plugin
// three ways: helm upgrade to another image, kubectl rollout restart, and
// a helm upgrade to a version that fails at once. Every pod created
// meanwhile must run. During the first two the new plugin registers next
// to the old one and takes the node over; the node's ResourceSlices are
// not rewritten (same resourceVersions). The bad version never gets
// Ready: the old pod keeps serving, unchanged, a claim still prepares,
// and helm rollback ends the roll. It prints the creation-to-Running
// times against those of pods created on an idle node (docs/benchmarks.md).
func TestRollsWithoutAGap(t *testing.T) {
	helm := helmBinary(t)
	for _, tag := range []string{oldTag, newTag} {
		cmd := exec.Command(filepath.Join(repoRoot, "test/cluster/image.sh"))
		cmd.Env = append(os.Environ(), "GPU_DRA_IMAGE_TAG="+tag)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("image.sh (%s): %v\n%s", tag, err, out)
		}
	}
	useChartOnTheNode(t)
	const ns, release = "gpu-dra-roll", "e2e-roll"
	chart := filepath.Join(repoRoot, "deployments/helm/gpu-dra-driver")
	helmRun := installRelease(t, helm, ns, release, chart, oldTag)
	plugin := waitChartPlugin(t, ns)
	if n := waitPoolComplete(t); n != 5 {
		t.Fatalf("the chart's plugin published %d slices, want 5", n)
	}
	const podNS = "gpu-roll"
	t.Cleanup(func() { cleanNamespace(t, podNS) })
	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata: {name: gpu-roll}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: whole, namespace: gpu-roll}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}]}}}
`)

	idle := podsDuring(t, podNS, func() { time.Sleep(10 * time.Second) })
	t.Logf("idle node: creation to Running %s", stats(idle))
	report := func(what string, d []time.Duration) {
		t.Helper()
		t.Logf("%s: creation to Running %s; worst %+.1f s against the idle node's worst",
			what, stats(d), (slices.Max(d) - slices.Max(idle)).Seconds())
	}

	// 1. helm upgrade to another image.
	before := sliceVersions(t)
	up := podsDuring(t, podNS, func() {
		surged(t, ns, "the helm upgrade", func() {
			helmRun(append([]string{"upgrade", release, chart, "--wait", "--timeout", "3m", "--set", "image.tag=" + newTag}, chartValues()...)...)
		})
	})
	plugin = assertPluginReplaced(t, ns, plugin, newTag)
	report("helm upgrade "+oldTag+" -> "+newTag, up)
	assertSlicesKept(t, before, "the helm upgrade")

	// 2. kubectl rollout restart.
	before = sliceVersions(t)
	ds := "daemonset/" + release + "-kubelet-plugin"
	restart := podsDuring(t, podNS, func() {
		surged(t, ns, "the rollout restart", func() {
			kubectl(t, "rollout", "restart", "-n", ns, ds)
			kubectl(t, "rollout", "status", "-n", ns, ds, "--timeout=3m")
		})
	})
	plugin = assertPluginReplaced(t, ns, plugin, newTag)
	report("kubectl rollout restart", restart)
	assertSlicesKept(t, before, "the rollout restart")

	// 3. A version that fails at once: the roll stops, the old one serves.
	before = sliceVersions(t)
	bad := podsDuring(t, podNS, func() {
		helmRun(append([]string{"upgrade", release, chart, "--set", "image.tag=" + oldTag,
			"--set", "kubeletPlugin.extraArgs={--e2e-no-such-flag}"}, chartValues()...)...)
		eventually(t, 120*time.Second, "the bad version's plugin restarted, never Ready", func() (bool, error) {
			pods, err := client.CoreV1().Pods(ns).List(ctx(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=kubelet-plugin"})
			if err != nil {
				return false, err
			}
			for _, p := range pods.Items {
				if p.UID == plugin.UID {
					continue
				}
				if podReady(&p) {
					return false, fmt.Errorf("the bad version's pod %s is Ready", p.Name)
				}
				for _, cs := range p.Status.ContainerStatuses {
					if cs.RestartCount >= 1 {
						return true, nil
					}
				}
			}
			return false, fmt.Errorf("%d plugin pods, none of the bad version restarted yet", len(pods.Items))
		})
	})
	report("bad version rolled out (old plugin serving)", bad)
	p, err := client.CoreV1().Pods(ns).Get(ctx(), plugin.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the old plugin pod is gone during a bad roll: %v", err)
	}
	if !podReady(p) || p.Status.ContainerStatuses[0].RestartCount != plugin.Status.ContainerStatuses[0].RestartCount {
		t.Errorf("the old plugin pod is not serving untouched: ready %v, %+v", podReady(p), p.Status.ContainerStatuses)
	}
	applyYAML(t, claimPod(podNS, "during-bad", "whole"))
	waitPodRunning(t, podNS, "during-bad")
	kubectl(t, "delete", "pod", "-n", podNS, "during-bad", "--wait=true")
	assertSlicesKept(t, before, "a bad version's roll")
	helmRun("rollback", release, "2", "--wait", "--timeout", "3m")
	eventually(t, 120*time.Second, "the bad version's pod gone after the rollback", func() (bool, error) {
		pods, err := client.CoreV1().Pods(ns).List(ctx(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=kubelet-plugin"})
		if err != nil {
			return false, err
		}
		return len(pods.Items) == 1 && podReady(&pods.Items[0]), fmt.Errorf("%d plugin pods", len(pods.Items))
	})
}

// surged runs roll and fails the test unless two plugin pods ran on the
// node at once meanwhile, the old one Ready: a surge roll, not a stop and
// a start.
func surged(t *testing.T, ns, what string, roll func()) {
	t.Helper()
	stop, done := make(chan struct{}), make(chan bool)
	go func() {
		both := false
		defer func() { done <- both }()
		for {
			pods, err := client.CoreV1().Pods(ns).List(ctx(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=kubelet-plugin"})
			if err == nil && len(pods.Items) == 2 {
				for _, p := range pods.Items {
					if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil && podReady(&p) {
						for _, q := range pods.Items {
							if q.UID != p.UID && q.Status.Phase == corev1.PodRunning {
								both = true
							}
						}
					}
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	roll()
	close(stop)
	if !<-done {
		t.Errorf("%s: never two plugin pods running at once, one Ready: not a surge roll", what)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// sliceVersions returns the resourceVersion of each of the node's slices.
func sliceVersions(t *testing.T) map[string]string {
	t.Helper()
	l, err := client.ResourceV1().ResourceSlices().List(ctx(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeName + ",spec.driver=gpu.nvidia.com"})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, s := range l.Items {
		out[s.Name] = s.ResourceVersion
	}
	return out
}

// assertSlicesKept fails unless the node's slices are the same objects,
// unwritten, as before.
func assertSlicesKept(t *testing.T, before map[string]string, what string) {
	t.Helper()
	after := sliceVersions(t)
	if len(after) != len(before) {
		t.Errorf("%s: %d slices before, %d after", what, len(before), len(after))
	}
	for name, rv := range before {
		if after[name] != rv {
			t.Errorf("%s rewrote slice %s: resourceVersion %s, then %q", what, name, rv, after[name])
		}
	}
}

// podsDuring runs roll while it creates a pod with a whole-GPU claim
// (template whole in ns) every second, at most 5 at a time, each deleted
// once Running, and for 3 s after; it fails the test unless every one
// ran, and returns their creation-to-Running times.
func podsDuring(t *testing.T, ns string, roll func()) []time.Duration {
	t.Helper()
	var (
		mu      sync.Mutex
		created = map[string]time.Time{}
		running = map[string]time.Duration{}
		errs    []string
		n       int
		next    time.Time
		making  = true
		stop    = make(chan struct{})
		done    = make(chan struct{})
	)
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			pods, err := client.CoreV1().Pods(ns).List(ctx(), metav1.ListOptions{LabelSelector: "probe=upgrade"})
			if err == nil {
				mu.Lock()
				for _, p := range pods.Items {
					if _, seen := running[p.Name]; !seen && p.Status.Phase == corev1.PodRunning {
						running[p.Name] = time.Since(created[p.Name])
						if err := client.CoreV1().Pods(ns).Delete(ctx(), p.Name, metav1.DeleteOptions{}); err != nil {
							errs = append(errs, fmt.Sprintf("delete %s: %v", p.Name, err))
						}
					}
				}
				if making && !time.Now().Before(next) && len(pods.Items) < 5 {
					next = time.Now().Add(time.Second)
					name := fmt.Sprintf("roll-%03d", n)
					n++
					created[name] = time.Now()
					if _, err := client.CoreV1().Pods(ns).Create(ctx(), probePod(ns, name), metav1.CreateOptions{}); err != nil {
						errs = append(errs, fmt.Sprintf("create %s: %v", name, err))
					}
				}
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	roll()
	time.Sleep(3 * time.Second)
	mu.Lock()
	making = false
	mu.Unlock()
	eventually(t, 180*time.Second, "every pod created during the roll running", func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		var waiting []string
		for name := range created {
			if _, ok := running[name]; !ok {
				waiting = append(waiting, name)
			}
		}
		return len(waiting) == 0, fmt.Errorf("not running yet: %v", waiting)
	})
	close(stop)
	<-done
	eventually(t, 60*time.Second, "the probe pods gone", func() (bool, error) {
		pods, err := client.CoreV1().Pods(ns).List(ctx(), metav1.ListOptions{LabelSelector: "probe=upgrade"})
		return err == nil && len(pods.Items) == 0, errors.Join(err, fmt.Errorf("%d left", len(pods.Items)))
	})
	mu.Lock()
	defer mu.Unlock()
	for _, e := range errs {
		t.Error(e)
	}
	var out []time.Duration
	for _, d := range running {
		out = append(out, d)
	}
	if len(out) == 0 {
		t.Fatal("no pod was created")
	}
	return out
}
