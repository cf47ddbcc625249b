package checkpoint

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestQueries(t *testing.T) {
	cp := New("boot")
	mig := func(start int, created bool, uuid string) *MIG {
		return &MIG{ProfileID: 0, Profile: "1g.10gb", Start: start, Size: 1, Created: created, UUID: uuid, GIID: 10 + start, CIID: 0}
	}
	cp.Claims["done"] = &Claim{UID: "done", State: PrepareCompleted, Devices: []Device{
		{Pool: "p", Name: "gpu-0-mig-1g10gb-3", GPUUUID: "GPU-0", MIG: mig(3, true, "MIG-3")},
		{Pool: "p", Name: "gpu-1", GPUUUID: "GPU-1"},
	}}
	cp.Claims["admin"] = &Claim{UID: "admin", State: PrepareCompleted, Devices: []Device{
		{Pool: "p", Name: "gpu-0-mig-1g10gb-3", GPUUUID: "GPU-0", MIG: mig(3, false, "MIG-3"), AdminAccess: true},
	}}
	cp.Claims["started"] = &Claim{UID: "started", State: PrepareStarted, Devices: []Device{
		{Pool: "p", Name: "gpu-0-mig-1g10gb-5", GPUUUID: "GPU-0", MIG: mig(5, false, "")},
	}}
	cp.Claims["share-a"] = &Claim{UID: "share-a", State: PrepareCompleted, Devices: []Device{
		{Pool: "p", Name: "gpu-2-shared", GPUUUID: "GPU-2", ShareID: "s1", Share: &Share{MemoryBytes: 1}, MPSDir: "/mps/shared-GPU-2"},
	}}
	cp.Claims["share-b"] = &Claim{UID: "share-b", State: PrepareCompleted, Devices: []Device{
		{Pool: "p", Name: "gpu-2-shared", GPUUUID: "GPU-2", ShareID: "s2", Share: &Share{MemoryBytes: 1}, MPSDir: "/mps/shared-GPU-2"},
		{Pool: "p", Name: "gpu-2-shared", GPUUUID: "GPU-2", ShareID: "s3", Share: &Share{MemoryBytes: 1}, MPSDir: "/mps/shared-GPU-2"},
	}}
	cp.Claims["share-c"] = &Claim{UID: "share-c", State: PrepareCompleted, Devices: []Device{
		{Pool: "p", Name: "gpu-2-shared", GPUUUID: "GPU-2", ShareID: "s4", Share: &Share{MemoryBytes: 1}, MPSDir: "/mps/share-c"},
	}}

	at := func(gpu string, start int) Placement { return Placement{GPUUUID: gpu, ProfileID: 0, Start: start} }
	if d, ok := cp.MIGAt(at("GPU-0", 3)); !ok || d.MIG.UUID != "MIG-3" || d.AdminAccess {
		t.Errorf("MIGAt(GPU-0, 3) = %+v, %v; want the creator's MIG-3", d, ok)
	}
	for _, p := range []Placement{at("GPU-0", 5), at("GPU-1", 3), {GPUUUID: "GPU-0", ProfileID: 9, Start: 3}} {
		if d, ok := cp.MIGAt(p); ok {
			t.Errorf("MIGAt(%+v) = %+v, want none (planned, another GPU or profile)", p, d)
		}
	}
	if got := cp.MIGUUID("GPU-0", 13, 0); got != "MIG-3" {
		t.Errorf("MIGUUID(GPU-0, 13, 0) = %q", got)
	}
	if got := cp.MIGUUID("GPU-1", 13, 0); got != "" {
		t.Errorf("MIGUUID(GPU-1, 13, 0) = %q, want none", got)
	}

	for _, tc := range []struct {
		uuid string
		at   Placement
		want bool
	}{
		{"MIG-3", at("GPU-0", 3), true},
		{"MIG-new", at("GPU-0", 5), true}, // planned by a claim being prepared
		{"MIG-admin", at("GPU-0", 6), false},
		{"MIG-other", at("GPU-1", 5), false},
	} {
		if got := cp.Manages(tc.uuid, tc.at); got != tc.want {
			t.Errorf("Manages(%s, %+v) = %v, want %v", tc.uuid, tc.at, got, tc.want)
		}
	}

	for _, tc := range []struct {
		name string
		uid  string
		dev  Device
		want string
	}{
		{"same whole GPU", "new", Device{Pool: "p", Name: "gpu-1", GPUUUID: "GPU-1"}, "done"},
		{"itself", "done", Device{Pool: "p", Name: "gpu-1", GPUUUID: "GPU-1"}, ""},
		{"another pool", "new", Device{Pool: "q", Name: "gpu-1", GPUUUID: "GPU-1"}, ""},
		{"admin access", "new", Device{Pool: "p", Name: "gpu-1", GPUUUID: "GPU-1", AdminAccess: true}, ""},
		{"another share", "new", Device{Pool: "p", Name: "gpu-2-shared", GPUUUID: "GPU-2", Share: &Share{}}, ""},
		{"whole GPU of shares", "new", Device{Pool: "p", Name: "gpu-2", GPUUUID: "GPU-2"}, "share-"},
		{"MIG device of a whole GPU", "new", Device{Pool: "p", Name: "gpu-1-mig-1g10gb-0", GPUUUID: "GPU-1", MIG: mig(0, false, "")}, "done"},
		{"overlapping MIG device", "new", Device{Pool: "p", Name: "gpu-0-mig-2g20gb-2", GPUUUID: "GPU-0", MIG: &MIG{Start: 2, Size: 2}}, "done"},
		{"MIG device beside", "new", Device{Pool: "p", Name: "gpu-0-mig-1g10gb-4", GPUUUID: "GPU-0", MIG: mig(4, false, "")}, ""},
	} {
		if got := cp.Owner(tc.uid, tc.dev); !strings.HasPrefix(got, tc.want) || (tc.want == "") != (got == "") {
			t.Errorf("%s: Owner = %q, want %q", tc.name, got, tc.want)
		}
	}
	// Instance limits: claims "done" (created, MIG-3) and "started"
	// (planned) hold 1g.10gb devices on GPU-0; admin access and a
	// pre-created instance do not count.
	cp.Claims["static"] = &Claim{UID: "static", State: PrepareCompleted, Devices: []Device{
		{Pool: "p", Name: "gpu-0-mig-static-1g10gb-6", GPUUUID: "GPU-0", MIG: mig(6, false, "MIG-6")},
	}}
	for _, tc := range []struct {
		name, uid, gpu string
		profile, max   int
		want           string
	}{
		{"limit reached", "new", "GPU-0", 0, 2, "done"},
		{"room for one more", "new", "GPU-0", 0, 3, ""},
		{"the claim's own devices do not count", "done", "GPU-0", 0, 1, "started"},
		{"another GPU", "new", "GPU-1", 0, 1, ""},
		{"another profile", "new", "GPU-0", 9, 1, ""},
	} {
		if got := cp.InstanceOwner(tc.uid, tc.gpu, tc.profile, tc.max); got != tc.want {
			t.Errorf("%s: InstanceOwner = %q, want %q", tc.name, got, tc.want)
		}
	}
	delete(cp.Claims, "static")
	if got := cp.SharesThrough("/mps/shared-GPU-2"); strings.Join(got, ",") != "share-a,share-b" {
		t.Errorf("SharesThrough(/mps/shared-GPU-2) = %v, want the shares that daemon serves", got)
	}
	if got := cp.SharesThrough("/mps/shared-GPU-0"); len(got) != 0 {
		t.Errorf("SharesThrough(/mps/shared-GPU-0) = %v, want none", got)
	}
}

// TestDeviceRecord: the copy of a device in a CDI spec is versioned and
// checksummed like the checkpoint; a changed byte, a newer version or a
// record without one is refused; and a plugin that reads the unversioned
// record still reads it.
func TestDeviceRecord(t *testing.T) {
	c := sample().Claims["uid-1"]
	raw, err := EncodeDevice(c, c.Devices[0])
	if err != nil {
		t.Fatal(err)
	}
	r, err := DecodeDevice(raw)
	if err != nil {
		t.Fatal(err)
	}
	want := c.Devices[0]
	want.CDIDeviceIDs = nil
	if r.Namespace != c.Namespace || r.Claim != c.Name || r.Device.Name != want.Name || *r.Device.MIG != *want.MIG {
		t.Fatalf("decoded %+v, want %+v", r, want)
	}
	var legacy struct {
		Namespace string `json:"namespace"`
		Claim     string `json:"claim"`
		Device    Device `json:"device"`
	}
	if err := json.Unmarshal([]byte(raw), &legacy); err != nil || legacy.Namespace != c.Namespace || legacy.Claim != c.Name || legacy.Device.Name != want.Name {
		t.Errorf("an older plugin reads %+v (%v)", legacy, err)
	}
	for name, bad := range map[string]string{
		"changed byte":   strings.Replace(raw, "MIG-1", "MIG-2", 1),
		"newer version":  strings.Replace(raw, `"version":1`, `"version":2`, 1),
		"unversioned":    `{"namespace":"ns","claim":"c","device":{"requests":["gpu"],"name":"gpu-0"}}`,
		"not JSON":       "{",
		"no device name": mustEncode(t, c, Device{Requests: []string{"r"}}),
	} {
		if _, err := DecodeDevice(bad); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

func mustEncode(t *testing.T, c *Claim, d Device) string {
	t.Helper()
	raw, err := EncodeDevice(c, d)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}
