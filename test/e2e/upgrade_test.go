//go:build e2e

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The two image versions of the upgrade: the same sources, two tags, two
// images (image.sh writes the tag into the image, so their IDs differ).
const (
	oldTag = "0.1.0"
	newTag = "0.1.1-e2e"
)

// TestHelmUpgradeKeepsPreparedClaims installs the chart at one image
// version, starts pods holding a whole GPU and a MIG device, and upgrades
// to another version with helm while a new whole-GPU pod is created every
// second. The DaemonSet replaces the plugin (the chart's surge roll: the
// new one takes the node over from the old, see TestRollsWithoutAGap);
// the new plugin reads the old one's checkpoint. After the
// upgrade the pods still run the same containers, their claims are still
// prepared (CDI specs, checkpoint, the MIG instance) and the new plugin
// unprepares them when they go; the node's slices were never removed;
// every pod created during the upgrade ran. Then helm rolls back to the
// first version, with claims prepared by the newer one: kept the same way.
// Last, a checkpoint of a future format (version 2), as a downgrade across
// a format change would leave, is set aside with a Warning event naming
// the version, and its claims are rebuilt from their CDI specs and the
// live MIG instances. It prints how long the node could not prepare claims
// and what that cost the pods created meanwhile (docs/benchmarks.md).
func TestHelmUpgradeKeepsPreparedClaims(t *testing.T) {
	helm := helmBinary(t)
	for _, tag := range []string{oldTag, newTag} {
		cmd := exec.Command(filepath.Join(repoRoot, "test/cluster/image.sh"))
		cmd.Env = append(os.Environ(), "GPU_DRA_IMAGE_TAG="+tag)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("image.sh (%s): %v\n%s", tag, err, out)
		}
	}
	useChartOnTheNode(t)
	const ns = "gpu-dra-upgrade"
	chart := filepath.Join(repoRoot, "deployments/helm/gpu-dra-driver")
	helmRun := installRelease(t, helm, ns, "e2e", chart, oldTag)
	oldPlugin := waitChartPlugin(t, ns)
	if n := waitPoolComplete(t); n != 5 {
		t.Fatalf("the chart's plugin published %d slices, want 5", n)
	}

	const podNS = "gpu-upgrade"
	t.Cleanup(func() { cleanNamespace(t, podNS) })
	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata: {name: gpu-upgrade}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: whole, namespace: gpu-upgrade}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}]}}}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: mig, namespace: gpu-upgrade}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: mig.nvidia.com, selectors: [{cel: {expression: 'device.attributes["gpu.nvidia.com"].profile == "1g.10gb"'}}]}}]}}}
`)
	migBefore := migCount(t)

	// 1. Upgrade, with a whole GPU and a MIG device held through it.
	held := startHeldPods(t, podNS, "v1")
	up := rollPlugin(t, podNS, func() {
		helmRun(append([]string{"upgrade", "e2e", chart, "--wait", "--timeout", "3m", "--set", "image.tag=" + newTag}, chartValues()...)...)
	})
	newPlugin := assertPluginReplaced(t, ns, oldPlugin, newTag)
	held.assertKept(t, "after the upgrade")
	t.Logf("upgrade %s -> %s: %s", oldTag, newTag, up)
	held.release(t, migBefore, "the upgraded plugin")

	// 2. Roll back, with claims the newer version prepared.
	held = startHeldPods(t, podNS, "v2")
	down := rollPlugin(t, podNS, func() { helmRun("rollback", "e2e", "1", "--wait", "--timeout", "3m") })
	rolledBack := assertPluginReplaced(t, ns, newPlugin, oldTag)
	held.assertKept(t, "after the rollback")
	t.Logf("rollback %s -> %s: %s", newTag, oldTag, down)

	// 3. A checkpoint of a future format: set aside, claims rebuilt.
	cpPath := filepath.Join(runDir, "kubelet/plugins/gpu.nvidia.com/checkpoint.json")
	data, err := os.ReadFile(cpPath)
	if err != nil {
		t.Fatal(err)
	}
	future := strings.Replace(string(data), `"version":1,`, `"version":2,`, 1)
	if future == string(data) {
		t.Fatalf("no \"version\":1 in the checkpoint:\n%.300s", data)
	}
	if err := os.WriteFile(cpPath, []byte(future), 0o600); err != nil {
		t.Fatal(err)
	}
	asideBefore, _ := filepath.Glob(cpPath + ".corrupt-*")
	kubectl(t, "delete", "pod", "-n", ns, rolledBack.Name, "--wait=true")
	assertPluginReplaced(t, ns, rolledBack, oldTag)
	aside, _ := filepath.Glob(cpPath + ".corrupt-*")
	t.Cleanup(func() {
		for _, f := range aside {
			if !slices.Contains(asideBefore, f) {
				os.Remove(f)
			}
		}
	})
	if len(aside) != len(asideBefore)+1 {
		t.Errorf("the future checkpoint was not set aside: %v", aside)
	}
	eventually(t, 30*time.Second, "a CheckpointCorrupt event naming the newer version", func() (bool, error) {
		evs, err := client.CoreV1().Events(metav1.NamespaceDefault).List(ctx(), metav1.ListOptions{FieldSelector: "reason=CheckpointCorrupt"})
		if err != nil {
			return false, err
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Name == nodeName && strings.Contains(e.Message, "written by a newer plugin (version 2, this plugin reads up to 1)") {
				return true, nil
			}
		}
		return false, fmt.Errorf("%d CheckpointCorrupt events", len(evs.Items))
	})
	held.assertKept(t, "after a checkpoint of a future format")
	held.release(t, migBefore, "the rolled-back plugin, from the rebuilt checkpoint")
}

// heldPods are a whole-GPU pod and a MIG pod whose claims must survive the
// plugin's replacement, with what identifies their containers and devices.
type heldPods struct {
	ns          string
	pods        []*corev1.Pod
	containerID map[string]string
	claimUID    map[string]string
	migUUID     string
}

// startHeldPods starts <prefix>-gpu (template whole) and <prefix>-mig
// (template mig) in ns and records their containers, claims and MIG device.
func startHeldPods(t *testing.T, ns, prefix string) *heldPods {
	t.Helper()
	h := &heldPods{ns: ns, containerID: map[string]string{}, claimUID: map[string]string{}}
	h.add(t, prefix+"-gpu", "whole")
	h.add(t, prefix+"-mig", "mig")
	dev := claimOf(t, h.pods[1], "gpu").Status.Allocation.Devices.Results[0].Device
	var minor, start int
	if _, err := fmt.Sscanf(dev, "gpu-%d-mig-1g10gb-%d", &minor, &start); err != nil {
		t.Fatalf("allocated %q: %v", dev, err)
	}
	for _, gi := range simState(t).GPUs[minor].GPUInstances {
		if gi.Start == start && len(gi.ComputeInstances) == 1 {
			h.migUUID = gi.ComputeInstances[0].UUID
		}
	}
	if h.migUUID == "" {
		t.Fatalf("no MIG instance at %d on GPU %d", start, minor)
	}
	h.assertKept(t, "before")
	return h
}

// add starts one more held pod, name, with a claim from template, and
// records it.
func (h *heldPods) add(t *testing.T, name, template string) {
	t.Helper()
	applyYAML(t, claimPod(h.ns, name, template))
	pod := waitPodRunning(t, h.ns, name)
	if len(pod.Status.ContainerStatuses) != 1 || pod.Status.ContainerStatuses[0].ContainerID == "" {
		t.Fatalf("pod %s: container statuses %+v", name, pod.Status.ContainerStatuses)
	}
	h.pods = append(h.pods, pod)
	h.containerID[name] = pod.Status.ContainerStatuses[0].ContainerID
	h.claimUID[name] = string(claimOf(t, pod, "gpu").UID)
}

// assertKept checks that the pods run the same containers, never
// restarted, and that their claims are prepared: CDI spec, checkpoint
// entry PrepareCompleted, the MIG instance alive.
func (h *heldPods) assertKept(t *testing.T, when string) {
	t.Helper()
	checkpoint := checkpointClaims(t)
	for _, old := range h.pods {
		p, err := client.CoreV1().Pods(h.ns).Get(ctx(), old.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s: pod %s: %v", when, old.Name, err)
		}
		if p.Status.Phase != corev1.PodRunning || len(p.Status.ContainerStatuses) != 1 {
			t.Errorf("%s: pod %s is %s", when, p.Name, p.Status.Phase)
			continue
		}
		if cs := p.Status.ContainerStatuses[0]; cs.ContainerID != h.containerID[p.Name] || cs.RestartCount != 0 || cs.State.Running == nil {
			t.Errorf("%s: pod %s's container changed: %s restarts %d (was %s)", when, p.Name, cs.ContainerID, cs.RestartCount, h.containerID[p.Name])
		}
		uid := h.claimUID[p.Name]
		if _, err := os.Stat(filepath.Join(runDir, "cdi", "k8s.gpu.nvidia.com-claim_"+uid+".json")); err != nil {
			t.Errorf("%s: pod %s's CDI spec: %v", when, p.Name, err)
		}
		if checkpoint[uid] != "PrepareCompleted" {
			t.Errorf("%s: pod %s's claim %s is %q in the checkpoint", when, p.Name, uid, checkpoint[uid])
		}
	}
	if !h.migAlive(t) {
		t.Errorf("%s: MIG device %s is gone", when, h.migUUID)
	}
}

func (h *heldPods) migAlive(t *testing.T) bool {
	for _, g := range simState(t).GPUs {
		for _, gi := range g.GPUInstances {
			for _, ci := range gi.ComputeInstances {
				if ci.UUID == h.migUUID {
					return true
				}
			}
		}
	}
	return false
}

// release deletes the pods and waits until by's plugin has unprepared
// their claims: CDI specs and checkpoint entries gone, the MIG instance
// destroyed (migBefore instances left).
func (h *heldPods) release(t *testing.T, migBefore int, by string) {
	t.Helper()
	for _, p := range h.pods {
		kubectl(t, "delete", "pod", "-n", h.ns, p.Name, "--wait=true")
	}
	eventually(t, 60*time.Second, "claims unprepared by "+by, func() (bool, error) {
		checkpoint := checkpointClaims(t)
		for name, uid := range h.claimUID {
			if _, err := os.Stat(filepath.Join(runDir, "cdi", "k8s.gpu.nvidia.com-claim_"+uid+".json")); err == nil {
				return false, fmt.Errorf("%s's CDI spec still there", name)
			}
			if _, ok := checkpoint[uid]; ok {
				return false, fmt.Errorf("%s's claim still in the checkpoint", name)
			}
		}
		return !h.migAlive(t) && migCount(t) == migBefore, fmt.Errorf("%d MIG devices, want %d", migCount(t), migBefore)
	})
}

// assertPluginReplaced waits for the chart's plugin pod to be a new pod,
// Ready, running image gpu-dra-driver:<tag>, and returns it.
func assertPluginReplaced(t *testing.T, ns string, old *corev1.Pod, tag string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	eventually(t, 120*time.Second, "a new plugin pod of "+tag, func() (bool, error) {
		pod = waitChartPlugin(t, ns)
		return pod.UID != old.UID, fmt.Errorf("still pod %s", pod.Name)
	})
	if img := pod.Spec.Containers[0].Image; img != "gpu-dra-driver:"+tag {
		t.Errorf("the plugin runs image %s, want gpu-dra-driver:%s", img, tag)
	}
	if pod.Spec.Containers[0].Image != old.Spec.Containers[0].Image && pod.Status.ContainerStatuses[0].ImageID == old.Status.ContainerStatuses[0].ImageID {
		t.Errorf("the images of %s and %s are the same image %s", old.Spec.Containers[0].Image, pod.Spec.Containers[0].Image, pod.Status.ContainerStatuses[0].ImageID)
	}
	return pod
}

// rollMeasure is what rollPlugin measured.
type rollMeasure struct {
	helm time.Duration // the helm command, --wait included
	// spans of /readyz failing on the node's HTTP port: in a surge roll,
	// the old plugin after it handed over, until the new one has the port
	unavailable []time.Duration
	during      []time.Duration // creation to Running of pods created while helm ran
	after       []time.Duration // the same for pods created in the 5 s after
	skipped     int             // ticks without a new pod: 5 probe pods in flight
	failed      int             // probe pods whose prepare the kubelet tried without a plugin
	minSlices   int             // fewest node slices seen
}

func (m rollMeasure) String() string {
	var longest time.Duration
	for _, d := range m.unavailable {
		longest = max(longest, d)
	}
	return fmt.Sprintf("/readyz on the node's port failing for %.1f s in %d span(s); helm %.1f s; "+
		"new whole-GPU pod creation to Running while helm ran: %s; in the 5 s after: %s; "+
		"%d pod(s) hit the window (FailedPrepareDynamicResources); %d ticks skipped (5 probe pods in flight); fewest node slices %d",
		longest.Seconds(), len(m.unavailable), m.helm.Seconds(), stats(m.during), stats(m.after), m.failed, m.skipped, m.minSlices)
}

// stats formats durations as "p50 X s, max Y s (n=N)".
func stats(d []time.Duration) string {
	if len(d) == 0 {
		return "none (n=0)"
	}
	d = slices.Clone(d)
	slices.Sort(d)
	return fmt.Sprintf("p50 %.1f s, max %.1f s (n=%d)", d[len(d)/2].Seconds(), d[len(d)-1].Seconds(), len(d))
}

// rollPlugin runs roll (a helm command that replaces the plugin) while it
// measures: the plugin's /readyz every 50 ms, the node's slices every
// 500 ms, and a new pod with a whole-GPU claim (template whole in ns)
// every second, at most 5 at a time (8 GPUs, 2 held, one spare), each
// deleted once Running. It fails the test if the node's slices were
// removed or a pod created during the roll did not run.
func rollPlugin(t *testing.T, ns string, roll func()) rollMeasure {
	t.Helper()
	var (
		mu        sync.Mutex
		m         = rollMeasure{minSlices: 1 << 30}
		created   = map[string]time.Time{}
		uids      = map[string]bool{}
		running   = map[string]time.Duration{}
		phase     = "during"
		inPhase   = map[string]string{}
		stop      = make(chan struct{})
		wg        sync.WaitGroup
		probeErrs []string
	)
	every := func(d time.Duration, f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(d)
			defer tick.Stop()
			for {
				f()
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		}()
	}
	// The readiness of the plugin that has the node's HTTP port (the
	// probes ask each pod's own socket; this is not them).
	httpClient := &http.Client{Timeout: 200 * time.Millisecond}
	var downSince time.Time
	every(50*time.Millisecond, func() {
		resp, err := httpClient.Get("http://127.0.0.1:8089/readyz")
		ok := err == nil && resp.StatusCode == http.StatusOK
		if err == nil {
			resp.Body.Close()
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case !ok && downSince.IsZero():
			downSince = time.Now()
		case ok && !downSince.IsZero():
			m.unavailable = append(m.unavailable, time.Since(downSince))
			downSince = time.Time{}
		}
	})
	every(500*time.Millisecond, func() {
		l, err := client.ResourceV1().ResourceSlices().List(ctx(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeName + ",spec.driver=gpu.nvidia.com"})
		if err == nil {
			mu.Lock()
			m.minSlices = min(m.minSlices, len(l.Items))
			mu.Unlock()
		}
	})
	// Probe pods: observe (every 100 ms), delete the running, create one.
	n, next := 0, time.Time{}
	every(100*time.Millisecond, func() {
		pods, err := client.CoreV1().Pods(ns).List(ctx(), metav1.ListOptions{LabelSelector: "probe=upgrade"})
		if err != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, p := range pods.Items {
			if _, seen := running[p.Name]; !seen && p.Status.Phase == corev1.PodRunning {
				running[p.Name] = time.Since(created[p.Name])
				if err := client.CoreV1().Pods(ns).Delete(ctx(), p.Name, metav1.DeleteOptions{}); err != nil {
					probeErrs = append(probeErrs, fmt.Sprintf("delete %s: %v", p.Name, err))
				}
			}
		}
		if phase == "" || time.Now().Before(next) {
			return
		}
		next = time.Now().Add(time.Second)
		if len(pods.Items) >= 5 {
			m.skipped++
			return
		}
		name := fmt.Sprintf("probe-%03d", n)
		n++
		created[name] = time.Now()
		inPhase[name] = phase
		p, err := client.CoreV1().Pods(ns).Create(ctx(), probePod(ns, name), metav1.CreateOptions{})
		if err != nil {
			probeErrs = append(probeErrs, fmt.Sprintf("create %s: %v", name, err))
			return
		}
		uids[string(p.UID)] = true
	})

	start := time.Now()
	roll()
	mu.Lock()
	m.helm = time.Since(start)
	phase = "after"
	mu.Unlock()
	time.Sleep(5 * time.Second)
	mu.Lock()
	phase = ""
	mu.Unlock()
	// Every probe pod runs and goes.
	deadline := time.Now().Add(120 * time.Second)
	for {
		pods, err := client.CoreV1().Pods(ns).List(ctx(), metav1.ListOptions{LabelSelector: "probe=upgrade"})
		if err == nil && len(pods.Items) == 0 {
			break
		}
		if time.Now().After(deadline) {
			close(stop)
			wg.Wait()
			t.Fatalf("probe pods still there after 120 s: %v %v", err, len(pods.Items))
		}
		time.Sleep(200 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if !downSince.IsZero() {
		t.Errorf("the plugin's /readyz still fails, since %s", downSince.Format(time.TimeOnly))
	}
	for name := range created {
		if _, ok := running[name]; !ok {
			t.Errorf("probe pod %s went without running", name)
		}
	}
	for name, d := range running {
		if inPhase[name] == "during" {
			m.during = append(m.during, d)
		} else {
			m.after = append(m.after, d)
		}
	}
	for _, e := range probeErrs {
		t.Error(e)
	}
	evs, err := client.CoreV1().Events(ns).List(ctx(), metav1.ListOptions{FieldSelector: "reason=FailedPrepareDynamicResources"})
	if err != nil {
		t.Fatal(err)
	}
	failed := map[string]bool{}
	for _, e := range evs.Items {
		if uids[string(e.InvolvedObject.UID)] {
			failed[string(e.InvolvedObject.UID)] = true
		}
	}
	m.failed = len(failed)
	if m.minSlices != 5 {
		t.Errorf("the node's slices fell to %d during the roll; the plugin must keep them when its DaemonSet stays", m.minSlices)
	}
	if len(m.unavailable) == 0 {
		t.Errorf("the plugin's /readyz never failed: was the plugin replaced?")
	}
	return m
}

// probePod is a pod with a whole-GPU claim from template whole, labelled
// as an upgrade probe.
func probePod(ns, name string) *corev1.Pod {
	grace := int64(1)
	tmpl := "whole"
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"probe": "upgrade"}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{Name: "c", Image: "busybox:local", ImagePullPolicy: corev1.PullNever,
				Command: []string{"sleep", "3600"}, Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}}}},
			ResourceClaims: []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: &tmpl}},
		},
	}
}

// TestHelmUpgradeKeepsTheWebhookCertificate: an upgrade keeps the
// webhook's self-signed certificate and the CA the API server trusts (the
// webhook reads its certificate at start, so a new CA would fail every
// claim's admission until its replicas restart). A Secret of an older
// chart, without its CA, gets a new certificate: the configuration then
// trusts the new and the previous CA, and the replicas roll. No plugin
// runs (its node selector matches no node) and no claim is made while the
// webhook is registered; the local cluster has no service routing to
// reach it.
func TestHelmUpgradeKeepsTheWebhookCertificate(t *testing.T) {
	helm := helmBinary(t)
	const ns, release = "gpu-dra-upgrade-webhook", "e2e-wh"
	kubeconfig := filepath.Join(runDir, "kubeconfig/admin.kubeconfig")
	helmRun := helmIn(t, helm, ns)
	helmRun("install", release, filepath.Join(repoRoot, "deployments/helm/gpu-dra-driver"), "--create-namespace",
		"--set", "image.tag="+oldTag, "--set", "image.pullPolicy=Never", "--set", "deviceClasses.create=false",
		"--set", "nodeScopedSlicePolicy.enabled=false", "--set", "kubeletPlugin.mps.daemonPods=false",
		"--set-string", "kubeletPlugin.nodeSelector.gpu-dra-e2e/no-plugin=true")
	t.Cleanup(func() {
		// No hooks: the pre-delete hook would remove every node's slices.
		if out, err := exec.Command(helm, "uninstall", release, "--kubeconfig", kubeconfig, "--namespace", ns, "--no-hooks", "--wait").CombinedOutput(); err != nil {
			t.Errorf("helm uninstall: %v\n%s", err, out)
			kubectlErr("delete", "validatingwebhookconfiguration", release+"-webhook", "--ignore-not-found")
		}
		cleanNamespace(t, ns)
	})
	type certs struct{ crt, ca, bundle, checksum string }
	read := func() certs {
		t.Helper()
		s, err := client.CoreV1().Secrets(ns).Get(ctx(), release+"-webhook-tls", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		vwc, err := client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx(), release+"-webhook", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d, err := client.AppsV1().Deployments(ns).Get(ctx(), release+"-webhook", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return certs{string(s.Data["tls.crt"]), string(s.Data["ca.crt"]), string(vwc.Webhooks[0].ClientConfig.CABundle),
			d.Spec.Template.Annotations["checksum/tls"]}
	}
	upgrade := func(tag string) {
		t.Helper()
		helmRun("upgrade", release, filepath.Join(repoRoot, "deployments/helm/gpu-dra-driver"), "--reuse-values", "--set", "image.tag="+tag)
	}
	installed := read()
	if installed.ca == "" || installed.bundle != installed.ca || installed.checksum == "" {
		t.Fatalf("after install: the configuration trusts %.60q, the Secret's CA is %.60q, checksum %q", installed.bundle, installed.ca, installed.checksum)
	}
	upgrade(newTag)
	if got := read(); got != installed {
		t.Errorf("the upgrade changed the webhook's certificate or CA:\nbefore %+v\nafter  %+v", installed, got)
	}

	// A Secret as an older chart wrote it: no ca.crt.
	kubectl(t, "patch", "secret", "-n", ns, release+"-webhook-tls", "--type=json", `-p=[{"op":"remove","path":"/data/ca.crt"}]`)
	upgrade(oldTag)
	renewed := read()
	if renewed.crt == installed.crt || renewed.checksum == installed.checksum {
		t.Errorf("a Secret without its CA kept its certificate, or the replicas were not rolled: %+v", renewed)
	}
	if want := renewed.ca + installed.ca; renewed.bundle != want || strings.Count(renewed.bundle, "BEGIN CERTIFICATE") != 2 {
		t.Errorf("the configuration does not trust the new then the previous CA:\n%s", renewed.bundle)
	}
	// The next upgrade trusts the current CA only.
	upgrade(newTag)
	if got := read(); got.crt != renewed.crt || got.bundle != renewed.ca {
		t.Errorf("the second upgrade: certificate kept %v, the configuration trusts only the current CA: %v",
			got.crt == renewed.crt, got.bundle == renewed.ca)
	}
}
