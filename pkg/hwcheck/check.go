// Package hwcheck is the read-only hardware check an operator runs on a GPU
// node before installing the driver (gpu-kubelet-plugin check): NVML, every
// GPU with its MIG profiles next to the devices the driver would publish,
// the driver files and device nodes CDI specs would carry, and the driver's
// tools, each item PASS, WARN or FAIL with the reason.
//
// It changes nothing: it calls NVML getters only (nvmlnode's read-only
// accessors), reads files (the kernel's under the proc root among them)
// and stats device nodes, and runs no program. It
// never sets MIG mode, creates or destroys instances, resets a GPU or sets
// a time slice, and it writes no CDI spec.
package hwcheck

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path"
	"slices"
	"sort"
	"strings"

	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/cdi"
	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/driverroot"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpuholders"
	"github.com/gpu-dra/gpu-dra-driver/pkg/mps"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// NVMLLibrary is the file name the NVIDIA driver installs NVML as.
const NVMLLibrary = "libnvidia-ml.so.1"

// nvidiaSMI is the driver's tool with which the plugin sets time slices.
const nvidiaSMI = "nvidia-smi"

// Config says where and what to check.
type Config struct {
	// GPUs selects real or simulated NVML (Simulate, SimStateDir,
	// SimLatencies); its LibraryPath and DriverRoot are set by Run.
	GPUs nvmlnode.Options
	// NVMLLibrary is --nvml-library: NVML's path; empty finds NVMLLibrary
	// under the driver root.
	NVMLLibrary string
	// DriverRoot is the host path of the driver installation, as CDI specs
	// name it; DriverRootMount is where this process reads it (empty: at
	// DriverRoot). DevRoot and ProcRoot are the host roots of /dev and
	// /proc. Empty roots are "/".
	DriverRoot, DriverRootMount, DevRoot, ProcRoot string
	// StaticMIGOnly and SharedGPUs are the plugin's options of the same
	// names, which decide what the device model publishes.
	StaticMIGOnly, SharedGPUs bool
	// ConsumableShares is the plugin's --consumable-shares.
	ConsumableShares devicemodel.ConsumableShares
	// Open opens the node; nil is nvmlnode.Open. Tests set it.
	Open func(nvmlnode.Options) (*nvmlnode.Node, error)
}

// readRoot is where this process reads the driver root.
func (c *Config) readRoot() string {
	switch {
	case c.DriverRootMount != "":
		return c.DriverRootMount
	case c.DriverRoot != "":
		return c.DriverRoot
	}
	return "/"
}

// checker carries what one run has found so far.
type checker struct {
	cfg    Config
	report Report
	// gpus are the GPUs read, by NVML index; failed ones are absent.
	gpus []nvmlnode.GPUDetails
	// readErrs are, by NVML index, why a GPU could not be read.
	readErrs []error
	// system is what NVML reports of the node.
	system nvmlnode.SystemInfo
	// model is what the driver would publish for the GPUs read; nil when
	// it could not be built.
	model *devicemodel.Model
}

// Run checks the node and returns the report. It fails only on a
// cancelled context; every problem found is an item of the report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	c := &checker{cfg: cfg}
	node := c.checkNVML(ctx)
	if node != nil {
		defer func() {
			if err := node.Close(); err != nil {
				klog.FromContext(ctx).Error(err, "Closing NVML")
			}
		}()
		c.checkGPUs(ctx, node)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.checkCDI(ctx)
	c.checkTools(ctx)
	c.report.finish()
	return &c.report, nil
}

// checkNVML finds, loads and initialises NVML and reads the node-wide
// values. It returns the node, or nil when NVML cannot be used.
func (c *checker) checkNVML(ctx context.Context) *nvmlnode.Node {
	logger := klog.FromContext(ctx)
	s := c.report.section("NVML")
	opts := c.cfg.GPUs
	opts.DriverRoot = c.cfg.readRoot()
	simulated := opts.Simulate != ""
	lib := c.cfg.NVMLLibrary
	var found error
	source := "from --nvml-library"
	if lib == "" {
		source = "found under the driver root"
		lib, found = driverroot.FindLibrary(c.cfg.readRoot(), NVMLLibrary)
	} else if fi, err := os.Stat(lib); err != nil {
		found = fmt.Errorf("--nvml-library: %w", err)
	} else if !fi.Mode().IsRegular() {
		found = fmt.Errorf("--nvml-library %s: not a regular file", lib)
	}
	switch {
	case found != nil && simulated:
		s.add(Warn, "library", "%v (simulated node %s: not needed)", found, opts.Simulate)
	case found != nil:
		s.add(Fail, "library", "%v", found)
		s.add(Fail, "load and initialise", "not attempted: no NVML library")
		return nil
	case simulated:
		s.add(Pass, "library", "%s (%s; simulated node %s: not loaded)", lib, source, opts.Simulate)
	default:
		s.add(Pass, "library", "%s (%s)", lib, source)
		opts.LibraryPath = lib
	}
	open := c.cfg.Open
	if open == nil {
		open = nvmlnode.Open
	}
	logger.V(2).Info("Opening NVML", "library", opts.LibraryPath, "simulate", opts.Simulate)
	node, err := open(opts)
	if err != nil {
		s.add(Fail, "load and initialise", "%v", err)
		return nil
	}
	if simulated {
		s.add(Pass, "load and initialise", "simulated node %s opened", opts.Simulate)
	} else {
		s.add(Pass, "load and initialise", "NVML loaded and initialised")
	}
	info, err := node.System()
	c.system = info
	value := func(name, v string) {
		if v == "" {
			s.add(Fail, name, "cannot be read: %v", err)
			return
		}
		s.add(Pass, name, "%s", v)
	}
	value("driver version", info.DriverVersion)
	value("CUDA driver version", info.CUDADriverVersion)
	switch {
	case info.GPUCount > 0:
		s.add(Pass, "GPU count", "%d", info.GPUCount)
	case err != nil:
		s.add(Fail, "GPU count", "cannot be read: %v", err)
	default:
		s.add(Fail, "GPU count", "NVML found no GPU")
	}
	return node
}

// checkGPUs reads every GPU on its own: one that cannot be read fails its
// section, and the others are still checked.
func (c *checker) checkGPUs(ctx context.Context, node *nvmlnode.Node) {
	logger := klog.FromContext(ctx)
	inv := &gpu.Inventory{DriverVersion: c.system.DriverVersion, CUDADriverVersion: c.system.CUDADriverVersion}
	for i := 0; i < c.system.GPUCount; i++ {
		if ctx.Err() != nil {
			return
		}
		d, err := node.ReadGPUDetails(ctx, i)
		c.gpus = append(c.gpus, d)
		c.readErrs = append(c.readErrs, err)
		if err != nil {
			logger.Info("GPU cannot be read", "index", i, "err", err)
			continue
		}
		inv.GPUs = append(inv.GPUs, d.GPU)
	}
	model, modelErr := devicemodel.Build(devicemodel.Input{Inventory: inv, StaticMIGOnly: c.cfg.StaticMIGOnly, SharedGPUs: c.cfg.SharedGPUs,
		ConsumableShares: c.cfg.ConsumableShares})
	if modelErr == nil {
		c.model = model
	}
	for i := range c.gpus {
		c.checkGPU(i, c.readErrs[i], modelErr)
	}
}

// published returns the names of the devices the model publishes for a
// GPU, by kind, and the MIG devices by profile name.
func (c *checker) published(uuid string) (byKind map[devicemodel.Kind][]string, byProfile map[string][]string) {
	byKind, byProfile = map[devicemodel.Kind][]string{}, map[string][]string{}
	if c.model == nil {
		return byKind, byProfile
	}
	for name, d := range c.model.Devices {
		if d.GPU == nil || d.GPU.UUID != uuid {
			continue
		}
		byKind[d.Kind] = append(byKind[d.Kind], name)
		if d.Profile != nil {
			byProfile[d.Profile.Name] = append(byProfile[d.Profile.Name], name)
		}
	}
	for _, v := range byKind {
		sort.Strings(v)
	}
	for _, v := range byProfile {
		sort.Strings(v)
	}
	return byKind, byProfile
}

func (c *checker) checkGPU(index int, err, modelErr error) {
	d := c.gpus[index]
	g := d.GPU
	s := c.report.section(fmt.Sprintf("GPU %d", index))
	if err != nil {
		what := "cannot be read"
		if g.Lost {
			what = "is lost (fallen off the bus): a GPU reset or a reboot is due"
		}
		it := s.add(Fail, "GPU", "%s: %v", what, err)
		if g.UUID != "" {
			it.Details = append(it.Details, "UUID "+g.UUID)
		}
		it.Details = append(it.Details, "the other GPUs are still checked")
		return
	}
	s.add(Pass, "UUID", "%s", g.UUID)
	s.add(Pass, "name", "%s", g.Name)
	s.add(Pass, "architecture", "%s", g.Architecture)
	s.add(Pass, "compute capability", "%s", g.CUDAComputeCapability)
	s.add(Pass, "memory", "%d MiB", g.MemoryBytes>>20)
	s.add(Pass, "PCI bus ID", "%s", g.PCIBusID)
	s.add(Pass, "minor", "%d (/dev/nvidia%d)", g.Minor, g.Minor)
	s.add(Pass, "MIG capable", "%t", g.MIGCapable)
	if g.MIGCapable {
		mode := func(on bool) string {
			if on {
				return "enabled"
			}
			return "disabled"
		}
		// The GPU's own count, not a constant: 8 on H100, 4 on A30.
		if g.MemorySlices > 0 {
			s.add(Pass, "memory slices", "%d (placements and memory-slice counters 0-%d)", g.MemorySlices, g.MemorySlices-1)
		} else {
			s.add(Warn, "memory slices", "none: NVML lists no GPU-instance placement, so no MIG device is offered")
		}
		if g.MIGEnabled == d.MIGPendingEnabled {
			s.add(Pass, "MIG mode", "current %s, pending %s", mode(g.MIGEnabled), mode(d.MIGPendingEnabled))
		} else {
			s.add(Warn, "MIG mode", "current %s, pending %s: a GPU reset is due for the change to take effect", mode(g.MIGEnabled), mode(d.MIGPendingEnabled))
		}
		c.checkHolders(s, g)
	}

	byKind, byProfile := c.published(g.UUID)
	if modelErr != nil {
		s.add(Fail, "published devices", "the device model cannot be built: %v", modelErr)
	} else {
		var parts []string
		for _, k := range []struct {
			kind devicemodel.Kind
			what string
		}{
			{devicemodel.KindGPU, "whole GPU"}, {devicemodel.KindGPUShare, "shared GPU"},
			{devicemodel.KindMIGPlacement, "MIG placements"}, {devicemodel.KindMIGStatic, "existing MIG devices"},
		} {
			if n := len(byKind[k.kind]); n > 0 {
				parts = append(parts, fmt.Sprintf("%d %s", n, k.what))
			}
		}
		if len(parts) == 0 {
			s.add(Warn, "published devices", "none: this GPU would not be offered (--static-mig-only with MIG enabled and no MIG device?)")
		} else {
			it := s.add(Pass, "published devices", "%s", strings.Join(parts, ", "))
			it.Details = append(it.Details, byKind[devicemodel.KindGPU]...)
			it.Details = append(it.Details, byKind[devicemodel.KindGPUShare]...)
			it.Details = append(it.Details, byKind[devicemodel.KindMIGStatic]...)
		}
	}

	instancesOf := map[int][]nvmlnode.GPUInstanceDetails{}
	for _, gi := range d.GPUInstances {
		instancesOf[gi.ProfileID] = append(instancesOf[gi.ProfileID], gi)
	}
	for _, p := range g.MIGProfiles {
		var pls []string
		for _, pl := range p.Placements {
			pls = append(pls, pl.String())
		}
		status := Pass
		var details []string
		if names := byProfile[p.Name]; len(names) > 0 {
			details = append(details, fmt.Sprintf("publishes %d: %s", len(names), strings.Join(names, ", ")))
		} else {
			details = append(details, "publishes none")
		}
		gis := instancesOf[p.ID]
		if len(gis) == 0 {
			details = append(details, fmt.Sprintf("compute instance: the plugin fills a GPU instance with the compute-instance profile spanning its %d slices with its %d SMs; not read: NVML lists compute-instance profiles only through a GPU instance, none of this profile exists, and a read-only check creates none", p.ComputeSlices, p.Multiprocessors))
		}
		for _, gi := range gis {
			i, ok := nvmlnode.ChooseFullComputeProfile(gi.ComputeProfiles, p.ComputeSlices, p.Multiprocessors)
			if !ok {
				status = Fail
				details = append(details, fmt.Sprintf("compute instance: GPU instance %d reports no compute-instance profile spanning its %d slices: creating a MIG device of this profile fails", gi.ID, p.ComputeSlices))
				continue
			}
			got := gi.ComputeProfiles[i]
			if got.Multiprocessors != p.Multiprocessors {
				status = Warn
			}
			details = append(details, fmt.Sprintf("compute instance: GPU instance %d: the plugin asks for profile %d: %d slices, %d of the GPU instance's %d SMs, max %d instances", gi.ID, got.ID, got.Slices, got.Multiprocessors, p.Multiprocessors, got.MaxInstances))
		}
		it := s.add(status, "MIG profile "+p.Name, "NVML profile ID %d: %d compute slices, %d MiB (%d memory slices), %d SMs, max %d instances, placements %s",
			p.ID, p.ComputeSlices, p.MemoryBytes>>20, p.MemorySlices, p.Multiprocessors, p.MaxInstances, strings.Join(pls, " "))
		it.Details = details
	}
	for _, gi := range d.GPUInstances {
		name := fmt.Sprintf("profile %d", gi.ProfileID)
		for _, p := range g.MIGProfiles {
			if p.ID == gi.ProfileID {
				name = p.Name
			}
		}
		var cis []int
		for _, inst := range g.MIGInstances {
			if inst.GIID == gi.ID {
				cis = append(cis, inst.CIID)
			}
		}
		it := s.add(Pass, fmt.Sprintf("GPU instance %d", gi.ID), "%s at %s, compute instances %v", name, gi.Placement, cis)
		if len(cis) == 0 {
			it.Status = Warn
			it.Message += ": no compute instance, so no MIG device: it only blocks its placement"
		}
		for _, cp := range gi.ComputeProfiles {
			it.Details = append(it.Details, fmt.Sprintf("compute-instance profile %d: %d slices, %d SMs, max %d instances", cp.ID, cp.Slices, cp.Multiprocessors, cp.MaxInstances))
		}
	}
}

// readGPUs returns the GPUs read without error, in index order.
// checkHolders reports the other processes that hold a MIG-capable GPU
// open: while any does, the driver cannot change its MIG mode (NVML leaves
// the change pending), so claims that need the other mode fail on it.
func (c *checker) checkHolders(s *Section, g gpu.GPU) {
	if g.MIGModeNeedsReset {
		return // the driver never changes its mode
	}
	holders, err := gpuholders.Finder{ProcRoot: c.cfg.ProcRoot, DevRoot: c.cfg.DevRoot, Self: os.Getpid()}.HoldersOf(g.Minor)
	switch {
	case err != nil:
		s.add(Warn, "other processes", "cannot be read: %v", err)
	case len(holders) == 0:
		s.add(Pass, "other processes", "none holds /dev/nvidia%d open: the driver can change MIG mode", g.Minor)
	default:
		it := s.add(Warn, "other processes", "%d hold /dev/nvidia%d open: while they do, a claim that needs the other MIG mode fails on this GPU (offer MIG devices or whole GPUs only on this node, label %s, or stop them)", len(holders), g.Minor, names.DeviceKindsLabel)
		for _, h := range holders {
			it.Details = append(it.Details, h.String())
		}
	}
}

func (c *checker) readGPUs() []gpu.GPU {
	var out []gpu.GPU
	for i, d := range c.gpus {
		if c.readErrs[i] == nil {
			out = append(out, d.GPU)
		}
	}
	return out
}

// publishesMIG reports whether the model publishes a MIG device of the GPU.
func (c *checker) publishesMIG(uuid string) bool {
	byKind, _ := c.published(uuid)
	return len(byKind[devicemodel.KindMIGPlacement])+len(byKind[devicemodel.KindMIGStatic]) > 0
}

// checkCDI lists the driver files and device nodes CDI specs would carry,
// with pkg/cdi's own discovery.
func (c *checker) checkCDI(ctx context.Context) {
	klog.FromContext(ctx).V(2).Info("Inspecting what CDI specs would carry", "driverRoot", c.cfg.DriverRoot, "devRoot", c.cfg.DevRoot, "procRoot", c.cfg.ProcRoot)
	files := c.report.section("Driver files (CDI)")
	nodes := c.report.section("Device nodes (CDI)")
	in, err := cdi.NewInspector(cdi.Options{DriverRoot: c.cfg.DriverRoot, DriverRootMount: c.cfg.DriverRootMount, DevRoot: c.cfg.DevRoot, ProcRoot: c.cfg.ProcRoot})
	if err != nil {
		files.add(Fail, "roots", "%v", err)
		nodes.add(Fail, "roots", "%v", err)
		return
	}
	c.checkDriverFiles(in, files)
	c.checkDeviceNodes(in, nodes)
}

func (c *checker) checkDriverFiles(in *cdi.Inspector, s *Section) {
	df, err := in.DriverFiles()
	if err != nil {
		s.add(Fail, "discovery", "%v", err)
		return
	}
	var libs, tools, configs []string
	for _, m := range df.Mounts {
		line := m.HostPath
		if m.ContainerPath != m.HostPath {
			line += " -> " + m.ContainerPath
		}
		switch {
		case cdi.IsConfigMount(m):
			configs = append(configs, line)
		case strings.Contains(path.Base(m.ContainerPath), ".so."):
			libs = append(libs, line)
		default:
			tools = append(tools, line)
		}
	}
	if len(df.MissingLibraries) > 0 {
		it := s.add(Warn, "libraries", "%s not found: specs give containers the device nodes only, and CUDA programs in them fail", strings.Join(df.MissingLibraries, ", "))
		it.Details = libs
	} else {
		it := s.add(Pass, "libraries", "%d mounted read-only", len(libs))
		it.Details = libs
	}
	it := s.add(Pass, "configuration", "%d loader configuration files mounted read-only", len(configs))
	it.Details = configs
	if len(df.Absent) > 0 {
		// A headless driver has no graphics files: not an error, but
		// images that expect them (NVENC, EGL, Vulkan) fail here.
		var details []string
		for _, capability := range slices.Sorted(maps.Keys(df.Absent)) {
			details = append(details, capability+": "+strings.Join(df.Absent[capability], ", "))
		}
		it := s.add(Pass, "left out", "not under the driver root, specs leave them out: %s", strings.Join(slices.Sorted(maps.Keys(df.Absent)), ", "))
		it.Details = details
	}
	if len(tools) == 0 {
		s.add(Warn, "tools", "none of the driver's tools found: containers get no nvidia-smi")
	} else {
		it := s.add(Pass, "tools", "%d mounted read-only", len(tools))
		it.Details = tools
	}
	if df.Hook != nil {
		s.add(Pass, "ldcache hook", "%s %s", df.Hook.Path, strings.Join(df.Hook.Args[1:], " "))
	} else {
		s.add(Pass, "ldcache hook", "none (no nvidia-cdi-hook under the driver root, or no library): specs run no hook")
	}
}

func lookupItem(s *Section, l cdi.NodeLookup, name string) {
	switch {
	case l.LeftOut():
		s.add(Warn, name, "%v: specs leave it out until it is loaded", l.Err)
	case l.Err != nil:
		s.add(Fail, name, "%v", l.Err)
	case l.Source != l.HostPath:
		s.add(Pass, name, "%s (c %d:%d, mode %v) from %s: the runtime makes it in the container, no host node needed", l.Path, l.Node.Major, l.Node.Minor, *l.Node.FileMode, l.Source)
	default:
		s.add(Pass, name, "%s (c %d:%d, mode %v)", l.HostPath, l.Node.Major, l.Node.Minor, *l.Node.FileMode)
	}
}

func (c *checker) checkDeviceNodes(in *cdi.Inspector, s *Section) {
	if majors, err := cdi.ParseProcDevices(in.ProcDevicesPath()); err != nil {
		s.add(Fail, "device majors", "%v: specs cannot number nvidia-uvm and MIG capability nodes", err)
	} else {
		var found []string
		for _, name := range []string{"nvidia-frontend", "nvidia", "nvidia-uvm", "nvidia-caps"} {
			if m, ok := majors[name]; ok {
				found = append(found, fmt.Sprintf("%s %d", name, m))
			}
		}
		s.add(Pass, "device majors", "%s: %s", in.ProcDevicesPath(), strings.Join(found, ", "))
	}
	for _, l := range in.ControlNodes() {
		lookupItem(s, l, l.Path)
	}
	gpus := c.readGPUs()
	if len(gpus) == 0 {
		s.add(Warn, "GPU nodes", "not checked: no GPU was read")
	}
	needMIG := false
	for _, g := range gpus {
		lookupItem(s, in.GPUNode(g.Minor), fmt.Sprintf("/dev/nvidia%d", g.Minor))
		needMIG = needMIG || c.publishesMIG(g.UUID)
	}
	minors, err := cdi.ParseMIGMinors(in.MIGMinorsPath())
	switch {
	case err != nil && needMIG:
		s.add(Fail, "MIG capability table", "%v: specs of MIG devices cannot be written", err)
		return
	case err != nil:
		s.add(Pass, "MIG capability table", "not readable (%v); not needed: no MIG device is published", err)
		return
	}
	s.add(Pass, "MIG capability table", "%s: %d entries", in.MIGMinorsPath(), len(minors))
	for _, g := range gpus {
		if !c.publishesMIG(g.UUID) {
			continue
		}
		prefix := fmt.Sprintf("gpu%d/", g.Minor)
		n := 0
		for k := range minors {
			if strings.HasPrefix(k, prefix) {
				n++
			}
		}
		name := fmt.Sprintf("MIG capabilities gpu%d", g.Minor)
		if n == 0 {
			s.add(Fail, name, "the table has no entry for GPU minor %d: specs of its MIG devices cannot be written", g.Minor)
			continue
		}
		s.add(Pass, name, "%d entries; the nodes of a MIG device are numbered from its access files when it exists", n)
		for _, inst := range g.MIGInstances {
			for _, l := range in.MIGCapNodes(minors, g.Minor, cdi.MIGDevice{GIID: inst.GIID, CIID: inst.CIID}) {
				what := l.Path
				if what == "" {
					what = "capability node"
				}
				lookupItem(s, l, fmt.Sprintf("gpu%d/gi%d/ci%d %s", g.Minor, inst.GIID, inst.CIID, path.Base(what)))
			}
		}
	}
}

// checkTools finds the driver's tools the plugin runs. It runs neither.
func (c *checker) checkTools(ctx context.Context) {
	klog.FromContext(ctx).V(2).Info("Looking for the driver's tools", "driverRoot", c.cfg.readRoot())
	s := c.report.section("Tools")
	shared := false
	if c.model != nil {
		for _, d := range c.model.Devices {
			shared = shared || d.Kind == devicemodel.KindGPUShare
		}
	}
	for _, t := range []struct {
		name    string
		needed  bool
		without string
	}{
		{nvidiaSMI, false, "claims that set a time slice (sharing.timeSlicingConfig) fail to prepare"},
		{mps.ControlBinary, shared, "shared GPUs (gpu-N-shared), which are published, fail to prepare"},
	} {
		p, err := driverroot.FindBinary(c.cfg.readRoot(), t.name)
		if err != nil {
			status := Warn
			if t.needed {
				status = Fail
			}
			s.add(status, t.name, "%v: %s", err, t.without)
			continue
		}
		fi, err := os.Stat(p)
		switch {
		case err != nil:
			s.add(Fail, t.name, "%v", err)
		case fi.Mode().Perm()&0o111 == 0:
			s.add(Fail, t.name, "%s is not executable (mode %v): %s", p, fi.Mode().Perm(), t.without)
		default:
			s.add(Pass, t.name, "%s, executable (not run)", p)
		}
	}
}
