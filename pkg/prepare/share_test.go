package prepare

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/mps"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

// shareOf is one share in an allocation: a device, its share ID and what
// it consumes (compute "" leaves it out, as an allocation never does but
// a broken one might).
type shareOf struct {
	device, shareID, memory, compute string
}

// sharesAllocated builds a claim allocated the shares, one request each.
func sharesAllocated(shares ...shareOf) *resourceapi.ResourceClaim {
	var devs []string
	for _, s := range shares {
		devs = append(devs, s.device)
	}
	c := allocated(devs...)
	for i, s := range shares {
		r := &c.Status.Allocation.Devices.Results[i]
		if s.shareID != "" {
			id := types.UID(s.shareID)
			r.ShareID = &id
		}
		r.ConsumedCapacity = map[resourceapi.QualifiedName]resource.Quantity{}
		if s.memory != "" {
			r.ConsumedCapacity[names.CapacityMemory] = resource.MustParse(s.memory)
		}
		if s.compute != "" {
			r.ConsumedCapacity[names.CapacityCompute] = resource.MustParse(s.compute)
		}
	}
	return c
}

func (f *fixture) spec(c *resourceapi.ResourceClaim) string {
	f.t.Helper()
	return string(mustRead(f.t.(*testing.T), f.cdi.SpecPath(string(c.UID))))
}

// TestSharesOfOneGPU: shares of one GPU from different claims (tenants)
// never share an MPS daemon: each claim's daemon has its own directories
// and is started with that claim's limits in its own environment (the
// defaults every client of its servers gets, whatever the client's
// environment says); the containers are told the same limits. Each
// daemon stops with its claim.
func TestSharesOfOneGPU(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	gpu0 := f.inventory().GPUs[0].UUID
	a := sharesAllocated(shareOf{"gpu-0-shared", "aaaaaaaa-0000-4000-8000-000000000001", "20Gi", "25"})
	b := sharesAllocated(shareOf{"gpu-0-shared", "bbbbbbbb-0000-4000-8000-000000000002", "40Gi", "0"})
	devsA, err := f.p.Prepare(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if len(devsA) != 1 || devsA[0].ShareID == nil || *devsA[0].ShareID != "aaaaaaaa-0000-4000-8000-000000000001" || len(devsA[0].CDIDeviceIDs) != 1 {
		t.Fatalf("devices for the kubelet: %+v", devsA)
	}
	if _, err := f.p.Prepare(ctx, b); err != nil {
		t.Fatal(err)
	}
	keyA, keyB := string(a.UID), string(b.UID)
	if !f.mps.Running(keyA) || !f.mps.Running(keyB) || f.mps.Running(sharedDaemon(gpu0)) {
		t.Fatalf("daemons running: a's %v, b's %v, the GPU's %v; want one per claim", f.mps.Running(keyA), f.mps.Running(keyB), f.mps.Running(sharedDaemon(gpu0)))
	}
	log := string(mustRead(t, simhost.MPSLogPath(f.driverRoot)))
	for _, want := range []string{
		"devices=" + gpu0 + " pipe=" + f.mps.PipeDir(keyA) + " active_thread_percentage=25 pinned_device_mem_limit=0=20480M\n",
		"devices=" + gpu0 + " pipe=" + f.mps.PipeDir(keyB) + " pinned_device_mem_limit=0=40960M\n",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("no daemon started with %q:\n%s", want, log)
		}
	}
	if n := strings.Count(log, " start "); n != 2 {
		t.Errorf("%d daemons started, want 2:\n%s", n, log)
	}
	for c, want := range map[*resourceapi.ResourceClaim][]string{
		a: {"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=20480M", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25", "GPU_DRA_DEVICE_UUIDS=" + gpu0, f.mps.PipeDir(keyA)},
		b: {"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=40960M", "CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps", f.mps.PipeDir(keyB)},
	} {
		spec := f.spec(c)
		for _, w := range want {
			if !strings.Contains(spec, w) {
				t.Errorf("CDI spec of %s lacks %q:\n%s", c.Name, w, spec)
			}
		}
	}
	if strings.Contains(f.spec(b), "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE") || strings.Contains(f.spec(a), f.mps.PipeDir(keyB)) || strings.Contains(f.spec(b), f.mps.PipeDir(keyA)) {
		t.Errorf("a share without compute got a thread limit, or a claim got the other's pipe directory:\n%s\n%s", f.spec(a), f.spec(b))
	}

	if err := f.p.Unprepare(ctx, ref(a)); err != nil {
		t.Fatal(err)
	}
	if f.mps.Running(keyA) || !f.mps.Running(keyB) {
		t.Fatalf("after a's unprepare: a's daemon running %v (want false), b's %v (want true)", f.mps.Running(keyA), f.mps.Running(keyB))
	}
	if err := f.p.Unprepare(ctx, ref(b)); err != nil {
		t.Fatal(err)
	}
	if keys, _ := f.mps.Claims(context.Background()); len(keys) != 0 {
		t.Errorf("daemon directories left: %v", keys)
	}
}

// TestTwoSharesInOneClaim: one claim may hold two shares of one GPU; each
// is its own CDI device, and the claim's daemon lets each client have
// what the two shares have together.
func TestTwoSharesInOneClaim(t *testing.T) {
	f := newFixture(t, "dgxh100")
	c := sharesAllocated(
		shareOf{"gpu-0-shared", "aaaaaaaa-0000-4000-8000-000000000001", "10Gi", "10"},
		shareOf{"gpu-0-shared", "bbbbbbbb-0000-4000-8000-000000000002", "30Gi", "20"})
	devs, err := f.p.Prepare(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 2 || devs[0].CDIDeviceIDs[0] == devs[1].CDIDeviceIDs[0] {
		t.Fatalf("want two CDI devices, got %+v", devs)
	}
	spec := f.spec(c)
	for _, w := range []string{"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=40960M", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30"} {
		if !strings.Contains(spec, w) {
			t.Errorf("CDI spec lacks %q", w)
		}
	}
	if log := string(mustRead(t, simhost.MPSLogPath(f.driverRoot))); strings.Count(log, " start ") != 1 || !strings.Contains(log, "active_thread_percentage=30 pinned_device_mem_limit=0=40960M") {
		t.Errorf("want one daemon with the two shares' limits together:\n%s", log)
	}
	if err := f.p.Unprepare(context.Background(), ref(c)); err != nil {
		t.Fatal(err)
	}
	if f.mps.Running(string(c.UID)) {
		t.Error("daemon still running")
	}
}

// TestSharesOfTwoGPUsInOneRequest: a request for two shares (count 2),
// which the scheduler puts on two GPUs, is served by the claim's one
// daemon with both GPUs, each with its memory limit by its ordinal.
func TestSharesOfTwoGPUsInOneRequest(t *testing.T) {
	f := newFixture(t, "dgxh100")
	inv := f.inventory()
	c := sharesAllocated(shareOf{"gpu-0-shared", "aaaaaaaa-0000-4000-8000-000000000001", "50Gi", "40"}, shareOf{"gpu-1-shared", "bbbbbbbb-0000-4000-8000-000000000002", "10Gi", "40"})
	c.Status.Allocation.Devices.Results[1].Request = "req-0"
	if _, err := f.p.Prepare(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	want := "devices=" + inv.GPUs[0].UUID + "," + inv.GPUs[1].UUID + " pipe=" + f.mps.PipeDir(string(c.UID)) + " active_thread_percentage=40 pinned_device_mem_limit=0=51200M,1=10240M"
	if log := string(mustRead(t, simhost.MPSLogPath(f.driverRoot))); !strings.Contains(log, want) {
		t.Errorf("no daemon started with %q:\n%s", want, log)
	}
	if spec := f.spec(c); !strings.Contains(spec, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=51200M,1=10240M") {
		t.Errorf("CDI spec lacks both GPUs' limits:\n%s", spec)
	}
	if err := f.p.Unprepare(context.Background(), ref(c)); err != nil {
		t.Fatal(err)
	}
	f.checkNothingLeft(context.Background(), "after unprepare")
}

// TestShareErrors: what cannot be prepared is refused with the reason, and
// nothing is left behind.
func TestShareErrors(t *testing.T) {
	const sid = "aaaaaaaa-0000-4000-8000-000000000001"
	for _, tc := range []struct {
		name  string
		claim func() *resourceapi.ResourceClaim
		want  string
	}{
		{"no share ID", func() *resourceapi.ResourceClaim {
			return sharesAllocated(shareOf{"gpu-0-shared", "", "10Gi", "0"})
		}, "without a share ID"},
		{"no consumed memory", func() *resourceapi.ResourceClaim {
			return sharesAllocated(shareOf{"gpu-0-shared", sid, "", "0"})
		}, "no consumed memory"},
		{"shares of two GPUs with different compute", func() *resourceapi.ResourceClaim {
			// One daemon per claim has one active thread percentage.
			return sharesAllocated(shareOf{"gpu-0-shared", sid, "50Gi", "25"}, shareOf{"gpu-1-shared", "bbbbbbbb-0000-4000-8000-000000000002", "50Gi", "50"})
		}, "ask for shares with different compute in separate claims"},
		{"sharing configuration on a share", func() *resourceapi.ResourceClaim {
			c := sharesAllocated(shareOf{"gpu-0-shared", sid, "10Gi", "0"})
			c.Status.Allocation.Devices.Config = withConfig("gpu-0", mpsConfig).Status.Allocation.Devices.Config
			return c
		}, "parameters.sharing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, "dgxh100")
			_, err := f.p.Prepare(context.Background(), tc.claim())
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "gpu-0-shared") {
				t.Fatalf("got %v, want an error about gpu-0-shared with %q", err, tc.want)
			}
			if keys, _ := f.mps.Claims(context.Background()); len(keys) != 0 || len(f.specs()) != 0 || len(f.saved().Claims) != 0 {
				t.Errorf("left behind: daemons %v, specs %v, claims %d", keys, f.specs(), len(f.saved().Claims))
			}
		})
	}
}

// TestShareAndExclusiveUseWaitForEachOther: a GPU still prepared in shares
// is not prepared whole (the scheduler allocated it after a forced
// deletion), and the other way round.
func TestShareAndExclusiveUseWaitForEachOther(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	s := sharesAllocated(shareOf{"gpu-0-shared", "aaaaaaaa-0000-4000-8000-000000000001", "10Gi", "0"})
	if _, err := f.p.Prepare(ctx, s); err != nil {
		t.Fatal(err)
	}
	var held *heldError
	if _, err := f.p.Prepare(ctx, allocated("gpu-0")); !errors.As(err, &held) || held.owner != string(s.UID) {
		t.Fatalf("whole GPU beside its share: got %v, want held by %s", err, s.UID)
	}
	if err := f.p.Unprepare(ctx, ref(s)); err != nil {
		t.Fatal(err)
	}
	whole := allocated("gpu-0")
	if _, err := f.p.Prepare(ctx, whole); err != nil {
		t.Fatal(err)
	}
	if _, err := f.p.Prepare(ctx, sharesAllocated(shareOf{"gpu-0-shared", "bbbbbbbb-0000-4000-8000-000000000002", "10Gi", "0"})); !errors.As(err, &held) || held.owner != string(whole.UID) {
		t.Fatalf("share beside the whole GPU: got %v, want held by %s", err, whole.UID)
	}
	if keys, _ := f.mps.Claims(context.Background()); len(keys) != 0 {
		t.Errorf("a refused share left a daemon: %v", keys)
	}
}

// TestReconcileShares: after a restart a share's daemon runs (started
// again, with its limits, if it died), an interrupted share is rolled
// back with its daemon, and a share rebuilt from its CDI spec keeps its
// daemon.
func TestReconcileShares(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	inv := f.inventory()
	kept := sharesAllocated(shareOf{"gpu-0-shared", "aaaaaaaa-0000-4000-8000-000000000001", "10Gi", "30"})
	if _, err := f.p.Prepare(ctx, kept); err != nil {
		t.Fatal(err)
	}
	// Killed after its daemon started, before the spec.
	interrupted := sharesAllocated(shareOf{"gpu-1-shared", "bbbbbbbb-0000-4000-8000-000000000002", "10Gi", "0"})
	f.prepareKilledAfter(StepMPSStarted, interrupted)
	if !f.mps.Running(string(interrupted.UID)) {
		t.Fatal("setup: the interrupted share's daemon not running")
	}
	// The kept share's daemon died (node reboot).
	if err := f.mps.Stop(ctx, string(kept.UID)); err != nil {
		t.Fatal(err)
	}
	cp, rep, err := f.reconcile(ctx, f.saved(), inv, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(rep.RolledBack, ","); got != string(interrupted.UID) {
		t.Errorf("rolled back %q, want %s", got, interrupted.UID)
	}
	if got := strings.Join(rep.MPSRestarted, ","); got != string(kept.UID) {
		t.Errorf("restarted %q, want the kept share's daemon", got)
	}
	if !f.mps.Running(string(kept.UID)) || f.mps.Running(string(interrupted.UID)) {
		t.Errorf("after reconcile: the kept share's daemon running %v (want true), the interrupted one's %v (want false)",
			f.mps.Running(string(kept.UID)), f.mps.Running(string(interrupted.UID)))
	}
	if log := string(mustRead(t, simhost.MPSLogPath(f.driverRoot))); strings.Count(log, "pipe="+f.mps.PipeDir(string(kept.UID))+" active_thread_percentage=30 pinned_device_mem_limit=0=10240M") != 2 {
		t.Errorf("the kept share's daemon was not started twice with its limits:\n%s", log)
	}
	if _, ok := cp.Claims[string(kept.UID)]; !ok || len(cp.Claims) != 1 {
		t.Errorf("claims after reconcile: %v", cp.Claims)
	}

	// A lost checkpoint: the share is rebuilt from its CDI spec with its
	// share ID, so unprepare later finds it.
	if err := os.Remove(f.store.Path()); err != nil {
		t.Fatal(err)
	}
	rebuilt, rep, err := f.reconcile(ctx, checkpoint.New("boot"), inv, &checkpoint.CorruptError{})
	if err != nil {
		t.Fatal(err)
	}
	d := rebuilt.Claims[string(kept.UID)].Devices[0]
	if len(rep.Rebuilt) != 1 || d.ShareID != "aaaaaaaa-0000-4000-8000-000000000001" || d.Share == nil || d.Share.MemoryBytes != 10<<30 {
		t.Errorf("rebuilt %v: %+v", rep.Rebuilt, d)
	}
	if !f.mps.Running(string(kept.UID)) || len(rep.OrphanMPS) != 0 {
		t.Errorf("the rebuilt share's daemon running %v, orphans stopped %v", f.mps.Running(string(kept.UID)), rep.OrphanMPS)
	}
}

// TestLegacySharesKeepTheirGPUsDaemon: shares a previous release prepared
// use their GPU's daemon, which every such share of the GPU used. After
// an upgrade that daemon is kept (not an orphan), started again when it
// is gone, and stopped with the last of those shares; a new share of the
// same GPU gets a daemon of its own and leaves it alone.
func TestLegacySharesKeepTheirGPUsDaemon(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	inv := f.inventory()
	gpu0 := inv.GPUs[0].UUID
	legacy := sharesAllocated(shareOf{"gpu-0-shared", "aaaaaaaa-0000-4000-8000-000000000001", "10Gi", "25"})
	if _, err := f.p.Prepare(ctx, legacy); err != nil {
		t.Fatal(err)
	}
	// Make it what the previous release left: the share served by the
	// GPU's daemon.
	if err := f.mps.Stop(ctx, string(legacy.UID)); err != nil {
		t.Fatal(err)
	}
	cp := f.saved()
	cp.Claims[string(legacy.UID)].Devices[0].MPSDir = f.mps.Dir(sharedDaemon(gpu0))
	if err := f.mps.Start(ctx, sharedDaemon(gpu0), []string{gpu0}, mps.Limits{}); err != nil {
		t.Fatal(err)
	}
	cp, rep, err := f.reconcile(ctx, cp, inv, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.OrphanMPS) != 0 || !f.mps.Running(sharedDaemon(gpu0)) || f.mps.Running(string(legacy.UID)) {
		t.Fatalf("after the upgrade: orphans %v, the GPU's daemon running %v (want true), a daemon of the claim's own %v (want false)",
			rep.OrphanMPS, f.mps.Running(sharedDaemon(gpu0)), f.mps.Running(string(legacy.UID)))
	}
	if err := f.store.Save(cp); err != nil {
		t.Fatal(err)
	}
	f.p = New(f.node, f.devices, f.cdi, f.store, cp, f.p.opts)

	fresh := sharesAllocated(shareOf{"gpu-0-shared", "bbbbbbbb-0000-4000-8000-000000000002", "20Gi", "25"})
	if _, err := f.p.Prepare(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	if !f.mps.Running(string(fresh.UID)) {
		t.Fatal("the new share has no daemon of its own")
	}
	if err := f.mps.Stop(ctx, sharedDaemon(gpu0)); err != nil { // its pod evicted
		t.Fatal(err)
	}
	if err := f.p.EnsureDaemons(ctx); err != nil {
		t.Fatal(err)
	}
	if !f.mps.Running(sharedDaemon(gpu0)) {
		t.Fatal("the GPU's daemon, which the legacy share uses, was not started again")
	}
	if err := f.p.Unprepare(ctx, ref(legacy)); err != nil {
		t.Fatal(err)
	}
	if f.mps.Running(sharedDaemon(gpu0)) || !f.mps.Running(string(fresh.UID)) {
		t.Fatalf("after the last legacy share: the GPU's daemon running %v (want false), the new share's %v (want true)",
			f.mps.Running(sharedDaemon(gpu0)), f.mps.Running(string(fresh.UID)))
	}
	if err := f.p.Unprepare(ctx, ref(fresh)); err != nil {
		t.Fatal(err)
	}
	f.checkNothingLeft(ctx, "after both unprepares")
}

// TestShareOnABoundedFilesystem: with the daemons' tmpfs on (the plugin's
// default), a share's containers get its daemon's pipe/ and shm/, both on
// that tmpfs, at /tmp/nvidia-mps and /dev/shm; unprepare leaves neither.
func TestShareOnABoundedFilesystem(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	f.mps.FS = mps.Filesystem{Root: filepath.Join(t.TempDir(), "mps-fs"), SizeBytes: 1 << 20, Inodes: 64}
	c := sharesAllocated(shareOf{"gpu-0-shared", "aaaaaaaa-0000-4000-8000-000000000001", "10Gi", "50"})
	if _, err := f.p.Prepare(ctx, c); err != nil {
		if strings.Contains(err.Error(), "operation not permitted") {
			t.Skipf("cannot mount a tmpfs here: %v", err)
		}
		t.Fatal(err)
	}
	dir := f.mps.Dir(string(c.UID))
	if !mps.Bounded(dir) {
		t.Fatal("the share's daemon has no tmpfs")
	}
	spec := f.spec(c)
	for _, want := range []string{`"hostPath":"` + mps.ShmDirIn(dir) + `","containerPath":"/dev/shm"`, `"hostPath":"` + mps.PipeDirIn(dir) + `","containerPath":"/tmp/nvidia-mps"`} {
		if !strings.Contains(spec, want) {
			t.Errorf("CDI spec lacks %s:\n%s", want, spec)
		}
	}
	if err := f.p.Unprepare(ctx, ref(c)); err != nil {
		t.Fatal(err)
	}
	if entries, err := os.ReadDir(f.mps.FS.Root); err != nil || len(entries) != 0 {
		t.Errorf("tmpfs left after unprepare: %v (%v)", entries, err)
	}
	f.checkNothingLeft(ctx, "after unprepare")
}
