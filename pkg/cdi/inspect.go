package cdi

import (
	"fmt"

	specs "tags.cncf.io/container-device-interface/specs-go"
)

// This file lets the hardware check (gpu-kubelet-plugin check) see what
// the specs of this node would carry, found by the same code that writes
// them, without writing anything: unlike New, nothing here creates or
// cleans the CDI root.

// Inspector looks, read-only, at the host files and device nodes that the
// specs of a Writer with the same Options would carry.
type Inspector struct {
	w *Writer
}

// DriverFiles are the driver's user-space files every spec mounts.
type DriverFiles struct {
	// Mounts are the read-only bind mounts of the driver's libraries (each
	// also at its SONAME link's path, such as libcuda.so.1), then its
	// tools, by host path and container path.
	Mounts []*specs.Mount
	// Hook is the ldcache hook specs run; nil without nvidia-cdi-hook under
	// the driver root or without libraries.
	Hook *specs.Hook
	// MissingLibraries are the required libraries not found, as
	// "libcuda.so.*": New then fails under RequireLibraries, and otherwise
	// specs give containers the device nodes only (the plugin warns).
	MissingLibraries []string
	// Absent are, by capability ("video", "graphics", ...), the libraries
	// ("libnvcuvid.so.*") and configuration files not found under the
	// driver root, which specs leave out.
	Absent map[string][]string
}

// IsConfigMount reports whether m mounts one of the driver's
// configuration files (an ICD or vendor file a loader reads).
func IsConfigMount(m *specs.Mount) bool {
	for _, c := range configFiles {
		if m.ContainerPath == c.containerDir+"/"+c.rel {
			return true
		}
	}
	return false
}

// NewInspector checks the roots of opts as New does; it ignores CDIRoot
// and RequireLibraries, and writes nothing.
func NewInspector(opts Options) (*Inspector, error) {
	if err := defaultRoots(&opts); err != nil {
		return nil, err
	}
	return &Inspector{w: &Writer{opts: opts}}, nil
}

// DriverFiles discovers the driver's files under the driver root, as New
// does for the spec-level edits.
func (in *Inspector) DriverFiles() (DriverFiles, error) {
	files, err := discoverDriverFiles(in.w.opts.DriverRootMount, in.w.opts.DriverRoot)
	if err != nil {
		return DriverFiles{}, err
	}
	return DriverFiles{Mounts: files.mounts, Hook: files.hook, MissingLibraries: files.missing, Absent: files.absent}, nil
}

// ControlNodes looks up the driver's control nodes every device carries.
func (in *Inspector) ControlNodes() []NodeLookup {
	return in.w.lookupControlNodes(in.w.readMajors())
}

// GPUNode looks up /dev/nvidia<minor>, which every device of the GPU (whole,
// shared or MIG) carries.
func (in *Inspector) GPUNode(minor int) NodeLookup {
	return in.w.lookup(fmt.Sprintf("/dev/nvidia%d", minor), true)
}

// ProcDevicesPath is the kernel's table of device majors under the proc
// root, from which specs number the nvidia-uvm and MIG capability nodes.
func (in *Inspector) ProcDevicesPath() string {
	return in.w.procDevicesPath()
}

// MIGMinorsPath is the kernel's table of MIG capability minors under the
// proc root, which specs of MIG devices read.
func (in *Inspector) MIGMinorsPath() string {
	return in.w.migMinorsPath()
}

// MIGCapNodes looks up the capability nodes of a MIG device (its GPU
// instance's and compute instance's) of the GPU with minor gpuMinor, as
// specs number them: from the instance's access files under the proc
// root, checked against the table ParseMIGMinors read from MIGMinorsPath,
// and the nvidia-caps major of ProcDevicesPath.
func (in *Inspector) MIGCapNodes(minors map[string]int, gpuMinor int, mig MIGDevice) []NodeLookup {
	return in.w.lookupMIGCapNodes(in.w.readMajors(), minors, gpuMinor, mig)
}
