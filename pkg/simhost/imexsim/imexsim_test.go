package imexsim

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost/simhosttest"
)

// Generous bounds: the tests wait for states, never for speed. A peer is
// dropped after three missed heartbeats, so the heartbeat is long enough
// that a stall of a loaded machine does not drop a live one.
const (
	testHeartbeat = 300 * time.Millisecond
	waitBound     = 20 * time.Second
)

// freePort is a TCP port free on every one of ips now.
func freePort(t *testing.T, ips ...string) int {
	t.Helper()
	for range 50 {
		ln, err := net.Listen("tcp", ips[0]+":0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ok := true
		var others []net.Listener
		for _, ip := range ips[1:] {
			o, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, port))
			if err != nil {
				ok = false
				break
			}
			others = append(others, o)
		}
		ln.Close()
		for _, o := range others {
			o.Close()
		}
		if ok {
			return port
		}
	}
	t.Fatal("no port free on all of", ips)
	return 0
}

// writeDomain writes a nodes file of addrs and one configuration per
// address (peer port serverPort, command service on that address and
// cmdPort) into dir, and returns the configurations' paths.
func writeDomain(t *testing.T, dir string, addrs []string, serverPort, cmdPort int) []string {
	t.Helper()
	nodes := filepath.Join(dir, "nodes.cfg")
	if err := os.WriteFile(nodes, []byte(strings.Join(addrs, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for i, a := range addrs {
		cfg := fmt.Sprintf("# test\nIMEX_NODE_CONFIG_FILE=%s\nBIND_INTERFACE_IP=%s\nSERVER_PORT=%d\nIMEX_CMD_ENABLED=1\nIMEX_CMD_BIND_INTERFACE_IP=%s\nIMEX_CMD_PORT=%d\nDAEMONIZE=0\nLOG_FILE_NAME=\nUNKNOWN_KEY=whatever\n", nodes, a, serverPort, a, cmdPort)
		p := filepath.Join(dir, fmt.Sprintf("imexd-%d.cfg", i))
		if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

// syncBuffer is a log safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// running is a daemon started in-process.
type running struct {
	d    *Daemon
	log  *syncBuffer
	stop func() error
}

func start(t *testing.T, cfgPath string) *running {
	t.Helper()
	cfg, err := LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	r := &running{log: &syncBuffer{}}
	r.d = &Daemon{Config: cfg, Heartbeat: testHeartbeat, DialInterval: 50 * time.Millisecond, Log: r.log}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.d.Run(ctx) }()
	var once sync.Once
	var runErr error
	r.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(waitBound):
				runErr = fmt.Errorf("daemon did not stop")
			}
		})
		return runErr
	}
	t.Cleanup(func() { _ = r.stop() })
	return r
}

// ctl runs nvidia-imex-ctl in-process.
func ctl(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = RunCtl(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// waitFor polls cond until it holds or waitBound passes.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	simhosttest.WaitFor(t, what, waitBound, cond)
}

func waitQuery(t *testing.T, cfg, want string) {
	t.Helper()
	waitFor(t, cfg+" answers "+strings.TrimSpace(want), func() (bool, string) {
		code, out, errOut := ctl("-c", cfg, "-q")
		return code == 0 && out == want, fmt.Sprintf("exit %d, %q, %q", code, out, errOut)
	})
}

// TestDomainQuorum runs three daemons on loopback addresses: all READY;
// one stopped, the others not; restarted, all READY again (for the node
// that only accepts and for the one that only dials).
func TestDomainQuorum(t *testing.T) {
	addrs := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	cfgs := writeDomain(t, t.TempDir(), addrs, freePort(t, addrs...), freePort(t, addrs...))
	var ds []*running
	for _, c := range cfgs {
		ds = append(ds, start(t, c))
	}
	for _, c := range cfgs {
		waitQuery(t, c, "READY\n")
	}
	code, out, _ := ctl("-c", cfgs[0], "-N")
	if code != 0 || !strings.Contains(out, "Domain State: UP\n") || strings.Count(out, " - READY") != 3 {
		t.Errorf("-N: exit %d:\n%s", code, out)
	}

	// The highest address (only dialed) and the lowest (only dialing).
	for _, down := range []int{2, 0} {
		if err := ds[down].stop(); err != nil {
			t.Fatal(err)
		}
		var up []int
		for i := range cfgs {
			if i != down {
				up = append(up, i)
				waitQuery(t, cfgs[i], "UNAVAILABLE\n")
			}
		}
		if code, _, errOut := ctl("-c", cfgs[down], "-q"); code != 1 || !strings.Contains(errOut, "query the IMEX daemon at "+addrs[down]+":") {
			t.Errorf("stopped daemon: exit %d, %q", code, errOut)
		}
		code, out, _ = ctl("-c", cfgs[up[0]], "-N")
		if code != 0 || !strings.Contains(out, addrs[down]) || !strings.Contains(out, "UNAVAILABLE (DISCONNECTED)") || !strings.Contains(out, "Domain State: DEGRADED\n") {
			t.Errorf("-N with %s down: exit %d:\n%s", addrs[down], code, out)
		}
		ds[down] = start(t, cfgs[down])
		for _, c := range cfgs {
			waitQuery(t, c, "READY\n")
		}
		for _, i := range up {
			if !strings.Contains(ds[i].log.String(), "disconnected from "+addrs[down]) {
				t.Errorf("daemon %d logged no disconnection from %s:\n%s", i, addrs[down], ds[i].log.String())
			}
		}
	}
	for i, d := range ds {
		if err := d.stop(); err != nil {
			t.Errorf("daemon %d: %v", i, err)
		}
	}
}

// TestSilentPeer: a peer that says HELLO and then nothing is dropped
// after missed heartbeats.
func TestSilentPeer(t *testing.T) {
	addrs := []string{"127.0.0.1", "127.0.0.2"}
	port := freePort(t, addrs...)
	cfgs := writeDomain(t, t.TempDir(), addrs, port, freePort(t, addrs...))
	r := start(t, cfgs[1])
	waitQuery(t, cfgs[1], "UNAVAILABLE\n")

	c := dialAs(t, "127.0.0.1", fmt.Sprintf("127.0.0.2:%d", port))
	defer c.Close()
	fmt.Fprintf(c, "%s HELLO 127.0.0.1 %s\n", protocol, r.d.mapID)
	// Heartbeats until the daemon is seen READY, so that a slow poll
	// cannot miss it; then silence.
	silence := make(chan struct{})
	beating := make(chan struct{})
	go func() {
		defer close(beating)
		for {
			if _, err := io.WriteString(c, "PING\n"); err != nil {
				return
			}
			select {
			case <-silence:
				return
			case <-time.After(testHeartbeat / 2):
			}
		}
	}()
	waitQuery(t, cfgs[1], "READY\n")
	close(silence)
	<-beating
	waitQuery(t, cfgs[1], "UNAVAILABLE\n")
	if st := r.d.Status(); st.Nodes[0].State != StateDisconnected {
		t.Errorf("status %+v", st)
	}
}

// dialAs dials addr from the local address from.
func dialAs(t *testing.T, from, addr string) net.Conn {
	t.Helper()
	dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: waitBound}
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRefusedHello: what a hostile network sends is refused and connects
// no one.
func TestRefusedHello(t *testing.T) {
	addrs := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	port := freePort(t, addrs...)
	cfgs := writeDomain(t, t.TempDir(), addrs, port, freePort(t, addrs...))
	r := start(t, cfgs[1]) // 127.0.0.2: .1 dials it, it dials .3
	waitQuery(t, cfgs[1], "UNAVAILABLE\n")
	target := fmt.Sprintf("127.0.0.2:%d", port)
	for _, tc := range []struct {
		name, from, send, wantAnswer string
	}{
		{name: "another node's address", from: "127.0.0.1", send: protocol + " HELLO 127.0.0.3 " + r.d.mapID + "\n", wantAnswer: "REFUSED HELLO as 127.0.0.3 from 127.0.0.1"},
		{name: "not listed", from: "127.0.0.4", send: protocol + " HELLO 127.0.0.4 " + r.d.mapID + "\n", wantAnswer: ""}, // closed unread
		{name: "itself", from: "127.0.0.2", send: protocol + " HELLO 127.0.0.2 " + r.d.mapID + "\n", wantAnswer: ""},     // its own address is no peer: closed unread
		{name: "other node map", from: "127.0.0.1", send: protocol + " HELLO 127.0.0.1 0123456789abcdef\n", wantAnswer: "REFUSED node map mismatch"},
		{name: "junk", from: "127.0.0.1", send: "GET / HTTP/1.0\n", wantAnswer: "REFUSED not a HELLO"},
		{name: "endless line", from: "127.0.0.1", send: strings.Repeat("x", 10000), wantAnswer: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialAs(t, tc.from, target)
			defer c.Close()
			_, _ = c.Write([]byte(tc.send))
			_ = c.SetReadDeadline(time.Now().Add(waitBound))
			answer, _ := bufio.NewReader(c).ReadString('\n')
			if !strings.Contains(answer, tc.wantAnswer) || (tc.wantAnswer == "" && answer != "") {
				t.Errorf("answer %q, want %q", answer, tc.wantAnswer)
			}
		})
	}
	for _, n := range r.d.Status().Nodes {
		if n.State == StateConnected || n.State == StateDisconnected {
			t.Errorf("%s: %s after refused HELLOs", n.Addr, n.State)
		}
	}
}

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Config
		wantErr  string
	}{
		{name: "ours", in: "IMEX_NODE_CONFIG_FILE=/imexd/nodes.cfg\nSERVER_PORT=50000\nIMEX_CMD_ENABLED=1\nIMEX_CMD_PORT=50005\nLOG_FILE_NAME=\nDAEMONIZE=0\n",
			want: Config{NodeConfigFile: "/imexd/nodes.cfg", ServerPort: 50000, CmdEnabled: true, CmdPort: 50005}},
		{name: "defaults, comments, unknown keys", in: "# c\n  \nFOO=bar\nnot a setting\nIMEX_NODE_CONFIG_FILE = /n\n",
			want: Config{NodeConfigFile: "/n", ServerPort: DefaultServerPort, Daemonize: true}},
		{name: "addresses", in: "IMEX_NODE_CONFIG_FILE=/n\nBIND_INTERFACE_IP=10.0.0.1\nIMEX_CMD_BIND_INTERFACE_IP=::ffff:10.0.0.2\nIMEX_CMD_UNIX_DOMAIN_PATH=/run/imex.sock\nDAEMONIZE=1",
			want: Config{NodeConfigFile: "/n", BindIP: netip.MustParseAddr("10.0.0.1"), CmdBindIP: netip.MustParseAddr("10.0.0.2"), CmdUnixPath: "/run/imex.sock", ServerPort: DefaultServerPort, Daemonize: true}},
		{name: "no nodes file", in: "SERVER_PORT=1\n", wantErr: "IMEX_NODE_CONFIG_FILE is not set"},
		{name: "empty nodes file", in: "IMEX_NODE_CONFIG_FILE=\n", wantErr: "IMEX_NODE_CONFIG_FILE is not set"},
		{name: "bad port", in: "IMEX_NODE_CONFIG_FILE=/n\nSERVER_PORT=70000\n", wantErr: `line 2: SERVER_PORT: not a port: "70000"`},
		{name: "bad address", in: "IMEX_NODE_CONFIG_FILE=/n\nBIND_INTERFACE_IP=node-1\n", wantErr: `BIND_INTERFACE_IP: not an IP address`},
		{name: "bad flag", in: "IMEX_NODE_CONFIG_FILE=/n\nIMEX_CMD_ENABLED=yes\n", wantErr: `IMEX_CMD_ENABLED: want 0 or 1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseConfig([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("got %+v (%v), want %+v", got, err, tc.want)
			}
		})
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.cfg")); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file: %v", err)
	}
}

func TestReadNodes(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string
		wantErr  string
	}{
		{name: "ordered", in: "10.0.0.3\n10.0.0.1\n\n# comment\n fd00::1 \n", want: []string{"10.0.0.3", "10.0.0.1", "fd00::1"}},
		{name: "empty", in: "", want: nil},
		{name: "hostname", in: "10.0.0.1\nnode-2\n", wantErr: `line 2: not an IP address: "node-2"`},
		{name: "twice", in: "10.0.0.1\n::ffff:10.0.0.1\n", wantErr: "line 2: 10.0.0.1 is listed twice"},
		{name: "too many", in: strings.Repeat("x\n", 0) + manyAddrs(MaxNodes+1), wantErr: "more than 1024 nodes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "nodes.cfg")
			if err := os.WriteFile(p, []byte(tc.in), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := ReadNodes(p)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			var s []string
			for _, a := range got {
				s = append(s, a.String())
			}
			if err != nil || strings.Join(s, ",") != strings.Join(tc.want, ",") {
				t.Errorf("got %v (%v), want %v", s, err, tc.want)
			}
		})
	}
	dir := t.TempDir()
	if _, err := ReadNodes(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
}

func manyAddrs(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "10.0.%d.%d\n", i/256, i%256)
	}
	return b.String()
}

func TestFindSelf(t *testing.T) {
	nodes := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")}
	for _, tc := range []struct {
		name    string
		bind    string
		local   []string
		want    string
		wantErr string
	}{
		{name: "the listed interface address", local: []string{"127.0.0.1", "10.0.0.2"}, want: "10.0.0.2"},
		{name: "the first listed of two", local: []string{"10.0.0.3", "10.0.0.2"}, want: "10.0.0.2"},
		{name: "BIND_INTERFACE_IP", bind: "10.0.0.3", local: []string{"10.0.0.2"}, want: "10.0.0.3"},
		{name: "BIND_INTERFACE_IP not listed", bind: "10.0.0.9", wantErr: "BIND_INTERFACE_IP 10.0.0.9 is not in the nodes file"},
		{name: "none", local: []string{"127.0.0.1", "10.0.0.9"}, wantErr: "none of the 3 addresses in the nodes file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &Daemon{InterfaceAddrs: func() ([]netip.Addr, error) {
				var out []netip.Addr
				for _, a := range tc.local {
					out = append(out, netip.MustParseAddr(a))
				}
				return out, nil
			}}
			if tc.bind != "" {
				d.Config.BindIP = netip.MustParseAddr(tc.bind)
			}
			got, err := d.findSelf(nodes)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got.String() != tc.want {
				t.Errorf("got %v (%v), want %s", got, err, tc.want)
			}
		})
	}
}

// TestDaemonStartErrors: a daemon that cannot start says why and exits 1.
func TestDaemonStartErrors(t *testing.T) {
	dir := t.TempDir()
	nodes := filepath.Join(dir, "nodes.cfg")
	if err := os.WriteFile(nodes, []byte("192.0.2.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name    string
		args    []string
		want    int
		wantErr string
	}{
		{name: "no config", args: []string{"-c", filepath.Join(dir, "none.cfg")}, want: 1, wantErr: "read the IMEX configuration"},
		{name: "missing nodes file", args: []string{"-c", write("a.cfg", "IMEX_NODE_CONFIG_FILE="+filepath.Join(dir, "missing")+"\n")}, want: 1, wantErr: "read the IMEX nodes file"},
		{name: "not a node of the domain", args: []string{"-c", write("b.cfg", "IMEX_NODE_CONFIG_FILE="+nodes+"\n")}, want: 1, wantErr: "is an address of this host"},
		{name: "bad argument", args: []string{"-x"}, want: 2, wantErr: `unknown argument "-x"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var errOut bytes.Buffer
			if got := RunDaemon(context.Background(), tc.args, &errOut); got != tc.want || !strings.Contains(errOut.String(), tc.wantErr) {
				t.Errorf("exit %d, %q; want %d, %q", got, errOut.String(), tc.want, tc.wantErr)
			}
		})
	}
}

func TestCtlArguments(t *testing.T) {
	dir := t.TempDir()
	noCmd := filepath.Join(dir, "nocmd.cfg")
	if err := os.WriteFile(noCmd, []byte("IMEX_NODE_CONFIG_FILE=/n\nIMEX_CMD_ENABLED=0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		args    []string
		want    int
		wantErr string
	}{
		{name: "no mode", args: []string{"-c", noCmd}, want: 2, wantErr: "one of -q and -N is required"},
		{name: "two modes", args: []string{"-q", "-N"}, want: 2, wantErr: "only one of -q and -N"},
		{name: "two targets", args: []string{"-q", "-c", noCmd, "-u", "/s"}, want: 2, wantErr: "only one of -i, -u, or -c"},
		{name: "bad -i", args: []string{"-q", "-i", "x", "1"}, want: 2, wantErr: `bad address "x" "1"`},
		{name: "incomplete -i", args: []string{"-q", "-i", "127.0.0.1"}, want: 2, wantErr: `incomplete argument "-i"`},
		{name: "command service off", args: []string{"-q", "-c", noCmd}, want: 1, wantErr: "IMEX_CMD_ENABLED is not 1"},
		{name: "no daemon", args: []string{"-q", "-u", filepath.Join(dir, "none.sock")}, want: 1, wantErr: "query the IMEX daemon at"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := ctl(tc.args...)
			if code != tc.want || out != "" || !strings.Contains(errOut, tc.wantErr) {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, %q", code, out, errOut, tc.want, tc.wantErr)
			}
		})
	}
}

// TestUnixCommandService: one node alone is its own quorum; the command
// service on a Unix socket answers -u and --u=, and the socket goes with
// the daemon.
func TestUnixCommandService(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "imex.sock")
	if err := os.WriteFile(filepath.Join(dir, "nodes.cfg"), []byte("127.0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "imex.cfg")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, "IMEX_NODE_CONFIG_FILE=%s/nodes.cfg\nSERVER_PORT=%d\nIMEX_CMD_ENABLED=1\nIMEX_CMD_UNIX_DOMAIN_PATH=%s\n", dir, freePort(t, "127.0.0.1"), sock), 0o644); err != nil {
		t.Fatal(err)
	}
	r := start(t, cfg)
	waitQuery(t, cfg, "READY\n")
	for _, args := range [][]string{{"-q", "-u", sock}, {"-q", "--u=" + sock}} {
		if code, out, errOut := ctl(args...); code != 0 || out != "READY\n" {
			t.Errorf("%v: exit %d, %q, %q", args, code, out, errOut)
		}
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left: %v", err)
	}
}

func TestParseStatusBounds(t *testing.T) {
	for _, tc := range []struct{ name, in, wantErr string }{
		{name: "no END", in: protocol + " STATUS READY\nNODE 10.0.0.1 SELF\n", wantErr: "EOF"},
		{name: "other answer", in: "HTTP/1.0 200 OK\n", wantErr: "unexpected answer"},
		{name: "bad state", in: protocol + " STATUS READY\nNODE 10.0.0.1 HAPPY\nEND\n", wantErr: "unexpected state"},
		{name: "long line", in: protocol + " STATUS READY\n" + strings.Repeat("N", 1000) + "\n", wantErr: "line too long"},
		{name: "endless", in: protocol + " STATUS READY\n" + strings.Repeat("NODE 10.0.0.1 SELF\n", maxStatusLines+1), wantErr: "answer too long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseStatus(bufio.NewReaderSize(strings.NewReader(tc.in), maxLine))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %v, want %q", err, tc.wantErr)
			}
		})
	}
}
