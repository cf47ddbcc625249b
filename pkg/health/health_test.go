package health

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
)

// fakeSource serves readings set by the test.
type fakeSource struct {
	mu       sync.Mutex
	readings []gpu.Reading
	// err fails every probe while set.
	err error
}

func (f *fakeSource) WatchEvents(ctx context.Context, _ func(gpu.Event)) error {
	<-ctx.Done()
	return nil
}

func (f *fakeSource) Probe(context.Context) ([]gpu.Reading, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	return append([]gpu.Reading(nil), f.readings...), nil
}

// fakeClock is a settable clock.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

const (
	gpuA = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
	gpuB = "GPU-bbbbbbbb-0000-0000-0000-000000000000"
	migA = "MIG-aaaaaaaa-1111-0000-0000-000000000000"
)

type fixture struct {
	m       *Monitor
	src     *fakeSource
	clock   *fakeClock
	changes int
}

func newFixture(t *testing.T, store *Store, bootID string) *fixture {
	t.Helper()
	f := &fixture{src: &fakeSource{}, clock: &fakeClock{t: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)}}
	f.src.readings = []gpu.Reading{healthy(0, gpuA), healthy(1, gpuB)}
	m, err := NewMonitor(context.Background(), Options{
		Policy: DefaultPolicy(), Source: f.src, Store: store, BootID: bootID,
		Now: f.clock.now, OnChange: func() { f.changes++ },
	})
	if err != nil {
		t.Fatal(err)
	}
	m.SetInventory(context.Background(), &gpu.Inventory{GPUs: []gpu.GPU{
		{UUID: gpuA, Index: 0, MIGInstances: []gpu.MIGInstance{{UUID: migA, ParentUUID: gpuA, GIID: 1, CIID: 0}}},
		{UUID: gpuB, Index: 1},
	}}, f.clock.now())
	f.m = m
	return f
}

func healthy(index int, uuid string) gpu.Reading {
	return gpu.Reading{Index: index, UUID: uuid, TemperatureC: 40, SlowdownC: 87, ShutdownC: 92}
}

// set changes GPU A's reading and probes.
func (f *fixture) probeA(change func(r *gpu.Reading)) {
	f.src.mu.Lock()
	r := healthy(0, gpuA)
	change(&r)
	f.src.readings[0] = r
	f.src.mu.Unlock()
	f.m.Probe(context.Background())
}

// taintsOf renders the taints of a GPU (and, with mig, of that MIG
// device) as "key=value:effect" strings.
func (f *fixture) taintsOf(gpuUUID, mig string) string {
	g, m := f.m.Taints()
	ts := g[gpuUUID]
	if mig != "" {
		ts = m[mig]
	}
	var out []string
	for _, t := range ts {
		out = append(out, strings.TrimPrefix(t.Key, names.HealthTaintKeyPrefix)+"="+t.Value+":"+string(t.Effect))
	}
	return strings.Join(out, ",")
}

func TestClassifyXID(t *testing.T) {
	p := DefaultPolicy()
	for xid, want := range map[uint64]Class{
		13: ClassIgnore, 31: ClassIgnore, 43: ClassIgnore, 45: ClassIgnore, 68: ClassIgnore, 109: ClassIgnore,
		48: ClassFatal, 79: ClassFatal, 95: ClassFatal, 119: ClassFatal,
		63: ClassDegraded, 94: ClassDegraded,
		9999: ClassDegraded, // unknown
	} {
		if got := p.ClassifyXID(xid); got != want {
			t.Errorf("XID %d: %s, want %s", xid, got, want)
		}
	}
}

func TestLoadPolicy(t *testing.T) {
	for name, tc := range map[string]struct {
		file    string
		wantErr string
		check   func(t *testing.T, p Policy)
	}{
		"empty file keeps the defaults": {file: "", check: func(t *testing.T, p Policy) {
			if p.ClassifyXID(79) != ClassFatal || p.ClearAfter.Duration != 30*time.Second {
				t.Errorf("defaults changed: %+v", p)
			}
		}},
		"an XID moves to another class": {file: "xids: {Info: [79, 1234]}\nunknownXID: Ignore\n", check: func(t *testing.T, p Policy) {
			if p.ClassifyXID(79) != ClassInfo || p.ClassifyXID(1234) != ClassInfo || p.ClassifyXID(5555) != ClassIgnore || p.ClassifyXID(48) != ClassFatal {
				t.Errorf("79→%s 1234→%s 5555→%s 48→%s", p.ClassifyXID(79), p.ClassifyXID(1234), p.ClassifyXID(5555), p.ClassifyXID(48))
			}
		}},
		"effects and timing": {file: "effects: {Degraded: NoExecute}\nclearAfter: 2m\nthermalMarginC: 3\n", check: func(t *testing.T, p Policy) {
			if e, _ := p.Effect(ClassDegraded); e != resourceapi.DeviceTaintEffectNoExecute || p.ClearAfter.Duration != 2*time.Minute || p.ThermalMarginC != 3 {
				t.Errorf("got %+v", p)
			}
		}},
		"unknown field":   {file: "clearAfterSeconds: 60\n", wantErr: "clearAfterSeconds"},
		"unknown class":   {file: "gpuLost: Deadly\n", wantErr: "gpuLost"},
		"unknown effect":  {file: "effects: {Fatal: Evict}\n", wantErr: "effects[Fatal]"},
		"probe too often": {file: "probeInterval: 1ms\n", wantErr: "probeInterval"},
		"not YAML":        {file: "xids: [", wantErr: "health policy"},
		"an alias bomb": {file: "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n" +
			"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n" +
			"g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n", wantErr: "excessive aliasing"},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "policy.yaml")
			if err := os.WriteFile(path, []byte(tc.file), 0o600); err != nil {
				t.Fatal(err)
			}
			p, err := LoadPolicy(path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, p)
		})
	}
}

func TestEventsBecomeTaints(t *testing.T) {
	for name, tc := range map[string]struct {
		events         []gpu.Event
		wantA, wantMIG string
		wantB          string
		wantStatusA    Status
		wantStatusMIG  Status
		wantNoChange   bool
	}{
		"application XID changes nothing": {
			events: []gpu.Event{{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 13, GIID: -1, CIID: -1}}, wantNoChange: true,
			wantStatusA: Healthy, wantStatusMIG: Healthy,
		},
		"fatal XID on the GPU": {
			events: []gpu.Event{{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 79, GIID: -1, CIID: -1}},
			wantA:  "xid=79:NoExecute", wantStatusA: Unhealthy, wantStatusMIG: Unhealthy,
		},
		"fatal XID on one MIG instance": {
			events:  []gpu.Event{{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 48, GIID: 1, CIID: 0}},
			wantMIG: "xid=48:NoExecute", wantStatusA: Healthy, wantStatusMIG: Unhealthy,
		},
		"XID on a GPU instance only taints its MIG device": {
			events:  []gpu.Event{{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 48, GIID: 1, CIID: 0xFFFFFFFF}},
			wantMIG: "xid=48:NoExecute", wantStatusA: Healthy, wantStatusMIG: Unhealthy,
		},
		"XID on an unknown MIG instance taints the GPU": {
			events: []gpu.Event{{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 48, GIID: 9, CIID: 0}},
			wantA:  "xid=48:NoExecute", wantStatusA: Unhealthy, wantStatusMIG: Unhealthy,
		},
		"worse XID replaces a milder one": {
			events: []gpu.Event{
				{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 94, GIID: -1, CIID: -1},
				{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 95, GIID: -1, CIID: -1},
				{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 63, GIID: -1, CIID: -1},
			},
			wantA: "xid=95:NoExecute", wantStatusA: Unhealthy, wantStatusMIG: Unhealthy,
		},
		"degraded XID keeps pods": {
			events: []gpu.Event{{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 94, GIID: -1, CIID: -1}},
			wantA:  "xid=94:NoSchedule", wantStatusA: Healthy, wantStatusMIG: Healthy,
		},
		"double-bit ECC": {
			events: []gpu.Event{{Kind: gpu.EventDoubleBitECC, GPUUUID: gpuA, GIID: -1, CIID: -1}},
			wantA:  "ecc=double-bit:NoExecute", wantStatusA: Unhealthy, wantStatusMIG: Unhealthy,
		},
		"MIG key already on the GPU is not repeated": {
			events: []gpu.Event{
				{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 79, GIID: -1, CIID: -1},
				{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 48, GIID: 1, CIID: 0},
			},
			wantA: "xid=79:NoExecute", wantStatusA: Unhealthy, wantStatusMIG: Unhealthy,
		},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, nil, "boot")
			for _, e := range tc.events {
				f.m.Observe(context.Background(), e)
			}
			if got := f.taintsOf(gpuA, ""); got != tc.wantA {
				t.Errorf("GPU A taints %q, want %q", got, tc.wantA)
			}
			if got := f.taintsOf(gpuA, migA); got != tc.wantMIG {
				t.Errorf("MIG taints %q, want %q", got, tc.wantMIG)
			}
			if got := f.taintsOf(gpuB, ""); got != "" {
				t.Errorf("GPU B taints %q, want none", got)
			}
			if s, _ := f.m.DeviceHealth(gpuA, ""); s != tc.wantStatusA {
				t.Errorf("GPU A health %s, want %s", s, tc.wantStatusA)
			}
			if s, _ := f.m.DeviceHealth(gpuA, migA); s != tc.wantStatusMIG {
				t.Errorf("MIG health %s, want %s", s, tc.wantStatusMIG)
			}
			if s, _ := f.m.DeviceHealth(gpuB, ""); s != Healthy {
				t.Errorf("GPU B health %s", s)
			}
			if tc.wantNoChange != (f.changes == 0) {
				t.Errorf("%d change notifications", f.changes)
			}
		})
	}
}

// TestProbeConditions walks GPU A through readings over time and checks
// the taint after each: thermal hysteresis, the hold time before a
// transient taint goes, sticky conditions and resets.
func TestProbeConditions(t *testing.T) {
	hot := func(c int) func(*gpu.Reading) { return func(r *gpu.Reading) { r.TemperatureC = c } }
	ok := func(*gpu.Reading) {}
	type step struct {
		after   time.Duration
		reading func(*gpu.Reading)
		event   *gpu.Event
		want    string
	}
	for name, steps := range map[string][]step{
		"thermal slowdown, hysteresis, hold": {
			{0, hot(86), nil, ""},
			{time.Second, hot(87), nil, "thermal=slowdown:NoSchedule"},
			{time.Second, hot(83), nil, "thermal=slowdown:NoSchedule"}, // within hysteresis
			{time.Second, hot(81), nil, "thermal=slowdown:NoSchedule"}, // cool, hold starts
			{20 * time.Second, hot(81), nil, "thermal=slowdown:NoSchedule"},
			{10 * time.Second, hot(81), nil, ""}, // 30 s cool: cleared
		},
		"flapping does not clear": {
			{0, hot(90), nil, "thermal=slowdown:NoSchedule"},
			{time.Second, hot(70), nil, "thermal=slowdown:NoSchedule"},
			{25 * time.Second, hot(90), nil, "thermal=slowdown:NoSchedule"},
			{time.Second, hot(70), nil, "thermal=slowdown:NoSchedule"},
			{25 * time.Second, hot(70), nil, "thermal=slowdown:NoSchedule"},
			{10 * time.Second, hot(70), nil, ""},
		},
		"thermal shutdown is fatal": {
			{0, hot(95), nil, "thermal=shutdown:NoExecute"},
			{time.Second, hot(88), nil, "thermal=shutdown:NoExecute"}, // milder cause does not downgrade
		},
		"GPU lost and back is a reset": {
			{0, ok, &gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 79, GIID: -1, CIID: -1}, "xid=79:NoExecute"},
			{time.Second, func(r *gpu.Reading) { *r = gpu.Reading{Index: 0, Lost: true} }, nil, "gpu-lost=fell-off-bus:NoExecute,xid=79:NoExecute"},
			{time.Second, ok, nil, "gpu-lost=fell-off-bus:NoExecute"}, // back: reset clears the XID
			{31 * time.Second, ok, nil, ""},
		},
		// NVML zeroes the volatile counters whenever the driver loads,
		// which without persistence mode is whenever a compute app starts
		// on an idle GPU: a tenant's job, not a reset. A fall of the
		// counter is no proof that the GPU was reset, so it clears
		// nothing; a reset, a reboot or an admin's clearance does.
		"a volatile ECC counter that falls clears no sticky condition": {
			{0, func(r *gpu.Reading) { r.VolatileUncorrectedECC = 1 }, &gpu.Event{Kind: gpu.EventDoubleBitECC, GPUUUID: gpuA, GIID: -1, CIID: -1}, "ecc=double-bit:NoExecute"},
			{time.Second, func(r *gpu.Reading) { r.VolatileUncorrectedECC = 1 }, &gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 79, GIID: -1, CIID: -1}, "ecc=double-bit:NoExecute,xid=79:NoExecute"},
			{time.Minute, ok, nil, "ecc=double-bit:NoExecute,xid=79:NoExecute"},
			{time.Hour, ok, nil, "ecc=double-bit:NoExecute,xid=79:NoExecute"},
		},
		"pending repair is transient, a failed remap sticky": {
			{0, func(r *gpu.Reading) { r.RepairPending = true }, nil, "ecc=repair-pending:NoSchedule"},
			{time.Second, func(r *gpu.Reading) { r.RemapFailure = true }, nil, "ecc=remap-failure:NoExecute"},
			{time.Hour, ok, nil, "ecc=remap-failure:NoExecute"},
		},
		"unreadable GPU is unmonitored": {
			{0, func(r *gpu.Reading) { r.Err = errors.New("NVML: Unknown Error") }, nil, "unmonitored=not-readable:None"},
			{time.Second, ok, nil, "unmonitored=not-readable:None"},
			{30 * time.Second, ok, nil, ""},
		},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, nil, "boot")
			for i, s := range steps {
				f.clock.advance(s.after)
				if s.event != nil {
					f.m.Observe(context.Background(), *s.event)
				}
				f.probeA(s.reading)
				if got := f.taintsOf(gpuA, ""); got != s.want {
					t.Fatalf("step %d: taints %q, want %q", i, got, s.want)
				}
			}
		})
	}
}

func TestUnmonitoredWhileEventsCannotBeWatched(t *testing.T) {
	f := newFixture(t, nil, "boot")
	f.m.setEventsDown(true)
	f.probeA(func(*gpu.Reading) {})
	if got := f.taintsOf(gpuB, ""); got != "unmonitored=events-not-watched:None" {
		t.Errorf("GPU B taints %q", got)
	}
	if s, msg := f.m.DeviceHealth(gpuB, ""); s != Unknown {
		t.Errorf("GPU B health %s (%s), want Unknown", s, msg)
	}
}

// TestUnmonitoredWhileNoGPUCanBeProbed: a probe that reads no GPU at all
// (NVML failing, as while the host driver is replaced) makes every known
// GPU unmonitored, not-readable, until probes read them again for
// ClearAfter; sticky conditions stay as they are.
func TestUnmonitoredWhileNoGPUCanBeProbed(t *testing.T) {
	for _, tc := range []struct {
		name     string
		xid      bool
		wantA    string // GPU A's taints while no probe works
		wantBack string // and once probes work again for ClearAfter
	}{
		{name: "healthy GPUs", wantA: "unmonitored=not-readable:None"},
		{name: "a fatal XID stays", xid: true, wantA: "unmonitored=not-readable:None,xid=79:NoExecute", wantBack: "xid=79:NoExecute"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, nil, "boot")
			if tc.xid {
				f.m.Observe(ctx, gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 79, GIID: -1, CIID: -1})
			}
			f.src.err = errors.New("count GPUs: NVML: ERROR_DRIVER_NOT_LOADED")
			f.m.Probe(ctx)
			if got := f.taintsOf(gpuA, ""); got != tc.wantA {
				t.Errorf("GPU A taints %q, want %q", got, tc.wantA)
			}
			if got := f.taintsOf(gpuB, ""); got != "unmonitored=not-readable:None" {
				t.Errorf("GPU B taints %q", got)
			}
			if s, msg := f.m.DeviceHealth(gpuB, ""); s != Unknown {
				t.Errorf("GPU B health %s (%s), want Unknown", s, msg)
			}
			f.src.err = nil
			f.m.Probe(ctx)
			f.clock.advance(f.m.policy.ClearAfter.Duration)
			f.m.Probe(ctx)
			if got := f.taintsOf(gpuA, ""); got != tc.wantBack {
				t.Errorf("GPU A taints once probes work %q, want %q", got, tc.wantBack)
			}
		})
	}
}

func TestAdminClear(t *testing.T) {
	f := newFixture(t, nil, "boot")
	xid := gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 79, GIID: -1, CIID: -1}
	f.m.Observe(context.Background(), xid)
	f.m.Observe(context.Background(), gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuB, XID: 79, GIID: -1, CIID: -1})
	raised := f.clock.t
	f.m.Clear(context.Background(), gpuA, raised.Add(-time.Second))
	if f.taintsOf(gpuA, "") == "" {
		t.Error("a clearance older than the condition cleared it")
	}
	f.m.Clear(context.Background(), gpuA, raised)
	if got := f.taintsOf(gpuA, ""); got != "" {
		t.Errorf("GPU A still %q after its clearance", got)
	}
	if f.taintsOf(gpuB, "") == "" {
		t.Error("clearing GPU A cleared GPU B")
	}
	f.m.Clear(context.Background(), "", raised)
	if got := f.taintsOf(gpuB, ""); got != "" {
		t.Errorf("GPU B still %q after a node-wide clearance", got)
	}
}

func TestStickyConditionsSurviveARestartButNotAReboot(t *testing.T) {
	path := filepath.Join(t.TempDir(), StoreFileName)
	f := newFixture(t, NewStore(path), "boot-1")
	f.m.Observe(context.Background(), gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 48, GIID: 1, CIID: 0})
	f.probeA(func(r *gpu.Reading) { r.TemperatureC = 90; r.VolatileUncorrectedECC = 2 })

	restarted := newFixture(t, NewStore(path), "boot-1")
	if got := restarted.taintsOf(gpuA, migA); got != "xid=48:NoExecute" {
		t.Errorf("after a restart the MIG device has %q", got)
	}
	if got := restarted.taintsOf(gpuA, ""); got != "" {
		t.Errorf("a transient condition was persisted: %q", got)
	}
	// A lower volatile counter after the restart (the driver reloaded
	// while the plugin was down) is no proof of a reset either.
	restarted.m.Observe(context.Background(), gpu.Event{Kind: gpu.EventDoubleBitECC, GPUUUID: gpuA, GIID: -1, CIID: -1})
	restarted.probeA(func(r *gpu.Reading) { r.VolatileUncorrectedECC = 0 })
	if got := restarted.taintsOf(gpuA, ""); got != "ecc=double-bit:NoExecute" {
		t.Errorf("after the volatile counter fell GPU A has %q, want the double-bit ECC taint kept", got)
	}

	f = newFixture(t, NewStore(path), "boot-1")
	f.m.Observe(context.Background(), gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuB, XID: 79, GIID: -1, CIID: -1})
	rebooted := newFixture(t, NewStore(path), "boot-2")
	if got := rebooted.taintsOf(gpuB, ""); got != "" {
		t.Errorf("after a reboot GPU B has %q", got)
	}
}

func TestCorruptStoreIsSetAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), StoreFileName)
	if err := os.WriteFile(path, []byte(`{"bootID":`), 0o600); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, NewStore(path), "boot")
	if len(f.m.Conditions()) != 0 {
		t.Error("conditions from a corrupt file")
	}
	if _, err := os.Stat(path + ".corrupt"); err != nil {
		t.Errorf("not set aside: %v", err)
	}
}

// TestTaintsReachEveryDevice feeds the monitor's taints to the device
// model of a simulated DGX H100 with one live MIG device: a GPU-level
// fault taints the GPU and each of its MIG devices and nothing else; a
// fault on the MIG instance taints only the device that stands for it.
// migNode is a simulated DGX H100 whose GPU 2 has one live MIG device,
// made by the plugin, with a health monitor of it.
type migNode struct {
	m    *Monitor
	inv  *gpu.Inventory
	inst gpu.MIGInstance
	// migDevice is the live MIG device's name in the model.
	migDevice string
}

func newMIGNode(ctx context.Context, t *testing.T) *migNode {
	t.Helper()
	lib, err := sim.Open("dgxh100", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := lib.SetMIGMode(2, true); err != nil {
		t.Fatal(err)
	}
	node, err := nvmlnode.NewNode(lib)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := node.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g2 := inv.GPUs[2]
	p := g2.MIGProfiles[0]
	inst, err := node.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g2.UUID, ProfileID: p.ID, Placement: p.Placements[0]})
	if err != nil {
		t.Fatal(err)
	}
	if inv, err = node.Inventory(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := NewMonitor(ctx, Options{Policy: DefaultPolicy(), Source: node})
	if err != nil {
		t.Fatal(err)
	}
	m.SetInventory(ctx, inv, time.Now())
	return &migNode{m: m, inv: inv, inst: inst, migDevice: names.MIGDevice(g2.Minor, p.Name, p.Placements[0].Start)}
}

// deviceTaints builds the model with the monitor's taints and returns
// each device's taints as "key=value:effect,...".
func (n *migNode) deviceTaints(t *testing.T) map[string]string {
	t.Helper()
	gpuTaints, migTaints := n.m.Taints()
	model, err := devicemodel.Build(devicemodel.Input{
		Inventory: n.inv, GPUTaints: gpuTaints, MIGTaints: migTaints,
		Managed: func(i gpu.MIGInstance) bool { return i.UUID == n.inst.UUID },
	})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, s := range model.Slices {
		for _, d := range s.Devices {
			var got []string
			for _, t := range d.Taints {
				got = append(got, t.Key+"="+t.Value+":"+string(t.Effect))
			}
			out[d.Name] = strings.Join(got, ",")
		}
	}
	return out
}

func TestTaintsReachEveryDevice(t *testing.T) {
	ctx := context.Background()
	n := newMIGNode(ctx, t)
	g2, g5 := n.inv.GPUs[2], n.inv.GPUs[5]
	n.m.Observe(ctx, gpu.Event{Kind: gpu.EventXID, GPUUUID: g5.UUID, XID: 79, GIID: -1, CIID: -1})
	n.m.Observe(ctx, gpu.Event{Kind: gpu.EventXID, GPUUUID: g2.UUID, XID: 48, GIID: n.inst.GIID, CIID: n.inst.CIID})
	gpu5 := names.GPUDevice(g5.Minor)
	tainted := 0
	for name, got := range n.deviceTaints(t) {
		want := ""
		switch {
		case name == gpu5 || strings.HasPrefix(name, gpu5+"-mig-"):
			want = "gpu.nvidia.com/xid=79:NoExecute"
		case name == n.migDevice:
			want = "gpu.nvidia.com/xid=48:NoExecute"
		}
		if got != want {
			t.Errorf("device %s: taints %q, want %q", name, got, want)
		}
		if got != "" {
			tainted++
		}
	}
	// GPU 5 and its 25 placements, and the one MIG device of GPU 2.
	if tainted != 27 {
		t.Errorf("%d tainted devices, want 27", tainted)
	}
}

// TestMIGDeviceKeepsItsMoreSeriousTaint: a MIG device whose GPU and
// instance both have a condition of one key has one taint of that key, of
// the more serious: a Fatal XID of the instance is not hidden by a
// Degraded XID of its GPU, and the other devices of the GPU have the GPU's.
func TestMIGDeviceKeepsItsMoreSeriousTaint(t *testing.T) {
	for _, tc := range []struct {
		name             string
		gpuXID, migXID   uint64
		wantMIG, wantGPU string
	}{
		{name: "instance's more serious", gpuXID: 63, migXID: 48,
			wantMIG: "gpu.nvidia.com/xid=48:NoExecute", wantGPU: "gpu.nvidia.com/xid=63:NoSchedule"},
		{name: "GPU's more serious", gpuXID: 79, migXID: 63,
			wantMIG: "gpu.nvidia.com/xid=79:NoExecute", wantGPU: "gpu.nvidia.com/xid=79:NoExecute"},
		{name: "as serious", gpuXID: 79, migXID: 48,
			wantMIG: "gpu.nvidia.com/xid=79:NoExecute", wantGPU: "gpu.nvidia.com/xid=79:NoExecute"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			n := newMIGNode(ctx, t)
			g2 := n.inv.GPUs[2]
			n.m.Observe(ctx, gpu.Event{Kind: gpu.EventXID, GPUUUID: g2.UUID, XID: tc.migXID, GIID: n.inst.GIID, CIID: n.inst.CIID})
			n.m.Observe(ctx, gpu.Event{Kind: gpu.EventXID, GPUUUID: g2.UUID, XID: tc.gpuXID, GIID: -1, CIID: -1})
			taints := n.deviceTaints(t)
			if got := taints[n.migDevice]; got != tc.wantMIG {
				t.Errorf("MIG device %s: taints %q, want %q", n.migDevice, got, tc.wantMIG)
			}
			for name, got := range taints {
				if (name == names.GPUDevice(g2.Minor) || strings.HasPrefix(name, names.GPUDevice(g2.Minor)+"-mig-")) && name != n.migDevice && got != tc.wantGPU {
					t.Errorf("device %s: taints %q, want %q", name, got, tc.wantGPU)
				}
			}
		})
	}
}

// TestMIGCreatedSinceTheInventory: an XID naming an instance the last
// inventory did not have is attributed through MIGCreated.
func TestMIGCreatedSinceTheInventory(t *testing.T) {
	const newMIG = "MIG-cccccccc-0000-0000-0000-000000000000"
	ctx := context.Background()
	m, err := NewMonitor(ctx, Options{Policy: DefaultPolicy(), Source: &fakeSource{}})
	if err != nil {
		t.Fatal(err)
	}
	m.SetInventory(ctx, &gpu.Inventory{GPUs: []gpu.GPU{{UUID: gpuB, Index: 1}}}, time.Now())
	m.MIGCreated(gpu.MIGInstance{UUID: newMIG, ParentUUID: gpuB, GIID: 3, CIID: 0})
	m.Observe(ctx, gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuB, XID: 48, GIID: 3, CIID: 0})
	gpuTaints, migTaints := m.Taints()
	if len(gpuTaints[gpuB]) != 0 || len(migTaints[newMIG]) != 1 {
		t.Errorf("GPU taints %v, MIG taints %v", gpuTaints, migTaints)
	}
}

// TestMIGIDsNameTheCurrentInstance: NVML hands a destroyed instance's GI
// and CI IDs to the next one. An XID naming those IDs is blamed on the
// instance that has them now, whichever way the monitor learnt of the
// change, and an inventory read before a change does not undo it.
func TestMIGIDsNameTheCurrentInstance(t *testing.T) {
	const migC = "MIG-cccccccc-0000-0000-0000-000000000000"
	ctx := context.Background()
	xid := gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 48, GIID: 1, CIID: 0}
	instA := gpu.MIGInstance{UUID: migA, ParentUUID: gpuA, GIID: 1, CIID: 0}
	instC := gpu.MIGInstance{UUID: migC, ParentUUID: gpuA, GIID: 1, CIID: 0}
	refA := gpu.MIGRef{ParentUUID: gpuA, GIID: 1, CIID: 0, UUID: migA}
	inventory := func(migs ...gpu.MIGInstance) *gpu.Inventory {
		return &gpu.Inventory{GPUs: []gpu.GPU{{UUID: gpuA, Index: 0, MIGInstances: migs}, {UUID: gpuB, Index: 1}}}
	}
	for name, tc := range map[string]struct {
		// steps run on the fixture, whose inventory has migA at GI 1.
		steps func(f *fixture, readBefore time.Time)
		// blamed is the MIG device the XID taints; "" for the whole GPU.
		blamed string
	}{
		"a new inventory without the instance": {
			steps: func(f *fixture, _ time.Time) { f.m.SetInventory(ctx, inventory(), f.clock.now()) },
		},
		"a new inventory with another instance at its IDs": {
			steps:  func(f *fixture, _ time.Time) { f.m.SetInventory(ctx, inventory(instC), f.clock.now()) },
			blamed: migC,
		},
		"destroyed by the plugin": {
			steps: func(f *fixture, _ time.Time) { f.m.MIGDestroyed(ctx, refA) },
		},
		"destroyed, and its IDs reused by the plugin": {
			steps: func(f *fixture, _ time.Time) {
				f.m.MIGDestroyed(ctx, refA)
				f.m.MIGCreated(instC)
			},
			blamed: migC,
		},
		"reused, then an inventory read before the change": {
			steps: func(f *fixture, readBefore time.Time) {
				f.m.MIGDestroyed(ctx, refA)
				f.m.MIGCreated(instC)
				f.m.SetInventory(ctx, inventory(instA), readBefore)
			},
			blamed: migC,
		},
		"destroyed, then an inventory read before the destroy": {
			steps: func(f *fixture, readBefore time.Time) {
				f.m.MIGDestroyed(ctx, refA)
				f.m.SetInventory(ctx, inventory(instA), readBefore)
			},
		},
		"a destroy of another UUID at the IDs leaves the instance": {
			steps: func(f *fixture, _ time.Time) {
				f.m.MIGDestroyed(ctx, gpu.MIGRef{ParentUUID: gpuA, GIID: 1, CIID: 0, UUID: migC})
			},
			blamed: migA,
		},
		"a late destroy of a device gone before does not undo a creation": {
			steps: func(f *fixture, readBefore time.Time) {
				f.m.MIGCreated(instC)
				f.m.MIGDestroyed(ctx, refA)
				f.m.SetInventory(ctx, inventory(instA), readBefore)
			},
			blamed: migC,
		},
		"a later inventory overrides an older change": {
			steps: func(f *fixture, _ time.Time) {
				f.m.MIGCreated(instC)
				f.clock.advance(time.Second)
				f.m.SetInventory(ctx, inventory(instA), f.clock.now())
			},
			blamed: migA,
		},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, nil, "boot")
			readBefore := f.clock.now()
			f.clock.advance(time.Second)
			tc.steps(f, readBefore)
			f.m.Observe(ctx, xid)
			wantGPU, wantMIG := "", "xid=48:NoExecute"
			if tc.blamed == "" {
				wantGPU, wantMIG = wantMIG, ""
			}
			if got := f.taintsOf(gpuA, ""); got != wantGPU {
				t.Errorf("GPU A taints %q, want %q", got, wantGPU)
			}
			for _, mig := range []string{migA, migC} {
				want := ""
				if mig == tc.blamed {
					want = wantMIG
				}
				if got := f.taintsOf(gpuA, mig); got != want {
					t.Errorf("MIG %s taints %q, want %q", mig, got, want)
				}
			}
		})
	}
}

// TestConditionsOfGoneMIGDevicesAreDropped: a sticky condition of a MIG
// device that was destroyed, while the plugin ran or while it was down,
// is not kept (nor persisted) forever.
func TestConditionsOfGoneMIGDevicesAreDropped(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), StoreFileName)
	xid := gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 48, GIID: 1, CIID: 0}

	f := newFixture(t, NewStore(path), "boot")
	f.m.Observe(ctx, xid)
	f.m.MIGDestroyed(ctx, gpu.MIGRef{ParentUUID: gpuA, GIID: 1, CIID: 0, UUID: migA})
	if got := f.m.Conditions(); len(got) != 0 {
		t.Errorf("conditions after the destroy: %v", got)
	}
	if restarted := newFixture(t, NewStore(path), "boot"); len(restarted.m.Conditions()) != 0 {
		t.Errorf("persisted after the destroy: %v", restarted.m.Conditions())
	}

	f = newFixture(t, NewStore(path), "boot")
	f.m.Observe(ctx, xid)
	// Restarted after the instance was destroyed: the first inventory
	// lacks it.
	restarted, err := NewMonitor(ctx, Options{Policy: DefaultPolicy(), Source: &fakeSource{}, Store: NewStore(path), BootID: "boot"})
	if err != nil {
		t.Fatal(err)
	}
	if len(restarted.Conditions()) != 1 {
		t.Fatalf("conditions restored: %v", restarted.Conditions())
	}
	// Fallen off the bus, the GPU lists no MIG devices: they are unknown,
	// not gone.
	restarted.SetInventory(ctx, &gpu.Inventory{GPUs: []gpu.GPU{{UUID: gpuA, Index: 0, Lost: true}}}, time.Now())
	if got := restarted.Conditions(); len(got) != 1 {
		t.Errorf("conditions of a lost GPU's MIG device: %v", got)
	}
	restarted.SetInventory(ctx, &gpu.Inventory{GPUs: []gpu.GPU{{UUID: gpuA, Index: 0}}}, time.Now())
	if got := restarted.Conditions(); len(got) != 0 {
		t.Errorf("conditions of a MIG device not in the inventory: %v", got)
	}
}

// TestRepeatedEventIsNotRewritten: an event already recorded changes no
// file, so a flood of XIDs does not become a flood of fsyncs.
func TestRepeatedEventIsNotRewritten(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), StoreFileName)
	f := newFixture(t, NewStore(path), "boot")
	xid := gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 79, GIID: -1, CIID: -1}
	f.m.Observe(ctx, xid)
	if err := os.Remove(path); err != nil {
		t.Fatalf("the first event was not saved: %v", err)
	}
	f.clock.advance(time.Second)
	f.m.Observe(ctx, xid)
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the repeated event rewrote the health state (%v)", err)
	}
	if f.changes != 1 {
		t.Errorf("%d change notifications, want 1", f.changes)
	}
}

// TestUnfitFilesAreRefused: the policy file and the health state are read
// only as regular files of at most 1 MiB, so that neither a FIFO (which
// would block start-up) nor a device such as /dev/zero (which would grow
// the read until the plugin is killed) nor a huge file is read; the
// state, which the plugin writes itself, is not read through a symlink.
// An unfit state file is set aside like a corrupt one.
func TestUnfitFilesAreRefused(t *testing.T) {
	valid := []byte(`{"bootID":"boot","conditions":[{"gpu":"` + gpuA + `","key":"xid","value":"79","class":"Fatal","sticky":true,"since":"2026-11-24T11:00:00Z"}]}`)
	for name, tc := range map[string]struct {
		make func(t *testing.T, path string)
		// policyOK: the policy reader accepts it (a ConfigMap's files
		// are symlinks).
		policyOK bool
	}{
		"larger than 1 MiB": {make: func(t *testing.T, path string) {
			// An empty policy and an empty state, padded.
			writeFile(t, path, []byte("{"+strings.Repeat(" ", 1<<20)+"}"))
		}},
		"a FIFO": {make: func(t *testing.T, path string) {
			if err := syscall.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		"a symlink to /dev/zero": {make: func(t *testing.T, path string) {
			if err := os.Symlink("/dev/zero", path); err != nil {
				t.Fatal(err)
			}
		}},
		"a directory": {make: func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
		"a symlink to a valid file": {policyOK: true, make: func(t *testing.T, path string) {
			target := filepath.Join(t.TempDir(), "target")
			writeFile(t, target, valid)
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), StoreFileName)
			tc.make(t, path)
			_, err := LoadPolicy(path)
			if tc.policyOK {
				// The file is a valid state, not a policy: refused
				// for its content, not for what it is.
				if err == nil || !strings.Contains(err.Error(), "unknown field") {
					t.Errorf("policy: %v, want an unknown field", err)
				}
			} else if !errors.Is(err, hostfs.ErrUnfit) {
				t.Errorf("policy: %v, want a refusal", err)
			}
			saved, err := NewStore(path).Load()
			if !errors.Is(err, ErrCorrupt) || saved == nil || len(saved.Conditions) != 0 {
				t.Errorf("state: %v, %+v, want it set aside", err, saved)
			}
			if _, err := os.Lstat(path + ".corrupt"); err != nil {
				t.Errorf("not set aside: %v", err)
			}
		})
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestSavedConditionsAreChecked: a saved condition the monitor could not
// have raised is dropped, not published as a taint of unknown effect.
func TestSavedConditionsAreChecked(t *testing.T) {
	path := filepath.Join(t.TempDir(), StoreFileName)
	cond := func(gpu, key, class string) string {
		return `{"gpu":"` + gpu + `","key":"` + key + `","value":"79","class":"` + class + `","sticky":true,"since":"2026-11-24T11:00:00Z"}`
	}
	writeFile(t, path, []byte(`{"bootID":"boot","conditions":[`+strings.Join([]string{
		cond(gpuA, "xid", "Fatal"), cond(gpuB, "xid", "Deadly"), cond(gpuB, "xid", "Ignore"), cond("", "xid", "Fatal"), cond(gpuB, "fan", "Fatal"),
	}, ",")+`]}`))
	f := newFixture(t, NewStore(path), "boot")
	if got := f.m.Conditions(); len(got) != 1 || got[0].GPU != gpuA {
		t.Errorf("conditions %+v, want GPU A's only", got)
	}
}

// TestStickyConditionStampedInTheFuture: a condition raised while the
// clock was ahead, found after it was set back, is cleared by an admin's
// clearance and by a reset like any other.
func TestStickyConditionStampedInTheFuture(t *testing.T) {
	for name, clear := range map[string]func(f *fixture){
		"admin clearance": func(f *fixture) { f.m.Clear(context.Background(), gpuA, f.clock.now()) },
		"GPU reset": func(f *fixture) {
			f.probeA(func(r *gpu.Reading) { *r = gpu.Reading{Index: 0, Lost: true} })
			f.probeA(func(*gpu.Reading) {}) // back on the bus: reset
			f.clock.advance(time.Minute)    // the transient gpu-lost goes
			f.probeA(func(*gpu.Reading) {})
		},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, nil, "boot")
			f.clock.advance(365 * 24 * time.Hour)
			f.m.Observe(context.Background(), gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 79, GIID: -1, CIID: -1})
			f.clock.advance(-365 * 24 * time.Hour)
			clear(f)
			if got := f.taintsOf(gpuA, ""); got != "" {
				t.Errorf("GPU A still %q", got)
			}
		})
	}
}

// TestGPUInstanceWithSeveralComputeInstances: an event attributed to a GPU
// instance only cannot name one of its several compute instances' MIG
// devices, so it taints the GPU.
func TestGPUInstanceWithSeveralComputeInstances(t *testing.T) {
	const migC = "MIG-cccccccc-0000-0000-0000-000000000000"
	ctx := context.Background()
	f := newFixture(t, nil, "boot")
	f.m.SetInventory(ctx, &gpu.Inventory{GPUs: []gpu.GPU{{UUID: gpuA, Index: 0, MIGInstances: []gpu.MIGInstance{
		{UUID: migA, ParentUUID: gpuA, GIID: 1, CIID: 0}, {UUID: migC, ParentUUID: gpuA, GIID: 1, CIID: 1},
	}}}}, f.clock.now())
	f.m.Observe(ctx, gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 48, GIID: 1, CIID: 0xFFFFFFFF})
	if got := f.taintsOf(gpuA, ""); got != "xid=48:NoExecute" {
		t.Errorf("GPU A taints %q; MIG taints %q and %q", got, f.taintsOf(gpuA, migA), f.taintsOf(gpuA, migC))
	}
}

// TestFailedSaveIsRetried: a save of the sticky conditions that fails
// (here the data directory is missing, as on a full or read-only disk) is
// tried again at the next probe, even if nothing changed since, so that a
// restart once the disk is back does not forget a fatal XID.
func TestFailedSaveIsRetried(t *testing.T) {
	for _, tc := range []struct {
		name  string
		event gpu.Event
		want  string
	}{
		{name: "fatal XID", event: gpu.Event{Kind: gpu.EventXID, GPUUUID: gpuA, XID: 79, GIID: -1, CIID: -1}, want: "xid=79:NoExecute"},
		{name: "double-bit ECC", event: gpu.Event{Kind: gpu.EventDoubleBitECC, GPUUUID: gpuA, GIID: -1, CIID: -1}, want: "ecc=double-bit:NoExecute"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := filepath.Join(t.TempDir(), "plugin")
			path := filepath.Join(dir, StoreFileName)
			f := newFixture(t, NewStore(path), "boot")
			f.m.Observe(ctx, tc.event)
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the save was meant to fail: %v", err)
			}
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			f.m.Probe(ctx)
			restarted := newFixture(t, NewStore(path), "boot")
			if got := restarted.taintsOf(gpuA, ""); got != tc.want {
				t.Errorf("after the disk came back and a restart GPU A has %q, want %q", got, tc.want)
			}
		})
	}
}
