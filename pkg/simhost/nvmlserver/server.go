// Package nvmlserver is the kernel side of the simulated NVIDIA driver
// installation: it answers the simulated libnvidia-ml.so.1
// (pkg/simhost/libnvml) over a Unix socket in the driver root, from an
// nvml.Interface, the simulated node of package sim. The plugin then runs
// exactly as on a GPU node: go-nvml loads a C library from the driver root
// and calls NVML's C API, and only the far side of that library is
// simulated, as the kernel driver is on a real node.
//
// The protocol is line based: a request is an operation and its arguments
// separated by single spaces; the answer is the NVML return code, then the
// results, separated by spaces; strings are percent-encoded (see
// encodeString). A device is named by three integers, GPU index, GPU
// instance ID and compute instance ID, the last two -1 for a whole GPU. The
// server keeps no handle between requests, but for an event set, which
// lives as long as the connection that created it.
package nvmlserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simtools"
)

// ProtocolVersion is the version of the protocol the library and the
// server speak; the library's hello names it.
const ProtocolVersion = 1

// SocketInRoot is where the library looks for the socket, relative to the
// driver root (see libnvml/nvml.c).
const SocketInRoot = simtools.KernelSocketInRoot

// maxRequest bounds one request line; a longer one ends the connection.
const maxRequest = 4096

// maxSocketPath is the longest path a Unix socket can be bound at.
const maxSocketPath = 107

// Server answers the simulated NVML library from lib.
type Server struct {
	lib nvml.Interface
	// DriverVersion and NVMLVersion are answered as is.
	DriverVersion, NVMLVersion string
	// DriverRoot is the host path of the driver root served: the driver's
	// tools record what they change there (simtools.RecordTimeSlice,
	// simtools.RecordMPS), as they cannot from containers that mount it
	// read-only. Empty refuses those records.
	DriverRoot string
	// ProcRoot is the host root of the simulated /proc (made by gpu-sim
	// host): the capability files of MIG instances are kept there, as the
	// kernel driver shows them, from when the server starts and after
	// every instance created or destroyed. Empty keeps none.
	ProcRoot string
	// SysRoot, when set, is the simulated /sys root (made by gpu-sim host,
	// simhost.CreatePCI): a GPU whose PCI function there is not bound to
	// nvidia (passed through to a VM, or between an unbind and a bind)
	// is not enumerated, as NVIDIA's library enumerates only the GPUs its
	// kernel driver drives; the others' indices close up. A GPU without a
	// PCI function there is enumerated.
	SysRoot string

	caps  *simhost.Capabilities
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// New returns a server of lib, which must be initialised (lib.Init), for
// the driver root at driverRoot.
func New(lib nvml.Interface, driverRoot string) *Server {
	return &Server{lib: lib, DriverRoot: driverRoot, conns: map[net.Conn]struct{}{}}
}

// SocketPath is the socket's path in driverRoot.
func SocketPath(driverRoot string) string { return filepath.Join(driverRoot, SocketInRoot) }

// Listen binds the socket in driverRoot, replacing a stale one; it is
// readable and writable by everyone, as /dev/nvidiactl is.
func Listen(driverRoot string) (net.Listener, error) {
	path := SocketPath(driverRoot)
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("simulated NVML socket %s: longer than the %d bytes a Unix socket path can have: use a shorter driver root", path, maxSocketPath)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("simulated NVML socket: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("simulated NVML socket: remove the stale one: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("simulated NVML socket: %w", err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		l.Close()
		return nil, fmt.Errorf("simulated NVML socket: %w", err)
	}
	return l, nil
}

// Serve answers connections on l until ctx ends, then closes l and every
// connection.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	logger := klog.FromContext(ctx)
	if s.ProcRoot != "" {
		caps, err := simhost.OpenCapabilities(s.ProcRoot)
		if err != nil {
			l.Close()
			return err
		}
		s.caps = caps
		if err := s.syncAllCapabilities(); err != nil {
			l.Close()
			return err
		}
	}
	stop := context.AfterFunc(ctx, func() {
		l.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	})
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("simulated NVML socket: accept: %w", err)
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			if err := s.serveConn(klog.NewContext(ctx, logger), c); err != nil {
				logger.V(2).Info("Simulated NVML connection ended", "err", err)
			}
		}()
	}
}

// session is one connection's state: the event set it created, if any.
type session struct {
	events nvml.EventSet
	// eventGPUs maps a registered device back to its index.
	eventGPUs map[nvml.Device]int
	logger    klog.Logger
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) error {
	r := bufio.NewReaderSize(c, maxRequest)
	sess := &session{logger: klog.FromContext(ctx)}
	defer func() {
		if sess.events != nil {
			_ = sess.events.Free()
		}
	}()
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return err
		}
		answer := s.handle(sess, strings.Fields(string(line)))
		if _, err := c.Write([]byte(answer + "\n")); err != nil {
			return err
		}
	}
}

// reply formats an answer: the return code and the results.
func reply(ret nvml.Return, results ...any) string {
	var b strings.Builder
	b.WriteString(strconv.Itoa(int(ret)))
	if ret != nvml.SUCCESS {
		return b.String()
	}
	for _, r := range results {
		b.WriteByte(' ')
		switch v := r.(type) {
		case string:
			b.WriteString(encodeString(v))
		case bool:
			if v {
				b.WriteByte('1')
			} else {
				b.WriteByte('0')
			}
		default:
			fmt.Fprint(&b, v)
		}
	}
	return b.String()
}

// encodeString is s as one token of an answer (simtools.EncodeToken);
// an empty string is one NUL, so that it is still a token.
func encodeString(s string) string {
	if s == "" {
		return "%00"
	}
	return simtools.EncodeToken(s)
}

// args are a request's arguments, parsed in order; the first error sticks.
type args struct {
	f   []string
	err error
}

func (a *args) int() int {
	if a.err != nil {
		return 0
	}
	if len(a.f) == 0 {
		a.err = errors.New("missing argument")
		return 0
	}
	v, err := strconv.ParseInt(a.f[0], 10, 64)
	a.f = a.f[1:]
	if err != nil {
		a.err = err
	}
	return int(v)
}

func (a *args) uint64() uint64 {
	if a.err != nil {
		return 0
	}
	if len(a.f) == 0 {
		a.err = errors.New("missing argument")
		return 0
	}
	v, err := strconv.ParseUint(a.f[0], 10, 64)
	a.f = a.f[1:]
	if err != nil {
		a.err = err
	}
	return v
}

func (a *args) str() string {
	if a.err != nil {
		return ""
	}
	if len(a.f) == 0 {
		a.err = errors.New("missing argument")
		return ""
	}
	v := a.f[0]
	a.f = a.f[1:]
	return v
}

// gpu resolves a whole GPU by index.
func (s *Server) gpu(index int) (nvml.Device, nvml.Return) {
	count, ret := s.count()
	if ret != nvml.SUCCESS {
		return nil, ret
	}
	if index < 0 || index >= count {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	return s.gpuAt(index)
}

// device resolves a device: a whole GPU (gi < 0) or a MIG device.
func (s *Server) device(gpuIndex, gi, ci int) (nvml.Device, nvml.Return) {
	d, ret := s.gpu(gpuIndex)
	if ret != nvml.SUCCESS || gi < 0 {
		return d, ret
	}
	max, ret := d.GetMaxMigDeviceCount()
	if ret != nvml.SUCCESS {
		return nil, ret
	}
	for i := 0; i < max; i++ {
		m, ret := d.GetMigDeviceHandleByIndex(i)
		if ret == nvml.ERROR_NOT_FOUND || ret == nvml.ERROR_INVALID_ARGUMENT {
			continue
		}
		if ret != nvml.SUCCESS {
			return nil, ret
		}
		g, ret1 := m.GetGpuInstanceId()
		c, ret2 := m.GetComputeInstanceId()
		if ret1 == nvml.SUCCESS && ret2 == nvml.SUCCESS && g == gi && c == ci {
			return m, nvml.SUCCESS
		}
	}
	// The MIG device is gone: its handle is no longer valid.
	return nil, nvml.ERROR_INVALID_ARGUMENT
}

func (s *Server) gpuInstance(gpuIndex, gi int) (nvml.GpuInstance, nvml.Return) {
	d, ret := s.gpu(gpuIndex)
	if ret != nvml.SUCCESS {
		return nil, ret
	}
	return d.GetGpuInstanceById(gi)
}

func (s *Server) computeInstance(gpuIndex, gi, ci int) (nvml.ComputeInstance, nvml.Return) {
	g, ret := s.gpuInstance(gpuIndex, gi)
	if ret != nvml.SUCCESS {
		return nil, ret
	}
	return g.GetComputeInstanceById(ci)
}

// handle answers one request. A call the simulated node does not
// implement (go-nvml's mocks panic then) is NOT_SUPPORTED, as NVIDIA's
// library answers for a feature a GPU lacks.
func (s *Server) handle(sess *session, fields []string) (answer string) {
	defer func() {
		if recover() != nil {
			answer = reply(nvml.ERROR_NOT_SUPPORTED)
		}
	}()
	if len(fields) == 0 {
		return reply(nvml.ERROR_INVALID_ARGUMENT)
	}
	op, a := fields[0], &args{f: fields[1:]}
	answer = s.dispatch(sess, op, a)
	if a.err != nil {
		return reply(nvml.ERROR_INVALID_ARGUMENT)
	}
	return answer
}

// deviceOps are the operations on a device, named by its three IDs.
var deviceOps = map[string]func(s *Server, d nvml.Device, a *args) string{
	"uuid": func(_ *Server, d nvml.Device, _ *args) string { v, r := d.GetUUID(); return reply(r, v) },
	"name": func(_ *Server, d nvml.Device, _ *args) string { v, r := d.GetName(); return reply(r, v) },
	"serial": func(_ *Server, d nvml.Device, _ *args) string {
		v, r := d.GetSerial()
		return reply(r, v)
	},
	"minor":        func(_ *Server, d nvml.Device, _ *args) string { v, r := d.GetMinorNumber(); return reply(r, v) },
	"brand":        func(_ *Server, d nvml.Device, _ *args) string { v, r := d.GetBrand(); return reply(r, int(v)) },
	"architecture": func(_ *Server, d nvml.Device, _ *args) string { v, r := d.GetArchitecture(); return reply(r, int(v)) },
	"compute-capability": func(_ *Server, d nvml.Device, _ *args) string {
		major, minor, r := d.GetCudaComputeCapability()
		return reply(r, major, minor)
	},
	"memory": func(_ *Server, d nvml.Device, _ *args) string {
		m, r := d.GetMemoryInfo()
		return reply(r, m.Total, m.Free, m.Used)
	},
	"pci": func(_ *Server, d nvml.Device, _ *args) string {
		p, r := d.GetPciInfo()
		return reply(r, p.Domain, p.Bus, p.Device, p.PciDeviceId, p.PciSubSystemId, cString(p.BusId[:]))
	},
	"temperature": func(_ *Server, d nvml.Device, a *args) string {
		v, r := d.GetTemperature(nvml.TemperatureSensors(a.int()))
		return reply(r, v)
	},
	"temperature-threshold": func(_ *Server, d nvml.Device, a *args) string {
		v, r := d.GetTemperatureThreshold(nvml.TemperatureThresholds(a.int()))
		return reply(r, v)
	},
	"retired-pages-pending": func(_ *Server, d nvml.Device, _ *args) string {
		v, r := d.GetRetiredPagesPendingStatus()
		return reply(r, int(v))
	},
	"remapped-rows": func(_ *Server, d nvml.Device, _ *args) string {
		corr, unc, pending, failed, r := d.GetRemappedRows()
		return reply(r, corr, unc, pending, failed)
	},
	"ecc-errors": func(_ *Server, d nvml.Device, a *args) string {
		v, r := d.GetTotalEccErrors(nvml.MemoryErrorType(a.int()), nvml.EccCounterType(a.int()))
		return reply(r, v)
	},
	"supported-events": func(_ *Server, d nvml.Device, _ *args) string {
		v, r := d.GetSupportedEventTypes()
		return reply(r, v)
	},
	"mig-mode": func(_ *Server, d nvml.Device, _ *args) string {
		cur, pending, r := d.GetMigMode()
		return reply(r, cur, pending)
	},
	"set-mig-mode": func(_ *Server, d nvml.Device, a *args) string {
		activation, r := d.SetMigMode(a.int())
		return reply(r, int(activation))
	},
	"fabric": func(_ *Server, d nvml.Device, _ *args) string {
		f, r := d.GetGpuFabricInfo()
		mask, summary := fabricHealth(f)
		return reply(r, int(f.State), f.Status, f.CliqueId, fmt.Sprintf("%x", f.ClusterUuid[:]), mask, summary)
	},
	"max-mig-devices": func(_ *Server, d nvml.Device, _ *args) string { v, r := d.GetMaxMigDeviceCount(); return reply(r, v) },
	"mig-device": func(_ *Server, d nvml.Device, a *args) string {
		m, r := d.GetMigDeviceHandleByIndex(a.int())
		if r != nvml.SUCCESS {
			return reply(r)
		}
		gi, r := m.GetGpuInstanceId()
		if r != nvml.SUCCESS {
			return reply(r)
		}
		ci, r := m.GetComputeInstanceId()
		return reply(r, gi, ci)
	},
	"gi-profile": func(_ *Server, d nvml.Device, a *args) string {
		p, r := d.GetGpuInstanceProfileInfo(a.int())
		return reply(r, p.Id, p.IsP2pSupported, p.SliceCount, p.InstanceCount, p.MultiprocessorCount, p.CopyEngineCount,
			p.DecoderCount, p.EncoderCount, p.JpegCount, p.OfaCount, p.MemorySizeMB, giProfileName(p))
	},
	"gi-placements": func(_ *Server, d nvml.Device, a *args) string {
		p, r := d.GetGpuInstanceProfileInfo(a.int())
		if r != nvml.SUCCESS {
			return reply(r)
		}
		pls, r := d.GetGpuInstancePossiblePlacements(&p)
		out := []any{len(pls)}
		for _, pl := range pls {
			out = append(out, pl.Start, pl.Size)
		}
		return reply(r, out...)
	},
	"gi-remaining": func(_ *Server, d nvml.Device, a *args) string {
		p, r := d.GetGpuInstanceProfileInfo(a.int())
		if r != nvml.SUCCESS {
			return reply(r)
		}
		v, r := d.GetGpuInstanceRemainingCapacity(&p)
		return reply(r, v)
	},
	"create-gi": func(_ *Server, d nvml.Device, a *args) string {
		p, r := d.GetGpuInstanceProfileInfo(a.int())
		pl := nvml.GpuInstancePlacement{Start: uint32(a.int()), Size: uint32(a.int())}
		if r != nvml.SUCCESS || a.err != nil {
			return reply(r)
		}
		gi, r := d.CreateGpuInstanceWithPlacement(&p, &pl)
		return giID(gi, r)
	},
	"create-gi-anywhere": func(_ *Server, d nvml.Device, a *args) string {
		p, r := d.GetGpuInstanceProfileInfo(a.int())
		if r != nvml.SUCCESS {
			return reply(r)
		}
		gi, r := d.CreateGpuInstance(&p)
		return giID(gi, r)
	},
	"gpu-instances": func(_ *Server, d nvml.Device, a *args) string {
		p, r := d.GetGpuInstanceProfileInfo(a.int())
		if r != nvml.SUCCESS {
			return reply(r)
		}
		gis, r := d.GetGpuInstances(&p)
		if r != nvml.SUCCESS {
			return reply(r)
		}
		out := []any{len(gis)}
		for _, gi := range gis {
			info, r := gi.GetInfo()
			if r != nvml.SUCCESS {
				return reply(r)
			}
			out = append(out, info.Id)
		}
		return reply(nvml.SUCCESS, out...)
	},
	"gi-by-id": func(_ *Server, d nvml.Device, a *args) string {
		_, r := d.GetGpuInstanceById(a.int())
		return reply(r)
	},
}

// fabricHealth is the health of a fabric registration as NVML's
// nvmlGpuFabricInfo_v2/v3 report it, which the simulated node does not
// model: a completed, successful registration is healthy (bandwidth not
// degraded, no route recovery, routes healthy, no access timeout
// recovery; the other fields not supported), anything else reports no
// health.
func fabricHealth(f nvml.GpuFabricInfo) (mask uint32, summary uint8) {
	if f.State != nvml.GPU_FABRIC_STATE_COMPLETED || nvml.Return(f.Status) != nvml.SUCCESS {
		return 0, nvml.GPU_FABRIC_HEALTH_SUMMARY_NOT_SUPPORTED
	}
	mask = nvml.GPU_FABRIC_HEALTH_MASK_DEGRADED_BW_FALSE<<nvml.GPU_FABRIC_HEALTH_MASK_SHIFT_DEGRADED_BW |
		nvml.GPU_FABRIC_HEALTH_MASK_ROUTE_RECOVERY_FALSE<<nvml.GPU_FABRIC_HEALTH_MASK_SHIFT_ROUTE_RECOVERY |
		nvml.GPU_FABRIC_HEALTH_MASK_ROUTE_UNHEALTHY_FALSE<<nvml.GPU_FABRIC_HEALTH_MASK_SHIFT_ROUTE_UNHEALTHY |
		nvml.GPU_FABRIC_HEALTH_MASK_ACCESS_TIMEOUT_RECOVERY_FALSE<<nvml.GPU_FABRIC_HEALTH_MASK_SHIFT_ACCESS_TIMEOUT_RECOVERY
	return mask, nvml.GPU_FABRIC_HEALTH_SUMMARY_HEALTHY
}

func giID(gi nvml.GpuInstance, r nvml.Return) string {
	if r != nvml.SUCCESS {
		return reply(r)
	}
	info, r := gi.GetInfo()
	return reply(r, info.Id)
}

// giProfileName is a profile's name as NVML's V2 info has it; the
// simulator's v1 info has none, so it is derived.
func giProfileName(p nvml.GpuInstanceProfileInfo) string {
	return fmt.Sprintf("MIG %dg.%dgb", p.SliceCount, (p.MemorySizeMB+1023)/1024)
}

// gpuInstanceOps are the operations on a GPU instance, named by GPU index
// and GPU instance ID.
var gpuInstanceOps = map[string]func(gi nvml.GpuInstance, a *args) string{
	"gi-info": func(gi nvml.GpuInstance, _ *args) string {
		info, r := gi.GetInfo()
		return reply(r, info.ProfileId, info.Placement.Start, info.Placement.Size)
	},
	"destroy-gi": func(gi nvml.GpuInstance, _ *args) string { return reply(gi.Destroy()) },
	"ci-profile": func(gi nvml.GpuInstance, a *args) string {
		p, r := gi.GetComputeInstanceProfileInfo(a.int(), a.int())
		return reply(r, p.Id, p.SliceCount, p.InstanceCount, p.MultiprocessorCount, p.SharedCopyEngineCount,
			p.SharedDecoderCount, p.SharedEncoderCount, p.SharedJpegCount, p.SharedOfaCount, fmt.Sprintf("MIG %dc", p.SliceCount))
	},
	"create-ci": func(gi nvml.GpuInstance, a *args) string {
		p, r := ciProfileByID(gi, a.int())
		if r != nvml.SUCCESS {
			return reply(r)
		}
		ci, r := gi.CreateComputeInstance(&p)
		if r != nvml.SUCCESS {
			return reply(r)
		}
		info, r := ci.GetInfo()
		return reply(r, info.Id)
	},
	"compute-instances": func(gi nvml.GpuInstance, a *args) string {
		p, r := ciProfileByID(gi, a.int())
		if r != nvml.SUCCESS {
			return reply(r)
		}
		cis, r := gi.GetComputeInstances(&p)
		if r != nvml.SUCCESS {
			return reply(r)
		}
		out := []any{len(cis)}
		for _, ci := range cis {
			info, r := ci.GetInfo()
			if r != nvml.SUCCESS {
				return reply(r)
			}
			out = append(out, info.Id)
		}
		return reply(nvml.SUCCESS, out...)
	},
	"ci-by-id": func(gi nvml.GpuInstance, a *args) string {
		_, r := gi.GetComputeInstanceById(a.int())
		return reply(r)
	},
}

// ciProfileByID is the compute-instance profile info NVML's C API takes by
// ID (go-nvml passes the info, as its Go API does).
func ciProfileByID(gi nvml.GpuInstance, id int) (nvml.ComputeInstanceProfileInfo, nvml.Return) {
	return gi.GetComputeInstanceProfileInfo(id, nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
}

func (s *Server) dispatch(sess *session, op string, a *args) string {
	if f, ok := deviceOps[op]; ok {
		gpuIndex, gi, ci := a.int(), a.int(), a.int()
		if a.err != nil {
			return ""
		}
		d, r := s.device(gpuIndex, gi, ci)
		if r != nvml.SUCCESS {
			return reply(r)
		}
		defer s.afterMIGChange(sess, op, gpuIndex)
		return f(s, d, a)
	}
	if f, ok := gpuInstanceOps[op]; ok {
		gpuIndex, gi := a.int(), a.int()
		if a.err != nil {
			return ""
		}
		g, r := s.gpuInstance(gpuIndex, gi)
		if r != nvml.SUCCESS {
			return reply(r)
		}
		defer s.afterMIGChange(sess, op, gpuIndex)
		return f(g, a)
	}
	switch op {
	case "hello":
		if a.int() != ProtocolVersion {
			return reply(nvml.ERROR_LIB_RM_VERSION_MISMATCH)
		}
		return reply(nvml.SUCCESS)
	case "driver-version":
		v, r := s.lib.SystemGetDriverVersion()
		return reply(r, v)
	case "nvml-version":
		v, r := s.lib.SystemGetNVMLVersion()
		return reply(r, v)
	case "cuda-version":
		v, r := s.lib.SystemGetCudaDriverVersion()
		return reply(r, v)
	case "count":
		v, r := s.count()
		return reply(r, v)
	case "by-index":
		_, r := s.gpu(a.int())
		return reply(r)
	case "by-uuid":
		return s.byUUID(a.str())
	case "record-timeslice":
		return s.recordTimeSlice(a.str(), a.str())
	case "record-mps":
		line, err := simtools.DecodeToken(a.str())
		if err != nil || s.DriverRoot == "" {
			return reply(nvml.ERROR_INVALID_ARGUMENT)
		}
		if err := simtools.RecordMPS(s.DriverRoot, line); err != nil {
			return reply(nvml.ERROR_UNKNOWN)
		}
		return reply(s.holdForMPS(line))
	case "by-pci":
		return s.byPCI(a.str())
	case "ci-info", "destroy-ci":
		gpuIndex, gi, ci := a.int(), a.int(), a.int()
		if a.err != nil {
			return ""
		}
		c, r := s.computeInstance(gpuIndex, gi, ci)
		if r != nvml.SUCCESS {
			return reply(r)
		}
		if op == "destroy-ci" {
			defer s.afterMIGChange(sess, op, gpuIndex)
			return reply(c.Destroy())
		}
		info, r := c.GetInfo()
		return reply(r, info.ProfileId, info.Placement.Start, info.Placement.Size)
	case "event-set-create":
		if sess.events != nil {
			return reply(nvml.ERROR_INVALID_ARGUMENT)
		}
		set, r := s.lib.EventSetCreate()
		if r == nvml.SUCCESS {
			sess.events, sess.eventGPUs = set, map[nvml.Device]int{}
		}
		return reply(r)
	case "event-register":
		gpuIndex, gi, ci, types := a.int(), a.int(), a.int(), a.uint64()
		if a.err != nil {
			return ""
		}
		if sess.events == nil || gi >= 0 || ci >= 0 {
			return reply(nvml.ERROR_INVALID_ARGUMENT)
		}
		d, r := s.gpu(gpuIndex)
		if r != nvml.SUCCESS {
			return reply(r)
		}
		if r := d.RegisterEvents(types, sess.events); r != nvml.SUCCESS {
			return reply(r)
		}
		sess.eventGPUs[d] = gpuIndex
		return reply(nvml.SUCCESS)
	case "event-wait":
		timeout := a.int()
		if a.err != nil {
			return ""
		}
		if sess.events == nil || timeout < 0 {
			return reply(nvml.ERROR_INVALID_ARGUMENT)
		}
		e, r := sess.events.Wait(uint32(timeout))
		if r != nvml.SUCCESS {
			return reply(r)
		}
		gpuIndex, ok := sess.eventGPUs[e.Device]
		if !ok {
			return reply(nvml.ERROR_UNKNOWN)
		}
		return reply(r, gpuIndex, e.EventType, e.EventData, e.GpuInstanceId, e.ComputeInstanceId)
	}
	return reply(nvml.ERROR_FUNCTION_NOT_FOUND)
}

// migHolder is a simulated node that knows which processes use a MIG
// device (sim.Node).
type migHolder interface {
	HoldMIG(migUUID, holder string) error
	ReleaseMIG(holder string) error
}

// holdForMPS makes an MPS control daemon's start hold the MIG devices it
// serves, and its quit release them: on hardware its server's CUDA context
// keeps the compute instance from being destroyed (ERROR_IN_USE). The
// line is simtools' "<time> start pid=<pid> devices=<uuids> pipe=<dir>" or
// "<time> quit pipe=<dir>".
func (s *Server) holdForMPS(line string) nvml.Return {
	h, ok := s.lib.(migHolder)
	if !ok {
		return nvml.SUCCESS
	}
	fields := strings.Fields(line)
	if len(fields) < 3 {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	kv := map[string]string{}
	for _, f := range fields[2:] {
		if k, v, ok := strings.Cut(f, "="); ok {
			kv[k] = v
		}
	}
	pipe := kv["pipe"]
	if pipe == "" {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	switch fields[1] {
	case "start":
		for _, dev := range strings.Split(kv["devices"], ",") {
			if !strings.HasPrefix(dev, "MIG-") {
				continue
			}
			if err := h.HoldMIG(dev, pipe); err != nil {
				return nvml.ERROR_NOT_FOUND
			}
		}
	case "quit":
		if err := h.ReleaseMIG(pipe); err != nil {
			return nvml.ERROR_UNKNOWN
		}
	}
	return nvml.SUCCESS
}

// recordTimeSlice is nvidia-smi compute-policy --set-timeslice: the GPU
// must be one of the node's.
func (s *Server) recordTimeSlice(token, slice string) string {
	uuid, err := simtools.DecodeToken(token)
	if err != nil || s.DriverRoot == "" {
		return reply(nvml.ERROR_INVALID_ARGUMENT)
	}
	// A whole GPU of the node: nvidia-smi sets no time slice of a MIG device.
	if _, gi, _, r := s.findUUID(uuid); r != nvml.SUCCESS || gi >= 0 {
		return reply(nvml.ERROR_NOT_FOUND)
	}
	if err := simtools.RecordTimeSlice(s.DriverRoot, uuid, slice, time.Now().UTC().Format("2006-01-02T15:04:05Z")); err != nil {
		return reply(nvml.ERROR_INVALID_ARGUMENT)
	}
	return reply(nvml.SUCCESS)
}

// byUUID answers where a GPU or MIG device is, by UUID.
func (s *Server) byUUID(uuid string) string {
	gpuIndex, gi, ci, r := s.findUUID(uuid)
	return reply(r, gpuIndex, gi, ci)
}

// findUUID finds a GPU (gi and ci -1) or MIG device by UUID.
func (s *Server) findUUID(uuid string) (gpuIndex, gi, ci int, r nvml.Return) {
	count, r := s.count()
	if r != nvml.SUCCESS {
		return 0, 0, 0, r
	}
	for i := 0; i < count; i++ {
		d, r := s.gpuAt(i)
		if r != nvml.SUCCESS {
			continue
		}
		if u, r := d.GetUUID(); r == nvml.SUCCESS && u == uuid {
			return i, -1, -1, nvml.SUCCESS
		}
		if !strings.HasPrefix(uuid, "MIG-") {
			continue
		}
		max, r := d.GetMaxMigDeviceCount()
		if r != nvml.SUCCESS {
			continue
		}
		for j := 0; j < max; j++ {
			m, r := d.GetMigDeviceHandleByIndex(j)
			if r != nvml.SUCCESS {
				continue
			}
			if u, r := m.GetUUID(); r != nvml.SUCCESS || u != uuid {
				continue
			}
			gi, r1 := m.GetGpuInstanceId()
			ci, r2 := m.GetComputeInstanceId()
			if r1 != nvml.SUCCESS || r2 != nvml.SUCCESS {
				return 0, 0, 0, nvml.ERROR_UNKNOWN
			}
			return i, gi, ci, nvml.SUCCESS
		}
	}
	return 0, 0, 0, nvml.ERROR_NOT_FOUND
}

// byPCI finds a GPU by PCI bus ID, in either of NVML's forms.
func (s *Server) byPCI(id string) string {
	count, r := s.count()
	if r != nvml.SUCCESS {
		return reply(r)
	}
	want := strings.ToLower(id)
	for i := 0; i < count; i++ {
		d, r := s.gpuAt(i)
		if r != nvml.SUCCESS {
			continue
		}
		p, r := d.GetPciInfo()
		if r != nvml.SUCCESS {
			continue
		}
		got := strings.ToLower(cString(p.BusId[:]))
		if got == want || strings.TrimPrefix(got, "0000") == want {
			return reply(nvml.SUCCESS, i)
		}
	}
	return reply(nvml.ERROR_NOT_FOUND)
}

// cString is a NUL-terminated C string.
func cString[T int8 | uint8](b []T) string {
	var out []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

// migChanges are the operations after which a GPU's MIG instances may
// have changed.
var migChanges = map[string]bool{
	"create-gi": true, "create-gi-anywhere": true, "destroy-gi": true,
	"create-ci": true, "destroy-ci": true, "set-mig-mode": true,
}

// afterMIGChange keeps the capability files of GPU gpuIndex those of its
// instances after op, before the answer goes out: the caller that created
// an instance finds its capability, as on a real node. A failure is
// logged: the instance itself was created or destroyed.
func (s *Server) afterMIGChange(sess *session, op string, gpuIndex int) {
	if s.caps == nil || !migChanges[op] {
		return
	}
	if err := s.syncCapabilities(gpuIndex); err != nil {
		sess.logger.Error(err, "Simulated MIG capability files not updated", "op", op, "gpu", gpuIndex)
	}
}

// syncAllCapabilities writes the capability files of every GPU's
// instances, those made while no server ran included.
func (s *Server) syncAllCapabilities() error {
	count, ret := s.count()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("simulated MIG capabilities: GPU count: %s", nvml.ErrorString(ret))
	}
	for i := 0; i < count; i++ {
		if err := s.syncCapabilities(i); err != nil {
			return err
		}
	}
	return nil
}

// syncCapabilities writes the capability files of GPU index's instances.
// A GPU that cannot be read (lost) keeps its files, as the kernel keeps
// them until the GPU is reset. go-nvml's mocks panic on a call they lack.
func (s *Server) syncCapabilities(index int) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("simulated MIG capabilities of GPU %d: %v", index, r)
		}
	}()
	d, ret := s.gpu(index)
	if ret != nvml.SUCCESS {
		return nil
	}
	minor, ret := d.GetMinorNumber()
	if ret != nvml.SUCCESS {
		return nil
	}
	var gis []simhost.GPUInstanceCaps
	if cur, _, ret := d.GetMigMode(); ret == nvml.SUCCESS && cur == nvml.DEVICE_MIG_ENABLE {
		if gis, ret = migInstances(d); ret != nvml.SUCCESS {
			return nil
		}
	}
	return s.caps.Sync(minor, gis)
}

// migInstances lists a GPU's GPU instances with their compute instances.
func migInstances(d nvml.Device) ([]simhost.GPUInstanceCaps, nvml.Return) {
	var out []simhost.GPUInstanceCaps
	for p := 0; p < nvml.GPU_INSTANCE_PROFILE_COUNT; p++ {
		info, ret := d.GetGpuInstanceProfileInfo(p)
		if ret != nvml.SUCCESS {
			continue
		}
		gis, ret := d.GetGpuInstances(&info)
		if ret != nvml.SUCCESS {
			return nil, ret
		}
		for _, gi := range gis {
			giInfo, ret := gi.GetInfo()
			if ret != nvml.SUCCESS {
				return nil, ret
			}
			caps := simhost.GPUInstanceCaps{ID: int(giInfo.Id)}
			for cp := 0; cp < nvml.COMPUTE_INSTANCE_PROFILE_COUNT; cp++ {
				ciInfo, ret := gi.GetComputeInstanceProfileInfo(cp, nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
				if ret != nvml.SUCCESS {
					continue
				}
				cis, ret := gi.GetComputeInstances(&ciInfo)
				if ret != nvml.SUCCESS {
					return nil, ret
				}
				for _, ci := range cis {
					info, ret := ci.GetInfo()
					if ret != nvml.SUCCESS {
						return nil, ret
					}
					caps.ComputeInstances = append(caps.ComputeInstances, int(info.Id))
				}
			}
			out = append(out, caps)
		}
	}
	return out, nvml.SUCCESS
}

// driven lists the GPUs the simulated kernel driver drives (SysRoot).
func (s *Server) driven() ([]nvml.Device, nvml.Return) {
	count, r := s.lib.DeviceGetCount()
	if r != nvml.SUCCESS {
		return nil, r
	}
	out := make([]nvml.Device, 0, count)
	for i := 0; i < count; i++ {
		d, r := s.lib.DeviceGetHandleByIndex(i)
		if r != nvml.SUCCESS {
			return nil, r
		}
		if s.SysRoot != "" {
			if p, r := d.GetPciInfo(); r == nvml.SUCCESS && !s.drivenByNVIDIA(cString(p.BusId[:])) {
				continue
			}
		}
		out = append(out, d)
	}
	return out, nvml.SUCCESS
}

// drivenByNVIDIA says whether the simulated /sys has the PCI function of
// NVML bus ID busID ("00000000:18:00.0") bound to nvidia, or has no such
// function.
func (s *Server) drivenByNVIDIA(busID string) bool {
	id := strings.ToLower(busID)
	if len(id) == len("00000000:18:00.0") {
		id = id[4:]
	}
	dev := filepath.Join(s.SysRoot, "sys/bus/pci/devices", id)
	if _, err := os.Stat(dev); err != nil {
		return true
	}
	target, err := os.Readlink(filepath.Join(dev, "driver"))
	return err == nil && filepath.Base(target) == names.KernelDriverNVIDIA
}

// count is how many GPUs NVML enumerates.
func (s *Server) count() (int, nvml.Return) {
	if s.SysRoot == "" {
		return s.lib.DeviceGetCount()
	}
	devs, r := s.driven()
	return len(devs), r
}

// gpuAt is the GPU NVML enumerates at index.
func (s *Server) gpuAt(index int) (nvml.Device, nvml.Return) {
	if s.SysRoot == "" {
		return s.lib.DeviceGetHandleByIndex(index)
	}
	devs, r := s.driven()
	if r != nvml.SUCCESS {
		return nil, r
	}
	if index < 0 || index >= len(devs) {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	return devs[index], nvml.SUCCESS
}
