// Package imexsim is the simulated NVIDIA IMEX: the daemon nvidia-imex and
// its query tool nvidia-imex-ctl, two more names of the simulated driver's
// multi-call program (cmd/gpu-sim-tools, pkg/simhost/simtools).
//
// "nvidia-imex -c CFG" reads NVIDIA's KEY=VALUE configuration, finds its
// own address as NVIDIA's daemon does (BIND_INTERFACE_IP, else the first
// address of the nodes file that this host has), listens on SERVER_PORT
// there and keeps one TCP connection with heartbeats to every other listed
// node (see the peer protocol in daemon.go). Its command service
// (IMEX_CMD_ENABLED=1, on IMEX_CMD_PORT and/or IMEX_CMD_UNIX_DOMAIN_PATH)
// answers status queries. It always runs in the foreground, logs to
// stderr and exits 0 on SIGTERM or SIGINT.
//
// "nvidia-imex-ctl [-c CFG | -i IP PORT | -u PATH] -q" asks the daemon
// once and prints "READY" when every listed node is connected (the
// domain's quorum), otherwise "UNAVAILABLE"; "-N" prints every node's
// state and the domain's. It exits 0 when the daemon answered, whatever
// its state, and 1 (with a message on stderr) when it could not be asked,
// as NVIDIA's tool exits 1 when it fails. NVIDIA documents -q as "query
// the status of the IMEX daemon once and return" with READY as the ready
// answer; the word for not ready is this simulator's choice.
package imexsim

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

// The names the package's tools answer to.
const (
	IMEX    = "nvidia-imex"
	IMEXCtl = "nvidia-imex-ctl"
)

// Main runs the tool named name (IMEX or IMEXCtl) with args and returns
// its exit status: 2 for bad arguments.
func Main(name string, args []string, stdout, stderr io.Writer) int {
	switch name {
	case IMEX:
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		return RunDaemon(ctx, args, stderr)
	case IMEXCtl:
		return RunCtl(context.Background(), args, stdout, stderr)
	}
	fmt.Fprintf(stderr, "imexsim: no tool named %q\n", name)
	return 2
}

// RunDaemon is nvidia-imex with args ("-c CFG"), until ctx ends.
func RunDaemon(ctx context.Context, args []string, stderr io.Writer) int {
	path := DefaultConfigPath
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "-c" && i+1 < len(args):
			i++
			path = args[i]
		case strings.HasPrefix(a, "--c="):
			path = strings.TrimPrefix(a, "--c=")
		default:
			fmt.Fprintf(stderr, "%s: unknown argument %q\nUsage: %s [-c <config file>]\n", IMEX, a, IMEX)
			return 2
		}
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", IMEX, err)
		return 1
	}
	d := &Daemon{Config: cfg, Log: stderr}
	if err := d.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", IMEX, err)
		return 1
	}
	return 0
}

const ctlUsage = "Usage: nvidia-imex-ctl [-i <IP> <PORT>|-u <unix domain socket path>|-c <nvidia-imex config.cfg path>] <-q|-N>\n"

// RunCtl is nvidia-imex-ctl with args.
func RunCtl(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var (
		cfgPath, unixPath, ip, port string
		mode                        string
	)
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "%s: %s\n%s", IMEXCtl, fmt.Sprintf(format, a...), ctlUsage)
		return 2
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-q" || a == "-N":
			if mode != "" && mode != a {
				return bad("only one of -q and -N may be given")
			}
			mode = a
		case a == "-c" && i+1 < len(args):
			i++
			cfgPath = args[i]
		case strings.HasPrefix(a, "--c="):
			cfgPath = strings.TrimPrefix(a, "--c=")
		case a == "-u" && i+1 < len(args):
			i++
			unixPath = args[i]
		case strings.HasPrefix(a, "--u="):
			unixPath = strings.TrimPrefix(a, "--u=")
		case a == "-i" && i+2 < len(args):
			ip, port = args[i+1], args[i+2]
			i += 2
		default:
			return bad("unknown or incomplete argument %q", a)
		}
	}
	if mode == "" {
		return bad("one of -q and -N is required")
	}
	targets := 0
	for _, s := range []string{cfgPath, unixPath, ip} {
		if s != "" {
			targets++
		}
	}
	if targets > 1 {
		return bad("only one of -i, -u, or -c can be specified")
	}
	network, address := "unix", unixPath
	switch {
	case ip != "":
		a, err := netip.ParseAddr(ip)
		p, perr := strconv.Atoi(port)
		if err != nil || perr != nil || p < 1 || p > 65535 {
			return bad("bad address %q %q", ip, port)
		}
		network, address = "tcp", netip.AddrPortFrom(a, uint16(p)).String()
	case unixPath == "":
		if cfgPath == "" {
			cfgPath = DefaultConfigPath
		}
		var err error
		if network, address, err = commandAddress(cfgPath); err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", IMEXCtl, err)
			return 1
		}
	}
	s, err := Query(ctx, network, address)
	if err != nil {
		fmt.Fprintf(stderr, "%s: query the IMEX daemon at %s: %v\n", IMEXCtl, address, err)
		return 1
	}
	if mode == "-q" {
		if s.Ready {
			fmt.Fprintln(stdout, Ready)
		} else {
			fmt.Fprintln(stdout, NotReady)
		}
		return 0
	}
	fmt.Fprint(stdout, formatNodes(s))
	return 0
}

// commandAddress is where the configuration at path has its daemon's
// command service: IMEX_CMD_BIND_INTERFACE_IP (or 127.0.0.1, where the
// simulated daemon also listens) and IMEX_CMD_PORT, else
// IMEX_CMD_UNIX_DOMAIN_PATH.
func commandAddress(path string) (network, address string, err error) {
	cfg, err := LoadConfig(path)
	if err != nil {
		return "", "", err
	}
	switch {
	case !cfg.CmdEnabled:
		return "", "", fmt.Errorf("IMEX_CMD_ENABLED is not 1 in %s: the daemon has no command service", path)
	case cfg.CmdPort != 0:
		ip := cfg.CmdBindIP
		if !ip.IsValid() {
			ip = netip.MustParseAddr("127.0.0.1")
		}
		return "tcp", net.JoinHostPort(ip.String(), strconv.Itoa(cfg.CmdPort)), nil
	case cfg.CmdUnixPath != "":
		return "unix", cfg.CmdUnixPath, nil
	}
	return "", "", fmt.Errorf("neither IMEX_CMD_PORT nor IMEX_CMD_UNIX_DOMAIN_PATH is set in %s", path)
}

// formatNodes is -N's output: each node as the asked daemon sees it, and
// the domain's state: UP when all are connected, DOWN when none of the
// others is, else DEGRADED.
func formatNodes(s Status) string {
	var b strings.Builder
	b.WriteString("Nodes:\n")
	up := 0
	for i, n := range s.Nodes {
		state, note := Ready, ""
		switch n.State {
		case StateSelf:
			note = " (this node)"
		case StateConnected:
		default:
			state, note = NotReady, " ("+n.State+")"
		}
		if state == Ready {
			up++
		}
		fmt.Fprintf(&b, "Node #%-3d - %-39s - %s%s\n", i, n.Addr, state, note)
	}
	domain := "DEGRADED"
	switch {
	case s.Ready:
		domain = "UP"
	case up <= 1:
		domain = "DOWN"
	}
	fmt.Fprintf(&b, "\nDomain State: %s\n", domain)
	return b.String()
}
