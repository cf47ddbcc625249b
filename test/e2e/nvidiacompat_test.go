//go:build e2e

package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"text/template"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

// nvidiaDir holds NVIDIA's manifests, copied unchanged
// (testdata/nvidia/README.md).
const nvidiaDir = "test/e2e/testdata/nvidia"

// imageLine is a container's image in a manifest.
var imageLine = regexp.MustCompile(`(?m)^(\s*(?:- )?)image: \S+[ \t]*$`)

// nvidiaManifest returns one of NVIDIA's manifests (a path under
// nvidiaDir) with its images swapped for the local busybox:local, which
// has bash and the simulated driver's nvidia-smi: the only change made.
// The GPU Operator's manifests are Go templates, rendered with its fields.
func nvidiaManifest(t *testing.T, rel, ns string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, nvidiaDir, rel))
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(rel, "gpu-operator/") {
		tmpl, err := template.New(rel).Parse(string(data))
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if err := tmpl.Execute(&out, map[string]string{
			"ResourceClaimAPIVersion": "resource.k8s.io/v1", "DeviceClassAPIVersion": "resource.k8s.io/v1", "Namespace": ns,
		}); err != nil {
			t.Fatal(err)
		}
		data = out.Bytes()
	}
	return imageLine.ReplaceAllString(string(data), "${1}image: busybox:local")
}

// applyNVIDIA applies one of NVIDIA's manifests in namespace ns (made
// here), or, when the manifest makes its own, in its own (own true). A
// namespace for admin access is labelled for it first, as the GPU
// Operator labels its own.
func applyNVIDIA(t *testing.T, rel, ns string, own, admin bool) {
	t.Helper()
	if !own {
		label := ""
		if admin {
			label = ", labels: {resource.kubernetes.io/admin-access: \"true\"}"
		}
		applyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+label+"}\n")
	}
	f := filepath.Join(t.TempDir(), filepath.Base(rel))
	if err := os.WriteFile(f, []byte(nvidiaManifest(t, rel, ns)), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"apply", "-f", f}
	if !own {
		args = append(args, "-n", ns)
	}
	kubectl(t, args...)
}

// smiOutput is what "nvidia-smi -L" printed in a container, parsed as
// NVIDIA's format.
type smiOutput struct {
	lines []string
	// gpus are the GPU lines' UUIDs; migs the MIG lines', each with the
	// UUID of the GPU line above it and its profile.
	gpus []string
	migs []smiMIG
}

type smiMIG struct{ uuid, parent, profile string }

var (
	smiGPULine = regexp.MustCompile(`^GPU (\d+): (\S.*) \(UUID: (GPU-[0-9a-f-]{36})\)$`)
	smiMIGLine = regexp.MustCompile(`^  MIG (\S+) +Device +(\d+): \(UUID: (MIG-[0-9a-f-]{36})\)$`)
)

// nvidiaSMI waits for a container's "nvidia-smi -L" and parses it: every
// line must be in NVIDIA's format, GPUs and MIG devices numbered from 0.
func nvidiaSMI(t *testing.T, ns, pod, container string) smiOutput {
	t.Helper()
	log := podLogsOf(t, ns, pod, container, "UUID: ")
	var o smiOutput
	migN := 0
	for _, l := range strings.Split(strings.TrimRight(log, "\n"), "\n") {
		o.lines = append(o.lines, l)
		if m := smiGPULine.FindStringSubmatch(l); m != nil {
			if m[1] != fmt.Sprint(len(o.gpus)) {
				t.Errorf("%s/%s %s: %q is not GPU %d", ns, pod, container, l, len(o.gpus))
			}
			o.gpus = append(o.gpus, m[3])
			migN = 0
			continue
		}
		if m := smiMIGLine.FindStringSubmatch(l); m != nil && len(o.gpus) > 0 {
			if m[2] != fmt.Sprint(migN) {
				t.Errorf("%s/%s %s: %q is not MIG device %d", ns, pod, container, l, migN)
			}
			migN++
			o.migs = append(o.migs, smiMIG{uuid: m[3], parent: o.gpus[len(o.gpus)-1], profile: m[1]})
			continue
		}
		t.Errorf("%s/%s %s: line %q is not nvidia-smi -L's format", ns, pod, container, l)
	}
	return o
}

// oneGPU checks NVIDIA's bats assertion on a whole-GPU container: one line,
// "UUID: GPU-", and returns its UUID.
func oneGPU(t *testing.T, ns, pod, container string) string {
	t.Helper()
	o := nvidiaSMI(t, ns, pod, container)
	if len(o.lines) != 1 || len(o.gpus) != 1 {
		t.Fatalf("%s/%s %s: nvidia-smi -L printed %q, want one GPU", ns, pod, container, o.lines)
	}
	return o.gpus[0]
}

// deploymentPods waits until the Deployment name in ns has n ready
// replicas and its selector lists exactly n pods, each Running and not
// being deleted, and returns their names.
func deploymentPods(t *testing.T, ns, name, selector string, n int, timeout time.Duration) []string {
	t.Helper()
	var pods []string
	eventually(t, timeout, fmt.Sprintf("%s/%s's %d replicas ready", ns, name, n), func() (bool, error) {
		d, err := client.AppsV1().Deployments(ns).Get(ctx(), name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if int(d.Status.ReadyReplicas) != n {
			return false, fmt.Errorf("%d ready", d.Status.ReadyReplicas)
		}
		l, err := client.CoreV1().Pods(ns).List(ctx(), metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, err
		}
		pods = nil
		running := 0
		for _, p := range l.Items {
			pods = append(pods, p.Name)
			if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
				running++
			}
		}
		return len(pods) == n && running == n, fmt.Errorf("pods %v, %d of them running", pods, running)
	})
	return pods
}

// claimDevices returns the devices allocated to a pod's claim entry.
func claimDevices(t *testing.T, ns, pod, entry string) []string {
	t.Helper()
	c := claimOf(t, waitPodRunning(t, ns, pod), entry)
	if c.Status.Allocation == nil {
		t.Fatalf("claim %s of %s/%s is not allocated", entry, ns, pod)
	}
	var out []string
	for _, r := range c.Status.Allocation.Devices.Results {
		out = append(out, r.Device)
	}
	return out
}

// gpuOfDevice is the UUID of a device's GPU: the device itself, or a MIG
// device's parent (gpu-N-mig-...).
func gpuOfDevice(t *testing.T, device string) string {
	t.Helper()
	parts := strings.SplitN(device, "-", 3)
	uuid := gpuUUIDs(t)[parts[0]+"-"+parts[1]]
	if uuid == "" {
		t.Fatalf("device %s is not of one of the node's GPUs", device)
	}
	return uuid
}

// claimCDISpec returns the plugin's CDI spec of the claim of a pod's entry.
func claimCDISpec(t *testing.T, ns, pod, entry string) string {
	t.Helper()
	uid := string(claimOf(t, waitPodRunning(t, ns, pod), entry).UID)
	for _, f := range cdiSpecs(t) {
		if strings.Contains(f, uid) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			return string(data)
		}
	}
	t.Fatalf("no CDI spec of claim %s", uid)
	return ""
}

// nvidiaCase is one of NVIDIA's manifests with its documented expectation.
type nvidiaCase struct {
	name string
	// file is the manifest, under nvidiaDir.
	file string
	// ns is the namespace: the manifest's own when own is set.
	ns  string
	own bool
	// admin labels the namespace for admin access.
	admin bool
	// also, if set, applies more of NVIDIA's manifests with it.
	also func(t *testing.T, ns string)
	// check asserts NVIDIA's expectation once the manifest is applied.
	check func(t *testing.T, ns string)
}

const bats = "dra-driver-nvidia-gpu/tests/bats/specs/"

// nvidiaStressPods is NVIDIA's test_gpu_stress.bats's default number of
// pods of one shared claim (TEST_GPU_STRESS_PODS_N, tests/bats/Makefile).
const nvidiaStressPods = 12

// nvidiaWaves are the cases in the order they run: each wave's manifests
// are applied together, in a namespace each, their expectations checked,
// and the namespaces deleted together. A wave takes at most the node's
// eight GPUs.
var nvidiaWaves = [][]nvidiaCase{{
	// "GPUs: 1 pod(s), 1 full GPU" (test_gpu_basic.bats): one line,
	// "UUID: GPU-", the claim's GPU.
	{name: "bats gpu-simple-full", file: bats + "gpu-simple-full.yaml", ns: "nv-simple-full", check: func(t *testing.T, ns string) {
		if got, want := oneGPU(t, ns, "pod-full-gpu", ""), gpuOfDevice(t, claimDevices(t, ns, "pod-full-gpu", "gpu")[0]); got != want {
			t.Errorf("the container sees %s, its claim has %s", got, want)
		}
	}},
	// "GPUs: 1 pod(s), 2 cntrs, 1 full GPU (shared, 1 RCT)": both
	// containers see the same one GPU.
	{name: "bats gpu-1pod-2cnt-1gpu", file: bats + "gpu-1pod-2cnt-1gpu.yaml", ns: "nv-1pod-2cnt", check: func(t *testing.T, ns string) {
		if a, b := oneGPU(t, ns, "pod1", "ctr0"), oneGPU(t, ns, "pod1", "ctr1"); a != b {
			t.Errorf("the containers see %s and %s, want the same GPU", a, b)
		}
	}},
	// "GPUs: 2 pod(s), 1 full GPU (shared, 1 RC)": the same GPU.
	{name: "bats gpu-2pods-1gpu", file: bats + "gpu-2pods-1gpu.yaml", ns: "nv-2pods-1gpu", check: func(t *testing.T, ns string) {
		if a, b := oneGPU(t, ns, "pod1", ""), oneGPU(t, ns, "pod2", ""); a != b {
			t.Errorf("the pods see %s and %s, want the same GPU", a, b)
		}
	}},
	// "GPUs: 2 pod(s), 1 full GPU each": two different GPUs.
	{name: "bats gpu-2pods-2gpus", file: bats + "gpu-2pods-2gpus.yaml", ns: "nv-2pods-2gpus", check: func(t *testing.T, ns string) {
		if a, b := oneGPU(t, ns, "pod1", ""), oneGPU(t, ns, "pod2", ""); a == b {
			t.Errorf("both pods see %s, want a GPU each", a)
		}
	}},
	// Two claims in one container: it sees both GPUs.
	{name: "bats gpu-two-claims-one-pod", file: bats + "gpu-two-claims-one-pod.yaml", ns: "nv-two-claims", check: func(t *testing.T, ns string) {
		want := map[string]bool{}
		for _, e := range []string{"gpu-a", "gpu-b"} {
			want[gpuOfDevice(t, claimDevices(t, ns, "pod-two-claims", e)[0])] = true
		}
		o := nvidiaSMI(t, ns, "pod-two-claims", "")
		if len(o.gpus) != 2 || len(want) != 2 || !want[o.gpus[0]] || !want[o.gpus[1]] {
			t.Errorf("nvidia-smi -L printed %q, want the claims' two GPUs %v", o.lines, want)
		}
	}},
	// Time-slicing (test_gpu_sharing.bats): both containers see the same
	// GPU, whose time slice is Short.
	{name: "bats gpu-timeslicing", file: bats + "gpu-timeslicing.yaml", ns: "nv-timeslicing", check: func(t *testing.T, ns string) {
		a, b := oneGPU(t, ns, "pod-timeslicing", "ctr0"), oneGPU(t, ns, "pod-timeslicing", "ctr1")
		if a != b {
			t.Errorf("the containers see %s and %s, want the same GPU", a, b)
		}
		data, err := os.ReadFile(simhost.TimeSlicePath(runDir+"/sim/host/driver", a))
		if got := strings.TrimSpace(string(data)); err != nil || got != "1" {
			t.Errorf("time slice of %s: %q (%v), want 1 (Short)", a, got, err)
		}
	}},
}, {
	// MPS (test_gpu_sharing.bats): both containers see the same GPU, served
	// by the claim's own daemon, with the claim's limits.
	{name: "bats gpu-mps", file: bats + "gpu-mps.yaml", ns: "nv-mps", check: func(t *testing.T, ns string) {
		if a, b := oneGPU(t, ns, "pod-mps", "ctr0"), oneGPU(t, ns, "pod-mps", "ctr1"); a != b {
			t.Errorf("the containers see %s and %s, want the same GPU", a, b)
		}
		uid := string(claimOf(t, waitPodRunning(t, ns, "pod-mps"), "gpu").UID)
		if n := mpsDaemonEventsOf("start", uid); n != 1 {
			t.Errorf("the claim's MPS daemon started %d times, want once:\n%s", n, mpsLogText())
		}
		spec := claimCDISpec(t, ns, "pod-mps", "gpu")
		for _, want := range []string{"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=10240M"} {
			if !strings.Contains(spec, want) {
				t.Errorf("the claim's CDI spec lacks %s:\n%s", want, spec)
			}
		}
	}},
	// Quickstart gpu-test1: two pods, a GPU each.
	{name: "quickstart gpu-test1", file: "dra-driver-nvidia-gpu/demo/specs/quickstart/v1/gpu-test1.yaml", ns: "gpu-test1", own: true, check: func(t *testing.T, ns string) {
		if a, b := oneGPU(t, ns, "pod1", ""), oneGPU(t, ns, "pod2", ""); a == b {
			t.Errorf("both pods see %s, want a GPU each", a)
		}
	}},
	// gpu-test2: one pod, two containers, one GPU shared.
	{name: "quickstart gpu-test2", file: "dra-driver-nvidia-gpu/demo/specs/quickstart/v1/gpu-test2.yaml", ns: "gpu-test2", own: true, check: func(t *testing.T, ns string) {
		if a, b := oneGPU(t, ns, "pod", "ctr0"), oneGPU(t, ns, "pod", "ctr1"); a != b {
			t.Errorf("the containers see %s and %s, want the same GPU", a, b)
		}
	}},
	// gpu-test3: two pods, one claim, one GPU shared.
	{name: "quickstart gpu-test3", file: "dra-driver-nvidia-gpu/demo/specs/quickstart/v1/gpu-test3.yaml", ns: "gpu-test3", own: true, check: func(t *testing.T, ns string) {
		if a, b := oneGPU(t, ns, "pod1", ""), oneGPU(t, ns, "pod2", ""); a != b {
			t.Errorf("the pods see %s and %s, want the same GPU", a, b)
		}
	}},
	// A selector nothing matches: Pending, unschedulable (NVIDIA's e2e
	// gpu_allocation_test.go).
	{name: "bats gpu-cel-nomatch", file: bats + "gpu-cel-nomatch.yaml", ns: "nv-cel-nomatch", check: func(t *testing.T, ns string) {
		t.Logf("unschedulable, as with NVIDIA's driver: %s", unschedulable(t, ns, "pod-cel-nomatch"))
	}},
	// nvidia.com/gpu: 1 through the class's extendedResourceName: the pod
	// runs, and completes, with a claim the scheduler made for it.
	{name: "extended-resources gpu-full", file: "dra-driver-nvidia-gpu/demo/specs/extended-resources/gpu-full.yaml", ns: "extended-resource-gpu-full", own: true, check: func(t *testing.T, ns string) {
		var pod *corev1.Pod
		eventually(t, 90*time.Second, "gpu-full-pod Succeeded", func() (bool, error) {
			p, err := client.CoreV1().Pods(ns).Get(ctx(), "gpu-full-pod", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			pod = p
			return p.Status.Phase == corev1.PodSucceeded, fmt.Errorf("phase %s", p.Status.Phase)
		})
		st := pod.Status.ExtendedResourceClaimStatus
		if st == nil || len(st.RequestMappings) != 1 || st.RequestMappings[0].ResourceName != "nvidia.com/gpu" {
			t.Fatalf("extended resource claim status %+v, want one for nvidia.com/gpu", st)
		}
		// The claim the scheduler made goes with the pod's completion, so
		// NVIDIA's checks of it (its annotation, its driver) are not made.
		if !strings.HasPrefix(st.ResourceClaimName, "gpu-full-pod-extended-resources-") {
			t.Errorf("extended resource claim %q, want the scheduler's for gpu-full-pod", st.ResourceClaimName)
		}
	}},
	// "DynMIG: 1 pod, 1 MIG + TimeSlicing config" (test_gpu_dynmig.bats):
	// a MIG device of more than 10 multiprocessors, its two lines. Here,
	// not in the MIG wave: a fifth MIG device there may leave a GPU in MIG
	// mode when the DCGM claim (allocationMode All) is allocated.
	{name: "bats gpu-simple-mig-ts", file: bats + "gpu-simple-mig-ts.yaml", ns: "nv-simple-mig-ts", check: func(t *testing.T, ns string) {
		checkMIG(t, ns, "pod-mig1g", "", claimDevices(t, ns, "pod-mig1g", "migdev")[0])
	}},
	// The GPU Operator's validator claim: one GPU with admin access, in a
	// namespace labelled for it; it runs beside the busy GPUs.
	{name: "gpu-operator validator claim", file: "gpu-operator/manifests/state-dra-validation/0400_resourceclaimtemplate.yaml", ns: "nv-validator", admin: true, check: func(t *testing.T, ns string) {
		adminPod(t, ns, "nvidia-dra-validator-gpu")
		oneGPU(t, ns, "admin", "")
	}},
}, {
	// "GPUs: Job with ResourceClaimTemplate allocates GPUs to completions"
	// (test_gpu_cuda_workloads.bats): two completions, one at a time, no
	// failure, each pod's log "UUID: GPU-".
	{name: "bats gpu-job-rct", file: bats + "gpu-job-rct.yaml", ns: "nv-job-rct", check: func(t *testing.T, ns string) {
		eventually(t, 120*time.Second, "gpu-job-rct complete", func() (bool, error) {
			j, err := client.BatchV1().Jobs(ns).Get(ctx(), "gpu-job-rct", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			if j.Status.Failed != 0 {
				t.Fatalf("gpu-job-rct: %d pods failed", j.Status.Failed)
			}
			return j.Status.Succeeded == 2, fmt.Errorf("%d succeeded", j.Status.Succeeded)
		})
		pods, err := client.CoreV1().Pods(ns).List(ctx(), metav1.ListOptions{LabelSelector: "job-name=gpu-job-rct"})
		if err != nil || len(pods.Items) != 2 {
			t.Fatalf("gpu-job-rct's pods: %v (%v), want two", pods, err)
		}
		for _, p := range pods.Items {
			podLogsOf(t, ns, p.Name, "", "UUID: GPU-")
		}
	}},
	// "GPUs: Deployment with 2 replicas gets distinct GPUs
	// simultaneously": two ready replicas, two different GPUs.
	{name: "bats gpu-job-rct-parallel", file: bats + "gpu-job-rct-parallel.yaml", ns: "nv-job-rct-parallel", check: func(t *testing.T, ns string) {
		pods := deploymentPods(t, ns, "gpu-deploy-parallel", "app=gpu-deploy-parallel", 2, 90*time.Second)
		if a, b := oneGPU(t, ns, pods[0], ""), oneGPU(t, ns, pods[1], ""); a == b {
			t.Errorf("both replicas see %s, want a GPU each", a)
		}
	}},
	// "GPUs: shared RC across N pods" (test_gpu_stress.bats, its
	// default 12 pods, one of its repetitions): pods-shared-gpu.yaml
	// with __INDEX__ 1 to 12, as the bats test expands it, all of one
	// claim; the claim allocated, every pod Running, each seeing the
	// same one GPU (NVIDIA's test reads stress-pod-1's).
	{name: "bats rc-shared-gpu, pods-shared-gpu", file: bats + "rc-shared-gpu.yaml", ns: "nv-shared-rc", also: func(t *testing.T, ns string) {
		pods := nvidiaManifest(t, bats+"pods-shared-gpu.yaml", ns)
		var all strings.Builder
		for i := 1; i <= nvidiaStressPods; i++ {
			all.WriteString(strings.ReplaceAll(pods, "__INDEX__", fmt.Sprint(i)) + "---\n")
		}
		f := filepath.Join(t.TempDir(), "pods-shared-gpu.yaml")
		if err := os.WriteFile(f, []byte(all.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		kubectl(t, "apply", "-n", ns, "-f", f)
	}, check: func(t *testing.T, ns string) {
		want := ""
		for i := 1; i <= nvidiaStressPods; i++ {
			got := oneGPU(t, ns, fmt.Sprintf("stress-pod-%d", i), "")
			if want == "" {
				want = got
			} else if got != want {
				t.Errorf("stress-pod-%d sees %s, stress-pod-1 %s: want the claim's one GPU", i, got, want)
			}
		}
	}},
	// Quickstart gpu-test7 (resource.k8s.io/v1beta1): one pod, two
	// containers, a claim and a distinct GPU each.
	{name: "quickstart gpu-test7", file: "dra-driver-nvidia-gpu/demo/specs/quickstart/gpu-test7.yaml", ns: "gpu-test7", own: true, check: func(t *testing.T, ns string) {
		if a, b := oneGPU(t, ns, "gpu-pod", "ctr0"), oneGPU(t, ns, "gpu-pod", "ctr1"); a == b {
			t.Errorf("both containers see %s, want a GPU each", a)
		}
	}},
	// Quickstart gpu-test8 (v1beta1): one container, a claim of two GPUs;
	// its plain nvidia-smi shows both (the simulated one prints the
	// container's GPUs' UUIDs).
	{name: "quickstart gpu-test8", file: "dra-driver-nvidia-gpu/demo/specs/quickstart/gpu-test8.yaml", ns: "gpu-test8", own: true, check: func(t *testing.T, ns string) {
		devs := claimDevices(t, ns, "gpu-pod", "twogpus")
		want := map[string]bool{}
		for _, d := range devs {
			want[gpuOfDevice(t, d)] = true
		}
		log := podLogsOf(t, ns, "gpu-pod", "", "GPU_DRA_DEVICE_UUIDS=")
		_, line, _ := strings.Cut(log, "GPU_DRA_DEVICE_UUIDS=")
		line, _, _ = strings.Cut(line, "\n")
		got := strings.Split(strings.TrimSpace(line), ",")
		if len(devs) != 2 || len(want) != 2 || len(got) != 2 || !want[got[0]] || !want[got[1]] {
			t.Errorf("claim devices %v, the container sees %q: want two GPUs, the claim's", devs, got)
		}
	}},
}, {
	// StaticMIG/DynamicMIG "allocate" (test_gpu_mig.bats): "UUID: MIG-"
	// and "UUID: GPU-", the MIG device under its GPU.
	{name: "bats gpu-anymig", file: bats + "gpu-anymig.yaml", ns: "nv-anymig", check: func(t *testing.T, ns string) {
		checkMIG(t, ns, "pod-anymig", "", claimDevices(t, ns, "pod-anymig", "migdev")[0])
	}},
	{name: "bats gpu-simple-mig", file: bats + "gpu-simple-mig.yaml", ns: "nv-simple-mig", check: func(t *testing.T, ns string) {
		checkMIG(t, ns, "pod-mig1g", "", claimDevices(t, ns, "pod-mig1g", "migdev")[0])
	}},
	// Two MIG devices of one claim, a container each.
	{name: "bats gpu-multiple-mig", file: bats + "gpu-multiple-mig.yaml", ns: "nv-multiple-mig", check: func(t *testing.T, ns string) {
		devs := claimDevices(t, ns, "pod-2mig", "migdevs")
		if len(devs) != 2 {
			t.Fatalf("claim devices %v, want two MIG devices", devs)
		}
		a, b := checkMIG(t, ns, "pod-2mig", "ctr0", ""), checkMIG(t, ns, "pod-2mig", "ctr1", "")
		if a == b {
			t.Errorf("both containers see MIG device %s", a)
		}
	}},
}}

// checkMIG checks a container given one MIG device: a GPU line and, under
// it, one MIG line (device, when given, is the allocated device, whose GPU
// and profile the lines must name). It returns the MIG device's UUID.
func checkMIG(t *testing.T, ns, pod, container, device string) string {
	t.Helper()
	o := nvidiaSMI(t, ns, pod, container)
	if len(o.gpus) != 1 || len(o.migs) != 1 {
		t.Fatalf("%s/%s %s: nvidia-smi -L printed %q, want a GPU and a MIG device", ns, pod, container, o.lines)
	}
	if device != "" {
		if want := gpuOfDevice(t, device); o.migs[0].parent != want {
			t.Errorf("the MIG device is under %s, its allocated device %s is of %s", o.migs[0].parent, device, want)
		}
		if !strings.Contains(device, "-"+strings.ReplaceAll(o.migs[0].profile, ".", "")+"-") {
			t.Errorf("profile %s, allocated device %s", o.migs[0].profile, device)
		}
	}
	return o.migs[0].uuid
}

// adminPod runs a pod "admin" in ns, a namespace labelled for admin
// access, that holds a claim of the template and prints nvidia-smi -L.
func adminPod(t *testing.T, ns, template string) {
	t.Helper()
	applyYAML(t, `apiVersion: v1
kind: Pod
metadata: {name: admin, namespace: `+ns+`}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: ctr
    image: busybox:local
    command: ["bash", "-c", "nvidia-smi -L; trap 'exit 0' TERM; sleep 9999 & wait"]
    resources: {claims: [{name: gpus}]}
  resourceClaims:
  - {name: gpus, resourceClaimTemplateName: `+template+`}
`)
}

// TestNVIDIACompat applies NVIDIA's manifests (its bats test specs, its
// quickstart, its extended resource demo, the GPU Operator's claims; its
// VFIO specs run in TestVFIOPassthrough, with passthrough on), each
// unchanged but for the image, and checks what NVIDIA documents of each:
// which device, shared or not, what the container's nvidia-smi -L prints.
// Then the GPU Operator's DCGM claim (every GPU, admin access) and its
// DeviceClasses.
func TestNVIDIACompat(t *testing.T) {
	start := time.Now()
	for i, wave := range nvidiaWaves {
		var namespaces []string
		for _, c := range wave {
			namespaces = append(namespaces, c.ns)
		}
		t.Cleanup(func() {
			kubectlErr(append([]string{"delete", "namespace", "--ignore-not-found", "--wait=true", "--timeout=120s"}, namespaces...)...)
		})
		for _, c := range wave {
			applyNVIDIA(t, c.file, c.ns, c.own, c.admin)
			if c.also != nil {
				c.also(t, c.ns)
			}
		}
		if i == len(nvidiaWaves)-1 {
			// The DCGM claim, all GPUs with admin access, while the
			// wave's MIG devices run.
			applyNVIDIA(t, "gpu-operator/manifests/state-dcgm/0400_resourceclaimtemplate.yaml", "nv-dcgm", false, true)
			adminPod(t, "nv-dcgm", "nvidia-dcgm-admin")
			t.Cleanup(func() { cleanNamespace(t, "nv-dcgm") })
		}
		for _, c := range wave {
			t.Run(c.name, func(t *testing.T) { c.check(t, c.ns) })
		}
		if i == len(nvidiaWaves)-1 {
			// G4: the allocator charges an admin request the counters of
			// the devices it gets (kubernetes/kubernetes#140729), and
			// this driver's whole GPUs have counters: with GPUs busy the
			// DCGM claim waits. NVIDIA's whole GPUs have none, and its
			// DCGM pod runs.
			t.Run("gpu-operator dcgm claim on a busy node (G4)", func(t *testing.T) {
				t.Logf("pending while GPUs are busy: %s", unschedulable(t, "nv-dcgm", "admin"))
			})
		}
		kubectl(t, append([]string{"delete", "namespace", "--wait=true", "--timeout=120s"}, namespaces...)...)
		t.Logf("wave %d done at %s", i+1, time.Since(start).Round(time.Second))
	}
	t.Run("gpu-operator dcgm claim on an idle node", func(t *testing.T) {
		waitPodRunning(t, "nv-dcgm", "admin")
		o := nvidiaSMI(t, "nv-dcgm", "admin", "")
		if len(o.gpus) != len(gpuUUIDs(t)) {
			t.Errorf("nvidia-smi -L printed %q, want every one of the node's %d GPUs", o.lines, len(gpuUUIDs(t)))
		}
	})
	t.Run("gpu-operator DeviceClasses", func(t *testing.T) {
		for _, f := range []string{"0400_deviceclass-gpu.yaml", "0410_deviceclass-mig.yaml"} {
			var theirs resourceapi.DeviceClass
			if err := yaml.UnmarshalStrict([]byte(nvidiaManifest(t, "gpu-operator/manifests/state-dra-driver/"+f, "")), &theirs); err != nil {
				t.Fatal(err)
			}
			ours, err := client.ResourceV1().DeviceClasses().Get(ctx(), theirs.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(theirs.Spec.Selectors) != 1 || len(ours.Spec.Selectors) != 1 ||
				strings.ReplaceAll(theirs.Spec.Selectors[0].CEL.Expression, "'", `"`) != ours.Spec.Selectors[0].CEL.Expression {
				t.Errorf("DeviceClass %s: the GPU Operator's selectors %+v, ours %+v", theirs.Name, theirs.Spec.Selectors, ours.Spec.Selectors)
			}
		}
	})
	cleanNamespace(t, "nv-dcgm")
	t.Logf("NVIDIA's manifests took %s", time.Since(start).Round(time.Second))
}

const quickstart = "dra-driver-nvidia-gpu/demo/specs/quickstart/v1/"

// vfioGroupsOf are the IOMMU groups of the simulated host's GPUs passed
// through to VMs, by published device (gpu-N-vfio).
func vfioGroupsOf(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	pub := publishedNames(t)
	for i := range len(gpuUUIDs(t)) {
		name := names.VFIODevice(i)
		if !pub[name] {
			t.Fatalf("%s is not published", name)
		}
		bdf := *publishedDevice(t, name).Attributes[names.AttrStandardPCIBusID].StringValue
		g, err := os.Readlink(filepath.Join(runDir, "sim/host/sys/sys/bus/pci/devices", bdf, "iommu_group"))
		if err != nil {
			t.Fatal(err)
		}
		out[name] = filepath.Base(g)
	}
	return out
}

// vfioNodesOf checks a VM pod's claim got a GPU for VMs and returns the
// pod's /dev/vfio nodes, and that GPU's group.
func vfioNodesOf(t *testing.T, ns, pod string, groups map[string]string) (nodes []string, group string) {
	t.Helper()
	devs := claimDevices(t, ns, pod, "gpu")
	if len(devs) != 1 || groups[devs[0]] == "" {
		t.Fatalf("%s/%s: claim devices %v, want one GPU for VMs (%v)", ns, pod, devs, groups)
	}
	out := kubectl(t, "exec", "-n", ns, pod, "--", "ls", "/dev/vfio")
	nodes = strings.Fields(out)
	slices.Sort(nodes)
	return nodes, groups[devs[0]]
}

// nvidiaVFIOSpecs applies NVIDIA's quickstart VFIO specs; passthrough must
// be on (TestVFIOPassthrough runs it). NVIDIA documents a pod that runs
// with a GPU for VMs (class vfio.gpu.nvidia.com) and its /dev/vfio nodes:
// the GPU's IOMMU group, and the legacy backend's API device
// /dev/vfio/vfio with enableAPIDevice. Here the API device is given
// without enableAPIDevice too (docs/migrating-from-nvidia.md). It ends
// with every GPU back with nvidia.
func nvidiaVFIOSpecs(t *testing.T) {
	const ns = "gpu-test-vfio"
	t.Cleanup(func() {
		kubectlErr("delete", "namespace", "--ignore-not-found", "--wait=true", "--timeout=120s", ns)
	})
	groups := vfioGroupsOf(t)
	applyNVIDIA(t, quickstart+"gpu-test-vfiopci.yaml", ns, true, false)

	// gpu-test-vfio-config puts its pod in gpu-test-vfiopci, a namespace
	// it does not make (its template is in gpu-test-vfio): applied as
	// NVIDIA ships it, the API server refuses the pod, whichever driver.
	const configFile = quickstart + "gpu-test-vfio-config.yaml"
	manifest := nvidiaManifest(t, configFile, "")
	f := filepath.Join(t.TempDir(), "gpu-test-vfio-config.yaml")
	if err := os.WriteFile(f, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectlErr("apply", "-f", f); err == nil || !strings.Contains(err.Error(), `namespaces "gpu-test-vfiopci" not found`) {
		t.Errorf("kubectl apply of NVIDIA's %s: %v, %s; want its pod refused, its namespace not found", configFile, err, out)
	}
	// Its pod, in its template's namespace: the one change.
	var pod corev1.Pod
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(manifest, -1) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err == nil && tm.Kind == "Pod" {
			if err := yaml.UnmarshalStrict([]byte(doc), &pod); err != nil {
				t.Fatal(err)
			}
		}
	}
	if pod.Name != "pod1-full-vfioconfig" {
		t.Fatalf("no pod pod1-full-vfioconfig in %s", configFile)
	}
	pod.Namespace = ns
	data, err := yaml.Marshal(&pod)
	if err != nil {
		t.Fatal(err)
	}
	applyYAML(t, string(data))

	nodes, group := vfioNodesOf(t, ns, "pod1", groups)
	// NVIDIA's driver gives only the group without enableAPIDevice.
	if want := []string{group, "vfio"}; !slices.Equal(nodes, want) {
		t.Errorf("gpu-test-vfiopci: /dev/vfio has %v, want %v (the GPU's group, and the API device this driver always gives)", nodes, want)
	}
	cfgNodes, cfgGroup := vfioNodesOf(t, ns, pod.Name, groups)
	if want := []string{cfgGroup, "vfio"}; !slices.Equal(cfgNodes, want) {
		t.Errorf("gpu-test-vfio-config: /dev/vfio has %v, want %v (LegacyOnly, enableAPIDevice)", cfgNodes, want)
	}
	if group == cfgGroup {
		t.Errorf("both pods' claims got the GPU of group %s", group)
	}
	kubectl(t, "delete", "namespace", ns, "--wait=true", "--timeout=120s")
	eventually(t, 60*time.Second, "every GPU back with nvidia", func() (bool, error) {
		pub := publishedNames(t)
		for i := range len(groups) {
			if !pub[names.GPUDevice(i)] {
				return false, fmt.Errorf("%s not published", names.GPUDevice(i))
			}
		}
		return true, nil
	})
}
