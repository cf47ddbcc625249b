package imexsim

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// The peer protocol, on SERVER_PORT: lines of at most maxLine bytes. The
// peer with the lower address dials; it sends
//
//	IMEX-SIM/1 HELLO <its address> <node map ID>
//
// and the other answers with its own HELLO, or with "IMEX-SIM/1 REFUSED
// <reason>" and closes. A HELLO is accepted only from a listed node, from
// the address it names (a connection from an unlisted address is closed
// unread), with the same node map (mapID: the set of listed
// addresses, as NVIDIA's daemons refuse a peer whose node map differs).
// Then each side sends "PING" every heartbeat; a side that hears nothing
// for missedHeartbeats heartbeats, or anything but PING, drops the
// connection, and the dialer dials again.
const (
	protocol         = "IMEX-SIM/1"
	maxLine          = 256
	missedHeartbeats = 3
	// maxHandshakes bounds the connections waiting for their HELLO, and
	// maxCommands the command connections served at once: more are
	// closed at once.
	maxHandshakes = 64
	maxCommands   = 16
)

// Defaults of Daemon's timing.
const (
	DefaultHeartbeat    = time.Second
	DefaultDialInterval = 500 * time.Millisecond
	DefaultHelloTimeout = 5 * time.Second
)

// Node states in the command service's answer.
const (
	StateSelf           = "SELF"
	StateConnected      = "CONNECTED"
	StateNeverConnected = "NEVER_CONNECTED"
	StateDisconnected   = "DISCONNECTED"
)

// Daemon is the simulated nvidia-imex: it connects to every other node of
// its nodes file and answers status queries on its command service.
type Daemon struct {
	// Config is the daemon's configuration.
	Config Config
	// Heartbeat, DialInterval and HelloTimeout are the daemon's timing;
	// zero means DefaultHeartbeat, DefaultDialInterval, DefaultHelloTimeout.
	Heartbeat, DialInterval, HelloTimeout time.Duration
	// InterfaceAddrs lists this host's addresses; nil means those of its
	// network interfaces.
	InterfaceAddrs func() ([]netip.Addr, error)
	// Log is where the daemon logs; nil means os.Stderr.
	Log io.Writer

	log   *log.Logger
	self  netip.Addr
	mapID string

	mu    sync.Mutex
	nodes []*node // in the nodes file's order, self included
	conns map[net.Conn]struct{}
}

// node is one listed node and, for a peer, its connection.
type node struct {
	addr  netip.Addr
	state string
	conn  net.Conn // the current connection, nil when none
	// dialErr is the last dial error logged, so that a peer that stays
	// down is logged once.
	dialErr string
}

// Run reads the nodes file, finds the daemon's own address, listens and
// runs until ctx ends; it returns nil then, or the error that kept it from
// starting or made it stop (a listener that fails).
func (d *Daemon) Run(parent context.Context) error {
	d.defaults()
	addrs, err := ReadNodes(d.Config.NodeConfigFile)
	if err != nil {
		return err
	}
	self, err := d.findSelf(addrs)
	if err != nil {
		return err
	}
	d.self, d.mapID = self, mapID(addrs)
	d.conns = map[net.Conn]struct{}{}
	for _, a := range addrs {
		n := &node{addr: a, state: StateNeverConnected}
		if a == self {
			n.state = StateSelf
		}
		d.nodes = append(d.nodes, n)
	}
	if d.Config.Daemonize {
		d.log.Printf("DAEMONIZE=1 ignored: the simulated IMEX daemon runs in the foreground")
	}

	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	var lc net.ListenConfig
	peerLn, err := lc.Listen(ctx, "tcp", netip.AddrPortFrom(self, uint16(d.Config.ServerPort)).String())
	if err != nil {
		return fmt.Errorf("listen for IMEX peers: %w", err)
	}
	listeners := []net.Listener{peerLn}
	cmdLns, err := d.listenCommands(ctx, &lc)
	listeners = append(listeners, cmdLns...)
	if err != nil {
		closeAll(listeners)
		return err
	}
	d.log.Printf("started: address %s, %d nodes (map %s), peer port %d", self, len(addrs), d.mapID, d.Config.ServerPort)

	var wg sync.WaitGroup
	wg.Go(func() { d.acceptPeers(ctx, cancel, peerLn) })
	for _, ln := range cmdLns {
		wg.Go(func() { d.serveCommands(ctx, cancel, ln) })
	}
	for _, n := range d.nodes {
		if n.addr.Compare(self) > 0 {
			wg.Go(func() { d.dialLoop(ctx, n) })
		}
	}
	<-ctx.Done()
	closeAll(listeners)
	d.mu.Lock()
	for c := range d.conns {
		c.Close()
	}
	d.mu.Unlock()
	wg.Wait()
	if d.Config.CmdUnixPath != "" {
		_ = os.Remove(d.Config.CmdUnixPath)
	}
	if parent.Err() == nil {
		err := context.Cause(ctx)
		d.log.Printf("stopped: %v", err)
		return err
	}
	d.log.Printf("stopped")
	return nil
}

func (d *Daemon) defaults() {
	if d.Heartbeat <= 0 {
		d.Heartbeat = DefaultHeartbeat
	}
	if d.DialInterval <= 0 {
		d.DialInterval = DefaultDialInterval
	}
	if d.HelloTimeout <= 0 {
		d.HelloTimeout = DefaultHelloTimeout
	}
	if d.InterfaceAddrs == nil {
		d.InterfaceAddrs = interfaceAddrs
	}
	w := d.Log
	if w == nil {
		w = os.Stderr
	}
	d.log = log.New(w, "nvidia-imex: ", log.LstdFlags|log.LUTC|log.Lmicroseconds|log.Lmsgprefix)
}

// findSelf is the daemon's own address, as NVIDIA's daemon finds it:
// BIND_INTERFACE_IP when set, else the first address of the nodes file
// that one of this host's interfaces has. Either must be listed.
func (d *Daemon) findSelf(addrs []netip.Addr) (netip.Addr, error) {
	if d.Config.BindIP.IsValid() {
		if !slices.Contains(addrs, d.Config.BindIP) {
			return netip.Addr{}, fmt.Errorf("BIND_INTERFACE_IP %s is not in the nodes file %s", d.Config.BindIP, d.Config.NodeConfigFile)
		}
		return d.Config.BindIP, nil
	}
	local, err := d.InterfaceAddrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list this host's addresses: %w", err)
	}
	for _, a := range addrs {
		if slices.Contains(local, a) {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("none of the %d addresses in the nodes file %s is an address of this host %v", len(addrs), d.Config.NodeConfigFile, local)
}

func interfaceAddrs() ([]netip.Addr, error) {
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range ifAddrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if addr, ok := netip.AddrFromSlice(ipn.IP); ok {
				out = append(out, addr.Unmap())
			}
		}
	}
	return out, nil
}

// mapID names the set of listed addresses, whatever their order.
func mapID(addrs []netip.Addr) string {
	sorted := slices.Clone(addrs)
	slices.SortFunc(sorted, netip.Addr.Compare)
	h := sha256.New()
	for _, a := range sorted {
		fmt.Fprintln(h, a)
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// listenCommands opens the command service: on IMEX_CMD_BIND_INTERFACE_IP
// or, when that is empty, on the daemon's address and on 127.0.0.1, so
// that a probe in the same network namespace reaches it (NVIDIA's binds
// every interface then); and on IMEX_CMD_UNIX_DOMAIN_PATH when set.
func (d *Daemon) listenCommands(ctx context.Context, lc *net.ListenConfig) ([]net.Listener, error) {
	if !d.Config.CmdEnabled {
		return nil, nil
	}
	var lns []net.Listener
	if d.Config.CmdPort != 0 {
		ips := []netip.Addr{d.Config.CmdBindIP}
		if !d.Config.CmdBindIP.IsValid() {
			ips = []netip.Addr{d.self}
			if loopback := netip.MustParseAddr("127.0.0.1"); d.self != loopback {
				ips = append(ips, loopback)
			}
		}
		for _, ip := range ips {
			ln, err := lc.Listen(ctx, "tcp", netip.AddrPortFrom(ip, uint16(d.Config.CmdPort)).String())
			if err != nil {
				return lns, fmt.Errorf("listen for IMEX commands: %w", err)
			}
			lns = append(lns, ln)
		}
	}
	if p := d.Config.CmdUnixPath; p != "" {
		// A socket left by a daemon that was killed is replaced; nothing
		// else at that path is.
		if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(p)
		}
		ln, err := lc.Listen(ctx, "unix", p)
		if err != nil {
			return lns, fmt.Errorf("listen for IMEX commands: %w", err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

func closeAll(lns []net.Listener) {
	for _, ln := range lns {
		ln.Close()
	}
}

// track records c as open until the returned function is called, so that
// Run closes it on the way out; it reports false when Run is ending.
func (d *Daemon) track(ctx context.Context, c net.Conn) (untrack func(), ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ctx.Err() != nil {
		c.Close()
		return nil, false
	}
	d.conns[c] = struct{}{}
	return func() {
		d.mu.Lock()
		delete(d.conns, c)
		d.mu.Unlock()
		c.Close()
	}, true
}

func (d *Daemon) peer(a netip.Addr) *node {
	for _, n := range d.nodes {
		if n.addr == a && a != d.self {
			return n
		}
	}
	return nil
}

// acceptPeers accepts peers' connections until ln is closed; it ends the
// daemon (fail) when ln fails.
func (d *Daemon) acceptPeers(ctx context.Context, fail context.CancelCauseFunc, ln net.Listener) {
	sem := make(chan struct{}, maxHandshakes)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			fail(fmt.Errorf("accept IMEX peers: %w", err))
			return
		}
		// Only listed peers may take a handshake's place: a connection
		// from any other address is closed unread.
		if d.peer(remoteAddr(c)) == nil {
			c.Close()
			continue
		}
		select {
		case sem <- struct{}{}:
		default:
			c.Close() // too many connections without a HELLO yet
			continue
		}
		wg.Go(func() {
			untrack, ok := d.track(ctx, c)
			if !ok {
				<-sem
				return
			}
			defer untrack()
			n, r, err := d.answerHello(c)
			<-sem
			if err != nil {
				d.log.Printf("refused a connection from %s: %v", c.RemoteAddr(), err)
				return
			}
			d.connected(ctx, n, c, r)
		})
	}
}

// answerHello reads a dialer's HELLO and answers it; it returns the peer
// and the reader of the connection's further lines.
func (d *Daemon) answerHello(c net.Conn) (*node, *bufio.Reader, error) {
	_ = c.SetDeadline(time.Now().Add(d.HelloTimeout))
	r := bufio.NewReaderSize(c, maxLine)
	line, err := readLine(r)
	if err != nil {
		return nil, nil, fmt.Errorf("read HELLO: %w", err)
	}
	n, err := d.checkHello(line, remoteAddr(c))
	if err != nil {
		_, _ = fmt.Fprintf(c, "%s REFUSED %s\n", protocol, err)
		return nil, nil, err
	}
	if _, err := fmt.Fprintf(c, "%s HELLO %s %s\n", protocol, d.self, d.mapID); err != nil {
		return nil, nil, fmt.Errorf("answer HELLO: %w", err)
	}
	return n, r, nil
}

// checkHello checks a peer's HELLO line, from remote, and returns the peer.
func (d *Daemon) checkHello(line string, remote netip.Addr) (*node, error) {
	f := strings.Fields(line)
	if len(f) != 4 || f[0] != protocol || f[1] != "HELLO" {
		return nil, fmt.Errorf("not a HELLO: %q", truncate(line))
	}
	a, err := netip.ParseAddr(f[2])
	if err != nil {
		return nil, fmt.Errorf("HELLO from %q: not an address", truncate(f[2]))
	}
	a = a.Unmap()
	n := d.peer(a)
	switch {
	case n == nil:
		return nil, fmt.Errorf("%s is not a peer in the nodes file", a)
	case a != remote:
		return nil, fmt.Errorf("HELLO as %s from %s", a, remote)
	case f[3] != d.mapID:
		return nil, fmt.Errorf("node map mismatch: %s has %s, %s has %s", a, truncate(f[3]), d.self, d.mapID)
	}
	return n, nil
}

func remoteAddr(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// dialLoop keeps a connection to peer n, dialing from the daemon's own
// address, until ctx ends.
func (d *Daemon) dialLoop(ctx context.Context, n *node) {
	dialer := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(d.self, 0)), Timeout: d.HelloTimeout}
	target := netip.AddrPortFrom(n.addr, uint16(d.Config.ServerPort)).String()
	for ctx.Err() == nil {
		c, err := dialer.DialContext(ctx, "tcp", target)
		if err == nil {
			if untrack, ok := d.track(ctx, c); ok {
				var r *bufio.Reader
				if r, err = d.sayHello(c, n); err == nil {
					d.connected(ctx, n, c, r)
				}
				untrack()
			}
		}
		if err != nil && ctx.Err() == nil {
			d.mu.Lock()
			logIt := err.Error() != n.dialErr
			n.dialErr = err.Error()
			d.mu.Unlock()
			if logIt {
				d.log.Printf("connect to %s: %v (retrying every %v)", n.addr, err, d.DialInterval)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(d.DialInterval):
		}
	}
}

// sayHello sends the daemon's HELLO to peer n and reads its answer; it
// returns the reader of the connection's further lines.
func (d *Daemon) sayHello(c net.Conn, n *node) (*bufio.Reader, error) {
	_ = c.SetDeadline(time.Now().Add(d.HelloTimeout))
	if _, err := fmt.Fprintf(c, "%s HELLO %s %s\n", protocol, d.self, d.mapID); err != nil {
		return nil, fmt.Errorf("send HELLO: %w", err)
	}
	r := bufio.NewReaderSize(c, maxLine)
	line, err := readLine(r)
	if err != nil {
		return nil, fmt.Errorf("read HELLO: %w", err)
	}
	if reason, ok := strings.CutPrefix(line, protocol+" REFUSED "); ok {
		return nil, fmt.Errorf("refused: %s", truncate(reason))
	}
	got, err := d.checkHello(line, remoteAddr(c))
	if err != nil {
		return nil, err
	}
	if got != n {
		return nil, fmt.Errorf("HELLO from %s, dialed %s", got.addr, n.addr)
	}
	return r, nil
}

// connected runs an established connection to peer n until it fails or
// ctx ends: it makes c the peer's connection (closing an older one, of a
// peer that restarted), sends heartbeats and reads the peer's.
func (d *Daemon) connected(ctx context.Context, n *node, c net.Conn, r *bufio.Reader) {
	d.mu.Lock()
	if old := n.conn; old != nil {
		old.Close()
	}
	n.conn, n.state, n.dialErr = c, StateConnected, ""
	d.mu.Unlock()
	d.log.Printf("connected to %s", n.addr)
	_ = c.SetDeadline(time.Time{})

	done := make(chan struct{})
	go func() {
		t := time.NewTicker(d.Heartbeat)
		defer t.Stop()
		for {
			_ = c.SetWriteDeadline(time.Now().Add(missedHeartbeats * d.Heartbeat))
			if _, err := io.WriteString(c, "PING\n"); err != nil {
				c.Close()
				return
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	var err error
	for ctx.Err() == nil {
		_ = c.SetReadDeadline(time.Now().Add(missedHeartbeats * d.Heartbeat))
		var line string
		if line, err = readLine(r); err != nil {
			break
		}
		if line != "PING" {
			err = fmt.Errorf("unexpected %q", truncate(line))
			break
		}
	}
	close(done)
	c.Close()
	d.mu.Lock()
	current := n.conn == c
	if current {
		n.conn, n.state = nil, StateDisconnected
	}
	d.mu.Unlock()
	if current && ctx.Err() == nil {
		d.log.Printf("disconnected from %s: %v", n.addr, err)
	}
}

// errLineTooLong is a line longer than maxLine.
var errLineTooLong = errors.New("line too long")

// readLine reads one line of at most maxLine bytes from r, without its
// newline.
func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) || len(line) > maxLine {
		return "", errLineTooLong
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}

// Status is the daemon's view of its domain.
type Status struct {
	// Ready is true when every listed peer is connected.
	Ready bool
	// Nodes are the listed nodes, in the nodes file's order.
	Nodes []NodeStatus
}

// NodeStatus is one node of a Status.
type NodeStatus struct {
	Addr netip.Addr
	// State is StateSelf, StateConnected, StateNeverConnected or
	// StateDisconnected.
	State string
}

// Status returns the daemon's view now.
func (d *Daemon) Status() Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := Status{Ready: len(d.nodes) > 0}
	for _, n := range d.nodes {
		s.Nodes = append(s.Nodes, NodeStatus{Addr: n.addr, State: n.state})
		if n.state != StateSelf && n.state != StateConnected {
			s.Ready = false
		}
	}
	return s
}
