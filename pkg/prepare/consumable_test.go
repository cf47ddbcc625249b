package prepare

import (
	"context"
	"errors"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

// consumableAllocated is a claim allocated a consumable share of a whole
// GPU (NVIDIA's consumable shares) as the scheduler records it: a share
// ID and the memory (and shares, "" for none) it consumes.
func consumableAllocated(device, shareID, memory, shares string) *resourceapi.ResourceClaim {
	c := sharesAllocated(shareOf{device: device, shareID: shareID, memory: memory})
	if shares != "" {
		c.Status.Allocation.Devices.Results[0].ConsumedCapacity[names.CapacityShares] = resource.MustParse(shares)
	}
	return c
}

// TestConsumableSharesOfOneGPU: consumable shares of one whole GPU from
// different claims are prepared side by side. A share of some of the
// GPU's memory runs under its claim's own MPS daemon with that memory as
// the pinned limit, and its containers are told it; a share of no memory
// or of all of it gets the GPU as a whole GPU claim does, no daemon and
// no MPS environment. Unprepare undoes exactly that.
func TestConsumableSharesOfOneGPU(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	gpu0 := f.inventory().GPUs[0].UUID
	limited := consumableAllocated("gpu-0", "aaaaaaaa-0000-4000-8000-000000000001", "2Gi", "")
	counted := consumableAllocated("gpu-0", "bbbbbbbb-0000-4000-8000-000000000002", "0", "1")
	all := consumableAllocated("gpu-0", "cccccccc-0000-4000-8000-000000000003", "80Gi", "")
	for _, c := range []*resourceapi.ResourceClaim{limited, counted, all} {
		devs, err := f.p.Prepare(ctx, c)
		if err != nil {
			t.Fatalf("%s: %v", c.Name, err)
		}
		if len(devs) != 1 || devs[0].ShareID == nil || *devs[0].ShareID != *c.Status.Allocation.Devices.Results[0].ShareID || devs[0].DeviceName != "gpu-0" {
			t.Fatalf("%s: devices for the kubelet %+v", c.Name, devs)
		}
	}
	if !f.mps.Running(string(limited.UID)) || f.mps.Running(string(counted.UID)) || f.mps.Running(string(all.UID)) {
		t.Fatalf("daemons: limited %v (want true), counted %v, all %v (want false)",
			f.mps.Running(string(limited.UID)), f.mps.Running(string(counted.UID)), f.mps.Running(string(all.UID)))
	}
	log := string(mustRead(t, simhost.MPSLogPath(f.driverRoot)))
	if want := "devices=" + gpu0 + " pipe=" + f.mps.PipeDir(string(limited.UID)) + " pinned_device_mem_limit=0=2048M\n"; !strings.Contains(log, want) || strings.Count(log, " start ") != 1 {
		t.Errorf("want one daemon, started with %q:\n%s", want, log)
	}
	if spec := f.spec(limited); !strings.Contains(spec, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=2048M") || !strings.Contains(spec, f.mps.PipeDir(string(limited.UID))) {
		t.Errorf("the limited share's CDI spec lacks its limit or pipe directory:\n%s", spec)
	}
	for _, c := range []*resourceapi.ResourceClaim{counted, all} {
		spec := f.spec(c)
		if strings.Contains(spec, "CUDA_MPS") || strings.Contains(spec, "nvidia-mps") || !strings.Contains(spec, "GPU_DRA_DEVICE_UUIDS="+gpu0) {
			t.Errorf("%s, a share without a limit, got MPS or not its GPU:\n%s", c.Name, spec)
		}
	}
	cp := f.saved()
	for c, want := range map[*resourceapi.ResourceClaim]int64{limited: 2 << 30, counted: 0, all: 0} {
		d := cp.Claims[string(c.UID)].Devices[0]
		if d.Share == nil || d.Share.MemoryBytes != want || d.ShareID != string(*c.Status.Allocation.Devices.Results[0].ShareID) {
			t.Errorf("%s recorded as %+v, want a share of %d bytes", c.Name, d, want)
		}
	}
	for _, c := range []*resourceapi.ResourceClaim{limited, counted, all} {
		if err := f.p.Unprepare(ctx, ref(c)); err != nil {
			t.Fatal(err)
		}
	}
	f.checkNothingLeft(ctx, "after the unprepares")
}

// TestConsumableShareAndExclusiveUseWaitForEachOther: a whole GPU
// allocated exclusively (consumable shares off when the scheduler
// allocated it) and a consumable share of it are never prepared at once.
func TestConsumableShareAndExclusiveUseWaitForEachOther(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	s := consumableAllocated("gpu-0", "aaaaaaaa-0000-4000-8000-000000000001", "0", "1")
	if _, err := f.p.Prepare(ctx, s); err != nil {
		t.Fatal(err)
	}
	var held *heldError
	for _, other := range []*resourceapi.ResourceClaim{allocated("gpu-0"), allocated("gpu-0-mig-1g10gb-6")} {
		if _, err := f.p.Prepare(ctx, other); !errors.As(err, &held) || held.owner != string(s.UID) {
			t.Fatalf("%s beside a consumable share of its GPU: got %v, want held by %s", other.Status.Allocation.Devices.Results[0].Device, err, s.UID)
		}
	}
	if err := f.p.Unprepare(ctx, ref(s)); err != nil {
		t.Fatal(err)
	}
	whole := allocated("gpu-0")
	if _, err := f.p.Prepare(ctx, whole); err != nil {
		t.Fatal(err)
	}
	if _, err := f.p.Prepare(ctx, consumableAllocated("gpu-0", "bbbbbbbb-0000-4000-8000-000000000002", "2Gi", "")); !errors.As(err, &held) || held.owner != string(whole.UID) {
		t.Fatalf("consumable share beside the exclusive GPU: got %v, want held by %s", err, whole.UID)
	}
	if keys, _ := f.mps.Claims(ctx); len(keys) != 0 {
		t.Errorf("a refused share left a daemon: %v", keys)
	}
}

// TestConsumableShareErrors: what cannot be prepared is refused naming the
// device and the reason, and nothing is left behind.
func TestConsumableShareErrors(t *testing.T) {
	const sid = "aaaaaaaa-0000-4000-8000-000000000001"
	for _, tc := range []struct {
		name  string
		claim func() *resourceapi.ResourceClaim
		noMPS bool
		want  string
	}{
		{"negative memory", func() *resourceapi.ResourceClaim { return consumableAllocated("gpu-0", sid, "-1Gi", "") }, false, "is negative"},
		{"a memory limit without MPS", func() *resourceapi.ResourceClaim { return consumableAllocated("gpu-0", sid, "2Gi", "") }, true,
			"memory limit is enforced through MPS, which is not available on this node"},
		{"sharing configuration", func() *resourceapi.ResourceClaim {
			c := consumableAllocated("gpu-0", sid, "0", "1")
			c.Status.Allocation.Devices.Config = withConfig("gpu-0", longTimeSlice).Status.Allocation.Devices.Config
			return c
		}, false, "parameters.sharing: a share of a GPU"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, "dgxh100")
			if tc.noMPS {
				f.p.opts.MPS = nil
			}
			_, err := f.p.Prepare(context.Background(), tc.claim())
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "gpu-0") {
				t.Fatalf("got %v, want an error about gpu-0 with %q", err, tc.want)
			}
			if keys, _ := f.mps.Claims(context.Background()); len(keys) != 0 || len(f.specs()) != 0 || len(f.saved().Claims) != 0 {
				t.Errorf("left behind: daemons %v, specs %v, claims %d", keys, f.specs(), len(f.saved().Claims))
			}
		})
	}
	t.Run("no MPS needed without a limit", func(t *testing.T) {
		f := newFixture(t, "dgxh100")
		f.p.opts.MPS = nil
		c := consumableAllocated("gpu-0", sid, "0", "1")
		if _, err := f.p.Prepare(context.Background(), c); err != nil {
			t.Fatal(err)
		}
		if err := f.p.Unprepare(context.Background(), ref(c)); err != nil {
			t.Fatal(err)
		}
	})
}
