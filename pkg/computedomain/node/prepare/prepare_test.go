package prepare

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2/ktesting"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"golang.org/x/sys/unix"

	"github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/cdispec"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/devnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/imexcfg"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

const (
	node      = "node-1"
	driverNS  = "gpu-dra-driver"
	clique    = "c0ffee.7"
	imexMajor = 234
	domainA   = "aaaa-0001"
	domainB   = "bbbb-0002"
)

// fakeDomains are the cluster's ComputeDomains by UID.
type fakeDomains map[string]*v1beta1.ComputeDomain

func (f fakeDomains) Get(uid string) (*v1beta1.ComputeDomain, error) { return f[uid], nil }

func domain(uid, ns, name string) *v1beta1.ComputeDomain {
	return &v1beta1.ComputeDomain{ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid), Namespace: ns, Name: name}}
}

// setMode sets a fake domain's spec.channel.allocationMode.
func (f fakeDomains) setMode(uid, mode string) {
	f[uid].Spec.Channel = &v1beta1.ComputeDomainChannelSpec{AllocationMode: mode}
}

// fakeReadiness is Ready for the domains in ready; otherwise Wait waits
// out its bound as the real one does.
type fakeReadiness struct {
	mu    sync.Mutex
	ready map[string]bool
}

func (f *fakeReadiness) set(uid string, ready bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ready[uid] = ready
}

func (f *fakeReadiness) Wait(ctx context.Context, uid string, timeout time.Duration) error {
	f.mu.Lock()
	ok := f.ready[uid]
	f.mu.Unlock()
	if ok {
		return nil
	}
	select {
	case <-time.After(timeout):
	case <-ctx.Done():
	}
	return fmt.Errorf("IMEX daemon of ComputeDomain %s not ready after %s", uid, timeout)
}

// fakeNodes stands for mknod and stat on the dev root.
type fakeNodes struct {
	mu    sync.Mutex
	nodes map[string]uint64
}

func (f *fakeNodes) mknod(path string, _ uint32, dev int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes[path] = uint64(dev)
	return nil
}

func (f *fakeNodes) unlink(path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.nodes[path]; !ok {
		return unix.ENOENT
	}
	delete(f.nodes, path)
	return nil
}

func (f *fakeNodes) has(root string, ch int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.nodes[filepath.Join(root, devnode.Path(ch))]
	return ok
}

func (f *fakeNodes) stat(path string, st *unix.Stat_t) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	dev, ok := f.nodes[path]
	if !ok {
		return unix.ENOENT
	}
	st.Mode, st.Rdev = unix.S_IFCHR, dev
	return nil
}

// faults makes the n-th write of a kind fail.
type faults struct {
	mu   sync.Mutex
	fail map[string]bool // kind -> fail the next write
}

func (f *faults) wrap(kind string, write func(string, []byte) error) func(string, []byte) error {
	return func(path string, data []byte) error {
		f.mu.Lock()
		fail := f.fail[kind]
		f.fail[kind] = false
		f.mu.Unlock()
		if fail {
			return errors.New("injected " + kind + " write failure")
		}
		return write(path, data)
	}
}

func (f *faults) next(kind string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[kind] = true
}

// env is a node in a temporary directory.
type env struct {
	t          *testing.T
	root       string
	domains    fakeDomains
	ready      *fakeReadiness
	nodes      *fakeNodes
	faults     *faults
	cdi        *cdispec.Writer
	dirs       *imexcfg.Dirs
	store      *checkpoint.Store
	p          *Preparer
	cliqueID   string
	daemonsFor []string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	root := t.TempDir()
	e := &env{t: t, root: root, cliqueID: clique,
		domains: fakeDomains{domainA: domain(domainA, "team-a", "cd-a"), domainB: domain(domainB, "team-b", "cd-b")},
		ready:   &fakeReadiness{ready: map[string]bool{domainA: true, domainB: true}},
		nodes:   &fakeNodes{nodes: map[string]uint64{}},
		faults:  &faults{fail: map[string]bool{}},
	}
	mustWrite(t, filepath.Join(root, "proc/devices"), fmt.Sprintf("Character devices:\n195 nvidia\n%d %s\n", imexMajor, names.IMEXChannelMajorName))
	for _, tool := range imexTools {
		mustWrite(t, filepath.Join(root, "driver", tool), "#!/bin/sh\n")
	}
	e.restart(false)
	return e
}

// restart makes a new Preparer from what is on disk, as a restarted
// plugin would, and recovers.
func (e *env) restart(lost bool) Report {
	e.t.Helper()
	logger := ktesting.NewLogger(e.t, ktesting.NewConfig())
	var err error
	if e.cdi, err = cdispec.New(logger, filepath.Join(e.root, "cdi")); err != nil {
		e.t.Fatal(err)
	}
	e.cdi.SetWriteFunc(e.faults.wrap("cdi", func(path string, data []byte) error { return os.WriteFile(path, data, 0o644) }))
	e.dirs = &imexcfg.Dirs{Root: filepath.Join(e.root, "plugin/domains")}
	e.dirs.Write = e.faults.wrap("dirs", func(path string, data []byte) error { return os.WriteFile(path, data, 0o644) })
	e.store, err = checkpoint.NewStore(logger, filepath.Join(e.root, "plugin"), e.faults.wrap("checkpoint", func(path string, data []byte) error {
		return os.WriteFile(path, data, 0o600)
	}))
	if err != nil {
		e.t.Fatal(err)
	}
	cp, err := e.store.Load()
	var corrupt *checkpoint.CorruptError
	if err != nil && !errors.As(err, &corrupt) {
		e.t.Fatal(err)
	}
	e.p = New(Options{
		NodeName: node, DriverNamespace: driverNS, DriverRoot: "/host/driver", DriverRootMount: filepath.Join(e.root, "driver"),
		ReadinessWait: 50 * time.Millisecond, CliqueID: func() string { return e.cliqueID },
		OnDaemonPrepared: func(uid string) { e.daemonsFor = append(e.daemonsFor, uid) },
	}, Deps{
		Domains: e.domains, Readiness: e.ready, CDI: e.cdi, Dirs: e.dirs, Store: e.store,
		DevNodes: &devnode.Maker{DevRoot: e.root, ProcRoot: e.root, Mknod: e.nodes.mknod, Stat: e.nodes.stat, Unlink: e.nodes.unlink},
	}, cp)
	rep, err := e.p.Recover(context.Background(), lost || corrupt != nil)
	if err != nil {
		e.t.Fatalf("Recover: %v", err)
	}
	return rep
}

func mustWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// claim builds an allocated claim of the driver with the given opaque
// parameters (nil: no configuration).
func claim(uid, ns, device string, params any, configDriver string) *resourceapi.ResourceClaim {
	request := "channel"
	if device == names.DomainDaemonDevice {
		request = "daemon"
	}
	c := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid), Namespace: ns, Name: "claim-" + uid[:4]},
		Status: resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{
			Results: []resourceapi.DeviceRequestAllocationResult{{Request: request, Driver: names.ComputeDomainDriverName, Pool: node, Device: device}},
		}}},
	}
	if params != nil {
		raw, _ := json.Marshal(params)
		if s, ok := params.(string); ok {
			raw = []byte(s)
		}
		c.Status.Allocation.Devices.Config = []resourceapi.DeviceAllocationConfiguration{{
			Source: resourceapi.AllocationConfigSourceClaim, Requests: []string{request},
			DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{
				Driver: configDriver, Parameters: runtime.RawExtension{Raw: raw},
			}},
		}}
	}
	return c
}

func channelConfig(domainUID, mode string) map[string]string {
	return map[string]string{"apiVersion": v1beta1.GroupVersion, "kind": v1beta1.ComputeDomainChannelConfigKind, "domainID": domainUID, "allocationMode": mode}
}

func daemonConfig(domainUID string) map[string]string {
	return map[string]string{"apiVersion": v1beta1.GroupVersion, "kind": v1beta1.ComputeDomainDaemonConfigKind, "domainID": domainUID}
}

func channelClaim(uid, ns, domainUID, mode string) *resourceapi.ResourceClaim {
	return claim(uid, ns, names.ChannelDevice, channelConfig(domainUID, mode), names.ComputeDomainDriverName)
}

func daemonClaim(uid, ns, domainUID string) *resourceapi.ResourceClaim {
	return claim(uid, ns, names.DomainDaemonDevice, daemonConfig(domainUID), names.ComputeDomainDriverName)
}

func (e *env) prepare(c *resourceapi.ResourceClaim) ([]kubeletplugin.Device, error) {
	_, ctx := ktesting.NewTestContext(e.t)
	return e.p.Prepare(ctx, c)
}

func (e *env) unprepare(c *resourceapi.ResourceClaim) error {
	_, ctx := ktesting.NewTestContext(e.t)
	return e.p.Unprepare(ctx, kubeletplugin.NamespacedObject{NamespacedName: types.NamespacedName{Namespace: c.Namespace, Name: c.Name}, UID: c.UID})
}

// spec reads a claim's CDI spec.
func (e *env) spec(uid string) *specs.Spec {
	e.t.Helper()
	data, err := os.ReadFile(e.cdi.Path(uid))
	if err != nil {
		e.t.Fatalf("CDI spec of %s: %v", uid, err)
	}
	var s specs.Spec
	if err := json.Unmarshal(data, &s); err != nil {
		e.t.Fatal(err)
	}
	return &s
}

// channelOf returns the channel of the only device node of a claim's spec.
func (e *env) channelOf(uid string) int {
	e.t.Helper()
	s := e.spec(uid)
	nodes := s.Devices[0].ContainerEdits.DeviceNodes
	if len(nodes) != 1 {
		e.t.Fatalf("claim %s: %d device nodes, want 1", uid, len(nodes))
	}
	return int(nodes[0].Minor)
}

func TestPrepareChannel(t *testing.T) {
	tests := []struct {
		name     string
		claim    *resourceapi.ResourceClaim
		notReady bool
		noClique bool
		wantErr  []string
	}{
		{name: "ready daemon", claim: channelClaim("1111-0001", "team-a", domainA, "")},
		{name: "daemon not ready", claim: channelClaim("1111-0002", "team-a", domainA, ""), notReady: true,
			wantErr: []string{"claim team-a/claim-1111", "not ready after 50ms"}},
		{name: "domain in another namespace", claim: channelClaim("1111-0003", "team-b", domainA, ""),
			wantErr: []string{"claim team-b/claim-1111", "namespace team-a", "claim's namespace team-b"}},
		{name: "unknown domain", claim: channelClaim("1111-0004", "team-a", "dead-0000", ""),
			wantErr: []string{"claim team-a/claim-1111", "ComputeDomain with UID dead-0000 not found"}},
		{name: "unknown field", claim: claim("1111-0005", "team-a", names.ChannelDevice,
			`{"apiVersion":"resource.nvidia.com/v1beta1","kind":"ComputeDomainChannelConfig","domainID":"aaaa-0001","extra":1}`, names.ComputeDomainDriverName),
			wantErr: []string{"claim team-a/claim-1111", "status.allocation.devices.config", "extra"}},
		{name: "bad allocation mode", claim: channelClaim("1111-0006", "team-a", domainA, "Some"),
			wantErr: []string{"claim team-a/claim-1111", "parameters.allocationMode"}},
		{name: "no configuration", claim: claim("1111-0007", "team-a", names.ChannelDevice, nil, ""),
			wantErr: []string{"claim team-a/claim-1111", "status.allocation.devices.config", "no opaque configuration"}},
		{name: "configuration of another driver only", claim: claim("1111-0008", "team-a", names.ChannelDevice, channelConfig(domainA, ""), "gpu.nvidia.com"),
			wantErr: []string{"claim team-a/claim-1111", "status.allocation.devices.config", "other drivers (gpu.nvidia.com)"}},
		{name: "daemon config on the channel device", claim: claim("1111-0009", "team-a", names.ChannelDevice, daemonConfig(domainA), names.ComputeDomainDriverName),
			wantErr: []string{"device channel-0 cannot serve a daemon configuration"}},
		{name: "node without clique", claim: channelClaim("1111-000a", "team-a", domainA, ""), noClique: true,
			wantErr: []string{"no NVLink fabric clique"}},
		{name: "daemon claim outside the driver namespace", claim: daemonClaim("1111-000b", "team-a", domainA),
			wantErr: []string{"claim team-a/claim-1111", "only in the driver's namespace gpu-dra-driver"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.ready.set(domainA, !tt.notReady)
			if tt.noClique {
				e.cliqueID = ""
			}
			start := time.Now()
			devs, err := e.prepare(tt.claim)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatal("no error")
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				if time.Since(start) > 5*time.Second {
					t.Errorf("took %s, beyond the bound", time.Since(start))
				}
				if _, err := os.Stat(e.cdi.Path(string(tt.claim.UID))); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("CDI spec written for a refused claim: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			uid := string(tt.claim.UID)
			wantID := cdispec.DeviceID(uid, names.ChannelDevice)
			if len(devs) != 1 || devs[0].PoolName != node || devs[0].DeviceName != names.ChannelDevice || devs[0].CDIDeviceIDs[0] != wantID {
				t.Fatalf("devices %+v", devs)
			}
			s := e.spec(uid)
			dn := s.Devices[0].ContainerEdits.DeviceNodes[0]
			if dn.Path != "/dev/nvidia-caps-imex-channels/channel0" || dn.Major != imexMajor || dn.Minor != 0 || dn.Type != "c" {
				t.Errorf("device node %+v", dn)
			}
			wantEnv := []string{"CLIQUE_ID=" + clique, "COMPUTE_DOMAIN_NAME=cd-a", "COMPUTE_DOMAIN_NAMESPACE=team-a", "COMPUTE_DOMAIN_UUID=" + domainA}
			if got := s.Devices[0].ContainerEdits.Env; strings.Join(got, " ") != strings.Join(wantEnv, " ") {
				t.Errorf("env %v, want %v", got, wantEnv)
			}
			if _, ok := e.nodes.nodes[filepath.Join(e.root, "dev/nvidia-caps-imex-channels/channel0")]; !ok {
				t.Errorf("channel node not made: %v", e.nodes.nodes)
			}
			if c := e.p.Snapshot().Claims[uid]; c == nil || c.State != checkpoint.PrepareCompleted {
				t.Errorf("checkpoint %+v", c)
			}
			// Repeated (a restarted kubelet): the same answer, without a
			// new wait, even with the domain going away.
			e.ready.set(domainA, false)
			delete(e.domains, domainA)
			again, err := e.prepare(tt.claim)
			if err != nil || again[0].CDIDeviceIDs[0] != wantID {
				t.Fatalf("repeated prepare: %v, %v", again, err)
			}
		})
	}
}

func TestChannelsPerDomain(t *testing.T) {
	e := newEnv(t)
	a1, a2 := channelClaim("a1a1-0001", "team-a", domainA, ""), channelClaim("a2a2-0002", "team-a", domainA, "")
	b1 := channelClaim("b1b1-0003", "team-b", domainB, "")
	for _, c := range []*resourceapi.ResourceClaim{a1, b1, a2} {
		if _, err := e.prepare(c); err != nil {
			t.Fatal(err)
		}
	}
	if got := []int{e.channelOf("a1a1-0001"), e.channelOf("a2a2-0002"), e.channelOf("b1b1-0003")}; got[0] != 0 || got[1] != 0 || got[2] != 1 {
		t.Fatalf("channels a1, a2, b1 = %v, want [0 0 1]", got)
	}
	// Unprepare frees: once domain A's claims are gone, a new domain gets 0.
	for _, c := range []*resourceapi.ResourceClaim{a1, a2} {
		if err := e.unprepare(c); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(e.cdi.Path(string(c.UID))); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("CDI spec of %s left: %v", c.UID, err)
		}
	}
	e.domains["cccc-0003"] = domain("cccc-0003", "team-c", "cd-c")
	e.ready.set("cccc-0003", true)
	if _, err := e.prepare(channelClaim("c1c1-0004", "team-c", "cccc-0003", "")); err != nil {
		t.Fatal(err)
	}
	if got := e.channelOf("c1c1-0004"); got != 0 {
		t.Fatalf("channel after unprepare = %d, want 0", got)
	}
	// Unknown claims unprepare fine, twice.
	for range 2 {
		if err := e.unprepare(a1); err != nil {
			t.Fatalf("unprepare of an unknown claim: %v", err)
		}
	}
}

func TestAllocationModeAll(t *testing.T) {
	tests := []struct {
		name    string
		first   *resourceapi.ResourceClaim
		second  *resourceapi.ResourceClaim
		wantErr string
	}{
		{name: "All then another domain", first: channelClaim("a1a1-0001", "team-a", domainA, "All"),
			second: channelClaim("b1b1-0002", "team-b", domainB, ""), wantErr: "allocationMode All"},
		{name: "another domain then All", first: channelClaim("b1b1-0002", "team-b", domainB, ""),
			second: channelClaim("a1a1-0001", "team-a", domainA, "All"), wantErr: "needs every IMEX channel"},
		{name: "All then the same domain", first: channelClaim("a1a1-0001", "team-a", domainA, "All"),
			second: channelClaim("a2a2-0003", "team-a", domainA, "All")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.domains.setMode(domainA, v1beta1.AllocationModeAll)
			e.ready.set(domainB, false) // a refusal must not wait for the daemon
			e.ready.set(domainA, true)
			if tt.first.Namespace == "team-b" {
				e.ready.set(domainB, true)
			}
			if _, err := e.prepare(tt.first); err != nil {
				t.Fatal(err)
			}
			e.ready.set(domainB, false)
			start := time.Now()
			_, err := e.prepare(tt.second)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if n := len(e.spec(string(tt.second.UID)).Devices[0].ContainerEdits.DeviceNodes); n != 2048 {
					t.Fatalf("All mode spec has %d device nodes, want 2048", n)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want %q", err, tt.wantErr)
			}
			if time.Since(start) >= 50*time.Millisecond {
				t.Errorf("refusal waited for the daemon (%s)", time.Since(start))
			}
		})
	}
}

// TestAllocationModeIsTheDomains refuses a claim written by hand whose
// mode differs from its domain's: a Single domain's tenant must not take
// every channel of a node.
func TestAllocationModeIsTheDomains(t *testing.T) {
	e := newEnv(t)
	e.ready.set(domainA, true)
	_, err := e.prepare(channelClaim("a1a1-0001", "team-a", domainA, "All"))
	if err == nil || !strings.Contains(err.Error(), "spec.channel.allocationMode Single") {
		t.Fatalf("All claim of a Single domain: %v, want an error naming spec.channel.allocationMode", err)
	}
	if n := len(e.p.Snapshot().Claims); n != 0 {
		t.Fatalf("a refused claim was recorded: %d claims", n)
	}
}

func TestDaemonClaim(t *testing.T) {
	e := newEnv(t)
	d1 := daemonClaim("d1d1-0001", driverNS, domainA)
	if _, err := e.prepare(d1); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(e.root, "plugin/domains", domainA)
	cfg, err := os.ReadFile(filepath.Join(dir, imexcfg.ConfigFile))
	if err != nil || string(cfg) != string(imexcfg.Config()) {
		t.Fatalf("imexd.cfg %q, %v", cfg, err)
	}
	s := e.spec("d1d1-0001")
	mounts := map[string]string{}
	for _, m := range s.Devices[0].ContainerEdits.Mounts {
		mounts[m.ContainerPath] = m.HostPath
	}
	want := map[string]string{"/imexd": dir, "/usr/bin/nvidia-imex": "/host/driver/usr/bin/nvidia-imex", "/usr/bin/nvidia-imex-ctl": "/host/driver/usr/bin/nvidia-imex-ctl"}
	for k, v := range want {
		if mounts[k] != v {
			t.Errorf("mount %s from %q, want %q", k, mounts[k], v)
		}
	}
	if len(e.daemonsFor) == 0 || e.daemonsFor[0] != domainA {
		t.Errorf("OnDaemonPrepared calls %v", e.daemonsFor)
	}
	if got := e.p.PreparedDaemons(); got[domainA] != clique {
		t.Errorf("PreparedDaemons %v", got)
	}
	// A second daemon claim of the domain (a replaced pod) keeps the
	// directory when the first goes.
	d2 := daemonClaim("d2d2-0002", driverNS, domainA)
	if _, err := e.prepare(d2); err != nil {
		t.Fatal(err)
	}
	if err := e.unprepare(d1); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("directory removed while another daemon claim holds it: %v", err)
	}
	if err := e.unprepare(d2); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("directory left: %v", err)
	}
}

// TestCrashBetweenSteps fails each write of a preparation in turn (a full
// disk, or a kill at that point), then retries, with and without a
// restart of the plugin in between: the claim ends prepared, with the
// channel it would have had, and nothing is left of the failed attempt.
func TestCrashBetweenSteps(t *testing.T) {
	for _, kind := range []string{"checkpoint", "cdi", "dirs"} {
		for _, restart := range []bool{false, true} {
			for _, daemon := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/restart=%v/daemon=%v", kind, restart, daemon), func(t *testing.T) {
					e := newEnv(t)
					other := channelClaim("b1b1-0001", "team-b", domainB, "")
					if _, err := e.prepare(other); err != nil {
						t.Fatal(err)
					}
					c := channelClaim("a1a1-0002", "team-a", domainA, "")
					if daemon {
						c = daemonClaim("a1a1-0002", driverNS, domainA)
					}
					e.faults.next(kind)
					_, err := e.prepare(c)
					if kind == "dirs" && !daemon {
						if err != nil {
							t.Fatal(err) // a channel claim writes no IMEX directory
						}
					} else if err == nil || !strings.Contains(err.Error(), "injected") {
						t.Fatalf("error %v, want the injected failure", err)
					}
					if restart {
						e.restart(false)
					}
					if _, err := e.prepare(c); err != nil {
						t.Fatalf("retry: %v", err)
					}
					cp, err := e.store.Load()
					if err != nil {
						t.Fatal(err)
					}
					if got := cp.Claims[string(c.UID)]; got == nil || got.State != checkpoint.PrepareCompleted {
						t.Fatalf("checkpoint after retry: %+v", got)
					}
					if !daemon && e.channelOf(string(c.UID)) != 1 {
						t.Fatalf("channel %d, want 1", e.channelOf(string(c.UID)))
					}
					if err := e.unprepare(c); err != nil {
						t.Fatal(err)
					}
					if uids, _ := e.cdi.ClaimUIDs(); len(uids) != 1 || uids[0] != "b1b1-0001" {
						t.Fatalf("CDI specs left: %v", uids)
					}
					if dirs, _ := e.dirs.List(); len(dirs) != 0 {
						t.Fatalf("IMEX directories left: %v", dirs)
					}
				})
			}
		}
	}
}

// TestKillAtEveryStep stops a preparation after each step, as a SIGKILL
// would, restarts the plugin and checks that it converges: the unfinished
// claim is rolled back at start, and the kubelet's retry prepares it.
func TestKillAtEveryStep(t *testing.T) {
	type killed struct{ at Step }
	for _, at := range []Step{StepRecorded, StepDevNodes, StepDaemonDir, StepCDI, StepCompleted} {
		for _, daemon := range []bool{false, true} {
			if (at == StepDevNodes && daemon) || (at == StepDaemonDir && !daemon) {
				continue // not a step of this kind of claim
			}
			t.Run(fmt.Sprintf("%s/daemon=%v", at, daemon), func(t *testing.T) {
				e := newEnv(t)
				c := channelClaim("a1a1-0002", "team-a", domainA, "")
				if daemon {
					c = daemonClaim("a1a1-0002", driverNS, domainA)
				}
				e.p.opts.AfterStep = func(s Step) {
					if s == at {
						panic(killed{s})
					}
				}
				func() {
					defer func() {
						if r := recover(); r != nil {
							if _, ok := r.(killed); !ok {
								panic(r)
							}
						}
					}()
					_, _ = e.prepare(c)
				}()
				rep := e.restart(false)
				state := e.p.Snapshot().Claims[string(c.UID)]
				if at == StepCompleted {
					if state == nil || state.State != checkpoint.PrepareCompleted {
						t.Fatalf("completed claim lost: %+v (report %+v)", state, rep)
					}
				} else if state != nil {
					t.Fatalf("unfinished claim not rolled back: %+v", state)
				}
				if _, err := e.prepare(c); err != nil {
					t.Fatalf("retry: %v", err)
				}
				if err := e.unprepare(c); err != nil {
					t.Fatal(err)
				}
				if uids, _ := e.cdi.ClaimUIDs(); len(uids) != 0 {
					t.Fatalf("CDI specs left: %v", uids)
				}
				if dirs, _ := e.dirs.List(); len(dirs) != 0 {
					t.Fatalf("IMEX directories left: %v", dirs)
				}
			})
		}
	}
}

func TestRecover(t *testing.T) {
	e := newEnv(t)
	c := channelClaim("a1a1-0001", "team-a", domainA, "")
	d := daemonClaim("d1d1-0002", driverNS, domainB)
	for _, cl := range []*resourceapi.ResourceClaim{c, d} {
		if _, err := e.prepare(cl); err != nil {
			t.Fatal(err)
		}
	}
	// A reboot empties the CDI root and /dev; orphans of a claim the
	// checkpoint does not know are removed.
	if err := os.Remove(e.cdi.Path("a1a1-0001")); err != nil {
		t.Fatal(err)
	}
	e.nodes.nodes = map[string]uint64{}
	mustWrite(t, e.cdi.Path("eeee-0009"), "{}")
	if err := os.MkdirAll(filepath.Join(e.root, "plugin/domains", "ffff-0009"), 0o755); err != nil {
		t.Fatal(err)
	}
	rep := e.restart(false)
	if rep.Restored != 2 || len(rep.OrphanSpecs) != 1 || len(rep.OrphanDirs) != 1 || len(rep.Failed) != 0 {
		t.Fatalf("report %+v", rep)
	}
	if e.channelOf("a1a1-0001") != 0 || len(e.nodes.nodes) != 1 {
		t.Fatalf("channel spec or node not restored: %v", e.nodes.nodes)
	}
	// A lost checkpoint: prepared claims are adopted from their specs.
	mustWrite(t, e.store.Path(), "garbage")
	rep = e.restart(false)
	if len(rep.Adopted) != 2 {
		t.Fatalf("adopted %v, want both claims", rep.Adopted)
	}
	if got := e.p.Snapshot().Claims["a1a1-0001"]; got == nil || got.Channel != 0 || got.Domain.UID != domainA {
		t.Fatalf("adopted claim %+v", got)
	}
	// And the adopted channel is honoured.
	if _, err := e.prepare(channelClaim("b1b1-0003", "team-b", domainB, "")); err != nil {
		t.Fatal(err)
	}
	if e.channelOf("b1b1-0003") != 1 {
		t.Fatalf("channel of another domain after adoption = %d, want 1", e.channelOf("b1b1-0003"))
	}
}

// TestHostNodes checks that the host channel nodes the plugin makes go
// with the last claim holding their channel, and that nodes it found stay.
func TestHostNodes(t *testing.T) {
	e := newEnv(t)
	// The driver made channel0 itself (NVreg_CreateImexChannel0).
	if err := e.nodes.mknod(filepath.Join(e.root, devnode.Path(0)), 0, int(unix.Mkdev(imexMajor, 0))); err != nil {
		t.Fatal(err)
	}
	a1, a2 := channelClaim("a1a1-0001", "team-a", domainA, ""), channelClaim("a2a2-0002", "team-a", domainA, "")
	b1 := channelClaim("b1b1-0003", "team-b", domainB, "")
	for _, c := range []*resourceapi.ResourceClaim{a1, b1, a2} {
		if _, err := e.prepare(c); err != nil {
			t.Fatal(err)
		}
	}
	if !e.nodes.has(e.root, 1) {
		t.Fatal("channel1 not made")
	}
	if got := e.p.Snapshot().Nodes; len(got) != 1 || got[0] != 1 {
		t.Fatalf("recorded nodes %v, want [1]", got)
	}
	if err := e.unprepare(b1); err != nil {
		t.Fatal(err)
	}
	if e.nodes.has(e.root, 1) || len(e.p.Snapshot().Nodes) != 0 {
		t.Fatalf("channel1 left after its last claim: %v", e.p.Snapshot().Nodes)
	}
	for _, c := range []*resourceapi.ResourceClaim{a1, a2} {
		if err := e.unprepare(c); err != nil {
			t.Fatal(err)
		}
	}
	if !e.nodes.has(e.root, 0) {
		t.Fatal("the driver's channel0 was removed")
	}
	// All mode makes every other node, and they all go with it.
	e.domains.setMode(domainA, v1beta1.AllocationModeAll)
	all := channelClaim("a3a3-0004", "team-a", domainA, "All")
	if _, err := e.prepare(all); err != nil {
		t.Fatal(err)
	}
	if n := len(e.p.Snapshot().Nodes); n != 2047 {
		t.Fatalf("recorded %d nodes, want 2047", n)
	}
	// A restart in between keeps the record.
	e.restart(false)
	if err := e.unprepare(all); err != nil {
		t.Fatal(err)
	}
	if n := len(e.nodes.nodes); n != 1 {
		t.Fatalf("%d host nodes left, want channel0 only", n)
	}
}
