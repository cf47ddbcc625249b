//go:build e2e

package e2e

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// publishedMIGs are the node's published MIG devices: each one's UUID
// attribute (empty for a placement a claim would create), by name.
func publishedMIGs(t testing.TB) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, d := range nodeDevices(t) {
		if strings.Contains(d.Name, "-mig-") {
			uuid := ""
			if a, ok := d.Attributes[names.AttrUUID]; ok && a.StringValue != nil {
				uuid = *a.StringValue
			}
			out[d.Name] = uuid
		}
	}
	return out
}

// staticMIG is a MIG device the test creates outside the driver, as
// mig-parted does on a node whose driver runs with static MIG only.
type staticMIG struct {
	gpu     int
	profile string
	start   int
	// uuid is what gpu-sim mig create printed.
	uuid string
}

func (m staticMIG) device() string { return names.StaticMIGDevice(m.gpu, m.profile, m.start) }

// TestNVIDIAStaticMIG runs NVIDIA's MIG bats specs (gpu-multiple-mig,
// gpu-simple-mig, gpu-anymig, gpu-simple-mig-ts), unchanged but for the
// image, as NVIDIA's driver runs them by default: static MIG
// (featureGates.DynamicMIG: false; here the plugin's --static-mig-only,
// kubeletPlugin.staticMIGOnly), the MIG devices made beforehand by an
// administrator on GPUs in MIG mode. The last two GPUs are put in MIG mode
// and given five MIG devices with gpu-sim mig create: the last a 3g.40gb,
// a 2g.20gb and two 1g.10gb (the whole GPU), the one before it a 1g.10gb.
// Checked: NVIDIA's expectation (each container's nvidia-smi -L, a MIG
// device under its GPU, of the allocated profile), and that each claim got
// a pre-created device (its -static name, the UUID gpu-sim printed), that
// only those are published, that the plugin created and destroyed no MIG
// device, and that the devices are still there once the pods are gone.
// The specs are applied in an order that leaves each the device it needs
// (gpu-multiple-mig takes the only device of more than 50
// multiprocessors, gpu-simple-mig the only one left of more than 10 GiB).
// The test leaves the node as it found it: devices destroyed, MIG mode as
// it was, the plugin's default flags.
func TestNVIDIAStaticMIG(t *testing.T) {
	if model != "dgxh100" {
		t.Skipf("the MIG devices made are H100 80GB's; the node is a %s", model)
	}
	start := time.Now()
	a, b := len(gpuUUIDs(t))-2, len(gpuUUIDs(t))-1
	// The MIG devices of earlier tests' claims are destroyed as their
	// claims are unprepared.
	eventually(t, 60*time.Second, "no MIG device on the node", func() (bool, error) {
		live := liveMIGs(t)
		return len(live) == 0, fmt.Errorf("MIG devices %v", slices.Sorted(maps.Keys(live)))
	})
	st := simState(t)
	made := []staticMIG{{gpu: b, profile: "3g.40gb", start: 4}, {gpu: b, profile: "2g.20gb", start: 0},
		{gpu: b, profile: "1g.10gb", start: 2}, {gpu: b, profile: "1g.10gb", start: 3}, {gpu: a, profile: "1g.10gb", start: 0}}
	spec := []struct{ file, ns, pod string }{
		{bats + "gpu-multiple-mig.yaml", "nv-static-multiple-mig", "pod-2mig"},
		{bats + "gpu-simple-mig.yaml", "nv-static-simple-mig", "pod-mig1g"},
		{bats + "gpu-anymig.yaml", "nv-static-anymig", "pod-anymig"},
		{bats + "gpu-simple-mig-ts.yaml", "nv-static-simple-mig-ts", "pod-mig1g"},
	}
	procRoot := filepath.Join(runDir, "sim/host/proc")
	migOn := map[int]bool{}
	turned := map[int]bool{}
	restarted := false
	// One cleanup, in the order that leaves the usual node: the pods
	// gone, the devices destroyed, MIG mode as it was, then the plugin
	// restarted with its defaults (which reads that node as it starts).
	t.Cleanup(func() {
		var nss []string
		for _, s := range spec {
			nss = append(nss, s.ns)
		}
		kubectlErr(append([]string{"delete", "namespace", "--ignore-not-found", "--wait=true", "--timeout=120s"}, nss...)...)
		for _, m := range slices.Backward(made) {
			if m.uuid != "" {
				if _, err := gpuSimOut("mig", "destroy", strconv.Itoa(m.gpu), m.uuid, "--proc-root", procRoot); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			}
		}
		for _, i := range []int{a, b} {
			if turned[i] {
				setMIGMode(t, i, migOn[i])
			}
		}
		if restarted {
			if err := script("driver.sh", "restart"); err != nil {
				t.Errorf("cleanup: driver.sh restart: %v", err)
			}
		}
	})

	// The administrator's part: MIG mode, then the MIG devices.
	for _, i := range []int{a, b} {
		migOn[i] = st.GPUs[i].MIGMode == nvml.DEVICE_MIG_ENABLE
		if !migOn[i] {
			turned[i] = true
			setMIGMode(t, i, true)
		}
	}
	want := map[string]bool{}
	for k := range made {
		m := &made[k]
		out, err := gpuSimOut("mig", "create", strconv.Itoa(m.gpu), m.profile, "--start", strconv.Itoa(m.start), "--proc-root", procRoot)
		if err != nil {
			t.Fatal(err)
		}
		m.uuid = strings.TrimSpace(out)
		if !strings.HasPrefix(m.uuid, "MIG-") || want[m.uuid] {
			t.Fatalf("gpu-sim mig create %d %s printed %q, want a new MIG device's UUID", m.gpu, m.profile, out)
		}
		want[m.uuid] = true
	}
	byDevice := map[string]string{}
	for _, m := range made {
		byDevice[m.device()] = m.uuid
	}
	// The plugin with static MIG only: it publishes those five, and no
	// placement to create.
	restarted = true
	if err := script("driver.sh", "restart", "--static-mig-only"); err != nil {
		t.Fatal(err)
	}
	restartedAt := time.Now()
	eventually(t, 30*time.Second, "only the pre-created MIG devices published", func() (bool, error) {
		pub := publishedMIGs(t)
		return maps.Equal(pub, byDevice), fmt.Errorf("published %v, want %v", pub, byDevice)
	})
	t.Logf("MIG devices made and the plugin restarted with static MIG only at %s", time.Since(start).Round(time.Second))

	// NVIDIA's specs, one after another until each has its devices.
	claims := map[string]string{} // claim UID: namespace
	got := map[string]string{}    // MIG UUID: the pod that sees it
	see := func(ns, pod, container, device string) {
		t.Helper()
		uuid := checkMIG(t, ns, pod, container, device)
		if !strings.HasSuffix(device, "-static") || byDevice[device] == "" {
			t.Errorf("%s/%s %s: allocated %s, want one of the pre-created %v", ns, pod, container, device, slices.Sorted(maps.Keys(byDevice)))
		} else if uuid != byDevice[device] {
			t.Errorf("%s/%s %s: sees %s, its device %s is %s", ns, pod, container, uuid, device, byDevice[device])
		}
		if other, ok := got[uuid]; ok {
			t.Errorf("%s/%s %s sees %s, which %s sees", ns, pod, container, uuid, other)
		}
		got[uuid] = ns + "/" + pod + " " + container
	}
	for i, s := range spec {
		if i < 3 {
			applyNVIDIA(t, s.file, s.ns, false, false)
		}
		if i == 2 {
			// The last two take the two 1g.10gb left: any order.
			applyNVIDIA(t, spec[3].file, spec[3].ns, false, false)
		}
		entry := "migdev"
		if s.pod == "pod-2mig" {
			entry = "migdevs"
		}
		c := claimOf(t, waitPodRunning(t, s.ns, s.pod), entry)
		claims[string(c.UID)] = s.ns
		byRequest := map[string]string{}
		for _, r := range c.Status.Allocation.Devices.Results {
			byRequest[r.Request] = r.Device
		}
		if s.pod == "pod-2mig" {
			// mig1 (fewer than 30 multiprocessors) for ctr0, mig2 (more
			// than 50) for ctr1.
			see(s.ns, s.pod, "ctr0", byRequest["mig1"])
			see(s.ns, s.pod, "ctr1", byRequest["mig2"])
			continue
		}
		if len(byRequest) != 1 {
			t.Fatalf("%s/%s: claim devices %v, want one", s.ns, s.pod, byRequest)
		}
		for _, d := range byRequest {
			see(s.ns, s.pod, "", d)
		}
	}
	if len(got) != len(made) {
		t.Errorf("the pods see %d MIG devices, want the %d made: %v", len(got), len(made), got)
	}
	if live := liveMIGs(t); !maps.Equal(live, want) {
		t.Errorf("MIG devices with the pods running: %v, want the pre-created %v", slices.Sorted(maps.Keys(live)), slices.Sorted(maps.Keys(want)))
	}
	t.Logf("NVIDIA's MIG specs ran on the pre-created devices at %s", time.Since(start).Round(time.Second))

	// The pods gone and their claims unprepared, the devices stay.
	var nss []string
	for _, s := range spec {
		nss = append(nss, s.ns)
	}
	kubectl(t, append([]string{"delete", "namespace", "--wait=true", "--timeout=120s"}, nss...)...)
	eventually(t, 60*time.Second, "the claims unprepared", func() (bool, error) {
		for uid := range checkpointClaims(t) {
			if ns, ok := claims[uid]; ok {
				return false, fmt.Errorf("claim %s of %s still in the checkpoint", uid, ns)
			}
		}
		return true, nil
	})
	if live := liveMIGs(t); !maps.Equal(live, want) {
		t.Errorf("MIG devices once the pods are gone: %v, want the pre-created %v", slices.Sorted(maps.Keys(live)), slices.Sorted(maps.Keys(want)))
	}
	if pub := publishedMIGs(t); !maps.Equal(pub, byDevice) {
		t.Errorf("published once the pods are gone: %v, want %v", pub, byDevice)
	}
	// Nor did the plugin try: its log since the restart has no MIG
	// device created or destroyed.
	logs := kubectl(t, "logs", "-n", driverNamespace, "--all-containers", "--tail=-1", fmt.Sprintf("--since=%ds", int(time.Since(restartedAt).Seconds())+5),
		"-l", "app.kubernetes.io/instance="+driverRelease+",app.kubernetes.io/component=kubelet-plugin")
	for _, msg := range []string{"Created MIG device", "Destroyed MIG device"} {
		if n := strings.Count(logs, msg); n != 0 {
			t.Errorf("the plugin logged %q %d times", msg, n)
		}
	}
	t.Logf("NVIDIA's MIG specs with static MIG took %s", time.Since(start).Round(time.Second))
}

// setMIGMode sets a GPU's MIG mode as an administrator does, with the GPU
// reset where the change waits for one (Ampere).
func setMIGMode(t *testing.T, gpu int, on bool) {
	t.Helper()
	mode := map[bool]string{true: "on", false: "off"}[on]
	if _, err := gpuSimOut("mig-mode", strconv.Itoa(gpu), mode); err != nil {
		t.Errorf("%v", err)
		return
	}
	if simState(t).GPUs[gpu].MIGModePending {
		if _, err := gpuSimOut("reset", strconv.Itoa(gpu)); err != nil {
			t.Errorf("%v", err)
		}
	}
}
