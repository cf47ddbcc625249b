package nvmlserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpu-dra/gpu-dra-driver/pkg/cdi"
	"github.com/gpu-dra/gpu-dra-driver/pkg/driverroot"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/mps"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/installationtest"
	"github.com/gpu-dra/gpu-dra-driver/pkg/vfio"
)

// The production path (go-nvml loading the simulated libnvidia-ml.so.1 from
// a driver root, its C API, the server) reads every simulated node exactly
// as the Go simulator's own nvml.Interface does.
func TestProductionPathReadsWhatTheSimulatorHas(t *testing.T) {
	for _, model := range nvmlnode.SimulatedModels() {
		t.Run(model, func(t *testing.T) {
			inst := installationtest.Start(t, model)
			viaLib := inst.Open(t)
			direct, err := nvmlnode.NewNode(inst.Sim)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			want, err := direct.Inventory(ctx)
			if err != nil {
				t.Fatal(err)
			}
			got, err := viaLib.Inventory(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("inventory through libnvidia-ml.so.1:\n%+v\nthrough the simulator:\n%+v", got, want)
			}
			if len(got.GPUs) == 0 {
				t.Fatal("no GPU")
			}
		})
	}
}

func TestProductionPathMIGLifecycle(t *testing.T) {
	inst := installationtest.Start(t, "dgxh100")
	node := inst.Open(t)
	ctx := context.Background()
	inv, err := node.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g := inv.GPUs[3]
	if err := node.SetMIGMode(ctx, g.UUID, true); err != nil {
		t.Fatal(err)
	}
	var oneG gpu.MIGProfile
	for _, p := range g.MIGProfiles {
		if p.Name == "1g.10gb" {
			oneG = p
		}
	}
	if oneG.Name == "" {
		t.Fatalf("no 1g.10gb profile in %+v", g.MIGProfiles)
	}
	req := gpu.MIGRequest{ParentUUID: g.UUID, ProfileID: oneG.ID, Placement: oneG.Placements[2]}
	inst1, err := node.CreateMIG(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(inst1.UUID, "MIG-") || inst1.Placement != oneG.Placements[2] {
		t.Fatalf("created %+v", inst1)
	}
	if _, err := node.CreateMIG(ctx, req); !errors.Is(err, gpu.ErrPlacementOccupied) {
		t.Fatalf("second instance at the same placement: err %v, want ErrPlacementOccupied", err)
	}
	// The simulator's own view has the instance, with the same IDs.
	st, err := inst.Sim.State()
	if err != nil {
		t.Fatal(err)
	}
	gis := st.GPUs[3].GPUInstances
	if len(gis) != 1 || gis[0].ID != inst1.GIID || gis[0].ComputeInstances[0].UUID != inst1.UUID {
		t.Fatalf("simulator state %+v, created %+v", gis, inst1)
	}
	// While a MIG device exists, MIG mode cannot be turned off.
	if err := node.SetMIGMode(ctx, g.UUID, false); err == nil {
		t.Fatal("MIG mode turned off under a MIG device")
	}
	if err := node.DestroyMIG(ctx, gpu.MIGRef{ParentUUID: g.UUID, GIID: inst1.GIID, CIID: inst1.CIID, UUID: inst1.UUID}); err != nil {
		t.Fatal(err)
	}
	// Destroying what is gone succeeds.
	if err := node.DestroyMIG(ctx, gpu.MIGRef{ParentUUID: g.UUID, GIID: inst1.GIID, CIID: inst1.CIID}); err != nil {
		t.Fatal(err)
	}
	if err := node.SetMIGMode(ctx, g.UUID, false); err != nil {
		t.Fatal(err)
	}
	inv, err = node.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if g := inv.GPUs[3]; g.MIGEnabled || len(g.MIGInstances) != 0 {
		t.Fatalf("after destroy: %+v", g)
	}
}

// TestProductionPathA30MIG: an A30's GPU instances go through the library
// in its four memory slices, and are named as the inventory names them.
func TestProductionPathA30MIG(t *testing.T) {
	inst := installationtest.Start(t, "a30")
	node := inst.Open(t)
	ctx := context.Background()
	// Ampere: an administrator's MIG mode change, applied by a reset.
	if err := inst.Sim.SetMIGMode(1, true); err != nil {
		t.Fatal(err)
	}
	if err := inst.Sim.Reset(1); err != nil {
		t.Fatal(err)
	}
	inv, err := node.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g := inv.GPUs[1]
	if !g.MIGEnabled || g.MemorySlices != 4 {
		t.Fatalf("GPU 1: MIG enabled %t, %d memory slices; want enabled, 4", g.MIGEnabled, g.MemorySlices)
	}
	var twoG gpu.MIGProfile
	for _, p := range g.MIGProfiles {
		if p.Name == "2g.12gb" {
			twoG = p
		}
	}
	if twoG.MemorySlices != 2 || len(twoG.Placements) != 2 {
		t.Fatalf("2g.12gb: %+v", twoG)
	}
	created, err := node.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g.UUID, ProfileID: twoG.ID, Placement: gpu.Placement{Start: 2, Size: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if created.Profile != "2g.12gb" || created.Placement != (gpu.Placement{Start: 2, Size: 2}) {
		t.Fatalf("created %+v", created)
	}
	if inv, err = node.Inventory(ctx); err != nil {
		t.Fatal(err)
	}
	if got := inv.GPUs[1].MIGInstances; len(got) != 1 || got[0].UUID != created.UUID || got[0].Profile != "2g.12gb" {
		t.Fatalf("MIG instances %+v, created %+v", got, created)
	}
}

func TestProductionPathHealth(t *testing.T) {
	inst := installationtest.Start(t, "dgxh100")
	node := inst.Open(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan gpu.Event, 8)
	watchDone := make(chan error, 1)
	go func() { watchDone <- node.WatchEvents(ctx, func(e gpu.Event) { events <- e }) }()

	inv, err := node.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The watch registers before it waits; an event injected before that
	// is not delivered, as on hardware: inject until one arrives.
	var got gpu.Event
	deadline := time.After(30 * time.Second)
wait:
	for {
		if err := inst.Sim.InjectXID(5, 79, -1, -1); err != nil {
			t.Fatal(err)
		}
		select {
		case got = <-events:
			break wait
		case <-time.After(time.Second):
		case <-deadline:
			t.Fatal("no event delivered through the library in 30s")
		}
	}
	if got.Kind != gpu.EventXID || got.XID != 79 || got.GPUUUID != inv.GPUs[5].UUID {
		t.Fatalf("event %+v, want XID 79 of %s", got, inv.GPUs[5].UUID)
	}

	if err := inst.Sim.SetTemperature(2, 90); err != nil {
		t.Fatal(err)
	}
	if err := inst.Sim.SetLost(6, true); err != nil {
		t.Fatal(err)
	}
	readings, err := node.Probe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r := readings[2]; r.TemperatureC != 90 || r.SlowdownC == 0 || r.Err != nil {
		t.Fatalf("GPU 2: %+v", r)
	}
	if r := readings[6]; !r.Lost {
		t.Fatalf("GPU 6 lost, read %+v", r)
	}
	if r := readings[0]; r.Lost || r.Err != nil || r.UUID != inv.GPUs[0].UUID {
		t.Fatalf("GPU 0: %+v", r)
	}
	cancel()
	if err := <-watchDone; err != nil {
		t.Fatal(err)
	}
}

// Without the simulated kernel (no gpu-sim serve), NVML reports what
// NVIDIA's library reports without its kernel module; without the library,
// the error says it is not found.
func TestProductionPathWithoutTheKernelSide(t *testing.T) {
	inst := installationtest.Start(t, "dgxh100")
	_, err := nvmlnode.Open(nvmlnode.Options{LibraryPath: inst.Library + ".missing"})
	if err == nil || !strings.Contains(err.Error(), "libnvidia-ml.so.1 not found") {
		t.Fatalf("a missing library: %v", err)
	}
	inst.StopKernel()
	_, err = nvmlnode.Open(nvmlnode.Options{LibraryPath: inst.Library})
	if err == nil || !strings.Contains(err.Error(), "Driver Not Loaded") {
		t.Fatalf("no kernel side: %v", err)
	}
}

// The driver's nvidia-smi changes the simulated GPU through the kernel
// side, as the real one does through the kernel driver; a GPU the node
// does not have is refused.
func TestProductionPathTimeSlice(t *testing.T) {
	inst := installationtest.Start(t, "dgxh100")
	node := inst.Open(t)
	ctx := context.Background()
	inv, err := node.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	uuid := inv.GPUs[1].UUID
	if err := node.SetTimeSlice(ctx, uuid, "Long"); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(simhost.TimeSlicePath(inst.DriverRoot, uuid)); err != nil || string(got) != "3\n" {
		t.Fatalf("time slice of %s: %q, %v", uuid, got, err)
	}
	if err := node.SetTimeSlice(ctx, "GPU-00000000-0000-0000-0000-000000000000", "Short"); err == nil || !strings.Contains(err.Error(), "No GPU with UUID") {
		t.Fatalf("a GPU the node lacks: %v", err)
	}
}

// A library that is there but cannot be loaded says why, not "not found".
func TestProductionPathLoadErrorSaysWhy(t *testing.T) {
	dir := t.TempDir()
	lib := dir + "/libnvidia-ml.so.1"
	if err := os.WriteFile(lib, []byte("not an ELF file"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := nvmlnode.Open(nvmlnode.Options{LibraryPath: lib})
	if err == nil || !strings.Contains(err.Error(), "the dynamic loader says") || !strings.Contains(err.Error(), lib) {
		t.Fatalf("loading a broken library: %v", err)
	}
}

// An MPS control daemon of the driver's tools holds the MIG device it
// serves: the compute instance cannot be destroyed (IN_USE) until the
// daemon quits, as a CUDA context keeps it on hardware.
func TestProductionPathMPSHoldsItsMIGDevice(t *testing.T) {
	inst := installationtest.Start(t, "dgxh100")
	node := inst.Open(t)
	ctx := context.Background()
	inv, err := node.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g := inv.GPUs[0]
	if err := node.SetMIGMode(ctx, g.UUID, true); err != nil {
		t.Fatal(err)
	}
	p := g.MIGProfiles[0]
	mig, err := node.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g.UUID, ProfileID: p.ID, Placement: p.Placements[0]})
	if err != nil {
		t.Fatal(err)
	}
	control := filepath.Join(inst.DriverRoot, "usr/bin/nvidia-cuda-mps-control")
	pipe, logDir := t.TempDir(), t.TempDir()
	env := append(os.Environ(), "CUDA_MPS_PIPE_DIRECTORY="+pipe, "CUDA_MPS_LOG_DIRECTORY="+logDir, "CUDA_VISIBLE_DEVICES="+mig.UUID)
	// Linked against libnvidia-ml.so.1 as NVIDIA's is, the tool starts
	// only with the driver's libraries on the loader's path, which a
	// plugin in its minimal image gives it (driverroot.ToolEnv).
	bare := exec.Command(control, "-d")
	bare.Env = env
	if out, err := bare.CombinedOutput(); err == nil || !strings.Contains(string(out), "libnvidia-ml.so.1") {
		t.Fatalf("the tool started without the driver's libraries (%v): %s", err, out)
	}
	env, err = driverroot.ToolEnv(inst.DriverRoot, env)
	if err != nil {
		t.Fatal(err)
	}
	start := exec.Command(control, "-d")
	start.Env = env
	if out, err := start.CombinedOutput(); err != nil {
		t.Fatalf("start the MPS control daemon: %v\n%s", err, out)
	}
	ref := gpu.MIGRef{ParentUUID: g.UUID, GIID: mig.GIID, CIID: mig.CIID, UUID: mig.UUID}
	if err := node.DestroyMIG(ctx, ref); err == nil || !strings.Contains(err.Error(), "In use") {
		t.Fatalf("destroy a MIG device an MPS daemon serves: %v, want in use", err)
	}
	quit := exec.Command(control)
	quit.Env, quit.Stdin = env, strings.NewReader("quit\n")
	if out, err := quit.CombinedOutput(); err != nil {
		t.Fatalf("quit the MPS control daemon: %v\n%s", err, out)
	}
	if err := node.DestroyMIG(ctx, ref); err != nil {
		t.Fatalf("destroy after the daemon quit: %v", err)
	}
}

// A MIG device created after the plugin started gets its capability nodes
// in its CDI spec, numbered as the kernel numbers them, although no
// /dev/nvidia-caps node exists: NVML makes none when it creates an
// instance, and a privileged container's /dev is a copy taken when it
// started. nvidia-uvm, loaded after that copy, is numbered from
// /proc/devices likewise. The capability goes with the instance.
func TestProductionPathMIGCapabilitiesWithoutDevNodes(t *testing.T) {
	inst := installationtest.Start(t, "dgxh100")
	for _, p := range []string{"dev/nvidia-caps", "dev/nvidia-uvm", "dev/nvidia-uvm-tools"} {
		if err := os.RemoveAll(filepath.Join(inst.DevRoot, p)); err != nil {
			t.Fatal(err)
		}
	}
	w, err := cdi.New(cdi.Options{CDIRoot: t.TempDir(), DriverRoot: inst.DriverRoot, DevRoot: inst.DevRoot, ProcRoot: inst.ProcRoot})
	if err != nil {
		t.Fatal(err)
	}
	node := inst.Open(t)
	ctx := context.Background()
	inv, err := node.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g := inv.GPUs[2]
	if err := node.SetMIGMode(ctx, g.UUID, true); err != nil {
		t.Fatal(err)
	}
	p := g.MIGProfiles[0]
	mig, err := node.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g.UUID, ProfileID: p.ID, Placement: p.Placements[1]})
	if err != nil {
		t.Fatal(err)
	}
	const claimUID = "0a1b2c3d-0000-1111-2222-333344445555"
	dev := cdi.Device{Name: "mig", Request: "r", GPUMinor: g.Minor, UUID: mig.UUID, MIG: &cdi.MIGDevice{GIID: mig.GIID, CIID: mig.CIID}}
	if _, err := w.WriteClaimSpec(ctx, claimUID, []cdi.Device{dev}); err != nil {
		t.Fatalf("spec of a MIG device created after start, without /dev/nvidia-caps nodes: %v", err)
	}
	nodes := specNodes(t, w.SpecPath(claimUID))
	majors := procMajors(t, filepath.Join(inst.ProcRoot, "proc/devices"))
	minors, err := cdi.ParseMIGMinors(filepath.Join(inst.ProcRoot, cdi.MIGMinorsFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{
		fmt.Sprintf("gpu%d/gi%d/access", g.Minor, mig.GIID),
		fmt.Sprintf("gpu%d/gi%d/ci%d/access", g.Minor, mig.GIID, mig.CIID),
	} {
		minor, ok := minors[key]
		if !ok {
			t.Fatalf("mig-minors has no %s", key)
		}
		path := fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", minor)
		n, ok := nodes[path]
		if !ok {
			t.Errorf("spec lacks %s (%s): %v", path, key, nodes)
			continue
		}
		if n.Type != "c" || n.Major != majors["nvidia-caps"] || n.Minor != int64(minor) {
			t.Errorf("%s: %s %d:%d, want c %d:%d", path, n.Type, n.Major, n.Minor, majors["nvidia-caps"], minor)
		}
	}
	for path, minor := range map[string]int64{"/dev/nvidia-uvm": 0, "/dev/nvidia-uvm-tools": 1} {
		if n, ok := nodes[path]; !ok || n.Major != majors["nvidia-uvm"] || n.Minor != minor {
			t.Errorf("%s: %+v, want c %d:%d", path, n, majors["nvidia-uvm"], minor)
		}
	}
	// The kernel side shows the instance's capabilities, as the driver
	// does, and removes them with the instance.
	giDir := filepath.Join(inst.ProcRoot, cdi.CapabilitiesDir, fmt.Sprintf("gpu%d/mig/gi%d", g.Minor, mig.GIID))
	access, err := cdi.ParseCapabilityAccess(filepath.Join(giDir, fmt.Sprintf("ci%d/access", mig.CIID)))
	if want := minors[fmt.Sprintf("gpu%d/gi%d/ci%d/access", g.Minor, mig.GIID, mig.CIID)]; err != nil || access.Minor != want || access.Mode != 0o444 {
		t.Errorf("compute instance's access file: %+v, %v; want minor %d, mode 0444", access, err, want)
	}
	if err := node.DestroyMIG(ctx, gpu.MIGRef{ParentUUID: g.UUID, GIID: mig.GIID, CIID: mig.CIID, UUID: mig.UUID}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(giDir); !os.IsNotExist(err) {
		t.Errorf("capabilities of the destroyed GPU instance: %v, want gone", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(inst.DevRoot, "dev/nvidia-caps")); len(entries) != 0 {
		t.Errorf("the kernel side made /dev/nvidia-caps nodes: %v", entries)
	}
}

// A whole GPU's spec, written on the simulated installation as the plugin
// writes it, gives containers what NVIDIA's CDI generator gives them: the
// video codec libraries (NVDEC, NVENC) and the graphics drivers with the
// loaders' configuration, under their SONAMEs; nvidia-modeset and the
// GPU's DRM nodes, found from its PCI bus ID as NVML reports it; and
// NVIDIA_VISIBLE_DEVICES=void, with the GPU named in GPU_DRA_DEVICE_UUIDS.
func TestProductionPathSpecCarriesDriverCapabilities(t *testing.T) {
	inst := installationtest.Start(t, "dgxh100")
	w, err := cdi.New(cdi.Options{CDIRoot: t.TempDir(), DriverRoot: inst.DriverRoot, DevRoot: inst.DevRoot, ProcRoot: inst.ProcRoot,
		SysRoot: inst.SysRoot, RequireLibraries: true})
	if err != nil {
		t.Fatal(err)
	}
	inv, err := inst.Open(t).Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	g := inv.GPUs[3]
	const claimUID = "0a1b2c3d-0000-1111-2222-333344445555"
	if _, err := w.WriteClaimSpec(context.Background(), claimUID, []cdi.Device{{Name: "gpu", Request: "r", GPUMinor: g.Minor, UUID: g.UUID}}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(w.SpecPath(claimUID))
	if err != nil {
		t.Fatal(err)
	}
	var spec cdispecs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	mounts := map[string]string{}
	for _, m := range spec.ContainerEdits.Mounts {
		mounts[m.ContainerPath] = m.HostPath
	}
	lib := "/" + simhost.LibraryDir + "/"
	for capability, paths := range map[string][]string{
		"video":    {lib + "libnvcuvid.so.1", lib + "libnvidia-encode.so.1", lib + "libnvidia-opticalflow.so.1", lib + "vdpau/libvdpau_nvidia.so.1"},
		"graphics": {lib + "libEGL_nvidia.so.0", lib + "libGLX_nvidia.so.0", lib + "libnvidia-glcore.so." + inv.DriverVersion, "/usr/share/glvnd/egl_vendor.d/10_nvidia.json", "/etc/vulkan/icd.d/nvidia_icd.json"},
		"compute":  {lib + "libcuda.so.1", lib + "libnvidia-ml.so.1", "/etc/OpenCL/vendors/nvidia.icd"},
	} {
		for _, p := range paths {
			if _, ok := mounts[p]; !ok {
				t.Errorf("%s: %s not mounted", capability, p)
			}
		}
	}
	if spec.ContainerEdits.Env == nil || !reflect.DeepEqual(spec.ContainerEdits.Env, []string{"NVIDIA_VISIBLE_DEVICES=void"}) {
		t.Errorf("spec environment %v, want NVIDIA_VISIBLE_DEVICES=void", spec.ContainerEdits.Env)
	}
	if len(spec.Devices) != 1 || !reflect.DeepEqual(spec.Devices[0].ContainerEdits.Env, []string{cdi.EnvDeviceUUIDs + "=" + g.UUID}) {
		t.Errorf("device environment %+v, want %s=%s", spec.Devices, cdi.EnvDeviceUUIDs, g.UUID)
	}
	nodes := specNodes(t, w.SpecPath(claimUID))
	// The fourth GPU's DRM nodes: card0 is the board's display controller.
	for _, p := range []string{"/dev/nvidia-modeset", "/dev/dri/card4", "/dev/dri/renderD131"} {
		if _, ok := nodes[p]; !ok {
			t.Errorf("no %s: %v", p, nodes)
		}
	}
}

// specNodes reads the device nodes of a spec file's devices by path.
func specNodes(t *testing.T, path string) map[string]cdispecs.DeviceNode {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var spec cdispecs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	out := map[string]cdispecs.DeviceNode{}
	for _, d := range spec.Devices {
		for _, n := range d.ContainerEdits.DeviceNodes {
			out[n.Path] = *n
		}
	}
	return out
}

// procMajors reads the character device majors of a /proc/devices by name.
func procMajors(t *testing.T, path string) map[string]int64 {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "Block") {
			break
		}
		var major int64
		var name string
		if n, _ := fmt.Sscanf(line, "%d %s", &major, &name); n == 2 {
			out[name] = major
		}
	}
	return out
}

// TestProductionPathMPSDaemon: the plugin's MPS manager starts, finds and
// stops a daemon with the driver's nvidia-cuda-mps-control, linked against
// libnvidia-ml.so.1 as NVIDIA's is, from its minimal environment: the
// daemon gets the driver's libraries and the share's limits.
func TestProductionPathMPSDaemon(t *testing.T) {
	inst := installationtest.Start(t, "dgxh100")
	node := inst.Open(t)
	_, ctx := ktesting.NewTestContext(t)
	inv, err := node.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m := mps.NewManager(filepath.Join(t.TempDir(), "mps"), inst.DriverRoot)
	const key = "2f0e0a4c-0000-4000-8000-000000000040"
	uuid := inv.GPUs[2].UUID
	if err := m.Start(ctx, key, []string{uuid}, mps.Limits{ActiveThreadPercentage: 25, PinnedMemoryMiB: map[string]int64{uuid: 1024}}); err != nil {
		t.Fatal(err)
	}
	if !m.Running(key) {
		t.Fatal("the daemon does not run")
	}
	if err := m.Stop(ctx, key); err != nil {
		t.Fatal(err)
	}
	log, err := os.ReadFile(simhost.MPSLogPath(inst.DriverRoot))
	if err != nil {
		t.Fatal(err)
	}
	if want := "devices=" + uuid + " pipe=" + m.PipeDir(key) + " active_thread_percentage=25 pinned_device_mem_limit=0=1024M"; !strings.Contains(string(log), want) || !strings.Contains(string(log), " quit pipe="+m.PipeDir(key)) {
		t.Errorf("want a start with %q and a quit:\n%s", want, log)
	}
}

// TestProductionPathGPUBoundToVFIOIsNotEnumerated: a GPU passed through
// to a VM (its PCI function bound to vfio-pci) is not among NVML's GPUs,
// as NVIDIA's library enumerates only what its kernel driver drives; bound
// to nvidia again, it is back.
func TestProductionPathGPUBoundToVFIOIsNotEnumerated(t *testing.T) {
	inst := installationtest.Start(t, "dgxh100")
	node := inst.Open(t)
	ctx := context.Background()
	before, err := node.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	passed := before.GPUs[2]
	host := vfio.Host{SysRoot: inst.SysRoot, DevRoot: inst.DevRoot}
	for _, step := range []struct {
		driver string
		want   int
	}{{names.KernelDriverVFIOPCI, len(before.GPUs) - 1}, {"", len(before.GPUs) - 1}, {names.KernelDriverNVIDIA, len(before.GPUs)}} {
		if err := host.Bind(ctx, passed.PCIBusID, step.driver); err != nil {
			t.Fatal(err)
		}
		inv, err := node.Inventory(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(inv.GPUs) != step.want {
			t.Fatalf("bound to %q: %d GPUs, want %d", step.driver, len(inv.GPUs), step.want)
		}
		seen := slices.ContainsFunc(inv.GPUs, func(g gpu.GPU) bool { return g.UUID == passed.UUID })
		if seen != (step.driver == names.KernelDriverNVIDIA) {
			t.Errorf("bound to %q: GPU %s enumerated = %v", step.driver, passed.UUID, seen)
		}
	}
}
