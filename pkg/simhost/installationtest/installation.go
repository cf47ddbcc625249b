// Package installationtest starts, for tests, a simulated NVIDIA driver
// installation that the plugin's production path uses: a driver root with
// the simulated libnvidia-ml.so.1 and its kernel side serving it.
package installationtest

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/nvmlserver"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simhosttest"
)

// Installation is a simulated NVIDIA driver installation that the
// production path uses: the host trees of simhost.Create with the
// simulated libnvidia-ml.so.1 installed, and its kernel side (an
// nvmlserver of a sim.Node on StateDir, which keeps the MIG instances'
// capability files under ProcRoot) serving until the test ends.
type Installation struct {
	simhost.Roots
	// StateDir is the simulated node's state, which sim.Open reads too.
	StateDir string
	// Library is the installed libnvidia-ml.so.1 under DriverRoot.
	Library string
	// Sim is the simulated node the server answers from.
	Sim *sim.Node
	// SysRoot is the host root of the GPUs' /sys (simhost.CreateSysRoot),
	// with their DRM nodes (simhost.CreateDRM) and PCI functions
	// (simhost.CreatePCI), whose driver bindings a simulated kernel
	// applies: NVML enumerates only the GPUs bound to nvidia.
	SysRoot string

	stop func()
}

// StopKernel stops the kernel side, as a node whose NVIDIA kernel module
// is not loaded: the library then answers NVML_ERROR_DRIVER_NOT_LOADED.
func (inst *Installation) StopKernel() { inst.stop() }

// A process loads one libnvidia-ml.so.1 (go-nvml binds NVML's symbols in
// the global scope, and the library finds its socket from its own path),
// so every installation of a test process has the same host directory,
// and one serves at a time.
var (
	hostOnce sync.Once
	hostDir  string
	hostErr  error
	serving  sync.Mutex
)

// Start creates a simulated installation of model, with its state in a
// temporary directory, and serves it until the test ends. Installations of
// one test process share the driver root and are served one at a time:
// a second Start waits for the first test's end.
func Start(t testing.TB, model string) *Installation {
	t.Helper()
	hostOnce.Do(func() { hostDir, hostErr = os.MkdirTemp("", "gpu-dra-installation-") })
	if hostErr != nil {
		t.Fatal(hostErr)
	}
	serving.Lock()
	t.Cleanup(serving.Unlock)
	dir := t.TempDir()
	inst := &Installation{StateDir: filepath.Join(dir, "state")}
	n, err := sim.Open(model, inst.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if ret := n.Init(); ret != nvml.SUCCESS {
		t.Fatalf("initialise the simulated node: %v", ret)
	}
	inst.Sim = n
	goNode, err := nvmlnode.NewNode(n)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := goNode.Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var minors []int
	var busIDs []string
	var addrs []simhost.GPUAddress
	for _, g := range inv.GPUs {
		minors = append(minors, g.Minor)
		busIDs = append(busIDs, g.PCIBusID)
		addrs = append(addrs, simhost.GPUAddress{Minor: g.Minor, BusID: g.PCIBusID})
	}
	host := filepath.Join(hostDir, "host")
	if inst.Roots, err = simhost.Create(host, minors, inv.DriverVersion, simhosttest.LinkedTools(t)); err != nil {
		t.Fatal(err)
	}
	if inst.SysRoot, err = simhost.CreateSysRoot(host, busIDs); err != nil {
		t.Fatal(err)
	}
	if err := simhost.CreateDRM(host, addrs); err != nil {
		t.Fatal(err)
	}
	if err := simhost.CreatePCI(host, busIDs, simhost.PCIOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := simhost.InstallNVML(inst.DriverRoot, simhosttest.NVML(t), inv.DriverVersion); err != nil {
		t.Fatal(err)
	}
	inst.Library = filepath.Join(inst.DriverRoot, "usr/lib/x86_64-linux-gnu", simhost.NVMLSoname)
	l, err := nvmlserver.Listen(inst.DriverRoot)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	server := nvmlserver.New(n, inst.DriverRoot)
	server.ProcRoot, server.SysRoot = inst.ProcRoot, inst.SysRoot
	go func() { done <- server.Serve(ctx, l) }()
	kernelDone := make(chan error, 1)
	go func() { kernelDone <- simhost.NewPCIKernel(inst.SysRoot, inst.DevRoot).Serve(ctx, time.Millisecond) }()
	var once sync.Once
	inst.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("simulated NVML server: %v", err)
			}
			if err := <-kernelDone; err != nil {
				t.Errorf("simulated PCI: %v", err)
			}
		})
	}
	t.Cleanup(inst.stop)
	return inst
}

// Open opens the installation's GPUs as the plugin does on a GPU node:
// NVML loaded from the driver root, tools found there.
func (inst *Installation) Open(t testing.TB) *nvmlnode.Node {
	t.Helper()
	node, err := nvmlnode.Open(nvmlnode.Options{LibraryPath: inst.Library, DriverRoot: inst.DriverRoot})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Close() })
	return node
}
