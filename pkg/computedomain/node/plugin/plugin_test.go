package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/imexcfg"
	"github.com/gpu-dra/gpu-dra-driver/pkg/draplugin"
	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

type fakeHelper struct{}

func (fakeHelper) Stop() {}

// TestRunServesDaemonClaim runs the plugin against fake API clients: it
// publishes the node's devices, prepares a daemon claim and writes the
// domain's nodes.cfg from its status, following status changes; then it
// unprepares the claim.
func TestRunServesDaemonClaim(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "proc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"usr/bin/nvidia-imex", "usr/bin/nvidia-imex-ctl"} {
		p := filepath.Join(root, "driver", tool)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const uid = "aaaa-0001"
	cd := &v1beta1.ComputeDomain{
		ObjectMeta: metav1.ObjectMeta{Name: "cd", Namespace: "team-a", UID: types.UID(uid)},
		Spec:       v1beta1.ComputeDomainSpec{Channel: &v1beta1.ComputeDomainChannelSpec{ResourceClaimTemplate: v1beta1.ComputeDomainResourceClaimTemplate{Name: "t"}}},
		Status: v1beta1.ComputeDomainStatus{Nodes: []*v1beta1.ComputeDomainNode{
			{Name: "node-2", IPAddress: "10.0.0.2", CliqueID: "u.1", Index: 1},
			{Name: "node-1", IPAddress: "10.0.0.1", CliqueID: "u.1", Index: 0},
			{Name: "node-9", IPAddress: "10.0.0.9", CliqueID: "u.2", Index: 0},
		}},
	}
	u, err := v1beta1.ToUnstructured(cd)
	if err != nil {
		t.Fatal(err)
	}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{v1beta1.Resource: "ComputeDomainList"}, u)
	kube := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", UID: "n1"}})

	var mu sync.Mutex
	var plugin kubeletplugin.DRAPlugin
	ready := make(chan bool, 2)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			NodeName: "node-1", DriverNamespace: "drv", KubeClient: kube, DynamicClient: dyn,
			CliqueID:  func() (string, error) { return "u.1", nil },
			PluginDir: filepath.Join(root, "plugin"), RegistrarDir: filepath.Join(root, "registry"), CDIRoot: filepath.Join(root, "cdi"),
			DriverRoot: "/host", DriverRootMount: filepath.Join(root, "driver"), DevRoot: root, ProcRoot: root,
			NodesResync:  50 * time.Millisecond,
			Uninstalling: func(context.Context) (bool, error) { return true, nil },
			Ready:        func(r bool) { ready <- r },
			StartHelper: func(_ context.Context, p kubeletplugin.DRAPlugin, _ ...kubeletplugin.Option) (draplugin.Helper, error) {
				mu.Lock()
				defer mu.Unlock()
				plugin = p
				return fakeHelper{}, nil
			},
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("plugin not ready")
	}
	mu.Lock()
	p := plugin
	mu.Unlock()

	params, _ := json.Marshal(map[string]string{"apiVersion": v1beta1.GroupVersion, "kind": v1beta1.ComputeDomainDaemonConfigKind, "domainID": uid})
	claim := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "daemon", Namespace: "drv", UID: "dddd-0001"},
		Status: resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{
			Results: []resourceapi.DeviceRequestAllocationResult{{Request: "daemon", Driver: names.ComputeDomainDriverName, Pool: "node-1", Device: names.DomainDaemonDevice}},
			Config: []resourceapi.DeviceAllocationConfiguration{{Source: resourceapi.AllocationConfigSourceClaim,
				DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{
					Driver: names.ComputeDomainDriverName, Parameters: runtime.RawExtension{Raw: params}}}}},
		}}},
	}
	res, err := p.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{claim})
	if err != nil || res[claim.UID].Err != nil {
		t.Fatalf("prepare: %v, %v", err, res[claim.UID].Err)
	}
	nodesCfg := filepath.Join(root, "plugin", DomainsDir, uid, imexcfg.NodesFile)
	waitFile(t, nodesCfg, "10.0.0.1\n10.0.0.2\n")

	// The controller adds a node: nodes.cfg follows.
	cd.Status.Nodes = append(cd.Status.Nodes, &v1beta1.ComputeDomainNode{Name: "node-3", IPAddress: "10.0.0.3", CliqueID: "u.1", Index: 2})
	u, _ = v1beta1.ToUnstructured(cd)
	if _, err := dyn.Resource(v1beta1.Resource).Namespace("team-a").Update(ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFile(t, nodesCfg, "10.0.0.1\n10.0.0.2\n10.0.0.3\n")

	// The node's pool is published, by a controller of its own: Ready
	// does not wait for it.
	waitFor(t, "the node's slice", func() (bool, string) {
		slices, err := kube.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
		return err == nil && len(slices.Items) == 1 && len(slices.Items[0].Spec.Devices) == 2, fmt.Sprintf("slices %+v, %v", slices, err)
	})

	ures, err := p.UnprepareResourceClaims(ctx, []kubeletplugin.NamespacedObject{{NamespacedName: types.NamespacedName{Namespace: "drv", Name: "daemon"}, UID: claim.UID}})
	if err != nil || ures[claim.UID] != nil {
		t.Fatalf("unprepare: %v, %v", err, ures[claim.UID])
	}
	if _, err := os.Stat(filepath.Dir(nodesCfg)); !os.IsNotExist(err) {
		t.Fatalf("IMEX directory left: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
	}
	// Uninstalled: the node's slices are gone.
	if slices, err := kube.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{}); err != nil || len(slices.Items) != 0 {
		t.Fatalf("slices after uninstall: %d, %v", len(slices.Items), err)
	}
}

// waitFor polls cond for up to 10s; at the end it fails with what and
// cond's last detail.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, detail)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitFile(t *testing.T, path, want string) {
	t.Helper()
	waitFor(t, path, func() (bool, string) {
		data, _ := os.ReadFile(path)
		return string(data) == want, fmt.Sprintf("%q, want %q", data, want)
	})
}

func TestListenUnixMode(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	path := filepath.Join(t.TempDir(), "dra.sock")
	if err := os.WriteFile(path, nil, 0o600); err != nil { // a stale one
		t.Fatal(err)
	}
	ln, err := hostfs.ListenUnix(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != hostfs.SocketMode || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket %v, %v", fi.Mode(), err)
	}
}
