package prepare

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/gpu-dra/gpu-dra-driver/pkg/cdi"
	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/mps"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simhosttest"
	"github.com/gpu-dra/gpu-dra-driver/pkg/vfio"
	"github.com/gpu-dra/gpu-dra-driver/pkg/vfio/vfiotest"
)

const pool = "node-1"

// fixture is a simulated node with real files: sim state, CDI specs and
// checkpoint in temporary directories.
type fixture struct {
	t      testing.TB
	node   *nvmlnode.Node
	simDir string
	// driverRoot holds the simulated nvidia-smi and MPS control.
	driverRoot string
	mps        *mps.Manager
	cdi        *cdi.Writer
	store      *checkpoint.Store
	// disk writes the store's checkpoints, failing when told to.
	disk    *faultyDisk
	devices *modelDevices
	p       *Preparer
	// vfio is the simulated host's PCI sysfs, whose kernel applies writes
	// while the test runs; holders are what holds each GPU open, by
	// minor.
	vfio      vfio.Host
	holdersMu sync.Mutex
	holders   map[int][]string
}

// modelDevices resolves names through a model built from the inventory.
type modelDevices struct {
	mu    sync.Mutex
	model *devicemodel.Model
}

func (m *modelDevices) Lookup(name string) (*devicemodel.Device, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.model.Devices[name]
	return d, ok
}

func newFixture(t testing.TB, model string) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{t: t, simDir: filepath.Join(dir, "sim")}
	var err error
	if f.node, err = nvmlnode.Open(nvmlnode.Options{Simulate: model, SimStateDir: f.simDir}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.node.Close() })
	inv := f.inventory()
	var minors []int
	var busIDs []string
	for _, g := range inv.GPUs {
		minors = append(minors, g.Minor)
		busIDs = append(busIDs, g.PCIBusID)
	}
	roots, err := simhost.Create(filepath.Join(dir, "host"), minors, inv.DriverVersion, simhosttest.Tools(t))
	if err != nil {
		t.Fatal(err)
	}
	f.driverRoot = roots.DriverRoot
	f.vfio = vfiotest.Host(t, filepath.Join(dir, "host"), busIDs, simhost.PCIOptions{IOMMUFD: true})
	f.node.SetDriverRoot(roots.DriverRoot)
	f.mps = mps.NewManager(filepath.Join(dir, "mps"), roots.DriverRoot)
	t.Cleanup(func() { f.stopDaemons() })
	if f.cdi, err = cdi.New(cdi.Options{CDIRoot: filepath.Join(dir, "cdi"), DriverRoot: roots.DriverRoot, DevRoot: roots.DevRoot, ProcRoot: roots.ProcRoot}); err != nil {
		t.Fatal(err)
	}
	f.disk = &faultyDisk{}
	if f.store, err = checkpoint.NewStore(filepath.Join(dir, "plugin"), checkpoint.WithWriteFile(f.disk.write)); err != nil {
		t.Fatal(err)
	}
	f.devices = &modelDevices{}
	f.rebuildModel(checkpoint.New("boot"))
	f.p = New(f.node, f.devices, f.cdi, f.store, checkpoint.New("boot"), Options{PoolName: pool, MPS: f.mps, HeldWait: 300 * time.Millisecond,
		VFIO: f.vfio, GPUHolders: f.gpuHolders, HolderWait: 300 * time.Millisecond})
	return f
}

// prepareKilledAfter prepares c with the plugin killed (a panic the
// fixture recovers) right after step, as SIGKILL would leave it.
func (f *fixture) prepareKilledAfter(step Step, c *resourceapi.ResourceClaim) {
	f.t.Helper()
	type killed struct{}
	f.p.opts.AfterStep = func(s Step) {
		if s == step {
			panic(killed{})
		}
	}
	defer func() {
		f.p.opts.AfterStep = nil
		if r := recover(); r != (killed{}) {
			f.t.Fatalf("prepare was not killed after %s: %v", step, r)
		}
	}()
	_, _ = f.p.Prepare(context.Background(), c)
}

// stopDaemons stops MPS daemons a test left running.
func (f *fixture) stopDaemons() {
	uids, _ := f.mps.Claims(context.Background())
	for _, uid := range uids {
		_ = f.mps.Stop(context.Background(), uid)
	}
}

func (f *fixture) inventory() *gpu.Inventory {
	inv, err := f.node.Inventory(context.Background())
	if err != nil {
		f.t.Fatal(err)
	}
	return inv
}

func (f *fixture) rebuildModel(cp *checkpoint.Checkpoint) {
	m, err := devicemodel.Build(devicemodel.Input{Inventory: f.inventory(), SharedGPUs: true, VFIO: true, Managed: func(i gpu.MIGInstance) bool {
		for _, c := range cp.Claims {
			for _, d := range c.Devices {
				if d.MIG != nil && d.MIG.Created && d.MIG.UUID == i.UUID {
					return true
				}
			}
		}
		return false
	}})
	if err != nil {
		f.t.Fatal(err)
	}
	f.devices.mu.Lock()
	f.devices.model = m
	f.devices.mu.Unlock()
}

var uidSeq int
var uidMu sync.Mutex

// allocated builds a claim allocated the named devices, one request each.
func allocated(devices ...string) *resourceapi.ResourceClaim {
	uidMu.Lock()
	uidSeq++
	n := uidSeq
	uidMu.Unlock()
	c := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{
		Name: fmt.Sprintf("claim-%d", n), Namespace: "ns", UID: types.UID(fmt.Sprintf("0000%04d-1111-2222-3333-444444444444", n)),
	}}
	c.Status.Allocation = &resourceapi.AllocationResult{}
	for i, d := range devices {
		c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results, resourceapi.DeviceRequestAllocationResult{
			Request: fmt.Sprintf("req-%d", i), Driver: names.DriverName, Pool: pool, Device: d,
		})
	}
	return c
}

func ref(c *resourceapi.ResourceClaim) kubeletplugin.NamespacedObject {
	return kubeletplugin.NamespacedObject{UID: c.UID, NamespacedName: types.NamespacedName{Namespace: c.Namespace, Name: c.Name}}
}

func (f *fixture) liveMIG() []gpu.MIGInstance {
	var out []gpu.MIGInstance
	for _, g := range f.inventory().GPUs {
		out = append(out, g.MIGInstances...)
	}
	return out
}

func (f *fixture) specs() []string {
	uids, err := f.cdi.ClaimUIDs()
	if err != nil {
		f.t.Fatal(err)
	}
	return uids
}

// reconcile runs start-up reconciliation on the fixture's node; lost says
// the checkpoint was lost.
func (f *fixture) reconcile(ctx context.Context, cp *checkpoint.Checkpoint, inv *gpu.Inventory, lost *checkpoint.CorruptError) (*checkpoint.Checkpoint, ReconcileReport, error) {
	return Reconciler{GPUs: f.node, CDI: f.cdi, MPS: f.mps, VFIO: f.vfio}.Reconcile(ctx, Found{Checkpoint: cp, Inventory: inv, Lost: lost})
}

func (f *fixture) saved() *checkpoint.Checkpoint {
	cp, err := f.store.Load()
	if err != nil {
		f.t.Fatal(err)
	}
	return cp
}

func TestPrepareWholeGPU(t *testing.T) {
	f := newFixture(t, "dgxh100")
	ctx := context.Background()
	claim := allocated("gpu-3")
	devs, err := f.p.Prepare(ctx, claim)
	if err != nil {
		t.Fatal(err)
	}
	want := cdi.DeviceID(string(claim.UID), "gpu-3")
	if len(devs) != 1 || devs[0].DeviceName != "gpu-3" || len(devs[0].CDIDeviceIDs) != 1 || devs[0].CDIDeviceIDs[0] != want {
		t.Fatalf("devices = %+v, want CDI ID %s", devs, want)
	}
	if got := f.saved().Claims[string(claim.UID)]; got == nil || got.State != checkpoint.PrepareCompleted {
		t.Fatalf("checkpoint: %+v", got)
	}
	spec, err := os.ReadFile(f.cdi.SpecPath(string(claim.UID)))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(spec), f.inventory().GPUs[3].UUID) || !strings.Contains(string(spec), "/dev/nvidia3") {
		t.Errorf("spec does not name GPU 3: %s", spec)
	}
	again, err := f.p.Prepare(ctx, claim)
	// Deep: each device's Metadata is a pointer, printed as an address.
	if err != nil || !reflect.DeepEqual(again, devs) {
		t.Fatalf("second prepare: %v %+v", err, again)
	}
	for i := 0; i < 2; i++ {
		if err := f.p.Unprepare(ctx, ref(claim)); err != nil {
			t.Fatalf("unprepare %d: %v", i, err)
		}
	}
	if len(f.specs()) != 0 || len(f.saved().Claims) != 0 {
		t.Fatalf("left behind: specs %v, checkpoint %+v", f.specs(), f.saved().Claims)
	}
}

// TestWholeGPUKilledBeforeCompletion: a whole-GPU claim is recorded only
// when complete, so a plugin killed after writing its CDI spec leaves just
// that spec, which start-up reconciliation deletes; the kubelet's retry
// then prepares the claim again.
func TestWholeGPUKilledBeforeCompletion(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	claim := allocated("gpu-4")
	f.prepareKilledAfter(StepCDIWritten, claim)
	if len(f.specs()) != 1 || len(f.saved().Claims) != 0 {
		t.Fatalf("after the kill: specs %v, checkpoint %+v", f.specs(), f.saved().Claims)
	}
	// The restarted plugin.
	cp, rep, err := f.reconcile(ctx, f.saved(), f.inventory(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.OrphanSpecs) != 1 || len(f.specs()) != 0 {
		t.Fatalf("orphan specs %v, spec files %v", rep.OrphanSpecs, f.specs())
	}
	p := New(f.node, f.devices, f.cdi, f.store, cp, Options{PoolName: pool, MPS: f.mps, HeldWait: 300 * time.Millisecond})
	if _, err := p.Prepare(ctx, claim); err != nil {
		t.Fatalf("kubelet's retry: %v", err)
	}
	if got := f.saved().Claims[string(claim.UID)]; got == nil || got.State != checkpoint.PrepareCompleted || len(f.specs()) != 1 {
		t.Fatalf("after the retry: checkpoint %+v, specs %v", got, f.specs())
	}
}

// withConfig returns an allocated claim with one opaque configuration of
// the claim.
func withConfig(device, params string, requests ...string) *resourceapi.ResourceClaim {
	c := allocated(device)
	c.Status.Allocation.Devices.Config = []resourceapi.DeviceAllocationConfiguration{{
		Source: resourceapi.AllocationConfigSourceClaim, Requests: requests,
		DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{
			Driver: "gpu.nvidia.com", Parameters: runtime.RawExtension{Raw: []byte(params)},
		}},
	}}
	return c
}

const longTimeSlice = `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Long"}}}`

func (f *fixture) timeSlice(gpuIndex int) string {
	f.t.Helper()
	data, err := os.ReadFile(simhost.TimeSlicePath(f.driverRoot, f.inventory().GPUs[gpuIndex].UUID))
	if errors.Is(err, os.ErrNotExist) {
		return "never set"
	}
	if err != nil {
		f.t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// TestTimeSlice: a whole-GPU claim with a Long time slice sets it on its
// GPU with the driver's nvidia-smi and records it; unprepare restores the
// default; a plugin killed in between has it restored by reconciliation.
func TestTimeSlice(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	c := withConfig("gpu-6", longTimeSlice)
	if _, err := f.p.Prepare(ctx, c); err != nil {
		t.Fatal(err)
	}
	if got := f.timeSlice(6); got != "3" {
		t.Errorf("time slice of GPU 6 after prepare: %s, want 3 (Long)", got)
	}
	if d := f.saved().Claims[string(c.UID)].Devices[0]; d.TimeSlice != "Long" {
		t.Errorf("checkpoint records time slice %q", d.TimeSlice)
	}
	if err := f.p.Unprepare(ctx, ref(c)); err != nil {
		t.Fatal(err)
	}
	if got := f.timeSlice(6); got != "0" {
		t.Errorf("time slice of GPU 6 after unprepare: %s, want 0 (default)", got)
	}

	// Killed after the CDI spec was written: the claim is PrepareStarted
	// with its time slice; reconciliation restores the default.
	c2 := withConfig("gpu-7", longTimeSlice)
	f.prepareKilledAfter(StepCDIWritten, c2)
	if got := f.timeSlice(7); got != "3" {
		t.Fatalf("time slice of GPU 7 before the kill: %s", got)
	}
	if _, rep, err := f.reconcile(ctx, f.saved(), f.inventory(), nil); err != nil || len(rep.RolledBack) != 1 {
		t.Fatalf("reconcile: %v, %+v", err, rep)
	}
	if got := f.timeSlice(7); got != "0" {
		t.Errorf("time slice of GPU 7 after reconciliation: %s, want 0", got)
	}
}

const mpsConfig = `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultActiveThreadPercentage":50,"defaultPinnedDeviceMemoryLimit":"10Gi"}}}`

// TestMPS: a claim shared through MPS gets one control daemon, started
// with its GPU; its CDI spec mounts the daemon's pipe and log directories
// and sets the limits; unprepare stops the daemon. Reconciliation stops
// the daemon of a claim killed mid-prepare and of no claim, and starts
// again the daemon of a prepared claim that lost it.
func TestMPS(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	c := withConfig("gpu-1", mpsConfig)
	uid := string(c.UID)
	if _, err := f.p.Prepare(ctx, c); err != nil {
		t.Fatal(err)
	}
	if !f.mps.Running(uid) {
		t.Fatal("no MPS daemon after prepare")
	}
	spec, err := os.ReadFile(f.cdi.SpecPath(uid))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50",
		"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=10240M", f.mps.PipeDir(uid), f.mps.LogDir(uid),
	} {
		if !strings.Contains(string(spec), want) {
			t.Errorf("CDI spec lacks %q:\n%s", want, spec)
		}
	}
	log, _ := os.ReadFile(simhost.MPSLogPath(f.driverRoot))
	if !strings.Contains(string(log), "devices="+f.inventory().GPUs[1].UUID) {
		t.Errorf("daemon not started for GPU 1:\n%s", log)
	}
	again, err := f.p.Prepare(ctx, c)
	if err != nil || len(again) != 1 || strings.Count(string(mustRead(t, simhost.MPSLogPath(f.driverRoot))), " start ") != 1 {
		t.Fatalf("second prepare: %v, or a second daemon", err)
	}
	if err := f.p.Unprepare(ctx, ref(c)); err != nil {
		t.Fatal(err)
	}
	if f.mps.Running(uid) {
		t.Error("MPS daemon still running after unprepare")
	}
	if uids, _ := f.mps.Claims(context.Background()); len(uids) != 0 {
		t.Errorf("daemon directories left: %v", uids)
	}

	// Killed after the daemon started, before the CDI spec.
	interrupted := withConfig("gpu-2", mpsConfig)
	f.prepareKilledAfter(StepMPSStarted, interrupted)
	// A prepared claim whose daemon died, and a daemon of no claim.
	kept := withConfig("gpu-3", mpsConfig)
	if _, err := f.p.Prepare(ctx, kept); err != nil {
		t.Fatal(err)
	}
	if err := f.mps.Stop(ctx, string(kept.UID)); err != nil {
		t.Fatal(err)
	}
	const orphan = "99999999-0000-4000-8000-000000000000"
	if err := f.mps.Start(ctx, orphan, []string{"GPU-x"}, mps.Limits{}); err != nil {
		t.Fatal(err)
	}
	_, rep, err := f.reconcile(ctx, f.saved(), f.inventory(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(rep.RolledBack) != fmt.Sprint([]string{string(interrupted.UID)}) ||
		fmt.Sprint(rep.MPSRestarted) != fmt.Sprint([]string{string(kept.UID)}) || fmt.Sprint(rep.OrphanMPS) != fmt.Sprint([]string{orphan}) {
		t.Errorf("report %+v", rep)
	}
	if f.mps.Running(string(interrupted.UID)) || f.mps.Running(orphan) || !f.mps.Running(string(kept.UID)) {
		t.Errorf("daemons after reconcile: interrupted %v, orphan %v, kept %v",
			f.mps.Running(string(interrupted.UID)), f.mps.Running(orphan), f.mps.Running(string(kept.UID)))
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestPrepareMIGCreatesExactlyTheAllocatedPlacement(t *testing.T) {
	f := newFixture(t, "dgxh100")
	ctx := context.Background()
	claim := allocated("gpu-2-mig-3g40gb-4", "gpu-2-mig-1g10gb-1")
	devs, err := f.p.Prepare(ctx, claim)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 2 {
		t.Fatalf("devices = %+v", devs)
	}
	live := f.liveMIG()
	got := map[string]bool{}
	for _, m := range live {
		got[fmt.Sprintf("%s@%s", m.Profile, m.Placement)] = true
		if m.ParentUUID != f.inventory().GPUs[2].UUID {
			t.Errorf("instance on the wrong GPU: %+v", m)
		}
	}
	if len(live) != 2 || !got["3g.40gb@4:4"] || !got["1g.10gb@1:1"] {
		t.Fatalf("live MIG devices = %+v", live)
	}
	spec, _ := os.ReadFile(f.cdi.SpecPath(string(claim.UID)))
	for _, m := range live {
		if !strings.Contains(string(spec), m.UUID) {
			t.Errorf("spec lacks MIG UUID %s", m.UUID)
		}
	}
	if err := f.p.Unprepare(ctx, ref(claim)); err != nil {
		t.Fatal(err)
	}
	if live := f.liveMIG(); len(live) != 0 {
		t.Fatalf("unprepare left MIG devices: %+v", live)
	}
}

func TestPrepareStaticMIGUsesAndKeepsIt(t *testing.T) {
	f := newFixture(t, "dgxa100")
	ctx := context.Background()
	inv := f.inventory()
	// An A100's MIG mode is the administrator's: a change and a reset.
	f.adminMIGMode("dgxa100", inv.GPUs[1].Index, true)
	static, err := f.node.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: inv.GPUs[1].UUID, ProfileID: 0, Placement: gpu.Placement{Start: 2, Size: 1}})
	if err != nil {
		t.Fatal(err)
	}
	f.rebuildModel(checkpoint.New(""))
	claim := allocated("gpu-1-mig-1g5gb-2-static")
	if _, err := f.p.Prepare(ctx, claim); err != nil {
		t.Fatal(err)
	}
	spec, _ := os.ReadFile(f.cdi.SpecPath(string(claim.UID)))
	if !strings.Contains(string(spec), static.UUID) {
		t.Fatal("spec lacks the static instance's UUID")
	}
	if err := f.p.Unprepare(ctx, ref(claim)); err != nil {
		t.Fatal(err)
	}
	if live := f.liveMIG(); len(live) != 1 || live[0].UUID != static.UUID {
		t.Fatalf("a pre-created instance must survive unprepare: %+v", live)
	}
}

// TestFailureRollsBackEverything: the second MIG device of a claim cannot be
// created (someone took its placement); the first is destroyed again and
// nothing of the claim is left.
func TestFailureRollsBackEverything(t *testing.T) {
	f := newFixture(t, "dgxh100")
	ctx := context.Background()
	g := f.inventory().GPUs[0]
	if err := f.node.SetMIGMode(ctx, g.UUID, true); err != nil {
		t.Fatal(err)
	}
	intruder, err := f.node.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g.UUID, ProfileID: 0, Placement: gpu.Placement{Start: 5, Size: 1}})
	if err != nil {
		t.Fatal(err)
	}
	claim := allocated("gpu-0-mig-1g10gb-6", "gpu-0-mig-1g10gb-5")
	_, err = f.p.Prepare(ctx, claim)
	if err == nil {
		t.Fatal("prepare succeeded on an occupied placement")
	}
	for _, want := range []string{claim.Name, string(claim.UID), "gpu-0-mig-1g10gb-5", "placement is occupied"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if !errors.Is(err, gpu.ErrPlacementOccupied) {
		t.Errorf("error does not wrap the cause: %v", err)
	}
	if live := f.liveMIG(); len(live) != 1 || live[0].UUID != intruder.UUID {
		t.Fatalf("rollback left MIG devices: %+v", live)
	}
	if len(f.specs()) != 0 || len(f.saved().Claims) != 0 {
		t.Fatalf("rollback left specs %v or checkpoint %+v", f.specs(), f.saved().Claims)
	}
}

func TestErrorsNameTheProblem(t *testing.T) {
	f := newFixture(t, "dgxh100")
	ctx := context.Background()
	first := allocated("gpu-1")
	if _, err := f.p.Prepare(ctx, first); err != nil {
		t.Fatal(err)
	}
	unallocated := allocated()
	unallocated.Status.Allocation = nil
	cases := map[string]struct {
		claim *resourceapi.ResourceClaim
		want  string
	}{
		"device prepared for another claim": {allocated("gpu-1"), "already prepared for claim " + string(first.UID)},
		"unknown device":                    {allocated("gpu-42"), "gpu-42: not published by this node"},
		"not allocated":                     {unallocated, "not allocated"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := f.p.Prepare(ctx, tc.claim)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
			if _, ok := f.saved().Claims[string(tc.claim.UID)]; ok {
				t.Fatal("failed claim recorded")
			}
		})
	}
}

// TestConcurrentClaims prepares 50 claims on 8 GPUs at once (seven 1g MIG
// devices on each of seven GPUs, the eighth whole, and one claim twice as a
// retrying kubelet would), then unprepares them at once.
func TestConcurrentClaims(t *testing.T) {
	f := newFixture(t, "dgxh100")
	ctx := context.Background()
	var claims []*resourceapi.ResourceClaim
	for g := 0; g < 8; g++ {
		if g == 7 {
			claims = append(claims, allocated("gpu-7"))
			continue
		}
		for s := 0; s < 7; s++ {
			claims = append(claims, allocated(fmt.Sprintf("gpu-%d-mig-1g10gb-%d", g, s)))
		}
	}
	claims = append(claims, claims[0]) // the kubelet retrying a claim concurrently
	var wg sync.WaitGroup
	errs := make(chan error, len(claims))
	for _, c := range claims {
		wg.Go(func() {
			if _, err := f.p.Prepare(ctx, c); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if live := f.liveMIG(); len(live) != 49 {
		t.Fatalf("%d MIG devices live, want 49", len(live))
	}
	if n := len(f.saved().Claims); n != 50 {
		t.Fatalf("checkpoint holds %d claims, want 50", n)
	}
	for _, c := range claims {
		wg.Go(func() {
			if err := f.p.Unprepare(ctx, ref(c)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if live := f.liveMIG(); len(live) != 0 {
		t.Fatalf("%d MIG devices left", len(live))
	}
	if len(f.specs()) != 0 || len(f.saved().Claims) != 0 {
		t.Fatal("specs or checkpoint entries left")
	}
}

func TestOpaqueConfig(t *testing.T) {
	f := newFixture(t, "dgxh100")
	ctx := context.Background()
	cases := []struct {
		name, params string
		requests     []string
		wantErr      string
		mig          bool
	}{
		{name: "time slice on a MIG device", params: `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"MigDeviceConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Long"}}}`,
			wantErr: "parameters.sharing.timeSlicingConfig.interval", mig: true},
		{"default time slicing", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Default"}}}`, nil, "", false},
		{"unknown field", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","intervall":"Long"}}`, nil, "sharing.intervall", false},
		{"bad strategy", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"Bogus"}}`, nil, "parameters.sharing.strategy", false},
		{"MPS limit for a device the claim lacks", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultPerDevicePinnedMemoryLimit":{"3":"1Gi"}}}}`, nil, "defaultPerDevicePinnedMemoryLimit[3]", false},
		{"config of another request", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"Bogus"}}`, []string{"other"}, "", false},
		{"MIG config ignored on a whole GPU", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"MigDeviceConfig","sharing":{"strategy":"MPS"}}`, nil, "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			device := "gpu-6"
			if tc.mig {
				device = "gpu-6-mig-1g10gb-6"
			}
			c := withConfig(device, tc.params, tc.requests...)
			_, err := f.p.Prepare(ctx, c)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if err := f.p.Unprepare(ctx, ref(c)); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), device) {
				t.Fatalf("error %v, want one naming %s and %q", err, device, tc.wantErr)
			}
			if len(f.specs()) != 0 || len(f.saved().Claims) != 0 {
				t.Fatal("a rejected claim left state behind")
			}
		})
	}
}

// TestConfigPrecedence: the DeviceClass's configuration comes first and
// the claim's later one wins; a configuration naming another request does
// not apply.
func TestConfigPrecedence(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	slice := func(interval string) string {
		return `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"` + interval + `"}}}`
	}
	entry := func(source resourceapi.AllocationConfigSource, params string, requests ...string) resourceapi.DeviceAllocationConfiguration {
		return resourceapi.DeviceAllocationConfiguration{Source: source, Requests: requests,
			DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{
				Driver: "gpu.nvidia.com", Parameters: runtime.RawExtension{Raw: []byte(params)},
			}}}
	}
	for _, tc := range []struct {
		name    string
		configs []resourceapi.DeviceAllocationConfiguration
		want    string
	}{
		{"class only", []resourceapi.DeviceAllocationConfiguration{entry(resourceapi.AllocationConfigSourceClass, slice("Medium"))}, "2"},
		{"claim overrides class", []resourceapi.DeviceAllocationConfiguration{
			entry(resourceapi.AllocationConfigSourceClass, slice("Medium")), entry(resourceapi.AllocationConfigSourceClaim, slice("Short"))}, "1"},
		{"claim config of another request", []resourceapi.DeviceAllocationConfiguration{
			entry(resourceapi.AllocationConfigSourceClass, slice("Long")), entry(resourceapi.AllocationConfigSourceClaim, slice("Short"), "other")}, "3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := allocated("gpu-4")
			c.Status.Allocation.Devices.Config = tc.configs
			if _, err := f.p.Prepare(ctx, c); err != nil {
				t.Fatal(err)
			}
			if got := f.timeSlice(4); got != tc.want {
				t.Errorf("time slice %s, want %s", got, tc.want)
			}
			if err := f.p.Unprepare(ctx, ref(c)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestDeviceHeldByAnotherClaim: a claim whose device is still prepared for
// another claim (a pod deleted without grace period) waits for that
// unprepare and then gets the device; if it never comes, the error names
// the holder.
func TestDeviceHeldByAnotherClaim(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	f.p.opts.HeldWait = 10 * time.Second
	old := allocated("gpu-5")
	if _, err := f.p.Prepare(ctx, old); err != nil {
		t.Fatal(err)
	}
	next := allocated("gpu-5")
	done := make(chan error, 1)
	go func() {
		_, err := f.p.Prepare(ctx, next)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("prepare did not wait for the held device: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := f.p.Unprepare(ctx, ref(old)); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("prepare after the holder's unprepare: %v", err)
	}

	f.p.opts.HeldWait = 100 * time.Millisecond
	third := allocated("gpu-5")
	_, err := f.p.Prepare(ctx, third)
	if err == nil || !strings.Contains(err.Error(), "already prepared for claim "+string(next.UID)) {
		t.Errorf("error %v, want one naming the holder %s", err, next.UID)
	}
}

// TestOverlappingDeviceHeldByAnotherClaim: after a forced deletion the
// scheduler may allocate a device that overlaps one still prepared for
// another claim on the hardware without being the same device: the whole
// GPU and a MIG device on it, or two MIG devices that share a memory
// slice. The prepare waits for the holder's unprepare as for the same
// device, rather than failing in the hardware or, worse, turning MIG mode
// on under a whole-GPU container; MIG devices side by side do not wait.
func TestOverlappingDeviceHeldByAnotherClaim(t *testing.T) {
	for _, tc := range []struct {
		held, next string
		wantHeld   bool
	}{
		{"gpu-0", "gpu-0-mig-1g10gb-0", true},
		{"gpu-0-mig-1g10gb-3", "gpu-0", true},
		{"gpu-0-mig-7g80gb-0", "gpu-0-mig-1g10gb-3", true},
		{"gpu-0-mig-2g20gb-2", "gpu-0-mig-1g10gb-3", true},
		{"gpu-0-mig-1g10gb-3", "gpu-0-shared", true},
		{"gpu-0-mig-3g40gb-0", "gpu-0-mig-3g40gb-4", false},
		{"gpu-0-mig-1g10gb-3", "gpu-1-mig-1g10gb-3", false},
		{"gpu-0", "gpu-1", false},
		// One +me instance fits on a GPU (it takes the media engines),
		// although seven placements exist.
		{"gpu-0-mig-1g10gbme-0", "gpu-0-mig-1g10gbme-3", true},
		{"gpu-0-mig-1g10gbme-0", "gpu-1-mig-1g10gbme-3", false},
		{"gpu-0-mig-1g10gbme-0", "gpu-0-mig-1g10gb-3", false},
	} {
		t.Run(tc.held+" then "+tc.next, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, "dgxh100")
			f.p.opts.HeldWait = 100 * time.Millisecond
			holder := allocated(tc.held)
			if _, err := f.p.Prepare(ctx, holder); err != nil {
				t.Fatal(err)
			}
			next := allocated(tc.next)
			if tc.next == "gpu-0-shared" {
				next = sharesAllocated(shareOf{"gpu-0-shared", "aaaaaaaa-0000-4000-8000-000000000001", "10Gi", "0"})
			}
			_, err := f.p.Prepare(ctx, next)
			var held *heldError
			switch {
			case tc.wantHeld && (!errors.As(err, &held) || held.owner != string(holder.UID)):
				t.Fatalf("got %v, want a wait for the holder %s", err, holder.UID)
			case !tc.wantHeld && err != nil:
				t.Fatalf("a device beside the holder's: %v", err)
			}
			if tc.wantHeld {
				if live := f.liveMIG(); len(live) > 1 || strings.HasPrefix(tc.held, "gpu-0-mig") != (len(live) == 1) {
					t.Errorf("the waiting claim changed the GPU: MIG devices %+v", live)
				}
			}
		})
	}
}

// TestMPSMultiUser: mpsConfig.multiUser, as NVIDIA's driver takes it,
// starts the claim's own daemon in multi-user mode (-M); false or absent
// starts it as before. Reconciliation starts it again in the same mode.
// On a GPU older than Volta multi-user mode is refused, naming the field,
// and nothing is started.
func TestMPSMultiUser(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name, multiUser string
		// computeCapability, if set, replaces the GPU's.
		computeCapability string
		want              bool
		wantErr           string
	}{
		{name: "true", multiUser: `,"multiUser":true`, want: true},
		{name: "false", multiUser: `,"multiUser":false`},
		{name: "absent"},
		{name: "true on Volta", multiUser: `,"multiUser":true`, computeCapability: "7.0", want: true},
		{name: "true on Pascal", multiUser: `,"multiUser":true`, computeCapability: "6.0", wantErr: "parameters.sharing.mpsConfig.multiUser: MPS in multi-user mode needs a Volta or newer GPU"},
		{name: "false on Pascal", multiUser: `,"multiUser":false`, computeCapability: "6.0"},
		{name: "true, capability unknown", multiUser: `,"multiUser":true`, computeCapability: "-", want: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, "dgxh100")
			if tc.computeCapability != "" {
				dev, _ := f.devices.Lookup("gpu-2")
				g := *dev.GPU
				g.CUDAComputeCapability = strings.TrimPrefix(tc.computeCapability, "-")
				d := *dev
				d.GPU = &g
				f.devices.model.Devices["gpu-2"] = &d
			}
			c := withConfig("gpu-2", `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultActiveThreadPercentage":50`+tc.multiUser+`}}}`)
			uid := string(c.UID)
			_, err := f.p.Prepare(ctx, c)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error with %q", err, tc.wantErr)
				}
				if f.mps.Running(uid) || len(f.p.Snapshot().Claims) != 0 {
					t.Errorf("a refused claim left its daemon running (%v) or its record %v", f.mps.Running(uid), f.p.Snapshot().Claims)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			starts := func() []string {
				var out []string
				for _, l := range strings.Split(string(mustRead(t, simhost.MPSLogPath(f.driverRoot))), "\n") {
					if strings.Contains(l, " start ") && strings.Contains(l, f.mps.PipeDir(uid)) {
						out = append(out, l)
					}
				}
				return out
			}
			if got := starts(); len(got) != 1 || strings.HasSuffix(got[0], " multi_user=1") != tc.want {
				t.Fatalf("daemon starts %q, want one, multi-user %v", got, tc.want)
			}
			// The daemon lost (a node restart): reconciliation starts it
			// again from the checkpoint, in the same mode.
			if err := f.mps.Stop(ctx, uid); err != nil {
				t.Fatal(err)
			}
			if _, _, err := f.reconcile(ctx, f.saved(), f.inventory(), nil); err != nil {
				t.Fatal(err)
			}
			if got := starts(); len(got) != 2 || strings.HasSuffix(got[1], " multi_user=1") != tc.want {
				t.Errorf("daemon starts after reconciliation %q, want two, multi-user %v", got, tc.want)
			}
			if err := f.p.Unprepare(ctx, ref(c)); err != nil {
				t.Fatal(err)
			}
		})
	}
}
