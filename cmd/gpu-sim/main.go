// Command gpu-sim shows a simulated GPU node's state and injects faults into
// it, for tests and demos. It works on the same state file as a plugin
// started with --simulate and --sim-state-dir.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"

	"github.com/spf13/cobra"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/nvmlserver"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simtools"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	var model, dir string
	open := func() (*sim.Node, error) {
		if dir == "" {
			return nil, fmt.Errorf("--state-dir is required")
		}
		return sim.Open(model, dir)
	}
	root := &cobra.Command{
		Use:           "gpu-sim",
		Short:         "Inspect a simulated GPU node and inject faults",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&model, "model", "dgxh100", "simulated node: "+strings.Join(sim.Models(), ", "))
	root.PersistentFlags().StringVar(&dir, "state-dir", os.Getenv("GPU_DRA_SIM_STATE_DIR"), "directory of the simulated node's state file [env GPU_DRA_SIM_STATE_DIR]")

	var asJSON bool
	show := &cobra.Command{
		Use:   "show",
		Short: "Show GPUs, MIG mode, MIG devices, faults and NVLink fabric placement",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, err := open()
			if err != nil {
				return err
			}
			st, err := n.State()
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			inv, err := inventory(n)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "GPU\tUUID\tPRODUCT\tMIG\tTEMP\tFAULTS\tFABRIC\tMIG DEVICES")
			for i, g := range inv.GPUs {
				fabric := "-"
				if f, ok, err := n.Fabric(i); err != nil {
					return err
				} else if ok {
					fabric = f.String()
				}
				gs := st.GPUs[i]
				var faults []string
				if gs.Lost {
					faults = append(faults, "lost")
				}
				if gs.RetiredPagesPending {
					faults = append(faults, "retired-pages-pending")
				}
				if gs.RowRemapFailure {
					faults = append(faults, "remap-failure")
				}
				if len(gs.Clients) > 0 {
					faults = append(faults, "clients="+strings.Join(gs.Clients, "+"))
				}
				if gs.MIGModePending {
					faults = append(faults, "mig-mode-pending")
				}
				if gs.VolatileDBE > 0 {
					faults = append(faults, fmt.Sprintf("volatile-dbe=%d", gs.VolatileDBE))
				}
				var migs []string
				for _, m := range g.MIGInstances {
					migs = append(migs, fmt.Sprintf("%s@%s(gi%d,ci%d)", m.Profile, m.Placement, m.GIID, m.CIID))
				}
				fmt.Fprintf(w, "%d\t%s\t%s\t%t\t%d°C\t%s\t%s\t%s\n", i, g.UUID, g.Name, g.MIGEnabled, gs.TemperatureC, strings.Join(faults, ","), fabric, strings.Join(migs, " "))
			}
			if len(st.Events) > 0 {
				fmt.Fprintf(w, "\n%d injected events, last: %+v\n\n", len(st.Events), st.Events[len(st.Events)-1])
			}
			return w.Flush()
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print the raw state file")

	var giid, ciid int
	xid := &cobra.Command{
		Use:   "xid GPU XID",
		Short: "Inject an XID error on a GPU (or one MIG device with --gi/--ci)",
		Args:  cobra.ExactArgs(2),
		RunE: func(_ *cobra.Command, args []string) error {
			idx, err := gpuIndex(args[0])
			if err != nil {
				return err
			}
			code, err := strconv.ParseUint(args[1], 10, 64)
			if err != nil {
				return fmt.Errorf("XID %q is not a number", args[1])
			}
			n, err := open()
			if err != nil {
				return err
			}
			return n.InjectXID(idx, code, giid, ciid)
		},
	}
	xid.Flags().IntVar(&giid, "gi", -1, "GPU instance ID of the MIG device the XID belongs to")
	xid.Flags().IntVar(&ciid, "ci", -1, "compute instance ID of the MIG device the XID belongs to")

	var hostDir, tools, nvmlLib string
	var hostIOMMUFD bool
	host := &cobra.Command{
		Use:   "host",
		Short: "Create the simulated node's driver, /dev, /proc and /sys trees for the plugin's --driver-root, --dev-root, --proc-root and --sys-root",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if hostDir == "" {
				return fmt.Errorf("--dir is required")
			}
			program, err := toolsPath(tools)
			if err != nil {
				return err
			}
			n, err := open()
			if err != nil {
				return err
			}
			inv, err := inventory(n)
			if err != nil {
				return err
			}
			var minors []int
			var busIDs []string
			var addrs []simhost.GPUAddress
			for _, g := range inv.GPUs {
				minors = append(minors, g.Minor)
				busIDs = append(busIDs, g.PCIBusID)
				addrs = append(addrs, simhost.GPUAddress{Minor: g.Minor, BusID: g.PCIBusID})
			}
			lib, err := besideGPUSim(nvmlLib, simhost.NVMLSoname, "pkg/simhost/libnvml/build.sh %s")
			if err != nil {
				return err
			}
			roots, err := simhost.Create(hostDir, minors, inv.DriverVersion, program)
			if err != nil {
				return err
			}
			// The tools again, with the node's GPUs, for nvidia-smi -L in
			// containers.
			if err := simtools.Install(program, filepath.Join(roots.DriverRoot, "usr/bin"), inv.DriverVersion, smiGPUs(inv)...); err != nil {
				return err
			}
			if err := simhost.InstallNVML(roots.DriverRoot, lib, inv.DriverVersion); err != nil {
				return err
			}
			sysRoot, err := simhost.CreateSysRoot(hostDir, busIDs)
			if err != nil {
				return err
			}
			if err := simhost.CreateDRM(hostDir, addrs); err != nil {
				return err
			}
			if err := simhost.CreatePCI(hostDir, busIDs, simhost.PCIOptions{IOMMUFD: hostIOMMUFD}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "--driver-root=%s --dev-root=%s --proc-root=%s --sys-root=%s\n", roots.DriverRoot, roots.DevRoot, roots.ProcRoot, sysRoot)
			return nil
		},
	}
	host.Flags().StringVar(&hostDir, "dir", "", "directory to create the trees in")
	host.Flags().BoolVar(&hostIOMMUFD, "iommufd", false, "give the simulated kernel iommufd: /dev/iommu, and a /dev/vfio/devices node for each PCI function bound to VFIO")
	host.Flags().StringVar(&tools, "tools", "", "the gpu-sim-tools program, copied into the driver root as nvidia-smi and nvidia-cuda-mps-control (default: gpu-sim-tools beside gpu-sim)")

	host.Flags().StringVar(&nvmlLib, "nvml-library", "", "the simulated libnvidia-ml.so.1 (pkg/simhost/libnvml/build.sh), installed in the driver root (default: libnvidia-ml.so.1 beside gpu-sim)")

	var serveRoot, serveProc, serveSys, serveFabric string
	serve := &cobra.Command{
		Use:   "serve",
		Short: "Run the simulated node's kernel driver: answer the simulated libnvidia-ml.so.1 of --driver-root until SIGTERM or SIGINT",
		Long: `Answer the simulated NVML library installed in the driver root (by "gpu-sim host") over its
socket, <driver-root>/` + nvmlserver.SocketInRoot + `, from the simulated node's state. Every process that
loads that library (the plugin, its hardware check, the driver's tools) reaches the simulated GPUs
through this process, as NVIDIA's library reaches the GPUs through the kernel driver. Like the
kernel driver, it shows the capability files of MIG instances under --proc-root while they exist
(proc/driver/nvidia/capabilities/gpu<minor>/mig/gi<GI>[/ci<CI>]/access), and makes no
/dev/nvidia-caps node for them. The node's timing comes from GPU_DRA_SIM_LATENCY.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if serveRoot == "" {
				return fmt.Errorf("--driver-root is required")
			}
			n, err := open()
			if err != nil {
				return err
			}
			if serveFabric != "" {
				f, err := sim.ParseClique(serveFabric)
				if err != nil {
					return err
				}
				if err := n.SetFabric(-1, f); err != nil {
					return err
				}
			}
			if ret := n.Init(); ret != nvml.SUCCESS {
				return fmt.Errorf("initialise the simulated node: %s", nvml.ErrorString(ret))
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			l, err := nvmlserver.Listen(serveRoot)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "serving simulated NVML of %s (%s) at %s\n", model, dir, nvmlserver.SocketPath(serveRoot))
			server := nvmlserver.New(n, serveRoot)
			server.ProcRoot = serveProc
			if server.ProcRoot == "" {
				server.ProcRoot = filepath.Join(filepath.Dir(serveRoot), "proc")
			}
			if serveSys == "" {
				serveSys = filepath.Join(filepath.Dir(serveRoot), "sys")
			}
			if _, err := os.Stat(filepath.Join(serveSys, "sys/bus/pci/drivers_probe")); err == nil {
				// The PCI core's side of the kernel: driver bindings
				// written to /sys take effect, and NVML enumerates only
				// the GPUs bound to nvidia.
				server.SysRoot = serveSys
				kernel := simhost.NewPCIKernel(serveSys, filepath.Join(filepath.Dir(serveRoot), "dev"))
				go func() {
					if err := kernel.Serve(ctx, 20*time.Millisecond); err != nil {
						fmt.Fprintf(cmd.ErrOrStderr(), "simulated PCI: %v\n", err)
						stop()
					}
				}()
			}
			if err := serveHolders(ctx, n, server.ProcRoot); err != nil {
				return err
			}
			return server.Serve(ctx, l)
		},
	}
	serve.Flags().StringVar(&serveRoot, "driver-root", "", "the simulated driver root (made by gpu-sim host) whose library to answer")
	serve.Flags().StringVar(&serveFabric, "fabric", "", "place every GPU of a fabric attached node (gb200) in this NVLink clique, <cluster UUID>.<clique ID>, registered (as \"gpu-sim fabric\" does) before serving; default: the placement in the state (initially "+sim.DefaultFabricClusterUUID+".1)")
	serve.Flags().StringVar(&serveSys, "sys-root", "", "the simulated /sys root (made by gpu-sim host) whose PCI driver bindings this kernel applies (default: sys beside --driver-root, as gpu-sim host lays them out)")
	serve.Flags().StringVar(&serveProc, "proc-root", "", "the simulated /proc root (made by gpu-sim host) where MIG instances' capability files are kept (default: proc beside --driver-root, as gpu-sim host lays them out)")

	root.AddCommand(show, xid, host, serve, fabricCommand(open), migCommand(open),
		gpuCommand(open, "ecc GPU", "Inject an uncorrectable (double-bit) ECC error", 0, func(n *sim.Node, i int, _ []string) error { return n.InjectDoubleBitECC(i) }),
		switchCommand(open, "lost GPU on|off", "Make a GPU fall off the bus, or come back", (*sim.Node).SetLost),
		gpuCommand(open, "temperature GPU CELSIUS", "Set a GPU's temperature", 1, func(n *sim.Node, i int, a []string) error {
			c, err := strconv.Atoi(a[0])
			if err != nil {
				return fmt.Errorf("temperature %q is not a whole number", a[0])
			}
			return n.SetTemperature(i, c)
		}),
		switchCommand(open, "retired-pages GPU on|off", "Set whether page retirements are pending", (*sim.Node).SetRetiredPagesPending),
		switchCommand(open, "remap-failure GPU on|off", "Set whether a row remapping failed (memory that cannot be repaired)", (*sim.Node).SetRowRemapFailure),
		gpuCommand(open, "reset GPU", "Reset a GPU as nvidia-smi --gpu-reset would: back on the bus, pending repairs done, volatile ECC counters zeroed, pending MIG mode applied", 0, func(n *sim.Node, i int, _ []string) error {
			return n.Reset(i)
		}),
		gpuCommand(open, "client GPU NAME open|close", "Open or close a GPU for a process other than the driver (a monitoring agent such as dcgm-exporter): while one is open, a MIG mode change stays pending (NVML: In use by another client)", 2, func(n *sim.Node, i int, a []string) error {
			switch a[1] {
			case "open":
				return n.SetClient(i, a[0], true)
			case "close":
				return n.SetClient(i, a[0], false)
			}
			return fmt.Errorf("client %s: %q is neither open nor close", a[0], a[1])
		}),
		gpuCommand(open, "mig-mode GPU on|off", "Set a GPU's MIG mode as nvidia-smi would (fails while MIG devices exist; on Ampere it is pending until reset)", 1, func(n *sim.Node, i int, a []string) error {
			on, err := onOff(a[0])
			if err != nil {
				return err
			}
			return n.SetMIGMode(i, on)
		}),
	)
	return root
}

// fabricCommand places a fabric attached node's GPUs (gb200) in an NVLink
// clique, or sets their registration's progress or failure, as the fabric
// manager registers GPUs on a rack.
func fabricCommand(open func() (*sim.Node, error)) *cobra.Command {
	var index int
	var state string
	var status int
	cmd := &cobra.Command{
		Use:   "fabric [CLUSTER-UUID.CLIQUE-ID]",
		Short: "Set the NVLink fabric registration of a fabric attached node's GPUs (gb200), as NVML's fabric info reports it",
		Long: `Place the GPUs (every one, or --gpu) in clique CLIQUE-ID of the fabric cluster CLUSTER-UUID,
registered (NVML state completed, status success), or set a registration that is still
--state not-started or in-progress, or one that failed (--status, an NVML return code, with
--state completed). NVML's answer changes at once, as the fabric manager's registration does.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			st, ok := sim.FabricStates[state]
			if !ok {
				return fmt.Errorf("--state %q: want not-started, in-progress or completed", state)
			}
			f := sim.FabricState{State: st, Status: int32(status)}
			switch {
			case len(args) == 1:
				placed, err := sim.ParseClique(args[0])
				if err != nil {
					return err
				}
				f.ClusterUUID, f.CliqueID = placed.ClusterUUID, placed.CliqueID
			case st == nvml.GPU_FABRIC_STATE_COMPLETED && status == 0:
				return fmt.Errorf("a completed, successful registration needs its CLUSTER-UUID.CLIQUE-ID")
			}
			n, err := open()
			if err != nil {
				return err
			}
			return n.SetFabric(index, f)
		},
	}
	cmd.Flags().IntVar(&index, "gpu", -1, "the GPU to set (default: every GPU)")
	cmd.Flags().StringVar(&state, "state", "completed", "registration state: not-started, in-progress or completed")
	cmd.Flags().IntVar(&status, "status", 0, "the completed registration's NVML return code (0: success; e.g. 999, NVML_ERROR_UNKNOWN, for a failed registration)")
	return cmd
}

// migCommand creates and destroys MIG devices outside the driver, as an
// administrator does with nvidia-smi mig or mig-parted before the driver
// runs with static MIG only: the GPU must be in MIG mode (gpu-sim
// mig-mode GPU on).
func migCommand(open func() (*sim.Node, error)) *cobra.Command {
	var start int
	var procRoot string
	cmd := &cobra.Command{
		Use:   "mig",
		Short: "Create or destroy MIG devices outside the driver, as an administrator (nvidia-smi mig, mig-parted) does",
	}
	create := &cobra.Command{
		Use:   "create GPU PROFILE",
		Short: "Create a MIG device of PROFILE (e.g. 1g.10gb) on a GPU in MIG mode: a GPU instance and one compute instance spanning it; print its UUID",
		Long: `Create a MIG device of PROFILE (a name as nvidia-smi mig -lgip shows it, e.g. 1g.10gb) on GPU,
which must be in MIG mode: a GPU instance at --start (default: the first free placement) and one
compute instance spanning it, as "nvidia-smi mig -cgi PROFILE -C" or mig-parted does. Prints the
MIG device's UUID.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := openMIGGPU(open, args[0])
			if err != nil {
				return err
			}
			defer t.node.Close()
			n, idx, node, g := t.sim, t.index, t.node, t.gpu
			var profile *gpu.MIGProfile
			var known []string
			for i, p := range g.MIGProfiles {
				known = append(known, p.Name)
				if p.Name == args[1] {
					profile = &g.MIGProfiles[i]
				}
			}
			if profile == nil {
				return fmt.Errorf("profile %q: GPU %d (%s) has %s", args[1], idx, g.Name, strings.Join(known, ", "))
			}
			placements := profile.Placements
			if cmd.Flags().Changed("start") {
				placements = nil
				var starts []string
				for _, p := range profile.Placements {
					starts = append(starts, strconv.Itoa(p.Start))
					if p.Start == start {
						placements = []gpu.Placement{p}
					}
				}
				if placements == nil {
					return fmt.Errorf("--start %d: %s starts at %s on GPU %d", start, profile.Name, strings.Join(starts, ", "), idx)
				}
			}
			var errs []error
			for _, p := range placements {
				inst, err := node.CreateMIG(cmd.Context(), gpu.MIGRequest{ParentUUID: g.UUID, ProfileID: profile.ID, Placement: p})
				if err != nil {
					errs = append(errs, err)
					continue
				}
				if err := syncCapabilities(n, procRoot, idx, g.Minor); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), inst.UUID)
				return nil
			}
			if len(placements) == 1 {
				return fmt.Errorf("%s at %d on GPU %d: %w", profile.Name, placements[0].Start, idx, errs[0])
			}
			for _, err := range errs {
				if !errors.Is(err, gpu.ErrPlacementOccupied) {
					return fmt.Errorf("%s on GPU %d: %w", profile.Name, idx, err)
				}
			}
			return fmt.Errorf("%s on GPU %d: no free placement, every one is occupied", profile.Name, idx)
		},
	}
	create.Flags().IntVar(&start, "start", 0, "the GPU instance's placement: its first memory slice (default: the first free placement)")
	destroy := &cobra.Command{
		Use:   "destroy GPU MIG-UUID",
		Short: "Destroy a MIG device of a GPU, its compute instance and its GPU instance",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := openMIGGPU(open, args[0])
			if err != nil {
				return err
			}
			defer t.node.Close()
			n, idx, node, g := t.sim, t.index, t.node, t.gpu
			var live []string
			for _, m := range g.MIGInstances {
				if m.UUID != args[1] {
					live = append(live, m.UUID)
					continue
				}
				if err := node.DestroyMIG(cmd.Context(), gpu.MIGRef{ParentUUID: g.UUID, GIID: m.GIID, CIID: m.CIID, UUID: m.UUID}); err != nil {
					return err
				}
				return syncCapabilities(n, procRoot, idx, g.Minor)
			}
			if len(live) == 0 {
				live = []string{"none"}
			}
			return fmt.Errorf("MIG device %q is not on GPU %d (its MIG devices: %s)", args[1], idx, strings.Join(live, ", "))
		},
	}
	cmd.PersistentFlags().StringVar(&procRoot, "proc-root", "", "the simulated /proc root (made by gpu-sim host) whose MIG capability files to update, as the kernel driver does (default: none updated)")
	cmd.AddCommand(create, destroy)
	return cmd
}

// migGPU is the GPU in MIG mode that a mig command works on: its index,
// the simulated node and, read through NVML as the plugin reads it, the
// GPU.
type migGPU struct {
	sim   *sim.Node
	index int
	node  *nvmlnode.Node
	gpu   *gpu.GPU
}

// openMIGGPU opens the simulated node and reads the GPU that arg names;
// it must be in MIG mode. The caller closes the returned node.
func openMIGGPU(open func() (*sim.Node, error), arg string) (*migGPU, error) {
	index, err := gpuIndex(arg)
	if err != nil {
		return nil, err
	}
	n, err := open()
	if err != nil {
		return nil, err
	}
	node, err := nvmlnode.NewNode(n)
	if err != nil {
		return nil, err
	}
	inv, err := node.Inventory(context.Background())
	if err != nil {
		node.Close()
		return nil, err
	}
	if index < 0 || index >= len(inv.GPUs) {
		node.Close()
		return nil, fmt.Errorf("GPU %d: the node has GPUs 0 to %d", index, len(inv.GPUs)-1)
	}
	g := &inv.GPUs[index]
	if !g.MIGEnabled {
		node.Close()
		return nil, fmt.Errorf("GPU %d is not in MIG mode (gpu-sim mig-mode %d on)", index, index)
	}
	return &migGPU{sim: n, index: index, node: node, gpu: g}, nil
}

// syncCapabilities makes the MIG capability files of GPU index (minor)
// under procRoot those of its instances, as the kernel driver keeps them;
// nothing without procRoot.
func syncCapabilities(n *sim.Node, procRoot string, index, minor int) error {
	if procRoot == "" {
		return nil
	}
	caps, err := simhost.OpenCapabilities(procRoot)
	if err != nil {
		return err
	}
	st, err := n.State()
	if err != nil {
		return err
	}
	var gis []simhost.GPUInstanceCaps
	for _, gi := range st.GPUs[index].GPUInstances {
		c := simhost.GPUInstanceCaps{ID: gi.ID}
		for _, ci := range gi.ComputeInstances {
			c.ComputeInstances = append(c.ComputeInstances, ci.ID)
		}
		gis = append(gis, c)
	}
	return caps.Sync(minor, gis)
}

// toolsPath returns the gpu-sim-tools program to install: path, or by
// default gpu-sim-tools in gpu-sim's own directory. It must exist.
func toolsPath(path string) (string, error) {
	return besideGPUSim(path, "gpu-sim-tools", "CGO_ENABLED=0 go build -o %s ./cmd/gpu-sim-tools")
}

// besideGPUSim returns path, or by default the file name in gpu-sim's own
// directory; it must exist, else the error says how to build it (build is
// a format with the path's %s).
func besideGPUSim(path, name, build string) (string, error) {
	if path == "" {
		exe, err := os.Executable()
		if err == nil {
			exe, err = filepath.EvalSymlinks(exe)
		}
		if err != nil {
			return "", fmt.Errorf("find %s beside gpu-sim: %w", name, err)
		}
		path = filepath.Join(filepath.Dir(exe), name)
	}
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("%s: %w (build it with `%s`, or pass its path)", name, err, fmt.Sprintf(build, path))
	}
	return path, nil
}

// gpuCommand builds a subcommand taking a GPU index and extra arguments.
func gpuCommand(open func() (*sim.Node, error), use, short string, extra int, action func(n *sim.Node, index int, args []string) error) *cobra.Command {
	return &cobra.Command{
		Use: use, Short: short, Args: cobra.ExactArgs(1 + extra),
		RunE: func(_ *cobra.Command, args []string) error {
			idx, err := gpuIndex(args[0])
			if err != nil {
				return err
			}
			n, err := open()
			if err != nil {
				return err
			}
			return action(n, idx, args[1:])
		},
	}
}

// inventory reads the simulated node as the plugin does, through NVML.
func inventory(n *sim.Node) (*gpu.Inventory, error) {
	node, err := nvmlnode.NewNode(n)
	if err != nil {
		return nil, err
	}
	return node.Inventory(context.Background())
}

// switchCommand is a gpuCommand that turns a GPU's fault on or off.
func switchCommand(open func() (*sim.Node, error), use, short string, set func(n *sim.Node, index int, on bool) error) *cobra.Command {
	return gpuCommand(open, use, short, 1, func(n *sim.Node, i int, a []string) error {
		on, err := onOff(a[0])
		if err != nil {
			return err
		}
		return set(n, i, on)
	})
}

func gpuIndex(s string) (int, error) {
	i, err := strconv.Atoi(strings.TrimPrefix(s, "gpu-"))
	if err != nil {
		return 0, fmt.Errorf("GPU %q: want an index such as 0 or gpu-0", s)
	}
	return i, nil
}

func onOff(s string) (bool, error) {
	switch s {
	case "on", "true", "1":
		return true, nil
	case "off", "false", "0":
		return false, nil
	}
	return false, fmt.Errorf("%q: want on or off", s)
}

// serveHolders shows, under the simulated /proc, a process holding its GPU
// open for every client that "gpu-sim client GPU NAME open" opened, until
// ctx ends (simhost.SyncHolders): the plugin finds them as it finds a
// monitoring agent's process on a node.
func serveHolders(ctx context.Context, n *sim.Node, procRoot string) error {
	inv, err := inventory(n)
	if err != nil {
		return err
	}
	minors := make([]int, len(inv.GPUs))
	for i, g := range inv.GPUs {
		minors[i] = g.Minor
	}
	sync := func() error {
		st, err := n.State()
		if err != nil {
			return err
		}
		holders := map[int][]string{}
		for i, g := range st.GPUs {
			if i < len(minors) && len(g.Clients) > 0 {
				holders[minors[i]] = g.Clients
			}
		}
		return simhost.SyncHolders(procRoot, holders)
	}
	if err := sync(); err != nil {
		return err
	}
	go func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := sync(); err != nil {
					fmt.Fprintf(os.Stderr, "simulated holders: %v\n", err)
				}
			}
		}
	}()
	return nil
}

// smiGPUs is the GPU table of the simulated nvidia-smi: each GPU with its
// MIG profiles' names.
func smiGPUs(inv *gpu.Inventory) []simtools.GPU {
	var out []simtools.GPU
	for _, g := range inv.GPUs {
		s := simtools.GPU{Index: g.Index, Minor: g.Minor, UUID: g.UUID, Name: g.Name}
		for _, p := range g.MIGProfiles {
			if s.MIGProfiles == nil {
				s.MIGProfiles = map[string]string{}
			}
			s.MIGProfiles[strconv.Itoa(p.ID)] = p.Name
		}
		out = append(out, s)
	}
	return out
}
