//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/prepare"
)

// testPlugin is a plugin process this test controls, talking to the real
// API server but registered nowhere: the test plays the kubelet over its
// gRPC socket.
type testPlugin struct {
	t       *testing.T
	dir     string
	cmd     *exec.Cmd
	exited  chan error
	logPath string
}

func (tp *testPlugin) start(extra ...string) {
	tp.t.Helper()
	args := []string{
		"--node-name", nodeName,
		"--kubeconfig", filepath.Join(runDir, "kubeconfig/plugin.kubeconfig"),
		"--cdi-root", filepath.Join(runDir, "cdi"),
		"--plugin-dir", filepath.Join(tp.dir, "plugin"),
		"--registrar-dir", filepath.Join(tp.dir, "registry"),
		"--driver-root", filepath.Join(runDir, "sim/host/driver"),
		"--dev-root", filepath.Join(runDir, "sim/host/dev"),
		"--proc-root", filepath.Join(runDir, "sim/host/proc"),
		"--http-endpoint", "127.0.0.1:8089", "-v", "3",
	}
	log, err := os.OpenFile(tp.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		tp.t.Fatal(err)
	}
	fmt.Fprintf(log, "=== start %v\n", extra)
	tp.cmd = exec.Command(filepath.Join(runDir, "bin/gpu-kubelet-plugin"), append(args, extra...)...)
	tp.cmd.Stdout, tp.cmd.Stderr = log, log
	// As on a GPU node: NVML from the driver root. The harness's
	// GPU_DRA_SIMULATE (driver.sh's model) would be read as --simulate.
	tp.cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GPU_DRA_SIM") })
	if err := tp.cmd.Start(); err != nil {
		tp.t.Fatal(err)
	}
	tp.exited = make(chan error, 1)
	go func() { tp.exited <- tp.cmd.Wait(); log.Close() }()
	// A test that failed with its plugin running leaves none behind: a
	// stray plugin would publish the node's slices and hold its port.
	cmd, t := tp.cmd, tp.t
	t.Cleanup(func() {
		if t.Failed() {
			_ = cmd.Process.Kill()
		}
	})
	eventually(tp.t, 30*time.Second, "test plugin ready", func() (bool, error) {
		select {
		case err := <-tp.exited:
			data, _ := os.ReadFile(tp.logPath)
			tp.t.Fatalf("plugin exited during start-up: %v\n%s", err, data)
		default:
		}
		out, err := exec.Command("curl", "-fsS", "--max-time", "1", "http://127.0.0.1:8089/readyz").CombinedOutput()
		return err == nil, fmt.Errorf("%w: %s", err, out)
	})
	data, _ := os.ReadFile(tp.logPath)
	if want := `simulate="" `; !strings.Contains(string(data), want) {
		tp.t.Fatalf("the test plugin did not start on the production path (no %s in its log)", want)
	}
}

// waitKilled waits for the plugin to die by SIGKILL.
func (tp *testPlugin) waitKilled() {
	tp.t.Helper()
	select {
	case err := <-tp.exited:
		if err == nil || !strings.Contains(err.Error(), "killed") {
			tp.t.Fatalf("plugin ended with %v, want killed", err)
		}
	case <-time.After(30 * time.Second):
		tp.t.Fatal("plugin did not crash at the injected step")
	}
}

func (tp *testPlugin) stop() {
	if tp.cmd == nil || tp.cmd.ProcessState != nil {
		return
	}
	tp.cmd.Process.Signal(os.Interrupt)
	select {
	case <-tp.exited:
	case <-time.After(15 * time.Second):
		tp.cmd.Process.Kill()
		<-tp.exited
	}
}

func (tp *testPlugin) client() (drapb.DRAPluginClient, func()) {
	conn, err := grpc.NewClient("unix://"+filepath.Join(tp.dir, "plugin/dra.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tp.t.Fatal(err)
	}
	return drapb.NewDRAPluginClient(conn), func() { conn.Close() }
}

func (tp *testPlugin) prepare(c *resourceapi.ResourceClaim) (*drapb.NodePrepareResourceResponse, error) {
	cl, done := tp.client()
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := cl.NodePrepareResources(ctx, &drapb.NodePrepareResourcesRequest{Claims: []*drapb.Claim{{Namespace: c.Namespace, Name: c.Name, Uid: string(c.UID)}}})
	if err != nil {
		return nil, err
	}
	r := resp.Claims[string(c.UID)]
	if r.Error != "" {
		return r, fmt.Errorf("%s", r.Error)
	}
	return r, nil
}

func (tp *testPlugin) unprepare(c *resourceapi.ResourceClaim) error {
	cl, done := tp.client()
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := cl.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: []*drapb.Claim{{Namespace: c.Namespace, Name: c.Name, Uid: string(c.UID)}}})
	if err != nil {
		return err
	}
	if e := resp.Claims[string(c.UID)].Error; e != "" {
		return fmt.Errorf("%s", e)
	}
	return nil
}

// checkpointOf reads the test plugin's checkpoint: claim UID -> state and
// the MIG UUIDs it created.
func (tp *testPlugin) checkpoint() (map[string]string, map[string]bool) {
	tp.t.Helper()
	data, err := os.ReadFile(filepath.Join(tp.dir, "plugin/checkpoint.json"))
	if os.IsNotExist(err) {
		return map[string]string{}, map[string]bool{}
	}
	if err != nil {
		tp.t.Fatal(err)
	}
	var env struct {
		Data struct {
			Claims map[string]struct {
				State   string `json:"state"`
				Devices []struct {
					MIG *struct {
						UUID    string `json:"uuid"`
						Created bool   `json:"created"`
					} `json:"mig"`
				} `json:"devices"`
			} `json:"claims"`
		} `json:"data"`
	}
	if err := json.Unmarshal(data, &env); err != nil {
		tp.t.Fatal(err)
	}
	states, migs := map[string]string{}, map[string]bool{}
	for uid, c := range env.Data.Claims {
		states[uid] = c.State
		for _, d := range c.Devices {
			if d.MIG != nil && d.MIG.Created {
				migs[d.MIG.UUID] = true
			}
		}
	}
	return states, migs
}

// assertTruthful checks the invariants after a restart: every live MIG
// device and every CDI spec belongs to a completed claim in the checkpoint,
// and nothing is half-prepared.
func (tp *testPlugin) assertTruthful(when string) {
	tp.t.Helper()
	states, migs := tp.checkpoint()
	for uid, s := range states {
		if s != "PrepareCompleted" {
			tp.t.Errorf("%s: claim %s is %s after restart", when, uid, s)
		}
	}
	for _, g := range simState(tp.t).GPUs {
		for _, gi := range g.GPUInstances {
			for _, ci := range gi.ComputeInstances {
				if !migs[ci.UUID] {
					tp.t.Errorf("%s: MIG device %s leaked (no claim owns it)", when, ci.UUID)
				}
			}
		}
	}
	for _, spec := range cdiSpecs(tp.t) {
		uid := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(spec), "k8s.gpu.nvidia.com-claim_"), ".json")
		if _, ok := states[uid]; !ok {
			tp.t.Errorf("%s: orphan CDI spec %s", when, spec)
		}
	}
	for _, key := range tp.mpsDaemons() {
		if _, ok := states[key]; !ok {
			tp.t.Errorf("%s: MPS control daemon %s of no claim", when, key)
		}
	}
}

// mpsDaemons returns the keys of the MPS control daemons the test plugin
// keeps (one directory each).
func (tp *testPlugin) mpsDaemons() []string {
	dirs, _ := filepath.Glob(filepath.Join(tp.dir, "plugin/mps/*"))
	var keys []string
	for _, d := range dirs {
		keys = append(keys, filepath.Base(d))
	}
	return keys
}

// allocatedClaimWithConfig creates a ResourceClaim and writes its
// allocation as the scheduler would, with the claim's opaque
// configuration for every request (none if config is "").
func allocatedClaimWithConfig(t *testing.T, ns, name, config string, devices ...string) *resourceapi.ResourceClaim {
	t.Helper()
	return allocatedClaimOfClass(t, ns, name, "mig.nvidia.com", config, devices...)
}

// allocatedClaimOfClass is allocatedClaimWithConfig with requests of the
// DeviceClass class.
func allocatedClaimOfClass(t *testing.T, ns, name, class, config string, devices ...string) *resourceapi.ResourceClaim {
	t.Helper()
	c := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	for i := range devices {
		c.Spec.Devices.Requests = append(c.Spec.Devices.Requests, resourceapi.DeviceRequest{Name: fmt.Sprintf("r%d", i), Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: class}})
	}
	c, err := client.ResourceV1().ResourceClaims(ns).Create(ctx(), c, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.Status.Allocation = &resourceapi.AllocationResult{}
	for i, d := range devices {
		c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results, resourceapi.DeviceRequestAllocationResult{
			Request: fmt.Sprintf("r%d", i), Driver: "gpu.nvidia.com", Pool: nodeName, Device: d,
		})
	}
	if config != "" {
		c.Status.Allocation.Devices.Config = []resourceapi.DeviceAllocationConfiguration{{
			Source: resourceapi.AllocationConfigSourceClaim,
			DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{
				Driver: "gpu.nvidia.com", Parameters: runtime.RawExtension{Raw: []byte(config)},
			}},
		}}
	}
	c.Status.ReservedFor = []resourceapi.ResourceClaimConsumerReference{{Resource: "pods", Name: "crash-test", UID: "00000000-0000-0000-0000-00000000c0de"}}
	c, err = client.ResourceV1().ResourceClaims(ns).UpdateStatus(ctx(), c, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newCrashPlugin stops the cluster's plugin for the test (its cleanup
// starts it again), creates namespace ns for the test's claims, and
// returns a test plugin in a directory of the test's own, stopped at the
// test's end, whose log is printed if the test failed.
func newCrashPlugin(t *testing.T, ns string) *testPlugin {
	t.Helper()
	if err := script("driver.sh", "stop"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := script("driver.sh", "restart"); err != nil {
			t.Errorf("restart the cluster's plugin: %v", err)
		}
	})
	if _, err := client.CoreV1().Namespaces().Create(ctx(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cleanNamespace(t, ns) })
	dir := t.TempDir()
	tp := &testPlugin{t: t, dir: dir, logPath: filepath.Join(dir, "plugin.log")}
	t.Cleanup(func() {
		tp.stop()
		if t.Failed() {
			data, _ := os.ReadFile(tp.logPath)
			t.Logf("plugin log:\n%s", data)
		}
	})
	return tp
}

// TestPluginKilledAtEveryStep kills the plugin (SIGKILL) after each step of
// prepare.AllSteps that a MIG claim and a MIG claim with MPS pass,
// restarts it, and checks that nothing leaked, the checkpoint is truthful,
// and the kubelet's retry succeeds.
func TestPluginKilledAtEveryStep(t *testing.T) {
	const ns = "gpu-crash"
	tp := newCrashPlugin(t, ns)

	// The claims: two MIG devices, and the same shared through an MPS
	// control daemon of the claim, which passes every step.
	kinds := []struct{ name, config string }{
		{"mig", ""},
		{"mig-mps", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"MigDeviceConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultActiveThreadPercentage":50}}}`},
	}
	baseline := migCount(t)
	for _, kind := range kinds {
		for i, step := range prepare.AllSteps {
			if step == prepare.StepMPSStarted && kind.config == "" {
				continue // a claim without MPS starts no daemon
			}
			if step == prepare.StepVFIOBound || step == prepare.StepVFIOReturned {
				continue // a MIG claim binds no GPU to vfio-pci (TestVFIOPassthrough, pkg/prepare's sweeps)
			}
			t.Run(kind.name+"/"+string(step), func(t *testing.T) {
				tp.t = t
				claim := allocatedClaimWithConfig(t, ns, fmt.Sprintf("crash-%s-%d", kind.name, i), kind.config, "gpu-5-mig-1g10gb-6", "gpu-5-mig-2g20gb-2")
				isPrepare := i <= slices.Index(prepare.AllSteps, prepare.StepCompletedRecorded)
				if isPrepare {
					tp.start("--test-crash-at", string(step))
					if _, err := tp.prepare(claim); err == nil {
						t.Fatal("prepare returned although the plugin was killed")
					}
				} else {
					tp.start()
					if _, err := tp.prepare(claim); err != nil {
						t.Fatal(err)
					}
					tp.stop()
					tp.start("--test-crash-at", string(step))
					if err := tp.unprepare(claim); err == nil {
						t.Fatal("unprepare returned although the plugin was killed")
					}
				}
				tp.waitKilled()
				tp.start()
				tp.assertTruthful("after restart")
				if isPrepare {
					r, err := tp.prepare(claim)
					if err != nil {
						t.Fatalf("kubelet's retry of prepare: %v", err)
					}
					if len(r.Devices) != 2 || migCount(t) != baseline+2 {
						t.Fatalf("after retry: %d devices, %d MIG devices (baseline %d)", len(r.Devices), migCount(t), baseline)
					}
					tp.assertTruthful("after prepare retry")
				}
				if err := tp.unprepare(claim); err != nil {
					t.Fatalf("kubelet's retry of unprepare: %v", err)
				}
				if got := migCount(t); got != baseline {
					t.Fatalf("%d MIG devices after unprepare, want %d", got, baseline)
				}
				if keys := tp.mpsDaemons(); len(keys) != 0 {
					t.Fatalf("MPS control daemons left after unprepare: %v", keys)
				}
				tp.assertTruthful("after unprepare")
				tp.stop()
			})
		}
	}
}

// TestPluginKilledAtEveryVFIOStep kills the plugin (SIGKILL) after each
// step that a VM's claim passes, among them the GPU's bind to vfio-pci and
// its return to nvidia: the GPU is bound to a driver after every kill,
// never to none; after a restart the checkpoint is truthful, the kubelet's
// retry of a prepare binds it to vfio-pci, and the unprepare gives it
// back to nvidia. Steps a VM's claim does not pass (MIG, MPS) are skipped.
func TestPluginKilledAtEveryVFIOStep(t *testing.T) {
	const ns, minor = "gpu-crash-vfio", 7
	tp := newCrashPlugin(t, ns)
	// No modules.alias: the GPU goes to vfio-pci whatever this machine's
	// kernel names.
	vfio := []string{"--vfio-passthrough", "--sys-root", filepath.Join(runDir, "sim/host/sys"), "--vfio-modules-dir", t.TempDir()}
	tp.start(vfio...)
	var bdf string
	eventually(t, 30*time.Second, "the VM's GPU published", func() (bool, error) {
		if !publishedNames(t)[names.VFIODevice(minor)] {
			return false, fmt.Errorf("%s not published", names.VFIODevice(minor))
		}
		bdf = *publishedDevice(t, names.VFIODevice(minor)).Attributes[names.AttrStandardPCIBusID].StringValue
		return true, nil
	})
	tp.stop()
	bound := func(when string) string {
		d := sysDriver(t, bdf)
		if d != names.KernelDriverVFIOPCI && d != names.KernelDriverNVIDIA {
			t.Fatalf("%s: GPU %s is bound to %q, want vfio-pci or nvidia", when, bdf, d)
		}
		return d
	}
	exercised := map[prepare.Step]bool{}
	for i, step := range prepare.AllSteps {
		t.Run(string(step), func(t *testing.T) {
			tp.t = t
			claim := allocatedClaimOfClass(t, ns, fmt.Sprintf("crash-vfio-%d", i), "vfio.gpu.nvidia.com", "", names.VFIODevice(minor))
			isPrepare := i <= slices.Index(prepare.AllSteps, prepare.StepCompletedRecorded)
			if isPrepare {
				tp.start(append(vfio, "--test-crash-at", string(step))...)
				if _, err := tp.prepare(claim); err == nil {
					if err := tp.unprepare(claim); err != nil {
						t.Fatal(err)
					}
					tp.stop()
					t.Skipf("a VM's claim does not pass %s", step)
				}
			} else {
				tp.start(vfio...)
				if _, err := tp.prepare(claim); err != nil {
					t.Fatal(err)
				}
				tp.stop()
				tp.start(append(vfio, "--test-crash-at", string(step))...)
				if err := tp.unprepare(claim); err == nil {
					tp.stop()
					t.Skipf("a VM's claim does not pass %s", step)
				}
			}
			tp.waitKilled()
			exercised[step] = true
			bound("after the kill")
			tp.start(vfio...)
			bound("after the restart")
			tp.assertTruthful("after restart")
			if isPrepare {
				if _, err := tp.prepare(claim); err != nil {
					t.Fatalf("kubelet's retry of prepare: %v", err)
				}
				if d := bound("after the retried prepare"); d != names.KernelDriverVFIOPCI {
					t.Fatalf("after the retried prepare GPU %s is bound to %s, want vfio-pci", bdf, d)
				}
			}
			if err := tp.unprepare(claim); err != nil {
				t.Fatalf("kubelet's retry of unprepare: %v", err)
			}
			if d := bound("after the unprepare"); d != names.KernelDriverNVIDIA {
				t.Fatalf("after the unprepare GPU %s is bound to %s, want nvidia", bdf, d)
			}
			tp.assertTruthful("after unprepare")
			tp.stop()
		})
	}
	for _, step := range []prepare.Step{prepare.StepVFIOBound, prepare.StepVFIOReturned} {
		if !exercised[step] {
			t.Errorf("the plugin was never killed after %s", step)
		}
	}
}
