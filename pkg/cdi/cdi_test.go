package cdi

import (
	"context"
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs/hostfstest"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simhosttest"
)

const uid = "0a1b2c3d-0000-1111-2222-333344445555"

func newWriter(t *testing.T) (*Writer, simhost.Roots) {
	t.Helper()
	hostfstest.RequireRoot(t, "the simulated /dev needs root")
	roots, err := simhost.Create(filepath.Join(t.TempDir(), "host"), []int{0, 1, 2}, "550.54.15", simhosttest.Tools(t))
	if err != nil {
		t.Fatal(err)
	}
	// The MIG devices the tests use exist: the kernel shows their
	// capabilities.
	withInstances(t, roots, 0, simhost.GPUInstanceCaps{ID: 1, ComputeInstances: []int{0}}, simhost.GPUInstanceCaps{ID: 2, ComputeInstances: []int{0}})
	w, err := New(Options{CDIRoot: filepath.Join(t.TempDir(), "cdi"), DriverRoot: roots.DriverRoot, DevRoot: roots.DevRoot, ProcRoot: roots.ProcRoot})
	if err != nil {
		t.Fatal(err)
	}
	return w, roots
}

// withInstances writes, as the kernel shows them, the capability files of
// the GPU instances of the GPU with minor gpuMinor.
func withInstances(t *testing.T, roots simhost.Roots, gpuMinor int, gis ...simhost.GPUInstanceCaps) {
	t.Helper()
	caps, err := simhost.OpenCapabilities(roots.ProcRoot)
	if err != nil {
		t.Fatal(err)
	}
	if err := caps.Sync(gpuMinor, gis); err != nil {
		t.Fatal(err)
	}
}

// inject resolves the claim's CDI IDs with the CDI library, as a container
// runtime does, into an empty OCI spec.
func inject(t *testing.T, w *Writer, ids ...string) *oci.Spec {
	t.Helper()
	return injectInto(t, w, nil, ids...)
}

// injectInto is inject into a spec whose process has the environment env
// (the image's and the pod's).
func injectInto(t *testing.T, w *Writer, env []string, ids ...string) *oci.Spec {
	t.Helper()
	cache, err := cdiapi.NewCache(cdiapi.WithSpecDirs(w.opts.CDIRoot), cdiapi.WithAutoRefresh(false))
	if err != nil {
		t.Fatal(err)
	}
	spec := &oci.Spec{Process: &oci.Process{Env: slices.Clone(env)}, Linux: &oci.Linux{}}
	if unresolved, err := cache.InjectDevices(spec, ids...); err != nil {
		t.Fatalf("inject %v: %v (unresolved %v)", ids, err, unresolved)
	}
	return spec
}

func devicePaths(s *oci.Spec) []string {
	var out []string
	for _, d := range s.Linux.Devices {
		out = append(out, d.Path)
	}
	slices.Sort(out)
	return out
}

func TestWholeGPUAndMIGSpecs(t *testing.T) {
	w, _ := newWriter(t)
	devs := []Device{
		{Name: "gpu-1", Request: "a", GPUMinor: 1, UUID: "GPU-1111"},
		{Name: "gpu-2", Request: "a", GPUMinor: 2, UUID: "GPU-2222"},
		{Name: "gpu-0-mig-1g10gb-3", Request: "b", GPUMinor: 0, UUID: "MIG-3333", MIG: &MIGDevice{GIID: 1, CIID: 0}, Env: map[string]string{"EXTRA": "x"}},
	}
	ids, err := w.WriteClaimSpec(context.Background(), uid, devs)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids["gpu-1"]; len(got) != 1 || got[0] != "k8s.gpu.nvidia.com/claim="+uid+"-gpu-1" {
		t.Fatalf("IDs %v", ids)
	}
	fi, err := os.Stat(w.SpecPath(uid))
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("spec file: %v %v", fi, err)
	}

	whole := inject(t, w, ids["gpu-1"][0])
	if got := strings.Join(devicePaths(whole), " "); got != "/dev/nvidia-modeset /dev/nvidia-uvm /dev/nvidia-uvm-tools /dev/nvidia1 /dev/nvidiactl" {
		t.Errorf("whole GPU device nodes: %s", got)
	}
	if !slices.Contains(whole.Process.Env, "GPU_DRA_DEVICE_UUIDS=GPU-1111,GPU-2222") {
		t.Errorf("devices of one request share the visible list: %v", whole.Process.Env)
	}
	for _, e := range whole.Process.Env {
		if strings.HasPrefix(e, "CUDA_VISIBLE_DEVICES=") {
			t.Errorf("%s: the device nodes decide what CUDA sees", e)
		}
	}
	var mounts []string
	for _, m := range whole.Mounts {
		mounts = append(mounts, m.Destination)
	}
	if !slices.Contains(mounts, "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15") || !slices.Contains(mounts, "/usr/bin/nvidia-smi") {
		t.Errorf("driver files not mounted: %v", mounts)
	}

	mig := inject(t, w, ids["gpu-0-mig-1g10gb-3"][0])
	// gpu0/gi1/access is the 12th entry of the table: minor 12; its ci0 13.
	// Neither has a node under the dev root: the runtime makes them from
	// their numbers.
	for _, want := range []string{"/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap12", "/dev/nvidia-caps/nvidia-cap13"} {
		if !slices.Contains(devicePaths(mig), want) {
			t.Errorf("MIG device lacks %s: %v", want, devicePaths(mig))
		}
	}
	for _, d := range mig.Linux.Devices {
		if d.Path == "/dev/nvidia-caps/nvidia-cap13" && (d.Type != "c" || d.Major != simhost.CapsMajor || d.Minor != 13 || d.FileMode == nil || *d.FileMode != 0o444) {
			t.Errorf("capability node %+v, want c %d:13 mode 0444", d, simhost.CapsMajor)
		}
		if d.Path == "/dev/nvidia-uvm-tools" && (d.Type != "c" || d.Major != simhost.UVMMajor || d.Minor != 1) {
			t.Errorf("nvidia-uvm-tools %+v, want c %d:1", d, simhost.UVMMajor)
		}
	}
	if !slices.Contains(mig.Process.Env, "GPU_DRA_DEVICE_UUIDS=MIG-3333") || !slices.Contains(mig.Process.Env, "EXTRA=x") {
		t.Errorf("MIG env: %v", mig.Process.Env)
	}
}

// TestVisibleDevicesOfAContainer: the runtime keeps the last value of a
// variable, so what a container sees named depends on which of the claim's
// devices it gets, in the kubelet's order (the claim's, or one request's):
// the last request's devices, never one the container does not get. The
// device nodes are all there. NVIDIA_VISIBLE_DEVICES is "void" whatever the
// image set (CUDA images set "all"), so that the NVIDIA runtime's legacy
// hook injects nothing.
func TestVisibleDevicesOfAContainer(t *testing.T) {
	w, _ := newWriter(t)
	devs := []Device{
		{Name: "gpu-0-mig-1g10gb-3", Request: "mig-1g", GPUMinor: 0, UUID: "MIG-1", MIG: &MIGDevice{GIID: 1, CIID: 0}},
		{Name: "gpu-0-mig-2g20gb-0", Request: "mig-2g", GPUMinor: 0, UUID: "MIG-2", MIG: &MIGDevice{GIID: 2, CIID: 0}},
		{Name: "gpu-1", Request: "gpu", GPUMinor: 1, UUID: "GPU-1"},
		{Name: "gpu-2", Request: "gpu", GPUMinor: 2, UUID: "GPU-2"},
	}
	ids, err := w.WriteClaimSpec(context.Background(), uid, devs)
	if err != nil {
		t.Fatal(err)
	}
	// value returns the variable's values in s, in order.
	value := func(s *oci.Spec, name string) []string {
		var out []string
		for _, e := range s.Process.Env {
			if v, ok := strings.CutPrefix(e, name+"="); ok {
				out = append(out, v)
			}
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		imageEnv []string
		devices  []string
		want     string
	}{
		{"the whole claim", nil, []string{"gpu-0-mig-1g10gb-3", "gpu-0-mig-2g20gb-0", "gpu-1", "gpu-2"}, "GPU-1,GPU-2"},
		{"request mig-2g", nil, []string{"gpu-0-mig-2g20gb-0"}, "MIG-2"},
		{"request gpu", nil, []string{"gpu-1", "gpu-2"}, "GPU-1,GPU-2"},
		{"a CUDA image's all", []string{"NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"}, []string{"gpu-1"}, "GPU-1,GPU-2"},
		{"a pod's own list", []string{"NVIDIA_VISIBLE_DEVICES=GPU-9", "GPU_DRA_DEVICE_UUIDS=GPU-9"}, []string{"gpu-0-mig-1g10gb-3"}, "MIG-1"},
	} {
		var cdiIDs []string
		for _, d := range tc.devices {
			cdiIDs = append(cdiIDs, ids[d]...)
		}
		spec := injectInto(t, w, tc.imageEnv, cdiIDs...)
		if got := value(spec, EnvDeviceUUIDs); !slices.Equal(got, []string{tc.want}) {
			t.Errorf("%s: %s=%v, want %s", tc.name, EnvDeviceUUIDs, got, tc.want)
		}
		if got := value(spec, "NVIDIA_VISIBLE_DEVICES"); !slices.Equal(got, []string{"void"}) {
			t.Errorf("%s: NVIDIA_VISIBLE_DEVICES=%v, want void only", tc.name, got)
		}
		for _, e := range spec.Process.Env {
			if strings.HasPrefix(e, "CUDA_VISIBLE_DEVICES=") {
				t.Errorf("%s: %s would hide the container's other devices from CUDA", tc.name, e)
			}
		}
		if n := len(devicePaths(spec)); n < len(tc.devices) {
			t.Errorf("%s: %d device nodes for %d devices", tc.name, n, len(tc.devices))
		}
	}
}

func TestBadInputWritesNothing(t *testing.T) {
	w, roots := newWriter(t)
	cases := map[string]struct {
		devs []Device
		want string
	}{
		"no devices":           {nil, "no devices"},
		"bad name":             {[]Device{{Name: "GPU_0", Request: "a", UUID: "GPU-1"}}, "device name"},
		"bad UUID":             {[]Device{{Name: "gpu-0", Request: "a", UUID: "MIG-1"}}, "UUID"},
		"driver's env":         {[]Device{{Name: "gpu-0", Request: "a", UUID: "GPU-1", Env: map[string]string{"NVIDIA_VISIBLE_DEVICES": "all"}}}, "reserved to the driver"},
		"device UUIDs env":     {[]Device{{Name: "gpu-0", Request: "a", UUID: "GPU-1", Env: map[string]string{"GPU_DRA_DEVICE_UUIDS": "GPU-2"}}}, "reserved to the driver"},
		"missing device node":  {[]Device{{Name: "gpu-7", Request: "a", GPUMinor: 7, UUID: "GPU-7"}}, "nvidia7"},
		"unknown MIG instance": {[]Device{{Name: "gpu-0-mig", Request: "a", UUID: "MIG-1", MIG: &MIGDevice{GIID: 99, CIID: 0}}}, "GPU minor 0 GPU instance 99"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := w.WriteClaimSpec(context.Background(), uid, tc.devs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if _, err := os.Stat(w.SpecPath(uid)); !errors.Is(err, fs.ErrNotExist) {
				t.Fatal("a spec was written")
			}
		})
	}
	if _, err := w.WriteClaimSpec(context.Background(), "Not_A_UID", []Device{{Name: "gpu-0", Request: "a", UUID: "GPU-1"}}); err == nil {
		t.Error("bad claim UID accepted")
	}
	if _, err := New(Options{CDIRoot: t.TempDir(), DriverRoot: filepath.Join(roots.DriverRoot, "nope")}); err == nil || !strings.Contains(err.Error(), "--driver-root") {
		t.Errorf("missing driver root: %v", err)
	}
}

func TestListAnnotateDelete(t *testing.T) {
	w, _ := newWriter(t)
	ctx := context.Background()
	other := "ffffffff-0000-1111-2222-333344445555"
	for _, u := range []string{uid, other} {
		if _, err := w.WriteClaimSpec(ctx, u, []Device{{Name: "gpu-0", Request: "a", UUID: "GPU-1", Annotations: map[string]string{"gpu.nvidia.com/x": u}}}); err != nil {
			t.Fatal(err)
		}
	}
	uids, err := w.ClaimUIDs()
	if err != nil || !slices.Equal(uids, []string{uid, other}) {
		t.Fatalf("ClaimUIDs = %v, %v", uids, err)
	}
	anns, err := w.DeviceAnnotations(other)
	if err != nil || anns["gpu-0"]["gpu.nvidia.com/x"] != other {
		t.Fatalf("annotations %v, %v", anns, err)
	}
	for i := 0; i < 2; i++ {
		if err := w.DeleteClaimSpec(uid); err != nil {
			t.Fatalf("delete %d: %v", i, err)
		}
	}
	if uids, _ := w.ClaimUIDs(); !slices.Equal(uids, []string{other}) {
		t.Fatalf("after delete: %v", uids)
	}
	entries, _ := os.ReadDir(w.opts.CDIRoot)
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
}

// TestDriverRootReadFromItsMount: in the plugin's container the driver root
// is read at its mount (--driver-root-mount), while the specs, which the
// container runtime resolves on the host, name the host paths.
func TestDriverRootReadFromItsMount(t *testing.T) {
	hostfstest.RequireRoot(t, "the simulated /dev needs root")
	roots, err := simhost.Create(filepath.Join(t.TempDir(), "host"), []int{0}, "550.54.15", simhosttest.Tools(t))
	if err != nil {
		t.Fatal(err)
	}
	// A hook, so its path is translated too.
	if err := os.WriteFile(filepath.Join(roots.DriverRoot, "usr/bin/nvidia-cdi-hook"), []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	const hostRoot = "/run/nvidia/driver"
	w, err := New(Options{CDIRoot: filepath.Join(t.TempDir(), "cdi"), DriverRoot: hostRoot, DriverRootMount: roots.DriverRoot,
		DevRoot: roots.DevRoot, ProcRoot: roots.ProcRoot, RequireLibraries: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(w.shared.Mounts) == 0 || len(w.shared.Hooks) != 1 {
		t.Fatalf("driver files found at the mount: %d mounts, %d hooks", len(w.shared.Mounts), len(w.shared.Hooks))
	}
	for _, m := range w.shared.Mounts {
		if !strings.HasPrefix(m.HostPath, hostRoot+"/") || strings.HasPrefix(m.HostPath, roots.DriverRoot) {
			t.Errorf("mount %s -> %s: the host path is not under the host's driver root %s", m.HostPath, m.ContainerPath, hostRoot)
		}
		// A SONAME link's mount (libcuda.so.1) has the library file
		// it names beside it.
		rel := strings.TrimPrefix(m.HostPath, hostRoot)
		link := filepath.Dir(rel) == filepath.Dir(m.ContainerPath) &&
			libraryStem(filepath.Base(rel)) != "" && libraryStem(filepath.Base(rel)) == libraryStem(filepath.Base(m.ContainerPath))
		// A configuration file is mounted where loaders look for it.
		config := slices.ContainsFunc(configFiles, func(c struct{ capability, rel, containerDir string }) bool {
			return strings.HasSuffix(rel, "/"+c.rel) && m.ContainerPath == c.containerDir+"/"+c.rel
		})
		if rel != m.ContainerPath && !link && !config {
			t.Errorf("mount %s -> %s: not the same path in the container", m.HostPath, m.ContainerPath)
		}
	}
	if got := w.shared.Hooks[0].Path; got != hostRoot+"/usr/bin/nvidia-cdi-hook" {
		t.Errorf("hook path %s, want the host's", got)
	}

	// The mount is what must exist; a missing one is named by its flag.
	_, err = New(Options{CDIRoot: t.TempDir(), DriverRoot: roots.DriverRoot, DriverRootMount: filepath.Join(t.TempDir(), "nope")})
	if err == nil || !strings.Contains(err.Error(), "--driver-root-mount") {
		t.Errorf("a missing mount: %v", err)
	}
}

// TestDeviceMounts: a device's mounts (the MPS pipe and log directories)
// reach the container as bind mounts, read-only where asked, and never
// with set-user-ID programs or device nodes working through them.
func TestDeviceMounts(t *testing.T) {
	w, _ := newWriter(t)
	dir := t.TempDir()
	devs := []Device{{Name: "gpu-1", Request: "a", GPUMinor: 1, UUID: "GPU-1111", Mounts: []Mount{
		{HostPath: filepath.Join(dir, "pipe"), ContainerPath: "/tmp/nvidia-mps"},
		{HostPath: filepath.Join(dir, "log"), ContainerPath: "/var/log/nvidia-mps", ReadOnly: true},
	}}}
	ids, err := w.WriteClaimSpec(context.Background(), uid, devs)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, m := range inject(t, w, ids["gpu-1"][0]).Mounts {
		if strings.HasPrefix(m.Source, dir) {
			got[m.Source+" -> "+m.Destination] = strings.Join(m.Options, ",")
		}
	}
	want := map[string]string{
		filepath.Join(dir, "pipe") + " -> /tmp/nvidia-mps":    "rbind,rw,nosuid,nodev",
		filepath.Join(dir, "log") + " -> /var/log/nvidia-mps": "rbind,ro,nosuid,nodev",
	}
	if !maps.Equal(got, want) {
		t.Errorf("mounts %v, want %v", got, want)
	}
}

// TestUnfitSpecFilesAreNotRead: a start-up's rebuild reads back the
// claims' spec files; what has a spec's name but is no regular file of the
// plugin's (a FIFO, which would block the start-up, a device such as
// /dev/zero or a huge file, which would grow the read until the plugin is
// killed, or a symlink to another file) is an error, not read.
func TestUnfitSpecFilesAreNotRead(t *testing.T) {
	for _, tc := range []struct {
		name string
		// plant puts the unfit file at path; spec is a good spec of
		// the claim, which the plant may link to or pad.
		plant func(t *testing.T, path string, spec []byte)
	}{
		{name: "FIFO", plant: func(t *testing.T, path string, _ []byte) {
			if err := syscall.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "symlink to /dev/zero", plant: func(t *testing.T, path string, _ []byte) {
			if err := os.Symlink("/dev/zero", path); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "symlink to a spec", plant: func(t *testing.T, path string, spec []byte) {
			good := filepath.Join(t.TempDir(), "spec.json")
			if err := os.WriteFile(good, spec, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(good, path); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "huge file", plant: func(t *testing.T, path string, spec []byte) {
			if err := os.WriteFile(path, append(spec, strings.Repeat(" ", maxSpecSize)...), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, _ := newWriter(t)
			if _, err := w.WriteClaimSpec(context.Background(), uid, []Device{{Name: "gpu-0", Request: "a", UUID: "GPU-1"}}); err != nil {
				t.Fatal(err)
			}
			spec, err := os.ReadFile(w.SpecPath(uid))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(w.SpecPath(uid)); err != nil {
				t.Fatal(err)
			}
			tc.plant(t, w.SpecPath(uid), spec)
			done := make(chan error, 1)
			go func() {
				_, err := w.DeviceAnnotations(uid)
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil {
					t.Error("an unfit spec file was read")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("reading the spec file blocks")
			}
		})
	}
}
