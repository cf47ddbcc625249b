package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2/ktesting"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/cdi"
	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/draplugin"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/health"
	"github.com/gpu-dra/gpu-dra-driver/pkg/mps"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simhosttest"
)

const nodeName = "node-1"

// fakeHelper stands for the kubeletplugin helper: it serves nothing and
// records what the driver asked of it.
type fakeHelper struct {
	mu               sync.Mutex
	plugin           kubeletplugin.DRAPlugin
	started, stopped int
}

func (h *fakeHelper) start(_ context.Context, plugin kubeletplugin.DRAPlugin, _ ...kubeletplugin.Option) (draplugin.Helper, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.plugin = plugin
	h.started++
	return h, nil
}

func (h *fakeHelper) Stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped++
}

func (h *fakeHelper) counts() (started, stopped int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.started, h.stopped
}

// nodeFixture is a simulated DGX H100 node with real files (simulated
// NVML state, driver and device trees, CDI specs, checkpoint, health
// state) in a temporary directory, a fake API server holding its Node,
// a fake clock and a fake kubelet helper. Each newDriver is a plugin
// start on it.
type nodeFixture struct {
	t      *testing.T
	dir    string
	roots  simhost.Roots
	client *fake.Clientset
	clock  *testingclock.FakeClock
	helper *fakeHelper
	// closeNode closes the NVML of the last driver started.
	closeNode func()
}

func newNodeFixture(t *testing.T) *nodeFixture {
	t.Helper()
	f := &nodeFixture{t: t, dir: t.TempDir(), helper: &fakeHelper{},
		clock:  testingclock.NewFakeClock(time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)),
		client: fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}})}
	f.setBootID("boot-1")
	node := f.openNode()
	inv, err := node.Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var minors []int
	for _, g := range inv.GPUs {
		minors = append(minors, g.Minor)
	}
	if f.roots, err = simhost.Create(filepath.Join(f.dir, "host"), minors, inv.DriverVersion, simhosttest.Tools(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.closeNode() })
	return f
}

func (f *nodeFixture) setBootID(id string) {
	f.t.Helper()
	dir := filepath.Join(f.dir, "proc-root", "proc", "sys", "kernel", "random")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "boot_id"), []byte(id+"\n"), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// openNode closes the NVML opened before, as a plugin process that
// exits does, and opens the simulated node again.
func (f *nodeFixture) openNode() *nvmlnode.Node {
	f.t.Helper()
	if f.closeNode != nil {
		f.closeNode()
	}
	node, err := nvmlnode.Open(nvmlnode.Options{Simulate: "dgxh100", SimStateDir: filepath.Join(f.dir, "sim")})
	if err != nil {
		f.t.Fatal(err)
	}
	var once sync.Once
	f.closeNode = func() { once.Do(func() { node.Close() }) }
	return node
}

func (f *nodeFixture) config() Config {
	f.t.Helper()
	node := f.openNode()
	node.SetDriverRoot(f.roots.DriverRoot)
	writer, err := cdi.New(cdi.Options{CDIRoot: filepath.Join(f.dir, "cdi"), DriverRoot: f.roots.DriverRoot, DevRoot: f.roots.DevRoot, ProcRoot: f.roots.ProcRoot})
	if err != nil {
		f.t.Fatal(err)
	}
	store, err := checkpoint.NewStore(filepath.Join(f.dir, "plugin"))
	if err != nil {
		f.t.Fatal(err)
	}
	return Config{
		NodeName: nodeName, KubeClient: f.client, GPUs: node, CDI: writer, Store: store,
		MPS:               mps.NewManager(filepath.Join(f.dir, "mps"), f.roots.DriverRoot),
		InventoryInterval: time.Minute, HeldDeviceWait: -1, SharedGPUs: true,
		HealthPolicy: health.DefaultPolicy(), HealthStorePath: filepath.Join(f.dir, "plugin", health.StoreFileName),
		ProcRoot: filepath.Join(f.dir, "proc-root"), Clock: f.clock, StartHelper: f.helper.start,
	}
}

// newDriver starts the plugin, up to New.
func (f *nodeFixture) newDriver(ctx context.Context) *Driver {
	f.t.Helper()
	d, err := New(ctx, f.config())
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

// liveMIG lists the node's MIG devices as NVML reports them.
func (f *nodeFixture) liveMIG(d *Driver) []gpu.MIGInstance {
	f.t.Helper()
	inv, err := d.cfg.GPUs.Inventory(context.Background())
	if err != nil {
		f.t.Fatal(err)
	}
	var out []gpu.MIGInstance
	for _, g := range inv.GPUs {
		out = append(out, g.MIGInstances...)
	}
	return out
}

// slices returns the ResourceSlices in the API server.
func (f *nodeFixture) slices() []resourceapi.ResourceSlice {
	f.t.Helper()
	list, err := f.client.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return list.Items
}

// events returns "reason: message" of the Events recorded on the node.
func (f *nodeFixture) events() []string {
	f.t.Helper()
	list, err := f.client.CoreV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	var out []string
	for _, e := range list.Items {
		if e.InvolvedObject.Kind == "Node" && e.InvolvedObject.Name == nodeName {
			out = append(out, e.Reason+": "+e.Message)
		}
	}
	return out
}

var claimSeq int

// allocated is a claim allocated the named devices of the node's pool.
func allocated(devices ...string) *resourceapi.ResourceClaim {
	claimSeq++
	c := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{
		Name: fmt.Sprintf("claim-%d", claimSeq), Namespace: "ns", UID: types.UID(fmt.Sprintf("0000%04d-1111-2222-3333-444444444444", claimSeq)),
	}}
	c.Status.Allocation = &resourceapi.AllocationResult{}
	for i, d := range devices {
		c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results, resourceapi.DeviceRequestAllocationResult{
			Request: fmt.Sprintf("req-%d", i), Driver: names.DriverName, Pool: nodeName, Device: d,
		})
	}
	return c
}

func ref(c *resourceapi.ResourceClaim) kubeletplugin.NamespacedObject {
	return kubeletplugin.NamespacedObject{UID: c.UID, NamespacedName: types.NamespacedName{Namespace: c.Namespace, Name: c.Name}}
}

// prepareOK prepares the claims through the kubelet's entry point and fails
// the test on any error.
func prepareOK(ctx context.Context, t *testing.T, d *Driver, claims ...*resourceapi.ResourceClaim) map[types.UID]kubeletplugin.PrepareResult {
	t.Helper()
	results, err := d.PrepareResourceClaims(ctx, claims)
	if err != nil {
		t.Fatal(err)
	}
	for uid, r := range results {
		if r.Err != nil {
			t.Fatalf("prepare %s: %v", uid, r.Err)
		}
	}
	return results
}

func unprepareOK(ctx context.Context, t *testing.T, d *Driver, claims ...*resourceapi.ResourceClaim) {
	t.Helper()
	var refs []kubeletplugin.NamespacedObject
	for _, c := range claims {
		refs = append(refs, ref(c))
	}
	results, err := d.UnprepareResourceClaims(ctx, refs)
	if err != nil {
		t.Fatal(err)
	}
	for uid, err := range results {
		if err != nil {
			t.Fatalf("unprepare %s: %v", uid, err)
		}
	}
}

// healthReport is the first report of a health stream, by device name.
func healthReport(ctx context.Context, t *testing.T, d *Driver) map[string]kubeletplugin.HealthStatus {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reports := make(chan kubeletplugin.DeviceHealthReport)
	done := make(chan error, 1)
	go func() { done <- d.WatchHealthStatus(ctx, reports) }()
	report := <-reports
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	out := map[string]kubeletplugin.HealthStatus{}
	for _, dev := range report.Devices {
		out[dev.DeviceName] = dev.Health
	}
	return out
}

// migOf is the MIG device a prepared claim holds.
func migOf(t *testing.T, d *Driver, c *resourceapi.ResourceClaim) *checkpoint.MIG {
	t.Helper()
	for _, dev := range d.preparer.Snapshot().Claims[string(c.UID)].Devices {
		if dev.MIG != nil {
			return dev.MIG
		}
	}
	t.Fatalf("claim %s holds no MIG device", c.Name)
	return nil
}

// TestNewServesNothing: New does the start-up steps and leaves serving to
// Start: the model is built, but nothing reached the kubelet or the API
// server.
func TestNewServesNothing(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	f := newNodeFixture(t)
	d := f.newDriver(ctx)
	if _, ok := d.state.Lookup("gpu-0"); !ok {
		t.Error("no device model after New")
	}
	if started, _ := f.helper.counts(); started != 0 {
		t.Errorf("New started the kubelet helper")
	}
	if actions := f.client.Actions(); len(actions) != 0 {
		t.Errorf("New called the API server: %v", actions)
	}
}

// TestStartServesUntilTheContextEnds: Start registers with the kubelet and
// publishes; the end of the context stops serving, keeping the slices; a
// fatal error from the helper stops the driver and is what Wait returns.
func TestStartServesUntilTheContextEnds(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	for name, fatal := range map[string]error{"context ends": nil, "fatal helper error": errors.New("listener closed")} {
		t.Run(name, func(t *testing.T) {
			f := newNodeFixture(t)
			d := f.newDriver(ctx)
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			if err := d.Start(ctx); err != nil {
				t.Fatal(err)
			}
			if started, _ := f.helper.counts(); started != 1 || f.helper.plugin != d {
				t.Fatalf("helper started %d times, for %v", started, f.helper.plugin)
			}
			// The publisher writes in the background.
			for deadline := time.Now().Add(10 * time.Second); len(f.slices()) == 0; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("no ResourceSlice was published")
				}
			}
			if fatal != nil {
				d.HandleError(ctx, fatal, "gRPC server")
			} else {
				cancel()
			}
			err := d.Wait()
			if !errors.Is(err, fatal) || (fatal == nil) != (err == nil) {
				t.Errorf("Wait returned %v, want %v", err, fatal)
			}
			if _, stopped := f.helper.counts(); stopped != 1 {
				t.Errorf("helper stopped %d times, want 1", stopped)
			}
			if len(f.slices()) == 0 {
				t.Error("the slices were removed at shutdown")
			}
		})
	}
}

// TestRestartRecoversPreparedClaims: after a plugin restart the claims it
// had prepared are still prepared, with the same result for the
// kubelet's retry, their MIG device kept and watched, and their health
// reported; a reboot is not a restart.
func TestRestartRecoversPreparedClaims(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	f := newNodeFixture(t)
	whole, mig := allocated("gpu-3"), allocated("gpu-2-mig-1g10gb-1")
	d := f.newDriver(ctx)
	before := prepareOK(ctx, t, d, whole, mig)
	instance := *migOf(t, d, mig)

	d = f.newDriver(ctx)
	if after := prepareOK(ctx, t, d, whole, mig); !reflect.DeepEqual(after, before) {
		t.Errorf("prepared again after the restart:\n%+v\nwant\n%+v", after, before)
	}
	if got := *migOf(t, d, mig); got != instance {
		t.Errorf("MIG device after the restart %+v, want %+v", got, instance)
	}
	if live := f.liveMIG(d); len(live) != 1 || live[0].UUID != instance.UUID {
		t.Errorf("live MIG devices after the restart: %+v", live)
	}
	// The restarted monitor knows the claim's MIG device: a fatal XID
	// on it makes that device, and only it, unhealthy.
	d.monitor.Observe(ctx, gpu.Event{Kind: gpu.EventXID, GPUUUID: d.preparer.Snapshot().Claims[string(mig.UID)].Devices[0].GPUUUID,
		XID: 48, GIID: instance.GIID, CIID: instance.CIID})
	want := map[string]kubeletplugin.HealthStatus{"gpu-3": kubeletplugin.HealthStatusHealthy, "gpu-2-mig-1g10gb-1": kubeletplugin.HealthStatusUnhealthy}
	if got := healthReport(ctx, t, d); !reflect.DeepEqual(got, want) {
		t.Errorf("health after the restart %v, want %v", got, want)
	}

	// A reboot resets every GPU: MIG devices are gone, and so are the
	// sticky conditions of before.
	f.setBootID("boot-2")
	d = f.newDriver(ctx)
	if conds := d.monitor.Conditions(); len(conds) != 0 {
		t.Errorf("health conditions after a reboot: %v", conds)
	}
	unprepareOK(ctx, t, d, whole, mig)
	if live := f.liveMIG(d); len(live) != 0 {
		t.Errorf("MIG devices left after unprepare: %+v", live)
	}
}

// TestCorruptCheckpointIsReportedAndRebuilt: a checkpoint that cannot be
// trusted is set aside with a Warning Event on the Node, and the claims
// are rebuilt from their CDI specs.
func TestCorruptCheckpointIsReportedAndRebuilt(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	f := newNodeFixture(t)
	claim := allocated("gpu-5")
	before := prepareOK(ctx, t, f.newDriver(ctx), claim)
	if err := os.WriteFile(filepath.Join(f.dir, "plugin", checkpoint.FileName), []byte(`{"version":`), 0o600); err != nil {
		t.Fatal(err)
	}
	d := f.newDriver(ctx)
	if events := f.events(); len(events) != 1 || !strings.HasPrefix(events[0], "CheckpointCorrupt: ") {
		t.Errorf("events %q, want one CheckpointCorrupt", events)
	}
	if after := prepareOK(ctx, t, d, claim); !reflect.DeepEqual(after, before) {
		t.Errorf("after the rebuild %+v, want %+v", after, before)
	}
}

// TestRebuildSurvivesAStartThatCannotSave: a start that finds the
// checkpoint corrupt and cannot save what it rebuilt (a full disk) fails;
// the next start rebuilds again, rather than finding no checkpoint and
// deleting the prepared claims' CDI specs as orphans.
func TestRebuildSurvivesAStartThatCannotSave(t *testing.T) {
	for _, tc := range []struct {
		name   string
		claims []string
	}{
		{name: "whole GPU", claims: []string{"gpu-5"}},
		{name: "MIG device", claims: []string{"gpu-2-mig-1g10gb-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			f := newNodeFixture(t)
			d := f.newDriver(ctx)
			var claims []*resourceapi.ResourceClaim
			for _, name := range tc.claims {
				claims = append(claims, allocated(name))
			}
			prepareOK(ctx, t, d, claims...)
			if err := os.WriteFile(filepath.Join(f.dir, "plugin", checkpoint.FileName), []byte(`{"version":`), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := f.config()
			full, err := checkpoint.NewStore(filepath.Join(f.dir, "plugin"), checkpoint.WithWriteFile(func(string, []byte) error {
				return syscall.ENOSPC
			}))
			if err != nil {
				t.Fatal(err)
			}
			cfg.Store = full
			if _, err := New(ctx, cfg); !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("a start that cannot save: %v, want ENOSPC", err)
			}
			d = f.newDriver(ctx)
			for i, c := range claims {
				if got := d.preparer.Snapshot().Claims[string(c.UID)]; got == nil || got.State != checkpoint.PrepareCompleted {
					t.Errorf("claim on %s after the second start: %+v, want it prepared", tc.claims[i], got)
				}
			}
		})
	}
}

// TestReusedMIGIDsBlameTheCurrentDevice: NVML gives a destroyed MIG
// instance's GI and CI IDs to the next one. With the inventory refreshed
// while the first existed, a fatal XID naming the IDs after the second
// was created must make the second claim's device unhealthy.
func TestReusedMIGIDsBlameTheCurrentDevice(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	f := newNodeFixture(t)
	d := f.newDriver(ctx)
	first, second := allocated("gpu-2-mig-1g10gb-1"), allocated("gpu-2-mig-1g10gb-2")
	prepareOK(ctx, t, d, first)
	old := *migOf(t, d, first)
	t.Cleanup(d.publisher.Stop)
	if err := d.refreshAndPublish(ctx); err != nil {
		t.Fatal(err)
	}
	unprepareOK(ctx, t, d, first)
	prepareOK(ctx, t, d, second)
	cur := *migOf(t, d, second)
	if cur.GIID != old.GIID || cur.CIID != old.CIID || cur.UUID == old.UUID {
		t.Fatalf("the simulator did not reuse the IDs: first %+v, second %+v", old, cur)
	}
	gpuUUID := d.preparer.Snapshot().Claims[string(second.UID)].Devices[0].GPUUUID
	d.monitor.Observe(ctx, gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuUUID, XID: 48, GIID: cur.GIID, CIID: cur.CIID})
	if got := healthReport(ctx, t, d); got["gpu-2-mig-1g10gb-2"] != kubeletplugin.HealthStatusUnhealthy {
		t.Errorf("health %v: the XID was not blamed on the MIG device that has its IDs", got)
	}
	_, migTaints := d.monitor.Taints()
	if len(migTaints[old.UUID]) != 0 || len(migTaints[cur.UUID]) != 1 {
		t.Errorf("MIG taints %v, want one on %s only", migTaints, cur.UUID)
	}
}

// TestClearances: an admin's clearance annotation clears the sticky
// conditions raised up to its time, once; a time ahead of the node's
// clock by more than the skew allowed clears nothing, then or later, and
// is reported as a Warning Event naming the annotation and value.
func TestClearances(t *testing.T) {
	const (
		node = "gpu.nvidia.com/health-cleared"
		gpu2 = "gpu.nvidia.com/health-cleared-gpu-2"
	)
	at := func(d time.Duration) string {
		return time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC).Add(d).Format(time.RFC3339Nano)
	}
	type step struct {
		// after advances the clock; then a fatal XID is raised on GPU 2
		// if xid, and the node's annotations are set to annotations.
		after       time.Duration
		xid         bool
		annotations map[string]string
		// want is whether GPU 2 is tainted after the step; events how
		// many refusals were reported so far.
		want   bool
		events int
	}
	for name, tc := range map[string]struct {
		steps     []step
		wantEvent string
	}{
		"a clearance clears what was raised before it": {steps: []step{
			{xid: true, want: true},
			{after: time.Second, annotations: map[string]string{node: at(0)}, want: false},
			{after: time.Second, xid: true, annotations: map[string]string{node: at(0)}, want: true},
		}},
		"a GPU's clearance": {steps: []step{
			{xid: true, want: true},
			{after: time.Second, annotations: map[string]string{gpu2: at(time.Second)}, want: false},
		}},
		"an older clearance leaves a later condition": {steps: []step{
			{xid: true, annotations: map[string]string{node: at(-time.Hour)}, want: true},
		}},
		"a time in the future is refused, and stays refused": {steps: []step{
			{xid: true, want: true},
			{annotations: map[string]string{node: at(time.Hour)}, want: true, events: 1},
			{after: 30 * time.Minute, xid: true, annotations: map[string]string{node: at(time.Hour), "other": "x"}, want: true, events: 1},
			{after: 2 * time.Hour, xid: true, annotations: map[string]string{node: at(time.Hour)}, want: true, events: 1},
		}, wantEvent: "HealthClearanceRefused: annotation gpu.nvidia.com/health-cleared=2026-12-01T11:00:00Z: clearance time is in the future: 1h0m0s ahead"},
		"a time within the skew counts as now": {steps: []step{
			{xid: true, want: true},
			{annotations: map[string]string{node: at(30 * time.Second)}, want: false},
			{after: 10 * time.Second, xid: true, annotations: map[string]string{node: at(30 * time.Second)}, want: true},
		}},
		"an unknown GPU is refused": {steps: []step{
			{xid: true, annotations: map[string]string{"gpu.nvidia.com/health-cleared-gpu-99": at(0)}, want: true, events: 1},
		}, wantEvent: "HealthClearanceRefused: annotation gpu.nvidia.com/health-cleared-gpu-99: the node has no GPU"},
		"not a time is refused": {steps: []step{
			{xid: true, annotations: map[string]string{node: "now"}, want: true, events: 1},
		}, wantEvent: "HealthClearanceRefused: annotation gpu.nvidia.com/health-cleared=now: not an RFC 3339 time"},
	} {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			f := newNodeFixture(t)
			d := f.newDriver(ctx)
			inv, _ := d.state.current()
			gpuUUID := inv.GPUs[2].UUID
			for i, s := range tc.steps {
				f.clock.Step(s.after)
				if s.xid {
					d.monitor.Observe(ctx, gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuUUID, XID: 79, GIID: -1, CIID: -1})
				}
				d.applyClearances(ctx, s.annotations)
				gpuTaints, _ := d.monitor.Taints()
				if tainted := len(gpuTaints[gpuUUID]) > 0; tainted != s.want {
					t.Errorf("step %d: tainted %t, want %t", i, tainted, s.want)
				}
				if events := f.events(); len(events) != s.events {
					t.Errorf("step %d: events %q, want %d", i, events, s.events)
				}
			}
			if tc.wantEvent != "" {
				if events := f.events(); len(events) == 0 || !strings.HasPrefix(events[0], tc.wantEvent) {
					t.Errorf("events %q, want one starting %q", events, tc.wantEvent)
				}
			}
		})
	}
}

// TestStartFailsWhenTheHelperDoes: without gRPC servers nothing is
// published, and Wait returns what Start did.
func TestStartFailsWhenTheHelperDoes(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	f := newNodeFixture(t)
	cfg := f.config()
	refused := errors.New("address in use")
	cfg.StartHelper = func(context.Context, kubeletplugin.DRAPlugin, ...kubeletplugin.Option) (draplugin.Helper, error) {
		return nil, refused
	}
	d, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx); !errors.Is(err, refused) {
		t.Fatalf("Start returned %v, want %v", err, refused)
	}
	if err := d.Wait(); !errors.Is(err, refused) {
		t.Errorf("Wait returned %v, want %v", err, refused)
	}
	for _, a := range f.client.Actions() {
		if a.GetResource().Resource == "resourceslices" && a.GetVerb() == "create" {
			t.Errorf("published without serving: %v", a)
		}
	}
}

// TestStartWatchesClearances: once started, the driver acts on the
// clearance annotations written on its Node.
func TestStartWatchesClearances(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f := newNodeFixture(t)
	d := f.newDriver(ctx)
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = d.Wait() }()
	inv, _ := d.state.current()
	gpuUUID := inv.GPUs[2].UUID
	d.monitor.Observe(ctx, gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuUUID, XID: 79, GIID: -1, CIID: -1})
	annotate := func(value string) {
		t.Helper()
		patch := `{"metadata":{"annotations":{"gpu.nvidia.com/health-cleared":"` + value + `"}}}`
		if _, err := f.client.CoreV1().Nodes().Patch(ctx, nodeName, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	eventually := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("never %s", what)
			}
		}
	}

	annotate(f.clock.Now().Add(time.Hour).Format(time.RFC3339))
	eventually("refused the future clearance", func() bool { return len(f.events()) == 1 })
	if gpuTaints, _ := d.monitor.Taints(); len(gpuTaints[gpuUUID]) == 0 {
		t.Error("a future clearance cleared the XID")
	}
	annotate(f.clock.Now().Format(time.RFC3339Nano))
	eventually("cleared the XID", func() bool {
		gpuTaints, _ := d.monitor.Taints()
		return len(gpuTaints[gpuUUID]) == 0
	})
}

// TestModelAfterUnprepareListsNoDestroyedMIG: a model rebuilt after a MIG
// claim's unprepare (a health change does it) offers the freed placement
// again and no pre-created device for the destroyed instance, although
// the inventory last read, before the unprepare, still listed it. Such a
// device would be allocated and never prepared: the e2e test
// TestFatalXIDEvictsPodsOfThatGPUOnly saw a pod wait forever on one.
func TestModelAfterUnprepareListsNoDestroyedMIG(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	f := newNodeFixture(t)
	d := f.newDriver(ctx)
	t.Cleanup(d.publisher.Stop)
	const placement = "gpu-2-mig-1g10gb-1"
	claim := allocated(placement)
	prepareOK(ctx, t, d, claim)
	if err := d.refreshAndPublish(ctx); err != nil {
		t.Fatal(err)
	}
	unprepareOK(ctx, t, d, claim)
	if len(f.liveMIG(d)) != 0 {
		t.Fatalf("MIG devices left after the unprepare: %+v", f.liveMIG(d))
	}
	if err := d.rebuildAndPublish(ctx); err != nil {
		t.Fatal(err)
	}
	_, model := d.state.current()
	for name, dev := range model.Devices {
		if dev.Kind == devicemodel.KindMIGStatic {
			t.Errorf("the model offers %s, a MIG device destroyed by the unprepare", name)
		}
	}
	if _, ok := model.Devices[placement]; !ok {
		t.Errorf("the freed placement %s is not offered", placement)
	}
}
