package driver

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// staleDialTimeout bounds the connection that tells a live plugin's socket
// from a stale one.
const staleDialTimeout = time.Second

// sweepStaleSockets removes the gRPC and registration sockets that plugins
// of earlier pods left behind with nobody listening: a pod killed without
// its shutdown (SIGKILL after the grace period, a node that lost power)
// cannot remove its pod-named sockets, and the helper cannot tell them from
// a live predecessor's. The kubelet keeps trying a stale registration
// socket; removing it ends that. A socket that takes a connection is a live
// plugin's (the predecessor during a roll) and is kept, as are this pod's
// own and the fixed names of a plugin without rolling updates.
func sweepStaleSockets(ctx context.Context, cfg Config, podUID types.UID) {
	own := map[string]bool{
		filepath.Join(cfg.PluginDir, "dra-"+string(podUID)+".sock"):                                                                 true,
		filepath.Join(cfg.RegistrarDir, kubeletplugin.RollingUpdateRegistrarSocketFile(cfg.RegistrarDir, names.DriverName, podUID)): true,
	}
	for _, pattern := range []string{
		filepath.Join(cfg.PluginDir, "dra-*.sock"),
		filepath.Join(cfg.RegistrarDir, names.DriverName+"-*-reg.sock"),
	} {
		paths, err := filepath.Glob(pattern)
		if err != nil {
			continue // a malformed pattern: none of ours is
		}
		for _, p := range paths {
			if own[p] {
				continue
			}
			removeIfStale(ctx, p)
		}
	}
}

// removeIfStale removes the socket at path if connecting to it is refused:
// no process listens there.
func removeIfStale(ctx context.Context, path string) {
	logger := klog.FromContext(ctx)
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != os.ModeSocket {
		return // not a socket: not ours to remove
	}
	d := net.Dialer{Timeout: staleDialTimeout}
	conn, err := d.DialContext(ctx, "unix", path)
	if err == nil {
		conn.Close()
		return
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		logger.V(2).Info("Not removing a socket that did not refuse the connection", "socket", path, "err", err)
		return
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		logger.Error(err, "Cannot remove a stale socket of an earlier plugin", "socket", path)
		return
	}
	logger.Info("Removed a stale socket of an earlier plugin (nobody listens)", "socket", path)
}
