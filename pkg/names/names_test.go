package names

import "testing"

func TestDeviceNamesParseBack(t *testing.T) {
	tests := []struct {
		name  string
		built string
		want  ParsedDevice
	}{
		{"whole GPU", GPUDevice(3), ParsedDevice{Minor: 3, Type: TypeGPU}},
		{"MIG placement", MIGDevice(12, "1g.10gb+me", 6), ParsedDevice{Minor: 12, Type: TypeMIG}},
		{"pre-created MIG", StaticMIGDevice(0, "7g.80gb", 0), ParsedDevice{Minor: 0, Type: TypeMIG}},
		{"shared GPU", SharedDevice(7), ParsedDevice{Minor: 7, Type: TypeShared}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ParseDevice(tt.built)
			if !ok || got != tt.want {
				t.Errorf("ParseDevice(%q) = %+v, %v; want %+v", tt.built, got, ok, tt.want)
			}
		})
	}
}

func TestDeviceNamesSpelled(t *testing.T) {
	tests := []struct{ got, want string }{
		{GPUDevice(3), "gpu-3"},
		{MIGDevice(3, "1g.10gb", 6), "gpu-3-mig-1g10gb-6"},
		{MIGDevice(3, "1g.10gb+me", 0), "gpu-3-mig-1g10gbme-0"},
		{StaticMIGDevice(3, "3g.40gb", 4), "gpu-3-mig-3g40gb-4-static"},
		{SharedDevice(3), "gpu-3-shared"},
		{CounterSet(3), "gpu-3"},
		{MemorySliceCounter(5), "memory-slice-5"},
		{InstanceLimitCounter("1g.10gb+me"), "instances-1g10gbme"},
		{SanitizeProfile("1g.10gb-me"), "1g10gbnome"},
		{SanitizeProfile("1g.10gb+me.all"), "1g10gbmeall"},
		{HealthTaintKey("xid"), "gpu.nvidia.com/xid"},
		{HealthClearedGPUAnnotation(3), "gpu.nvidia.com/health-cleared-gpu-3"},
		{GPUEventMessage(3, "taint x added"), "gpu-3: taint x added"},
		{AttrPCIeRoot, "resource.kubernetes.io/pcieRoot"},
		{AttrNUMANode, "resource.kubernetes.io/numaNode"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestParseDeviceRefusesOthers(t *testing.T) {
	for _, name := range []string{
		"", "gpu", "gpu-", "gpu-x", "gpu-3x", "gpu-03", "gpu-+3", "gpu--3", "gpu-3-", "gpu-3-mig-",
		"gpu-3-other", "gpu-3-sharedx", "nic-0", "GPU-3",
	} {
		if got, ok := ParseDevice(name); ok {
			t.Errorf("ParseDevice(%q) = %+v, want refused", name, got)
		}
	}
}

func TestParseGPUDevice(t *testing.T) {
	tests := []struct {
		in    string
		minor int
		ok    bool
	}{
		{"gpu-3", 3, true},
		{"3", 3, true},
		{"gpu-0", 0, true},
		{"gpu-03", 0, false},
		{"-1", 0, false},
		{"gpu-3-mig-1g10gb-0", 0, false},
	}
	for _, tt := range tests {
		minor, ok := ParseGPUDevice(tt.in)
		if ok != tt.ok || minor != tt.minor {
			t.Errorf("ParseGPUDevice(%q) = %d, %v; want %d, %v", tt.in, minor, ok, tt.minor, tt.ok)
		}
	}
}

func TestParseGPUEventMessage(t *testing.T) {
	tests := []struct {
		msg   string
		minor int
		what  string
		ok    bool
	}{
		{GPUEventMessage(30, "a: b"), 30, "a: b", true},
		{"gpu-3-shared: x", 0, "", false},
		{"gpu-03: x", 0, "", false},
		{"checkpoint corrupt", 0, "", false},
	}
	for _, tt := range tests {
		minor, what, ok := ParseGPUEventMessage(tt.msg)
		if minor != tt.minor || what != tt.what || ok != tt.ok {
			t.Errorf("ParseGPUEventMessage(%q) = %d, %q, %v; want %d, %q, %v", tt.msg, minor, what, ok, tt.minor, tt.what, tt.ok)
		}
	}
}

func TestHasGraphics(t *testing.T) {
	for profile, want := range map[string]bool{
		"1g.24gb+gfx": true, "2g.48gb+gfx": true, "1g.24gb+me+gfx": true, "1g.24gb+gfx+me": true,
		"1g.24gb": false, "1g.10gb+me": false, "1g.23gb+me.all": false, "4g.96gb": false, "gfx": false, "1g.24gbgfx": false, "": false,
	} {
		if got := HasGraphics(profile); got != want {
			t.Errorf("HasGraphics(%q) = %v, want %v", profile, got, want)
		}
	}
}
