package prepare

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

// sweepKind is one kind of claim the fault sweeps prepare, with a
// bystander: a claim of another pod on the same GPU that every fault must
// leave alone.
type sweepKind struct {
	name             string
	claim, bystander func() *resourceapi.ResourceClaim
}

var sweepKinds = []sweepKind{
	{name: "whole GPU", claim: func() *resourceapi.ResourceClaim { return allocated("gpu-3") }},
	{name: "MIG",
		claim:     func() *resourceapi.ResourceClaim { return allocated("gpu-2-mig-1g10gb-3") },
		bystander: func() *resourceapi.ResourceClaim { return allocated("gpu-2-mig-1g10gb-6") }},
	{name: "MIG with MPS",
		claim:     func() *resourceapi.ResourceClaim { return withConfig("gpu-2-mig-3g40gb-4", migMPSConfig) },
		bystander: func() *resourceapi.ResourceClaim { return allocated("gpu-2-mig-1g10gb-0") }},
	{name: "whole GPU with MPS", claim: func() *resourceapi.ResourceClaim { return withConfig("gpu-1", mpsConfig) }},
	{name: "time slice", claim: func() *resourceapi.ResourceClaim { return withConfig("gpu-6", longTimeSlice) }},
	{name: "share",
		claim: func() *resourceapi.ResourceClaim {
			return sharesAllocated(shareOf{"gpu-0-shared", "aaaaaaaa-0000-4000-8000-00000000000a", "10Gi", "25"})
		},
		bystander: func() *resourceapi.ResourceClaim {
			return sharesAllocated(shareOf{"gpu-0-shared", "bbbbbbbb-0000-4000-8000-00000000000b", "20Gi", "50"})
		}},
	{name: "several devices", claim: severalDevices,
		bystander: func() *resourceapi.ResourceClaim { return allocated("gpu-2-mig-1g10gb-0") }},
	{name: "consumable share with a memory limit",
		claim: func() *resourceapi.ResourceClaim {
			return consumableAllocated("gpu-5", "eeeeeeee-0000-4000-8000-00000000000e", "2Gi", "")
		},
		bystander: func() *resourceapi.ResourceClaim {
			return consumableAllocated("gpu-5", "ffffffff-0000-4000-8000-00000000000f", "0", "1")
		}},
	{name: "consumable share without a limit",
		claim: func() *resourceapi.ResourceClaim {
			return consumableAllocated("gpu-7", "abababab-0000-4000-8000-00000000001a", "0", "2")
		},
		bystander: func() *resourceapi.ResourceClaim {
			return consumableAllocated("gpu-7", "cdcdcdcd-0000-4000-8000-00000000001b", "4Gi", "1")
		}},
	{name: "GPU for a VM", claim: func() *resourceapi.ResourceClaim { return allocated("gpu-4-vfio") }},
	{name: "GPU for a VM through iommufd", claim: func() *resourceapi.ResourceClaim { return withConfig("gpu-4-vfio", vfioIOMMUFD) }},
	{name: "last share",
		claim: func() *resourceapi.ResourceClaim {
			return sharesAllocated(shareOf{"gpu-4-shared", "cccccccc-0000-4000-8000-00000000000c", "10Gi", "25"})
		}},
}

// severalDevices is a claim of two MIG devices shared through the
// claim's own MPS daemon, a whole GPU with a time slice and a share.
func severalDevices() *resourceapi.ResourceClaim {
	c := sharesAllocated(shareOf{device: "gpu-2-mig-1g10gb-3"}, shareOf{device: "gpu-2-mig-2g20gb-4"}, shareOf{device: "gpu-6"},
		shareOf{"gpu-0-shared", "dddddddd-0000-4000-8000-00000000000d", "10Gi", "25"})
	for _, cfg := range []struct {
		params   string
		requests []string
	}{{migMPSConfig, []string{"req-0", "req-1"}}, {longTimeSlice, []string{"req-2"}}} {
		c.Status.Allocation.Devices.Config = append(c.Status.Allocation.Devices.Config, withConfig("gpu-6", cfg.params, cfg.requests...).Status.Allocation.Devices.Config...)
	}
	return c
}

// isPrepareStep says whether the step happens in Prepare (else in the
// rollback of Unprepare).
func isPrepareStep(s Step) bool {
	return slices.Index(AllSteps, s) <= slices.Index(AllSteps, StepCompletedRecorded)
}

// killedAfter runs fn with the plugin killed (a panic recovered here)
// right after step, and reports whether it got there.
func (f *fixture) killedAfter(step Step, fn func()) (killed bool) {
	type kill struct{}
	f.p.opts.AfterStep = func(s Step) {
		if s == step {
			panic(kill{})
		}
	}
	defer func() {
		f.p.opts.AfterStep = nil
		if r := recover(); r != nil {
			if r != (kill{}) {
				panic(r)
			}
			killed = true
		}
	}()
	fn()
	return false
}

// stepsOf returns the steps a full prepare and unprepare of the kind's
// claim pass, and the number of checkpoint writes they make. Its fixture
// is gone when it returns: the sweeps' parallel subtests run after their
// parent, and a fixture kept until the parent's end keeps its simulated
// kernel polling beside them.
func stepsOf(t *testing.T, k sweepKind) ([]Step, int) {
	ctx := context.Background()
	scope := &scopedTB{TB: t}
	defer scope.cleanup()
	f := newFixture(scope, "dgxh100")
	var steps []Step
	f.p.opts.AfterStep = func(s Step) { steps = append(steps, s) }
	c := k.claim()
	if _, err := f.p.Prepare(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := f.p.Unprepare(ctx, ref(c)); err != nil {
		t.Fatal(err)
	}
	return steps, f.disk.writes
}

// TestKilledAtEveryStep kills the plugin after every step of AllSteps that
// a kind of claim passes, for every kind, restarts it (start-up
// reconciliation), and has the kubelet retry: the checkpoint tells the
// truth after the restart, the retry succeeds, and once the claims are
// unprepared nothing is left.
func TestKilledAtEveryStep(t *testing.T) {
	reached := map[Step]bool{}
	for _, k := range sweepKinds {
		steps, _ := stepsOf(t, k)
		for _, step := range AllSteps {
			if !slices.Contains(steps, step) {
				continue
			}
			reached[step] = true
			t.Run(k.name+"/"+string(step), func(t *testing.T) {
				t.Parallel()
				ctx := context.Background()
				f := newFixture(t, "dgxh100")
				bystander := f.prepareBystander(ctx, k)
				c := k.claim()
				var killed bool
				if isPrepareStep(step) {
					killed = f.killedAfter(step, func() { _, _ = f.p.Prepare(ctx, c) })
				} else {
					if _, err := f.p.Prepare(ctx, c); err != nil {
						t.Fatal(err)
					}
					killed = f.killedAfter(step, func() { _ = f.p.Unprepare(ctx, ref(c)) })
				}
				if !killed {
					t.Fatalf("not killed after %s, which a dry run passed", step)
				}
				f.restart(ctx)
				f.checkTruthful(ctx, "after the restart", true)
				if isPrepareStep(step) {
					if _, err := f.p.Prepare(ctx, c); err != nil {
						t.Fatalf("the kubelet's retry of the prepare: %v", err)
					}
					f.checkTruthful(ctx, "after the retried prepare", true)
					if f.saved().Claims[string(c.UID)] == nil {
						t.Fatal("the retried prepare is not in the checkpoint")
					}
				}
				if err := f.p.Unprepare(ctx, ref(c)); err != nil {
					t.Fatalf("unprepare: %v", err)
				}
				f.unprepareBystander(ctx, bystander)
				f.checkNothingLeft(ctx, "at the end")
			})
		}
	}
	for _, step := range AllSteps {
		if !reached[step] {
			t.Errorf("no kind of claim passes step %s", step)
		}
	}
}

// TestWriteFailingAtEveryCommit fails each checkpoint write of a full
// prepare and unprepare in turn, for every kind of claim: the call that
// made it fails; the kubelet retries, on the same plugin or after a
// restart; the checkpoint tells the truth throughout, and at the end
// nothing is left.
func TestWriteFailingAtEveryCommit(t *testing.T) {
	for _, k := range sweepKinds {
		_, writes := stepsOf(t, k)
		for i := 1; i <= writes; i++ {
			for _, restart := range []bool{false, true} {
				name := fmt.Sprintf("%s/write %d of %d/retry", k.name, i, writes)
				if restart {
					name += " after a restart"
				}
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					ctx := context.Background()
					f := newFixture(t, "dgxh100")
					bystander := f.prepareBystander(ctx, k)
					c := k.claim()
					f.disk.mu.Lock()
					f.disk.failAt = f.disk.writes + i
					f.disk.mu.Unlock()
					_, prepErr := f.p.Prepare(ctx, c)
					var unprepErr error
					if prepErr == nil {
						unprepErr = f.p.Unprepare(ctx, ref(c))
					}
					if prepErr == nil && unprepErr == nil {
						t.Fatalf("write %d failed and neither prepare nor unprepare did", i)
					}
					if restart {
						f.restart(ctx)
					}
					f.checkTruthful(ctx, "after the failure", restart)
					if prepErr != nil {
						if _, err := f.p.Prepare(ctx, c); err != nil {
							t.Fatalf("the kubelet's retry of the prepare: %v", err)
						}
						f.checkTruthful(ctx, "after the retried prepare", true)
					}
					if err := f.p.Unprepare(ctx, ref(c)); err != nil {
						t.Fatalf("unprepare: %v", err)
					}
					f.unprepareBystander(ctx, bystander)
					f.checkNothingLeft(ctx, "at the end")
				})
			}
		}
	}
}

func (f *fixture) prepareBystander(ctx context.Context, k sweepKind) *resourceapi.ResourceClaim {
	f.t.Helper()
	if k.bystander == nil {
		return nil
	}
	b := k.bystander()
	if _, err := f.p.Prepare(ctx, b); err != nil {
		f.t.Fatalf("bystander: %v", err)
	}
	return b
}

func (f *fixture) unprepareBystander(ctx context.Context, b *resourceapi.ResourceClaim) {
	f.t.Helper()
	if b == nil {
		return
	}
	if c := f.saved().Claims[string(b.UID)]; c == nil || c.State != checkpoint.PrepareCompleted {
		f.t.Errorf("the bystander is %+v in the checkpoint, want it prepared", c)
	}
	if err := f.p.Unprepare(ctx, ref(b)); err != nil {
		f.t.Fatalf("bystander: %v", err)
	}
}

// checkTruthful fails unless what the plugin holds says what the node
// has: every prepared claim's MIG devices live, its spec written, its
// daemons running and its time slices set; every claim still unfinished
// holds nothing but what it records; and nothing on the node that no
// claim records (MIG device, daemon, spec). durable says the last write
// succeeded, so the checkpoint on disk must be what the plugin holds;
// after a failed one the disk is one write behind, and a restart from it
// must come to the truth (the sweeps restart too).
func (f *fixture) checkTruthful(ctx context.Context, when string, durable bool) {
	f.t.Helper()
	held := f.p.Snapshot()
	if saved := f.saved(); durable && fmt.Sprint(sortedKeys(saved.Claims)) != fmt.Sprint(sortedKeys(held.Claims)) {
		f.t.Errorf("%s: the checkpoint holds %v, the plugin %v", when, sortedKeys(saved.Claims), sortedKeys(held.Claims))
	}
	live := map[string]gpu.MIGInstance{}
	for _, m := range f.liveMIG() {
		live[m.UUID] = m
	}
	daemons := map[string]bool{}
	keys, err := f.mps.Claims(context.Background())
	if err != nil {
		f.t.Fatal(err)
	}
	for _, k := range keys {
		daemons[k] = f.mps.Running(k)
	}
	specs := map[string]bool{}
	for _, uid := range f.specs() {
		specs[uid] = true
	}
	recordedMIG, wantDaemons := map[string]bool{}, map[string]bool{}
	for uid, c := range held.Claims {
		if c.State != checkpoint.PrepareCompleted {
			continue // undone by the kubelet's retry; what it holds is checked below
		}
		if !specs[uid] {
			f.t.Errorf("%s: prepared claim %s has no CDI spec", when, uid)
		}
		if slices.ContainsFunc(c.Devices, claimDaemon) {
			wantDaemons[uid] = true
		}
		for _, g := range legacySharedGPUs(c) {
			wantDaemons[sharedDaemon(g)] = true
		}
		for _, d := range c.Devices {
			if d.MIG != nil {
				recordedMIG[d.MIG.UUID] = true
				if _, ok := live[d.MIG.UUID]; !ok {
					f.t.Errorf("%s: claim %s records MIG device %s, which is gone", when, uid, d.MIG.UUID)
				}
			}
			if d.VFIO != nil {
				if got := f.drivers(d.GPUMinor); got != [2]string{d.VFIO.Driver, d.VFIO.Driver} {
					f.t.Errorf("%s: claim %s records GPU %d passed through, its functions are bound to %v", when, uid, d.GPUMinor, got)
				}
			}
			if d.TimeSlice != "" {
				if got := f.timeSliceOf(d.GPUUUID); got != "3" {
					f.t.Errorf("%s: claim %s records time slice %s, GPU has %s", when, uid, d.TimeSlice, got)
				}
			}
		}
	}
	for uid, c := range held.Claims {
		if c.State == checkpoint.PrepareCompleted {
			continue
		}
		// An unfinished claim may hold what it records, nothing else.
		for _, d := range c.Devices {
			if d.MIG != nil && d.MIG.UUID != "" {
				recordedMIG[d.MIG.UUID] = true
			}
		}
		wantDaemons[uid] = daemons[uid]
		specs[uid] = false
	}
	for uuid := range live {
		if !recordedMIG[uuid] {
			f.t.Errorf("%s: MIG device %s is recorded by no claim", when, uuid)
		}
	}
	for key, running := range daemons {
		if running != wantDaemons[key] {
			f.t.Errorf("%s: MPS daemon %s running %v, want %v", when, key, running, wantDaemons[key])
		}
	}
	for key := range wantDaemons {
		if _, ok := daemons[key]; !ok && wantDaemons[key] {
			f.t.Errorf("%s: MPS daemon %s of a prepared claim is missing", when, key)
		}
	}
	for uid, prepared := range specs {
		if c := held.Claims[uid]; prepared && c == nil {
			f.t.Errorf("%s: CDI spec of %s, which no claim records", when, uid)
		}
	}
}

// timeSliceOf reads the time slice the simulated nvidia-smi last set on
// the GPU.
func (f *fixture) timeSliceOf(gpuUUID string) string {
	data, err := os.ReadFile(simhost.TimeSlicePath(f.driverRoot, gpuUUID))
	if err != nil {
		return "never set"
	}
	return string(data[:len(data)-1])
}

// scopedTB is a test's TB whose Cleanup functions run when cleanup is
// called, not at the end of the test.
type scopedTB struct {
	testing.TB
	cleanups []func()
}

// Cleanup registers f to run at cleanup, after those registered later.
func (s *scopedTB) Cleanup(f func()) { s.cleanups = append(s.cleanups, f) }

func (s *scopedTB) cleanup() {
	for i := len(s.cleanups) - 1; i >= 0; i-- {
		s.cleanups[i]()
	}
	s.cleanups = nil
}
