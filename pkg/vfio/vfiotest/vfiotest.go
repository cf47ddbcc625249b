// Package vfiotest gives tests a host whose PCI sysfs is simulated
// (simhost.CreatePCI) and whose simulated kernel applies what vfio.Host
// writes there.
package vfiotest

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/vfio"
)

// Host makes under dir the sys root and PCI functions of the GPUs busIDs
// (simhost.CreateSysRoot, simhost.CreatePCI with opts), runs their kernel
// until the test ends, and returns the vfio.Host of dir. A kernel that
// fails fails the test.
func Host(t testing.TB, dir string, busIDs []string, opts simhost.PCIOptions) vfio.Host {
	t.Helper()
	sys, err := simhost.CreateSysRoot(dir, busIDs)
	if err != nil {
		t.Fatal(err)
	}
	if err := simhost.CreatePCI(dir, busIDs, opts); err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join(dir, "dev")
	k := simhost.NewPCIKernel(sys, dev)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- k.Serve(ctx, 10*time.Millisecond) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("simulated kernel: %v", err)
		}
	})
	return vfio.Host{SysRoot: sys, DevRoot: dev, Wait: 5 * time.Second}
}
