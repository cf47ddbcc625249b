package imexsim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// The command service: a client sends "STATUS" and reads
//
//	IMEX-SIM/1 STATUS <READY|UNAVAILABLE>
//	NODE <address> <state>      (one a listed node, in the nodes file's order)
//	END
//
// after which the daemon closes the connection. Anything else is answered
// with "IMEX-SIM/1 ERROR <reason>".
const (
	commandTimeout = 5 * time.Second
	// maxStatusLines bounds the lines a client reads.
	maxStatusLines = MaxNodes + 2
)

// The daemon's state words: READY when every listed peer is connected.
const (
	Ready    = "READY"
	NotReady = "UNAVAILABLE"
)

// serveCommands answers the command service's clients until ln is
// closed; it ends the daemon (fail) when ln fails.
func (d *Daemon) serveCommands(ctx context.Context, fail context.CancelCauseFunc, ln net.Listener) {
	sem := make(chan struct{}, maxCommands)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			fail(fmt.Errorf("accept IMEX commands: %w", err))
			return
		}
		select {
		case sem <- struct{}{}:
		default:
			c.Close()
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			untrack, ok := d.track(ctx, c)
			if !ok {
				return
			}
			defer untrack()
			_ = c.SetDeadline(time.Now().Add(commandTimeout))
			line, err := readLine(bufio.NewReaderSize(c, maxLine))
			if err != nil {
				return
			}
			if line != "STATUS" {
				fmt.Fprintf(c, "%s ERROR unknown command %q\n", protocol, truncate(line))
				return
			}
			_, _ = c.Write([]byte(formatStatus(d.Status())))
		})
	}
}

func formatStatus(s Status) string {
	var b strings.Builder
	state := NotReady
	if s.Ready {
		state = Ready
	}
	fmt.Fprintf(&b, "%s STATUS %s\n", protocol, state)
	for _, n := range s.Nodes {
		fmt.Fprintf(&b, "NODE %s %s\n", n.Addr, n.State)
	}
	b.WriteString("END\n")
	return b.String()
}

// Query asks the command service at address (network "tcp" or "unix")
// for the daemon's status, within ctx and commandTimeout.
func Query(ctx context.Context, network, address string) (Status, error) {
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, network, address)
	if err != nil {
		return Status{}, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if _, err := c.Write([]byte("STATUS\n")); err != nil {
		return Status{}, err
	}
	return parseStatus(bufio.NewReaderSize(c, maxLine))
}

// parseStatus reads a STATUS answer, at most maxStatusLines lines.
func parseStatus(r *bufio.Reader) (Status, error) {
	line, err := readLine(r)
	if err != nil {
		return Status{}, fmt.Errorf("read the answer: %w", err)
	}
	var s Status
	switch line {
	case protocol + " STATUS " + Ready:
		s.Ready = true
	case protocol + " STATUS " + NotReady:
	default:
		return Status{}, fmt.Errorf("unexpected answer %q", truncate(line))
	}
	for range maxStatusLines {
		line, err := readLine(r)
		if err != nil {
			return Status{}, fmt.Errorf("read the answer: %w", err)
		}
		if line == "END" {
			return s, nil
		}
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "NODE" {
			return Status{}, fmt.Errorf("unexpected line %q", truncate(line))
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			return Status{}, fmt.Errorf("unexpected line %q", truncate(line))
		}
		switch f[2] {
		case StateSelf, StateConnected, StateNeverConnected, StateDisconnected:
		default:
			return Status{}, fmt.Errorf("unexpected state %q", truncate(f[2]))
		}
		s.Nodes = append(s.Nodes, NodeStatus{Addr: a, State: f[2]})
	}
	return Status{}, errors.New("answer too long")
}
