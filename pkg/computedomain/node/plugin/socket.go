package plugin

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
)

// SocketMode is the mode of the plugin's two gRPC sockets (DRA service and
// registration): only the kubelet (root) connects. The helper's own
// listener leaves the mode to the umask, and connecting to a Unix socket
// needs only write permission on it; the registration directory is
// shared with other plugins and readable by all.
const SocketMode fs.FileMode = 0o600

// listenUnix listens on a Unix socket at path, replacing a stale one, with
// SocketMode. The listener removes the socket when closed.
func listenUnix(ctx context.Context, path string) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, SocketMode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("set the mode of socket %s: %w", path, err)
	}
	return ln, nil
}
