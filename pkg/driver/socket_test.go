package driver

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs/hostfstest"
)

func socketMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("%s is not a socket: %s", path, fi.Mode())
	}
	return fi.Mode().Perm()
}

func TestListenUnix(t *testing.T) {
	hostfstest.Umask(t, 0) // a socket made by bind alone would be 0777
	path := filepath.Join(t.TempDir(), "dra.sock")
	// A stale file from a killed plugin is replaced.
	if err := os.WriteFile(path, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	ln, err := hostfs.ListenUnix(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	if got := socketMode(t, path); got != hostfs.SocketMode {
		t.Errorf("mode %s, want %s", got, hostfs.SocketMode)
	}
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the owner cannot connect: %v", err)
	}
	conn.Close()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after close: %v", err)
	}
}

// TestHelperSocketsAreOwnerOnly starts the kubeletplugin helper with the
// driver's options and checks both sockets it creates.
func TestHelperSocketsAreOwnerOnly(t *testing.T) {
	hostfstest.Umask(t, 0) // a socket made by bind alone would be 0777
	_, ctx := ktesting.NewTestContext(t)
	cfg := Config{
		NodeName: "node-a", KubeClient: fake.NewClientset(),
		PluginDir: t.TempDir(), RegistrarDir: t.TempDir(),
	}
	helper, err := kubeletplugin.Start(ctx, errorsOnlyPlugin{}, helperOptions(cfg)...)
	if err != nil {
		t.Fatal(err)
	}
	sockets := map[string]string{"DRA service": cfg.PluginDir, "registration": cfg.RegistrarDir}
	for what, dir := range sockets {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 {
			t.Fatalf("%s directory holds %v, want one socket", what, entries)
		}
		if got := socketMode(t, filepath.Join(dir, entries[0].Name())); got != hostfs.SocketMode {
			t.Errorf("%s socket %s: mode %s, want %s", what, entries[0].Name(), got, hostfs.SocketMode)
		}
	}
	helper.Stop()
	for what, dir := range sockets {
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("%s socket left after stop: %v", what, entries)
		}
	}
}

// errorsOnlyPlugin is a plugin of which the helper may call only
// HandleError: Start calls none of the plugin's methods, but a gRPC server
// whose listener closes on Stop before the server does reports the
// failed Accept there.
type errorsOnlyPlugin struct{ kubeletplugin.DRAPlugin }

func (errorsOnlyPlugin) HandleError(context.Context, error, string) {}
