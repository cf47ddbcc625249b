package hostfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
)

// SocketMode is the mode of a kubelet plugin's gRPC sockets, the DRA
// service in the plugin directory and the registration service in the
// kubelet's registration directory: only the kubelet (root) connects.
const SocketMode fs.FileMode = 0o600

// ListenUnix listens on a Unix socket at path, replacing a stale one, and
// sets it to SocketMode; it is the kubelet plugin helper's listener of
// both drivers. The helper's own listener leaves the socket's mode to the
// umask: 0777 under umask 0, and connecting to a Unix socket needs only
// write permission on it. The directories already keep others out (the
// plugin directory is 0700 or 0750, the kubelet's registration directory
// at most 0755); this holds even when one of them was opened up later.
// Between bind and chmod the socket briefly has the umask's mode; the
// directory covers that moment.
//
// The listener removes the socket when closed, as the helper's does.
func ListenUnix(ctx context.Context, path string) (net.Listener, error) {
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
