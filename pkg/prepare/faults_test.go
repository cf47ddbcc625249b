package prepare

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/cdi"
	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
)

// faultyDisk writes checkpoints with hostfs.WriteFileAtomic, except
// the writes it is told to fail, which fail as a full disk does.
type faultyDisk struct {
	mu     sync.Mutex
	writes int  // writes attempted so far
	failAt int  // the write (1-based) that fails; 0: none
	full   bool // every write fails
}

func (d *faultyDisk) write(path string, data []byte) error {
	d.mu.Lock()
	d.writes++
	fail := d.full || d.writes == d.failAt
	d.mu.Unlock()
	if fail {
		return fmt.Errorf("write %s: %w", path, syscall.ENOSPC)
	}
	return hostfs.WriteFileAtomic(path, data)
}

func (d *faultyDisk) setFull(full bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.full = full
}

// restart is the plugin started again on the fixture's node: the
// checkpoint loaded, reconciled, and a new Preparer serving from it.
func (f *fixture) restart(ctx context.Context) ReconcileReport {
	f.t.Helper()
	cp, err := f.store.Load()
	var lost *checkpoint.CorruptError
	if err != nil && !errors.As(err, &lost) {
		f.t.Fatal(err)
	}
	out, rep, err := f.reconcile(ctx, cp, f.inventory(), lost)
	if err != nil {
		f.t.Fatalf("reconcile: %v", err)
	}
	if err := f.store.Save(out); err != nil {
		f.t.Fatal(err)
	}
	f.rebuildModel(out)
	f.p = New(f.node, f.devices, f.cdi, f.store, out, f.p.opts)
	return rep
}

// TestFailedWriteIsAnError: while the checkpoint cannot be written,
// neither prepare nor unprepare succeeds, the first attempt or a retry;
// a claim whose first write failed holds nothing; a claim whose removal
// was not written stays prepared in memory and on disk until it is. Once
// the disk works again, the retries finish and nothing is left.
func TestFailedWriteIsAnError(t *testing.T) {
	for _, device := range []string{"gpu-3", "gpu-2-mig-1g10gb-3"} {
		t.Run(device, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, "dgxh100")
			f.p.opts.HeldWait = -1
			claim := allocated(device)
			uid := string(claim.UID)

			// Prepare on a full disk: an error, and the device stays free
			// for another claim.
			f.disk.setFull(true)
			if _, err := f.p.Prepare(ctx, claim); !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("prepare on a full disk: %v, want ENOSPC", err)
			}
			f.disk.setFull(false)
			other := allocated(device)
			if _, err := f.p.Prepare(ctx, other); err != nil {
				t.Fatalf("another claim on the device after the failed prepare: %v", err)
			}
			if err := f.p.Unprepare(ctx, ref(other)); err != nil {
				t.Fatal(err)
			}
			// The kubelet's retry on a disk still full fails too.
			f.disk.setFull(true)
			if _, err := f.p.Prepare(ctx, claim); !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("retry on a full disk: %v, want ENOSPC", err)
			}
			if c := f.p.Snapshot().Claims[uid]; c != nil && c.State == checkpoint.PrepareCompleted {
				t.Fatalf("a claim never written is prepared in memory: %+v", c)
			}
			f.disk.setFull(false)
			if err := f.p.Unprepare(ctx, ref(claim)); err != nil {
				t.Fatal(err)
			}
			f.checkNothingLeft(ctx, "after the failed prepare")

			// Unprepare on a full disk.
			if _, err := f.p.Prepare(ctx, claim); err != nil {
				t.Fatal(err)
			}
			f.disk.setFull(true)
			for attempt := 1; attempt <= 2; attempt++ {
				if err := f.p.Unprepare(ctx, ref(claim)); !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("unprepare %d on a full disk: %v, want ENOSPC", attempt, err)
				}
				if f.p.Snapshot().Claims[uid] == nil || f.saved().Claims[uid] == nil {
					t.Fatalf("unprepare %d: the claim is gone from memory (%v) or disk (%v) although its removal was never written",
						attempt, f.p.Snapshot().Claims[uid] != nil, f.saved().Claims[uid] != nil)
				}
			}
			f.disk.setFull(false)
			if err := f.p.Unprepare(ctx, ref(claim)); err != nil {
				t.Fatalf("unprepare once the disk works: %v", err)
			}
			f.checkNothingLeft(ctx, "after the failed unprepare")
			// A restart finds nothing to resurrect.
			if rep := f.restart(ctx); len(rep.SpecsRewritten)+len(rep.MPSRestarted)+len(rep.Dropped) != 0 {
				t.Errorf("restart after the unprepare brought something back: %+v", rep)
			}
			f.checkNothingLeft(ctx, "after a restart")
		})
	}
}

// checkNothingLeft fails unless the node holds nothing of any claim: no
// MIG device, MPS daemon, CDI spec, changed time slice or checkpoint
// entry.
func (f *fixture) checkNothingLeft(ctx context.Context, when string) {
	f.t.Helper()
	if live := f.liveMIG(); len(live) != 0 {
		f.t.Errorf("%s: MIG devices left: %+v", when, live)
	}
	if keys, err := f.mps.Claims(context.Background()); err != nil || len(keys) != 0 {
		f.t.Errorf("%s: MPS daemons left: %v %v", when, keys, err)
	}
	if specs := f.specs(); len(specs) != 0 {
		f.t.Errorf("%s: CDI specs left: %v", when, specs)
	}
	if c := f.saved().Claims; len(c) != 0 {
		f.t.Errorf("%s: checkpoint holds %v", when, sortedKeys(c))
	}
	if c := f.p.Snapshot().Claims; len(c) != 0 {
		f.t.Errorf("%s: memory holds %v", when, sortedKeys(c))
	}
	f.checkHostDrivesAll(when)
	for i := range f.inventory().GPUs {
		if got := f.timeSlice(i); got != "never set" && got != "0" {
			f.t.Errorf("%s: GPU %d keeps time slice %s", when, i, got)
		}
	}
}

// TestCorruptCheckpointDuringMIGPrepare: the plugin dies while preparing
// a MIG device, after creating it (before its UUID is recorded, or after)
// and before writing the CDI spec, and its checkpoint turns out corrupt at
// the restart. The instance is found
// from the previous checkpoint generation and destroyed; the kubelet's
// retry prepares the claim, and once it is unprepared the whole GPU is
// published again.
func TestCorruptCheckpointDuringMIGPrepare(t *testing.T) {
	for _, tc := range []struct {
		name   string
		claim  func() *resourceapi.ResourceClaim
		killed Step
	}{
		{"MIG, killed once created", func() *resourceapi.ResourceClaim { return allocated("gpu-2-mig-3g40gb-4") }, StepMIGCreated},
		{"MIG", func() *resourceapi.ResourceClaim { return allocated("gpu-2-mig-3g40gb-4") }, StepMIGRecorded},
		{"MIG with MPS", func() *resourceapi.ResourceClaim { return withConfig("gpu-2-mig-3g40gb-4", migMPSConfig) }, StepMPSStarted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, "dgxh100")
			claim := tc.claim()
			f.prepareKilledAfter(tc.killed, claim)
			if err := os.WriteFile(f.store.Path(), []byte(`{"version":1,"checksum":"sha256:0","data":{`), 0o600); err != nil {
				t.Fatal(err)
			}
			rep := f.restart(ctx)
			if len(rep.Unowned) != 0 {
				t.Errorf("unowned MIG devices reported although the previous generation was readable: %v", rep.Unowned)
			}
			if len(rep.MIGDestroyed) != 1 || len(f.liveMIG()) != 0 {
				t.Fatalf("the interrupted prepare's MIG device: destroyed %v, live %+v", rep.MIGDestroyed, f.liveMIG())
			}
			if _, err := f.p.Prepare(ctx, claim); err != nil {
				t.Fatalf("the kubelet's retry: %v", err)
			}
			if err := f.p.Unprepare(ctx, ref(claim)); err != nil {
				t.Fatal(err)
			}
			f.checkNothingLeft(ctx, "after the retry and unprepare")
			f.rebuildModel(f.p.Snapshot())
			if _, ok := f.devices.Lookup("gpu-2"); !ok {
				t.Error("the whole GPU is not published again")
			}
		})
	}
}

// TestCorruptCheckpointAndNoPreviousGeneration: with both the checkpoint
// and its previous generation unreadable, a MIG device no claim records
// cannot be told from an administrator's: it is left alone and reported,
// while a claim whose spec was written is rebuilt.
func TestCorruptCheckpointAndNoPreviousGeneration(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	prepared := allocated("gpu-3-mig-1g10gb-0")
	if _, err := f.p.Prepare(ctx, prepared); err != nil {
		t.Fatal(err)
	}
	f.prepareKilledAfter(StepMIGCreated, allocated("gpu-2-mig-3g40gb-4"))
	for _, path := range []string{f.store.Path(), f.store.Path() + checkpoint.PreviousSuffix} {
		if err := os.WriteFile(path, []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rep := f.restart(ctx)
	if strings.Join(rep.Rebuilt, ",") != string(prepared.UID) {
		t.Errorf("rebuilt %v, want %s", rep.Rebuilt, prepared.UID)
	}
	var onGPU2 []string
	for _, m := range f.liveMIG() {
		if m.ParentUUID == f.inventory().GPUs[2].UUID {
			onGPU2 = append(onGPU2, m.UUID)
		}
	}
	if len(onGPU2) != 1 || strings.Join(rep.Unowned, ",") != onGPU2[0] || len(rep.MIGDestroyed) != 0 {
		t.Errorf("unowned %v, destroyed %v; want GPU 2's device %v reported and left alone", rep.Unowned, rep.MIGDestroyed, onGPU2)
	}
}

// setLost makes the fixture's GPU (by inventory position) fall off the bus
// or come back.
func (f *fixture) setLost(i int, lost bool) {
	f.t.Helper()
	s, err := sim.Open("dgxh100", f.simDir)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := s.SetLost(f.inventory().GPUs[i].Index, lost); err != nil {
		f.t.Fatal(err)
	}
}

// TestLostGPUAtStartup: a GPU that fell off the bus while the plugin was
// down lists no MIG devices, and one whose UUID or more cannot be read is
// left out of the inventory. Its claims are kept as they are (unknown, not
// gone), the other claims are reconciled as ever, and when the GPU is back
// its MIG device is still there.
func TestLostGPUAtStartup(t *testing.T) {
	cases := []struct {
		name  string
		fault func(s *sim.Node, index int, on bool) error
	}{
		{"lost", func(s *sim.Node, i int, on bool) error { return s.SetLost(i, on) }},
		{"lost before its UUID was read", func(s *sim.Node, i int, on bool) error {
			ret := nvml.SUCCESS
			if on {
				ret = nvml.ERROR_GPU_IS_LOST
			}
			if err := s.SetCallError(i, "GetUUID", ret); err != nil {
				return err
			}
			return s.SetLost(i, on)
		}},
		{"unexpected NVML error", func(s *sim.Node, i int, on bool) error {
			ret := nvml.SUCCESS
			if on {
				ret = nvml.ERROR_UNKNOWN
			}
			return s.SetCallError(i, "GetMemoryInfo", ret)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { testLostGPUAtStartup(t, tc.fault) })
	}
}

func testLostGPUAtStartup(t *testing.T, fault func(s *sim.Node, index int, on bool) error) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	// setFault sets or clears the fault of GPU index i (inventory
	// positions shift while a GPU is left out).
	setFault := func(i int, on bool) {
		t.Helper()
		s, err := sim.Open("dgxh100", f.simDir)
		if err != nil {
			t.Fatal(err)
		}
		if err := fault(s, i, on); err != nil {
			t.Fatal(err)
		}
	}
	onLost, other := allocated("gpu-2-mig-1g10gb-3"), allocated("gpu-3-mig-1g10gb-3")
	for _, c := range []*resourceapi.ResourceClaim{onLost, other} {
		if _, err := f.p.Prepare(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(f.cdi.SpecPath(string(other.UID))); err != nil {
		t.Fatal(err)
	}
	before := f.p.Snapshot().Claims[string(onLost.UID)]
	setFault(2, true)
	out, rep, err := f.reconcile(ctx, f.saved(), f.inventory(), nil)
	if err != nil {
		t.Fatalf("reconcile with a lost GPU: %v", err)
	}
	if got := out.Claims[string(onLost.UID)]; got == nil || got.State != checkpoint.PrepareCompleted || got.Devices[0].MIG.UUID != before.Devices[0].MIG.UUID {
		t.Errorf("the lost GPU's claim became %+v, want it kept as %+v", got, before)
	}
	if len(rep.Dropped) != 0 || strings.Join(rep.Unreadable, ",") != string(onLost.UID) {
		t.Errorf("dropped %v, unreadable %v; want the lost GPU's claim unreadable, none dropped", rep.Dropped, rep.Unreadable)
	}
	if strings.Join(rep.SpecsRewritten, ",") != string(other.UID) {
		t.Errorf("specs rewritten %v, want the other claim's", rep.SpecsRewritten)
	}
	if _, err := os.Stat(f.cdi.SpecPath(string(onLost.UID))); err != nil {
		t.Errorf("the lost GPU's claim lost its spec: %v", err)
	}
	setFault(2, false)
	if live := f.liveMIG(); len(live) != 2 {
		t.Errorf("MIG devices after the GPU came back: %+v, want both claims'", live)
	}
}

// flakyGPUs is the fixture's node with DestroyMIG failing on some GPUs, as
// NVML does for a busy instance.
type flakyGPUs struct {
	GPUs
	mu         sync.Mutex
	destroyErr map[string]error // by GPU UUID
}

func (g *flakyGPUs) DestroyMIG(ctx context.Context, ref gpu.MIGRef) error {
	g.mu.Lock()
	err := g.destroyErr[ref.ParentUUID]
	g.mu.Unlock()
	if err != nil {
		return err
	}
	return g.GPUs.DestroyMIG(ctx, ref)
}

func (g *flakyGPUs) failDestroy(gpuUUID string, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.destroyErr == nil {
		g.destroyErr = map[string]error{}
	}
	g.destroyErr[gpuUUID] = err
}

// flakyCDI is the fixture's CDI writer with writes or deletes failing.
type flakyCDI struct {
	*cdi.Writer
	writeErr, deleteErr error
}

func (c *flakyCDI) WriteClaimSpec(ctx context.Context, uid string, devices []cdi.Device) (map[string][]string, error) {
	if c.writeErr != nil {
		return nil, c.writeErr
	}
	return c.Writer.WriteClaimSpec(ctx, uid, devices)
}

func (c *flakyCDI) DeleteClaimSpec(uid string) error {
	if c.deleteErr != nil {
		return c.deleteErr
	}
	return c.Writer.DeleteClaimSpec(uid)
}

var errBusy = errors.New("NVML: in use by another client")

// TestReconcileContinuesPastAFailure: one claim whose rollback fails at
// start-up is reported, logged and kept; the others are reconciled, and
// the kept claim is finished by the kubelet's retry once it can be.
func TestReconcileContinuesPastAFailure(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	stuck, fine := allocated("gpu-1-mig-1g10gb-3"), allocated("gpu-4-mig-1g10gb-3")
	f.prepareKilledAfter(StepMIGRecorded, stuck)
	f.prepareKilledAfter(StepMIGRecorded, fine)
	gpus := &flakyGPUs{GPUs: f.node}
	gpus.failDestroy(f.inventory().GPUs[1].UUID, errBusy)
	out, rep, err := Reconciler{GPUs: gpus, CDI: f.cdi, MPS: f.mps}.Reconcile(ctx, Found{Checkpoint: f.saved(), Inventory: f.inventory()})
	if err != nil {
		t.Fatalf("one claim's failure stopped reconciliation: %v", err)
	}
	if strings.Join(rep.RolledBack, ",") != string(fine.UID) {
		t.Errorf("rolled back %v, want %s", rep.RolledBack, fine.UID)
	}
	if err := rep.Failed[string(stuck.UID)]; !errors.Is(err, errBusy) {
		t.Errorf("failure of %s reported as %v; report %+v", stuck.UID, err, rep)
	}
	if c := out.Claims[string(stuck.UID)]; c == nil || c.State != checkpoint.PrepareStarted {
		t.Errorf("the stuck claim is %+v, want it kept as PrepareStarted", c)
	}
	if live := f.liveMIG(); len(live) != 1 || live[0].ParentUUID != f.inventory().GPUs[1].UUID {
		t.Errorf("live MIG devices %+v, want only the stuck claim's", live)
	}
	gpus.failDestroy(f.inventory().GPUs[1].UUID, nil)
	f.p = New(gpus, f.devices, f.cdi, f.store, out, f.p.opts)
	f.rebuildModel(out)
	if _, err := f.p.Prepare(ctx, stuck); err != nil {
		t.Fatalf("the kubelet's retry: %v", err)
	}
	if err := f.p.Unprepare(ctx, ref(stuck)); err != nil {
		t.Fatal(err)
	}
	f.checkNothingLeft(ctx, "after the retry")
}

// TestRollbackThatFails: a prepare fails and so does its rollback; the
// error names both, the claim stays recorded with what exists, the next
// attempt finishes the rollback and prepares. An unprepare that cannot
// delete the spec keeps the claim until a retry can.
func TestRollbackThatFails(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	gpus := &flakyGPUs{GPUs: f.node}
	specs := &flakyCDI{Writer: f.cdi}
	f.p = New(gpus, f.devices, specs, f.store, checkpoint.New("boot"), f.p.opts)
	claim := allocated("gpu-5-mig-2g20gb-0")
	uid := string(claim.UID)
	errNoSpace := errors.New("no space for the spec")
	specs.writeErr = errNoSpace
	gpus.failDestroy(f.inventory().GPUs[5].UUID, errBusy)
	_, err := f.p.Prepare(ctx, claim)
	if !errors.Is(err, errNoSpace) || !errors.Is(err, errBusy) || !strings.Contains(err.Error(), "rollback failed") {
		t.Fatalf("error %v, want one naming the spec write and the failed rollback", err)
	}
	live := f.liveMIG()
	for what, cp := range map[string]*checkpoint.Checkpoint{"memory": f.p.Snapshot(), "disk": f.saved()} {
		c := cp.Claims[uid]
		if c == nil || c.State != checkpoint.PrepareStarted || len(live) != 1 || c.Devices[0].MIG.UUID != live[0].UUID {
			t.Errorf("%s holds %+v, want PrepareStarted with the live MIG device %+v", what, c, live)
		}
	}
	specs.writeErr = nil
	gpus.failDestroy(f.inventory().GPUs[5].UUID, nil)
	if _, err := f.p.Prepare(ctx, claim); err != nil {
		t.Fatalf("the next attempt: %v", err)
	}
	if live := f.liveMIG(); len(live) != 1 {
		t.Fatalf("MIG devices after the next attempt: %+v, want one", live)
	}

	specs.deleteErr = errors.New("read-only file system")
	if err := f.p.Unprepare(ctx, ref(claim)); !errors.Is(err, specs.deleteErr) {
		t.Fatalf("unprepare: %v, want the spec deletion's error", err)
	}
	if f.saved().Claims[uid] == nil {
		t.Fatal("the claim was forgotten although its spec is still there")
	}
	specs.deleteErr = nil
	if err := f.p.Unprepare(ctx, ref(claim)); err != nil {
		t.Fatal(err)
	}
	f.checkNothingLeft(ctx, "after the unprepare")
}

// TestTimeSliceAfterReboot: a reboot resets every GPU's time slice; the
// restarted plugin sets the prepared claims' again.
func TestTimeSliceAfterReboot(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	c := withConfig("gpu-6", longTimeSlice)
	if _, err := f.p.Prepare(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := f.node.SetTimeSlice(ctx, f.inventory().GPUs[6].UUID, gpu.DefaultTimeSlice); err != nil { // the reboot
		t.Fatal(err)
	}
	rep := f.restart(ctx)
	if got := f.timeSlice(6); got != "3" {
		t.Errorf("time slice of GPU 6 after the restart: %s, want 3 (Long)", got)
	}
	if strings.Join(rep.TimeSlicesApplied, ",") != string(c.UID) {
		t.Errorf("time slices applied for %v, want %s", rep.TimeSlicesApplied, c.UID)
	}
}

// TestClaimLocksAreRemoved: the per-claim locks of claims that came and
// went are gone, however many there were and however they overlapped.
func TestClaimLocksAreRemoved(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	var wg sync.WaitGroup
	for i := range 16 {
		c := allocated(fmt.Sprintf("gpu-%d-mig-1g10gb-%d", i%8, i/8))
		wg.Go(func() {
			for range 2 { // the kubelet retrying at once
				if _, err := f.p.Prepare(ctx, c); err != nil {
					t.Error(err)
				}
			}
			if err := f.p.Unprepare(ctx, ref(c)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	f.p.mu.Lock()
	n := len(f.p.locks.claims)
	f.p.mu.Unlock()
	if n != 0 {
		t.Errorf("%d claim locks left after every claim went", n)
	}
}

const migMPSConfig = `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"MigDeviceConfig","sharing":{"strategy":"MPS","mpsConfig":{"defaultActiveThreadPercentage":50}}}`

// TestGPULostMidPrepare: the claim's GPU falls off the bus after each step
// of a MIG prepare with MPS. Before the MIG device exists the prepare
// fails naming the GPU; after, it completes (health taints the GPU). An
// unprepare while the GPU is away cannot destroy the MIG device: it fails
// and the claim stays recorded. Once the GPU is back the kubelet's
// retries finish, and nothing is left.
func TestGPULostMidPrepare(t *testing.T) {
	for _, step := range []Step{StepStartedRecorded, StepMIGCreated, StepMIGRecorded, StepCDIWritten} {
		t.Run(string(step), func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, "dgxh100")
			c := withConfig("gpu-2-mig-3g40gb-4", migMPSConfig)
			f.p.opts.AfterStep = func(s Step) {
				if s == step {
					f.setLost(2, true)
				}
			}
			_, prepErr := f.p.Prepare(ctx, c)
			f.p.opts.AfterStep = nil
			if created := step != StepStartedRecorded; created != (prepErr == nil) {
				t.Fatalf("prepare with the GPU lost after %s: %v", step, prepErr)
			}
			if prepErr == nil {
				if err := f.p.Unprepare(ctx, ref(c)); err == nil || f.saved().Claims[string(c.UID)] == nil {
					t.Fatalf("unprepare with the GPU away: %v, and the claim is recorded %v", err, f.saved().Claims[string(c.UID)] != nil)
				}
			}
			f.setLost(2, false)
			if prepErr != nil {
				if _, err := f.p.Prepare(ctx, c); err != nil {
					t.Fatalf("the kubelet's retry once the GPU is back: %v", err)
				}
			}
			if err := f.p.Unprepare(ctx, ref(c)); err != nil {
				t.Fatalf("unprepare once the GPU is back: %v", err)
			}
			f.checkNothingLeft(ctx, "at the end")
		})
	}
}
