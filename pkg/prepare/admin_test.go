package prepare

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
)

// withAdminAccess marks every result of c as allocated with admin access.
func withAdminAccess(c *resourceapi.ResourceClaim) *resourceapi.ResourceClaim {
	yes := true
	for i := range c.Status.Allocation.Devices.Results {
		c.Status.Allocation.Devices.Results[i].AdminAccess = &yes
	}
	return c
}

// TestAdminAccess: a device allocated with admin access (a monitoring pod)
// is given as it is, at once, while another claim holds it; it holds off
// no other claim; and its unprepare changes nothing the other claims use.
func TestAdminAccess(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	f.p.opts.HeldWait = 5 * time.Second // a wait would show as a slow test; a failure as an error

	// A GPU in exclusive use, and a MIG device another claim created.
	user := allocated("gpu-0")
	if _, err := f.p.Prepare(ctx, user); err != nil {
		t.Fatal(err)
	}
	migUser := allocated("gpu-2-mig-1g10gb-3")
	if _, err := f.p.Prepare(ctx, migUser); err != nil {
		t.Fatal(err)
	}
	migUUID := f.liveMIG()[0].UUID

	start := time.Now()
	// gpu-2 itself too: a GPU in MIG mode, which admin access leaves so.
	monitor := withAdminAccess(allocated("gpu-0", "gpu-2-mig-1g10gb-3", "gpu-2", "gpu-4-shared", "gpu-5"))
	devs, err := f.p.Prepare(ctx, monitor)
	if err != nil {
		t.Fatalf("admin access to devices in use: %v", err)
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Errorf("admin access waited %s for the devices' holders", waited)
	}
	if len(devs) != 5 {
		t.Fatalf("devices %+v", devs)
	}
	spec := string(mustRead(t, f.cdi.SpecPath(string(monitor.UID))))
	for _, want := range []string{f.inventory().GPUs[0].UUID, migUUID, f.inventory().GPUs[4].UUID} {
		if !strings.Contains(spec, want) {
			t.Errorf("the monitor's spec lacks %s", want)
		}
	}
	if strings.Contains(spec, "CUDA_MPS") {
		t.Error("admin access to a shared GPU got an MPS share")
	}
	if n := len(f.liveMIG()); n != 1 {
		t.Errorf("%d MIG devices after admin access, want the one that was there", n)
	}

	// The admin claim holds off nobody: gpu-5 is prepared for a user at once.
	start = time.Now()
	later := allocated("gpu-5")
	if _, err := f.p.Prepare(ctx, later); err != nil {
		t.Fatalf("a claim of a device a monitor has: %v", err)
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Errorf("a user waited %s for a monitor", waited)
	}

	// The MIG device's creator goes, and a new claim creates the placement
	// again: a second monitor gets the new instance, not the first
	// monitor's record of the old one.
	second := withAdminAccess(allocated("gpu-2-mig-1g10gb-3"))
	if err := f.p.Unprepare(ctx, ref(migUser)); err != nil {
		t.Fatal(err)
	}
	again := allocated("gpu-2-mig-1g10gb-3")
	if _, err := f.p.Prepare(ctx, again); err != nil {
		t.Fatal(err)
	}
	newUUID := f.liveMIG()[0].UUID
	if newUUID == migUUID {
		t.Fatalf("the simulator reused the MIG UUID %s", migUUID)
	}
	for range 5 { // the checkpoint's map has no order: try it more than once
		if _, err := f.p.Prepare(ctx, second); err != nil {
			t.Fatal(err)
		}
		if spec := string(mustRead(t, f.cdi.SpecPath(string(second.UID)))); !strings.Contains(spec, newUUID) {
			t.Fatalf("the second monitor got the destroyed instance, not %s:\n%s", newUUID, spec)
		}
		if err := f.p.Unprepare(ctx, ref(second)); err != nil {
			t.Fatal(err)
		}
	}
	migUser, migUUID = again, newUUID

	// Its unprepare leaves the others' devices alone.
	if err := f.p.Unprepare(ctx, ref(monitor)); err != nil {
		t.Fatal(err)
	}
	if live := f.liveMIG(); len(live) != 1 || live[0].UUID != migUUID {
		t.Errorf("after the monitor's unprepare, MIG devices %+v, want %s kept", live, migUUID)
	}
	for _, c := range []*resourceapi.ResourceClaim{user, migUser, later} {
		if _, err := os.Stat(f.cdi.SpecPath(string(c.UID))); err != nil {
			t.Errorf("claim %s lost its spec: %v", c.Name, err)
		}
	}
}

func TestAdminAccessErrors(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	for _, tc := range []struct {
		name    string
		claim   *resourceapi.ResourceClaim
		wantErr string
	}{
		{"a MIG device nobody created", withAdminAccess(allocated("gpu-1-mig-1g10gb-0")), "exists only while a claim holds it"},
		{"sharing settings", withAdminAccess(withConfig("gpu-3", longTimeSlice)), "parameters.sharing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.p.Prepare(ctx, tc.claim)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one naming %q", err, tc.wantErr)
			}
			if len(f.specs()) != 0 || len(f.liveMIG()) != 0 {
				t.Errorf("a refused claim left specs %v or MIG devices %v", f.specs(), f.liveMIG())
			}
		})
	}
}

// TestAdminAccessToAShare: the scheduler gives every allocation of a
// shared GPU a share ID, admin access included, and one claim may hold
// the same shared GPU more than once. Each allocation is reported with its
// own share ID (the API server refuses a status entry without it) and has
// a CDI device of its own; admin access still gets no MPS share.
func TestAdminAccessToAShare(t *testing.T) {
	const (
		adminA = "aaaaaaaa-0000-4000-8000-000000000001"
		adminB = "bbbbbbbb-0000-4000-8000-000000000002"
		user   = "cccccccc-0000-4000-8000-000000000003"
	)
	ctx := context.Background()
	f := newFixture(t, "dgxh100")
	c := sharesAllocated(
		shareOf{"gpu-4-shared", adminA, "80Gi", "0"},
		shareOf{"gpu-4-shared", adminB, "80Gi", "0"},
		shareOf{"gpu-4-shared", user, "10Gi", "10"})
	yes := true
	c.Status.Allocation.Devices.Results[0].AdminAccess = &yes
	c.Status.Allocation.Devices.Results[1].AdminAccess = &yes
	devs, err := f.p.Prepare(ctx, c)
	if err != nil {
		t.Fatalf("admin access to a shared GPU, twice, beside a share: %v", err)
	}
	want := map[string]string{"req-0": adminA, "req-1": adminB, "req-2": user}
	ids := map[string]bool{}
	for _, d := range devs {
		if d.ShareID == nil || string(*d.ShareID) != want[d.Requests[0]] {
			t.Errorf("request %s reported with share ID %v, want %s", d.Requests[0], d.ShareID, want[d.Requests[0]])
		}
		for _, id := range d.CDIDeviceIDs {
			ids[id] = true
		}
	}
	if len(devs) != 3 || len(ids) != 3 {
		t.Errorf("want three devices with a CDI device each, got %+v", devs)
	}
	if got := strings.Count(f.spec(c), "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0="); got != 1 {
		t.Errorf("%d devices of the spec have an MPS memory limit, want only the user's share", got)
	}
	if err := f.p.Unprepare(ctx, ref(c)); err != nil {
		t.Fatal(err)
	}
	if f.mps.Running(string(c.UID)) || len(f.specs()) != 0 {
		t.Errorf("after unprepare: daemon running %v, specs %v", f.mps.Running(string(c.UID)), f.specs())
	}
}
