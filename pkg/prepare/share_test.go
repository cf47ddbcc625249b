package prepare

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
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

// TestSharesOfOneGPU: shares of one GPU from different claims use one MPS
// daemon, each with its own limits in its containers' environment; the
// daemon stops with the last share.
func TestSharesOfOneGPU(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	gpu0 := f.inventory().GPUs[0].UUID
	daemon := sharedDaemon(gpu0)
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
	if !f.mps.Running(daemon) {
		t.Fatal("no MPS daemon for GPU 0's shares")
	}
	log := string(mustRead(t, simhost.MPSLogPath(f.driverRoot)))
	if strings.Count(log, " start ") != 1 || !strings.Contains(log, "devices="+gpu0+" ") {
		t.Fatalf("want one daemon started for GPU 0:\n%s", log)
	}
	for c, want := range map[*resourceapi.ResourceClaim][]string{
		a: {"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=20480M", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25", "NVIDIA_VISIBLE_DEVICES=" + gpu0, f.mps.PipeDir(daemon)},
		b: {"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=40960M", "CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps", f.mps.PipeDir(daemon)},
	} {
		spec := f.spec(c)
		for _, w := range want {
			if !strings.Contains(spec, w) {
				t.Errorf("CDI spec of %s lacks %q:\n%s", c.Name, w, spec)
			}
		}
	}
	if strings.Contains(f.spec(b), "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE") {
		t.Errorf("a share without compute got a thread limit:\n%s", f.spec(b))
	}

	if err := f.p.Unprepare(ctx, ref(a)); err != nil {
		t.Fatal(err)
	}
	if !f.mps.Running(daemon) {
		t.Fatal("daemon stopped while another share uses it")
	}
	if err := f.p.Unprepare(ctx, ref(b)); err != nil {
		t.Fatal(err)
	}
	if f.mps.Running(daemon) {
		t.Fatal("daemon still running after the last share")
	}
	if keys, _ := f.mps.Claims(context.Background()); len(keys) != 0 {
		t.Errorf("daemon directories left: %v", keys)
	}
}

// TestTwoSharesInOneClaim: one claim may hold two shares of one GPU; each
// is its own CDI device.
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
	for _, w := range []string{"0=10240M", "0=30720M"} {
		if !strings.Contains(spec, w) {
			t.Errorf("CDI spec lacks %q", w)
		}
	}
	if err := f.p.Unprepare(context.Background(), ref(c)); err != nil {
		t.Fatal(err)
	}
	if f.mps.Running(sharedDaemon(f.inventory().GPUs[0].UUID)) {
		t.Error("daemon still running")
	}
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
		{"shares of two GPUs in one request", func() *resourceapi.ResourceClaim {
			// count: 2 or allocationMode: All; the scheduler never gives one
			// request the same device twice.
			c := sharesAllocated(shareOf{"gpu-0-shared", sid, "50Gi", "0"}, shareOf{"gpu-1-shared", "bbbbbbbb-0000-4000-8000-000000000002", "50Gi", "0"})
			c.Status.Allocation.Devices.Results[1].Request = "req-0"
			return c
		}, "request req-0: its devices gpu-0-shared and gpu-1-shared are shares of two GPUs"},
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

// TestReconcileShares: after a restart the daemon of a GPU with shares
// runs (started again if it died), an interrupted share is rolled back,
// and the daemon of a GPU without shares is stopped.
func TestReconcileShares(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	inv := f.inventory()
	kept := sharesAllocated(shareOf{"gpu-0-shared", "aaaaaaaa-0000-4000-8000-000000000001", "10Gi", "0"})
	if _, err := f.p.Prepare(ctx, kept); err != nil {
		t.Fatal(err)
	}
	// Killed after GPU 1's daemon started, before the spec: GPU 1 has no
	// other share, so its daemon is an orphan.
	interrupted := sharesAllocated(shareOf{"gpu-1-shared", "bbbbbbbb-0000-4000-8000-000000000002", "10Gi", "0"})
	f.prepareKilledAfter(StepMPSStarted, interrupted)
	if !f.mps.Running(sharedDaemon(inv.GPUs[1].UUID)) {
		t.Fatal("setup: GPU 1's daemon not running")
	}
	// GPU 0's daemon died (node reboot).
	if err := f.mps.Stop(ctx, sharedDaemon(inv.GPUs[0].UUID)); err != nil {
		t.Fatal(err)
	}
	cp, rep, err := f.reconcile(ctx, f.saved(), inv, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(rep.RolledBack, ","); got != string(interrupted.UID) {
		t.Errorf("rolled back %q, want %s", got, interrupted.UID)
	}
	if got := strings.Join(rep.MPSRestarted, ","); got != sharedDaemon(inv.GPUs[0].UUID) {
		t.Errorf("restarted %q, want GPU 0's daemon", got)
	}
	if got := strings.Join(rep.OrphanMPS, ","); got != sharedDaemon(inv.GPUs[1].UUID) {
		t.Errorf("orphans stopped %q, want GPU 1's daemon", got)
	}
	if !f.mps.Running(sharedDaemon(inv.GPUs[0].UUID)) || f.mps.Running(sharedDaemon(inv.GPUs[1].UUID)) {
		t.Errorf("after reconcile: GPU 0's daemon running %v (want true), GPU 1's %v (want false)",
			f.mps.Running(sharedDaemon(inv.GPUs[0].UUID)), f.mps.Running(sharedDaemon(inv.GPUs[1].UUID)))
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
	if !f.mps.Running(sharedDaemon(inv.GPUs[0].UUID)) {
		t.Error("the rebuilt share's daemon was stopped")
	}
}
