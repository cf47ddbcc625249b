package driver

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// TestSweepStaleSockets: of the pod-named sockets in the plugin and
// registration directories, only those nobody listens on, of other pods,
// are removed; this pod's, a live predecessor's, the fixed name of a
// plugin without rolling updates and files that are not sockets stay.
func TestSweepStaleSockets(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	// Short directories: a Unix socket's path has at most 107 bytes.
	base, err := os.MkdirTemp("", "sw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	cfg := Config{PluginDir: filepath.Join(base, "p"), RegistrarDir: filepath.Join(base, "r")}
	for _, d := range []string{cfg.PluginDir, cfg.RegistrarDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	reg := func(uid string) string {
		return filepath.Join(cfg.RegistrarDir, kubeletplugin.RollingUpdateRegistrarSocketFile(cfg.RegistrarDir, names.DriverName, types.UID(uid)))
	}
	dra := func(uid string) string { return filepath.Join(cfg.PluginDir, "dra-"+uid+".sock") }
	listen := func(path string, live bool) {
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		if live {
			t.Cleanup(func() { l.Close() })
			return
		}
		// A killed process: the socket file stays, nobody listens.
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
	}
	listen(dra("own"), false)
	listen(reg("own"), false)
	listen(dra("live"), true)
	listen(reg("live"), true)
	listen(dra("dead"), false)
	listen(reg("dead"), false)
	legacy := filepath.Join(cfg.RegistrarDir, names.DriverName+"-reg.sock")
	listen(legacy, false)
	notSocket := filepath.Join(cfg.PluginDir, "dra-file.sock")
	if err := os.WriteFile(notSocket, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	sweepStaleSockets(ctx, cfg, "own")

	for path, want := range map[string]bool{
		dra("own"): true, reg("own"): true, dra("live"): true, reg("live"): true,
		dra("dead"): false, reg("dead"): false, legacy: true, notSocket: true,
	} {
		if _, err := os.Lstat(path); (err == nil) != want {
			t.Errorf("%s: kept %v, want %v", filepath.Base(path), err == nil, want)
		}
	}
}
