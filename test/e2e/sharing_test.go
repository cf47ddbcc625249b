//go:build e2e

package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

// TestTimeSlicedClaimSharedByTwoPods applies the time-slicing demo: both
// pods (three containers) see the same GPU, the driver's nvidia-smi set
// its time slice to Long, and deleting the pods and the claim restores
// the default.
func TestTimeSlicedClaimSharedByTwoPods(t *testing.T) {
	const ns = "gpu-sharing"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	kubectl(t, "apply", "-f", repoRoot+"/demo/sharing/time-slicing.yaml")
	a := waitPodRunning(t, ns, "time-sliced-a")
	waitPodRunning(t, ns, "time-sliced-b")
	dev := claimOf(t, a, "shared-gpu").Status.Allocation.Devices.Results[0].Device
	uuid := gpuUUIDs(t)[dev]
	if uuid == "" {
		t.Fatalf("allocated %q, not a whole GPU", dev)
	}
	for _, p := range []struct{ pod, container string }{{"time-sliced-a", "ctr0"}, {"time-sliced-a", "ctr1"}, {"time-sliced-b", ""}} {
		eventually(t, 30*time.Second, p.pod+"/"+p.container+" sees "+uuid, func() (bool, error) {
			out, err := kubectlErr("logs", "-n", ns, p.pod, "-c", containerOr(p.container))
			return strings.Contains(out, "GPU_DRA_DEVICE_UUIDS="+uuid), errors.Join(err, fmt.Errorf("output: %s", out))
		})
	}
	slice := func() string {
		data, err := os.ReadFile(simhost.TimeSlicePath(runDir+"/sim/host/driver", uuid))
		if err != nil {
			return err.Error()
		}
		return strings.TrimSpace(string(data))
	}
	if got := slice(); got != "3" {
		t.Errorf("time slice of %s is %s, want 3 (Long)", dev, got)
	}
	kubectl(t, "delete", "pod", "-n", ns, "time-sliced-a", "time-sliced-b", "--wait=true")
	kubectl(t, "delete", "resourceclaim", "-n", ns, "time-sliced-gpu", "--wait=true")
	eventually(t, 60*time.Second, "the default time slice restored", func() (bool, error) {
		got := slice()
		return got == "0", fmt.Errorf("time slice %s", got)
	})
}

// mpsDaemonEvents counts the simulated MPS control daemons' "start" or
// "quit" events on the node so far.
func mpsDaemonEvents(what string) int {
	return strings.Count(mpsLogText(), " "+what+" ")
}

// mpsLogText is the simulated driver's MPS log: every daemon's start, with
// its GPUs, pipe directory and the limits in its environment, and quit.
func mpsLogText() string {
	data, _ := os.ReadFile(simhost.MPSLogPath(runDir + "/sim/host/driver"))
	return string(data)
}

// mpsDaemonEventsOf counts the starts or quits of the daemon of one key.
func mpsDaemonEventsOf(what, key string) int {
	n := 0
	for _, line := range strings.Split(mpsLogText(), "\n") {
		if strings.Contains(line, " "+what+" ") && strings.Contains(line, " pipe="+runDir+"/kubelet/plugins/gpu.nvidia.com/mps/"+key+"/pipe") {
			n++
		}
	}
	return n
}

// mpsClaimTemplate is the ResourceClaimTemplate "mps" in namespace ns: a
// whole GPU shared through the claim's own MPS daemon.
func mpsClaimTemplate(ns string) string {
	return `apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: mps, namespace: ` + ns + `}
spec:
  spec:
    devices:
      requests:
      - {name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}
      config:
      - requests: [gpu]
        opaque:
          driver: gpu.nvidia.com
          parameters: {apiVersion: resource.nvidia.com/v1beta1, kind: GpuConfig, sharing: {strategy: MPS}}
`
}

// mpsDaemonPIDs returns the PIDs of the MPS control daemons alive on the
// node, by daemon key, from the records their supervisors write in the
// plugin's own directory (which no tenant can write).
func mpsDaemonPIDs(t testing.TB) map[string]int {
	t.Helper()
	records, _ := filepath.Glob(runDir + "/kubelet/plugins/gpu.nvidia.com/mps/*/daemon.json")
	pids := map[string]int{}
	for _, f := range records {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var rec struct {
			PID int `json:"pid"`
		}
		if json.Unmarshal(data, &rec) == nil && rec.PID > 0 && syscall.Kill(rec.PID, 0) == nil {
			pids[filepath.Base(filepath.Dir(f))] = rec.PID
		}
	}
	return pids
}

// assertDaemonsKept disrupts the plugin three ways: driver.sh restart (the
// plugin stopped, upgraded and started again), kubectl rollout restart (a
// successor takes the node over) and SIGKILL of its process. After each,
// the MPS daemons are the very processes they were (same PIDs, none
// started or asked to quit: they run in pods of their own, docs/helm.md),
// and each client pod's containers are the same and still find the
// daemon's control pipe in their pipe directory.
func assertDaemonsKept(t *testing.T, ns string, clients []string, daemons int) {
	t.Helper()
	before := mpsDaemonPIDs(t)
	if len(before) != daemons {
		t.Fatalf("%d MPS daemons alive (%v), want %d", len(before), before, daemons)
	}
	starts, quits := mpsDaemonEvents("start"), mpsDaemonEvents("quit")
	containers := func() map[string]string {
		ids := map[string]string{}
		for _, name := range clients {
			p, err := client.CoreV1().Pods(ns).Get(ctx(), name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, cs := range p.Status.ContainerStatuses {
				ids[name+"/"+cs.Name] = fmt.Sprintf("%s restarts=%d", cs.ContainerID, cs.RestartCount)
			}
		}
		return ids
	}
	clientsBefore := containers()
	ds := "daemonset/" + driverRelease + "-kubelet-plugin"
	for _, d := range []struct {
		what    string
		disrupt func()
	}{
		{"driver.sh restart", func() {
			if err := script("driver.sh", "restart"); err != nil {
				t.Fatal(err)
			}
		}},
		{"kubectl rollout restart", func() {
			kubectl(t, "rollout", "restart", "-n", driverNamespace, ds)
			kubectl(t, "rollout", "status", "-n", driverNamespace, ds, "--timeout=3m")
		}},
		{"a SIGKILL of the plugin", func() { killPlugin(t) }},
	} {
		d.disrupt()
		if got := mpsDaemonPIDs(t); !maps.Equal(got, before) {
			t.Errorf("after %s: MPS daemons %v, want the same processes %v", d.what, got, before)
		}
		if n, q := mpsDaemonEvents("start")-starts, mpsDaemonEvents("quit")-quits; n != 0 || q != 0 {
			t.Errorf("after %s: %d MPS daemons started and %d quit, want none", d.what, n, q)
		}
		if got := containers(); !maps.Equal(got, clientsBefore) {
			t.Errorf("after %s: client containers %v, want %v", d.what, got, clientsBefore)
		}
		for _, name := range clients {
			if out, err := kubectlErr("exec", "-n", ns, name, "--", "ls", "/tmp/nvidia-mps/control"); err != nil {
				t.Errorf("after %s: %s cannot see its MPS daemon's control pipe: %v: %s", d.what, name, err, out)
			}
		}
	}
}

// killPlugin SIGKILLs the plugin's process (not its MPS daemons'
// supervisors, which run the same program) and waits until the kubelet
// has restarted it and it is Ready again.
func killPlugin(t *testing.T) {
	t.Helper()
	restarts := func(p *corev1.Pod) int32 {
		for _, cs := range p.Status.ContainerStatuses {
			if cs.Name == "plugin" {
				return cs.RestartCount
			}
		}
		return -1
	}
	was := restarts(pluginPod(t))
	var killed []int
	for _, pid := range processPIDs("gpu-kubelet-plugin") {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if args := strings.Split(string(cmdline), "\x00"); len(args) > 1 && (args[1] == "mps-daemon" || args[1] == "probe") {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			killed = append(killed, pid)
		}
	}
	if len(killed) != 1 {
		t.Fatalf("killed %v, want the one plugin process", killed)
	}
	eventually(t, 2*time.Minute, "the plugin restarted and Ready", func() (bool, error) {
		p := pluginPod(t)
		return restarts(p) > was && podReady(p), fmt.Errorf("restarts %d (was %d), ready %v", restarts(p), was, podReady(p))
	})
}

func containerOr(name string) string {
	if name == "" {
		return "ctr"
	}
	return name
}

// TestMPSClaimSharedByTwoPods applies the MPS demo: one daemon serves both
// pods, whose containers see its pipe directory and the limits; the
// plugin's restart, roll and crash leave the daemon running, the same
// process; deleting the claim's pods and the claim stops it.
func TestMPSClaimSharedByTwoPods(t *testing.T) {
	const ns = "gpu-mps"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	count := mpsDaemonEvents
	startsBefore, quitsBefore := count("start"), count("quit")
	kubectl(t, "apply", "-f", repoRoot+"/demo/sharing/mps.yaml")
	waitPodRunning(t, ns, "mps-a")
	waitPodRunning(t, ns, "mps-b")
	for _, pod := range []string{"mps-a", "mps-b"} {
		log := podLogs(t, ns, pod, "control")
		for _, want := range []string{"CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=10240M"} {
			if !strings.Contains(log, want) {
				t.Errorf("%s lacks %q:\n%s", pod, want, log)
			}
		}
	}
	if n := count("start") - startsBefore; n != 1 {
		mpsLog := simhost.MPSLogPath(runDir + "/sim/host/driver")
		data, err := os.ReadFile(mpsLog)
		t.Fatalf("%d MPS daemons started for one claim (%d before); %s (%v):\n%s", n, startsBefore, mpsLog, err, data)
	}
	assertDaemonsKept(t, ns, []string{"mps-a", "mps-b"}, 1)
	kubectl(t, "delete", "pod", "-n", ns, "mps-a", "mps-b", "--wait=true")
	kubectl(t, "delete", "resourceclaim", "-n", ns, "mps-gpu", "--wait=true")
	eventually(t, 60*time.Second, "the MPS daemon stopped and its directory removed", func() (bool, error) {
		dirs, _ := os.ReadDir(runDir + "/kubelet/plugins/gpu.nvidia.com/mps")
		return count("quit")-quitsBefore == 1 && len(dirs) == 0, fmt.Errorf("%d quits, directories %v", count("quit")-quitsBefore, dirs)
	})
}

// TestQuarterGPUs applies the fractional-GPU demo: four replicas, each
// with a 20Gi/25% share, land on one GPU's shared device, each the client
// of an MPS daemon of its own claim, started with the share's limits in
// its own environment (and told them in the replica's), and keep them
// through a plugin restart; a fifth replica goes to another GPU; the GPU
// is not given out whole meanwhile; scaling to zero stops the daemons.
func TestQuarterGPUs(t *testing.T) {
	const ns = "gpu-quarter"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	count := mpsDaemonEvents
	startsBefore, quitsBefore := count("start"), count("quit")
	kubectl(t, "apply", "-f", repoRoot+"/demo/sharing/quarter-gpu.yaml")

	// running waits for n replicas to run and returns their pods.
	running := func(n int) []corev1.Pod {
		var pods []corev1.Pod
		eventually(t, 120*time.Second, fmt.Sprintf("%d replicas Running", n), func() (bool, error) {
			l, err := client.CoreV1().Pods(ns).List(ctx(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=model-server"})
			if err != nil {
				return false, err
			}
			pods = nil
			for _, p := range l.Items {
				if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
					pods = append(pods, p)
				}
			}
			return len(pods) == n, fmt.Errorf("%d of %d pods running", len(pods), len(l.Items))
		})
		return pods
	}
	deviceOf := func(p *corev1.Pod) (string, resourceapi.DeviceRequestAllocationResult) {
		r := claimOf(t, p, "gpu").Status.Allocation.Devices.Results[0]
		return r.Device, r
	}
	pods := running(4)
	shared, _ := deviceOf(&pods[0])
	uuid := gpuUUIDs(t)[strings.TrimSuffix(shared, "-shared")]
	if !strings.HasSuffix(shared, "-shared") || uuid == "" {
		t.Fatalf("allocated %q, not a shared GPU", shared)
	}
	for i := range pods {
		dev, r := deviceOf(&pods[i])
		memory := r.ConsumedCapacity["memory"]
		if dev != shared || r.ShareID == nil || memory.String() != "20Gi" {
			t.Errorf("pod %s: device %s, share %v, memory %s; want a 20Gi share of %s", pods[i].Name, dev, r.ShareID, memory.String(), shared)
		}
		log := podLogs(t, ns, pods[i].Name, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT")
		for _, want := range []string{"GPU_DRA_DEVICE_UUIDS=" + uuid, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=20480M", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25", "CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps", "control"} {
			if !strings.Contains(log, want) {
				t.Errorf("pod %s lacks %q:\n%s", pods[i].Name, want, log)
			}
		}
		key := string(claimOf(t, &pods[i], "gpu").UID)
		if want := "devices=" + uuid + " pipe=" + runDir + "/kubelet/plugins/gpu.nvidia.com/mps/" + key + "/pipe active_thread_percentage=25 pinned_device_mem_limit=0=20480M"; !strings.Contains(mpsLogText(), want) {
			t.Errorf("pod %s: no daemon of its own claim started with %q:\n%s", pods[i].Name, want, mpsLogText())
		}
	}
	if n := count("start") - startsBefore; n != 4 {
		t.Fatalf("%d MPS daemons started for four shares of one GPU, want one per share's claim", n)
	}

	// The GPU is shared: a whole-GPU claim pinned to it stays pending.
	applyYAML(t, `apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: that-gpu, namespace: gpu-quarter}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com, selectors: [{cel: {expression: 'device.attributes["gpu.nvidia.com"].uuid == "`+uuid+`"'}}]}}]}}}
`+claimPod(ns, "whole", "that-gpu"))
	time.Sleep(5 * time.Second)
	if p, err := client.CoreV1().Pods(ns).Get(ctx(), "whole", metav1.GetOptions{}); err != nil {
		t.Error(err)
	} else if p.Status.Phase != corev1.PodPending {
		t.Errorf("a whole-GPU pod on the shared GPU is %s, want Pending", p.Status.Phase)
	}
	kubectl(t, "delete", "pod", "-n", ns, "whole", "--wait=true")

	// Restarts, a roll and a crash of the plugin leave the daemon and its clients alone.
	var clients []string
	for i := range pods {
		clients = append(clients, pods[i].Name)
	}
	assertDaemonsKept(t, ns, clients, 4)

	// A fifth replica does not fit: it gets a share of another GPU.
	kubectl(t, "scale", "deployment", "-n", ns, "model-server", "--replicas=5")
	pods = running(5)
	var others []string
	for i := range pods {
		if dev, _ := deviceOf(&pods[i]); dev != shared {
			others = append(others, dev)
		}
	}
	if len(others) != 1 || !strings.HasSuffix(others[0], "-shared") {
		t.Errorf("with five replicas, off %s: %v; want one share of another GPU", shared, others)
	}
	t.Logf("quarter shares: 4 pods on %s, the fifth on %v", shared, others)

	kubectl(t, "scale", "deployment", "-n", ns, "model-server", "--replicas=0")
	// The daemon logs its quit before the plugin removes its directory.
	eventually(t, 90*time.Second, "the five shares' MPS daemons stopped and their directories removed", func() (bool, error) {
		dirs, _ := os.ReadDir(runDir + "/kubelet/plugins/gpu.nvidia.com/mps")
		return count("quit")-quitsBefore == 5 && len(dirs) == 0,
			fmt.Errorf("%d starts, %d quits, directories %v", count("start")-startsBefore, count("quit")-quitsBefore, dirs)
	})
}

// TestAdminAccessToAShareAndSharesOfSeveralGPUs: a monitor's claim with
// admin access to a shared GPU is allocated a share ID like any share, and
// its status entry names it (the API server refuses one without it); a
// request for two shares, which the scheduler puts on two GPUs, runs with
// the claim's one daemon serving both GPUs.
func TestAdminAccessToAShareAndSharesOfSeveralGPUs(t *testing.T) {
	const ns = "gpu-share-edges"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata:
  name: gpu-share-edges
  labels: {resource.kubernetes.io/admin-access: "true"}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: monitor, namespace: gpu-share-edges}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: shared.gpu.nvidia.com, adminAccess: true, capacity: {requests: {memory: 1Gi}}}}]}}}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: two-shares, namespace: gpu-share-edges}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: shared.gpu.nvidia.com, count: 2, capacity: {requests: {memory: 10Gi}}}}]}}}
`+claimPod(ns, "monitor", "monitor")+claimPod(ns, "two", "two-shares"))

	monitor := waitPodRunning(t, ns, "monitor")
	r := claimOf(t, monitor, "gpu").Status.Allocation.Devices.Results[0]
	if r.ShareID == nil || r.AdminAccess == nil || !*r.AdminAccess {
		t.Fatalf("the monitor's allocation %+v: want admin access with a share ID", r)
	}
	eventually(t, 30*time.Second, "the monitor's status entry with its share ID", func() (bool, error) {
		entries := ours(claimOf(t, monitor, "gpu"))
		return len(entries) == 1 && entries[0].ShareID != nil && *entries[0].ShareID == string(*r.ShareID), fmt.Errorf("entries %+v", entries)
	})

	// Two shares of one request land on two GPUs: the claim's one daemon
	// serves both, each GPU with its share's memory.
	two := waitPodRunning(t, ns, "two")
	rs := claimOf(t, two, "gpu").Status.Allocation.Devices.Results
	if len(rs) != 2 || rs[0].Device == rs[1].Device {
		t.Fatalf("the two shares were allocated %+v, want two GPUs", rs)
	}
	uuids := gpuUUIDs(t)
	var devices []string
	for _, r := range rs {
		devices = append(devices, uuids[strings.TrimSuffix(r.Device, "-shared")])
	}
	slices.Sort(devices)
	pipe := runDir + "/kubelet/plugins/gpu.nvidia.com/mps/" + string(claimOf(t, two, "gpu").UID) + "/pipe"
	log := mpsLogText()
	if !strings.Contains(log, "devices="+strings.Join(devices, ",")+" pipe="+pipe+" pinned_device_mem_limit=0=10240M,1=10240M") &&
		!strings.Contains(log, "devices="+devices[1]+","+devices[0]+" pipe="+pipe+" pinned_device_mem_limit=0=10240M,1=10240M") {
		t.Errorf("no daemon of the two-share claim with both GPUs %v and their limits:\n%s", devices, log)
	}
}

// TestTenantsSharingAGPUNeverShareADaemon: two namespaces hold shares of
// one GPU. Each share's claim has an MPS daemon of its own, started with
// that share's limits in the daemon's environment, which no client's
// environment can raise; neither tenant sees the files the other puts in
// its pipe directory, and a tenant that tells "its" daemon to quit, with
// the tool the driver gives every GPU container, stops only its own.
func TestTenantsSharingAGPUNeverShareADaemon(t *testing.T) {
	uuid := gpuUUIDs(t)["gpu-5"]
	pods := map[string]*corev1.Pod{}
	for _, tenant := range []struct{ ns, memory, compute string }{{"tenant-a", "10Gi", "20"}, {"tenant-b", "30Gi", "40"}} {
		t.Cleanup(func() { cleanNamespace(t, tenant.ns) })
		applyYAML(t, `apiVersion: v1
kind: Namespace
metadata: {name: `+tenant.ns+`}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: share, namespace: `+tenant.ns+`}
spec: {spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: shared.gpu.nvidia.com, capacity: {requests: {memory: `+tenant.memory+`, compute: "`+tenant.compute+`"}},
  selectors: [{cel: {expression: 'device.attributes["gpu.nvidia.com"].uuid == "`+uuid+`"'}}]}}]}}}
`+claimPod(tenant.ns, "app", "share"))
	}
	for _, ns := range []string{"tenant-a", "tenant-b"} {
		pods[ns] = waitPodRunning(t, ns, "app")
	}
	key := func(ns string) string { return string(claimOf(t, pods[ns], "gpu").UID) }
	for ns, limits := range map[string]string{
		"tenant-a": "active_thread_percentage=20 pinned_device_mem_limit=0=10240M",
		"tenant-b": "active_thread_percentage=40 pinned_device_mem_limit=0=30720M",
	} {
		want := "devices=" + uuid + " pipe=" + runDir + "/kubelet/plugins/gpu.nvidia.com/mps/" + key(ns) + "/pipe " + limits
		if !strings.Contains(mpsLogText(), want) {
			t.Errorf("%s: no daemon of its own started with %q:\n%s", ns, want, mpsLogText())
		}
	}
	daemons := mpsDaemonPIDs(t)
	if daemons[key("tenant-a")] == 0 || daemons[key("tenant-b")] == 0 || daemons[key("tenant-a")] == daemons[key("tenant-b")] {
		t.Fatalf("daemons %v: want one per tenant's claim", daemons)
	}

	// Tenant a plants a file where its clients connect; b never sees it.
	if out, err := kubectlErr("exec", "-n", "tenant-a", "app", "--", "sh", "-c", "echo planted > /tmp/nvidia-mps/planted && ls /tmp/nvidia-mps"); err != nil || !strings.Contains(out, "planted") {
		t.Fatalf("tenant a writes its pipe directory: %v\n%s", err, out)
	}
	if out, err := kubectlErr("exec", "-n", "tenant-b", "app", "--", "ls", "-a", "/tmp/nvidia-mps"); err != nil || strings.Contains(out, "planted") || !strings.Contains(out, "control") {
		t.Errorf("tenant b's pipe directory (%v): want its daemon's control pipe and nothing of tenant a's:\n%s", err, out)
	}

	// Tenant a tells the daemon it reaches to quit: only its own stops.
	if out, err := kubectlErr("exec", "-n", "tenant-a", "app", "--", "sh", "-c", "echo quit | /usr/bin/nvidia-cuda-mps-control"); err != nil {
		t.Fatalf("tenant a's quit: %v\n%s", err, out)
	}
	// Its daemon exits (the quit is not logged: the tool in the container
	// reaches no simulated kernel) and its supervisor starts it again,
	// with its limits; tenant b's is the same process throughout.
	eventually(t, 60*time.Second, "tenant a's daemon started again", func() (bool, error) {
		pid := mpsDaemonPIDs(t)[key("tenant-a")]
		return mpsDaemonEventsOf("start", key("tenant-a")) == 2 && pid != 0 && pid != daemons[key("tenant-a")],
			fmt.Errorf("%d starts, PID %d (was %d)", mpsDaemonEventsOf("start", key("tenant-a")), pid, daemons[key("tenant-a")])
	})
	if n, pid := mpsDaemonEventsOf("start", key("tenant-b")), mpsDaemonPIDs(t)[key("tenant-b")]; n != 1 || pid != daemons[key("tenant-b")] {
		t.Errorf("tenant b's daemon: %d starts, PID %d, want the same process %d", n, pid, daemons[key("tenant-b")])
	}

	// What tenant a writes through its MPS mounts is bounded by its
	// daemon's tmpfs, not the node's disk; a tree deeper than any
	// open-file limit there does not stop its claim's unprepare, which
	// leaves no tmpfs mounted.
	for _, dir := range []string{"/tmp/nvidia-mps", "/dev/shm"} {
		out, err := kubectlErr("exec", "-n", "tenant-a", "app", "--", "dd", "if=/dev/zero", "of="+dir+"/fill", "bs=1M", "count=100")
		if err == nil || !strings.Contains(out+err.Error(), "No space left") {
			t.Errorf("tenant a wrote 100 MiB to %s (%v):\n%s", dir, err, out)
		}
	}
	if out, err := kubectlErr("exec", "-n", "tenant-a", "app", "--", "sh", "-c",
		"rm -f /tmp/nvidia-mps/fill; cd /tmp/nvidia-mps && i=0 && while [ $i -lt 1500 ]; do mkdir d && cd d || exit 1; i=$((i+1)); done"); err != nil {
		t.Fatalf("tenant a's deep tree: %v\n%s", err, out)
	}
	keyA := key("tenant-a")
	cleanNamespace(t, "tenant-a")
	eventually(t, 60*time.Second, "tenant a's daemon directory and tmpfs gone", func() (bool, error) {
		var left []string
		for _, p := range []string{"mps/" + keyA, "mps-fs/" + keyA} {
			if _, err := os.Lstat(runDir + "/kubelet/plugins/gpu.nvidia.com/" + p); err == nil {
				left = append(left, p)
			}
		}
		mounts, _ := os.ReadFile("/proc/self/mountinfo")
		if strings.Contains(string(mounts), keyA) {
			left = append(left, "a mount")
		}
		return len(left) == 0, fmt.Errorf("left: %v", left)
	})
}
