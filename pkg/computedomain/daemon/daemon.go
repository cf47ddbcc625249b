// Package daemon is the ComputeDomain daemon (cmd/compute-domain-daemon),
// run by each domain's DaemonSet in the pod network, with no Kubernetes
// client and no service account token. The node plugin mounts the
// domain's directory at /imexd (imexd.cfg, the IMEX configuration; nodes.cfg,
// the addresses of the domain's daemons in this node's clique, which the
// plugin keeps up to date) and the driver's nvidia-imex and nvidia-imex-ctl
// at /usr/bin.
//
// Run supervises "nvidia-imex -c <dir>/imexd.cfg": it starts it once
// nodes.cfg exists, restarts it when nodes.cfg's content changes (IMEX
// reads its nodes only at start) or when it exits, and stops it when its
// own context ends. Check is the pod's probe: it asks the local IMEX daemon
// with "nvidia-imex-ctl -c <dir>/imexd.cfg -q" and succeeds only on the
// answer "READY\n".
package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// Files of the domain's directory.
const (
	ConfigFile = "imexd.cfg"
	NodesFile  = "nodes.cfg"
)

// maxNodesFile bounds what Run reads of nodes.cfg.
const maxNodesFile = 1 << 20

// Options are Run's and Check's settings; zero values mean the defaults.
type Options struct {
	// Dir is the domain's directory; default names.IMEXDaemonDir.
	Dir string
	// IMEX is the IMEX daemon's program; default "nvidia-imex" (on PATH).
	IMEX string
	// Ctl is the IMEX query tool; default "nvidia-imex-ctl" (on PATH).
	Ctl string
	// Poll is how often Run reads nodes.cfg; default 1 s.
	Poll time.Duration
	// Settle is how long a new content of nodes.cfg must stay unchanged
	// before Run restarts IMEX with it, so that a burst of changes (nodes
	// joining one after another) restarts it once; default 2 s.
	Settle time.Duration
	// MinBackoff and MaxBackoff bound the wait before IMEX is started
	// again after it exited: doubled after each exit, back to MinBackoff
	// once it ran for ResetAfter; defaults 1 s, 30 s and 1 min.
	MinBackoff, MaxBackoff, ResetAfter time.Duration
	// StopTimeout is how long Run waits for IMEX to exit after SIGTERM
	// before it kills it; default 10 s.
	StopTimeout time.Duration
	// CheckTimeout bounds Check's query; default 4 s (less than a probe's
	// timeoutSeconds of 5).
	CheckTimeout time.Duration
	// Stdout and Stderr receive IMEX's output; nil means os.Stdout and
	// os.Stderr.
	Stdout, Stderr io.Writer
}

func (o Options) withDefaults() Options {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if o.Dir == "" {
		o.Dir = names.IMEXDaemonDir
	}
	if o.IMEX == "" {
		o.IMEX = "nvidia-imex"
	}
	if o.Ctl == "" {
		o.Ctl = "nvidia-imex-ctl"
	}
	def(&o.Poll, time.Second)
	def(&o.Settle, 2*time.Second)
	def(&o.MinBackoff, time.Second)
	def(&o.MaxBackoff, 30*time.Second)
	def(&o.ResetAfter, time.Minute)
	def(&o.StopTimeout, 10*time.Second)
	def(&o.CheckTimeout, 4*time.Second)
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	return o
}

// Check asks the local IMEX daemon whether its domain is ready: nil iff
// "nvidia-imex-ctl -c <dir>/imexd.cfg -q" exits 0 within CheckTimeout
// with the output "READY\n" exactly, else an error with the output.
func Check(ctx context.Context, o Options) error {
	o = o.withDefaults()
	ctx, cancel := context.WithTimeout(ctx, o.CheckTimeout)
	defer cancel()
	out := &limitedBuffer{max: 4096}
	cmd := exec.CommandContext(ctx, o.Ctl, "-c", filepath.Join(o.Dir, ConfigFile), "-q")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	switch {
	case err != nil && ctx.Err() != nil:
		return fmt.Errorf("IMEX daemon check: %s did not answer within %v (output %q)", o.Ctl, o.CheckTimeout, out.String())
	case err != nil:
		return fmt.Errorf("IMEX daemon check: run %s: %w (output %q)", o.Ctl, err, out.String())
	case out.String() != "READY\n":
		return fmt.Errorf("IMEX daemon not ready: %q", out.String())
	}
	return nil
}

// limitedBuffer keeps the first max bytes written to it and drops the
// rest, so that a runaway tool cannot fill the probe's memory.
type limitedBuffer struct {
	buf bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string { return b.buf.String() }

// Run supervises IMEX until ctx ends, then stops it (SIGTERM, SIGKILL
// after StopTimeout) and returns nil once it has exited. It waits for
// nodes.cfg before the first start. It returns an error only when IMEX
// cannot be stopped.
func Run(ctx context.Context, o Options) error {
	o = o.withDefaults()
	logger := klog.FromContext(ctx)
	s := &supervisor{o: o, logger: logger, backoff: o.MinBackoff}
	return s.run(ctx)
}

// supervisor is Run's state.
type supervisor struct {
	o      Options
	logger klog.Logger

	proc    *exec.Cmd
	exited  chan error // the running process's Wait, buffered
	started time.Time
	nodes   []byte // the nodes.cfg content the process runs with

	backoff time.Duration
	// restartAt is when a process that exited is started again; zero
	// while one runs or before nodes.cfg first exists.
	restartAt time.Time
	// pending is a new nodes.cfg content seen since pendingSince.
	pending      []byte
	pendingSince time.Time
	missing      bool // nodes.cfg was missing at the last poll (logged once)
}

func (s *supervisor) run(ctx context.Context) error {
	nodesPath := filepath.Join(s.o.Dir, NodesFile)
	tick := time.NewTicker(s.o.Poll)
	defer tick.Stop()
	s.logger.Info("Waiting for the domain's nodes file", "path", nodesPath)
	for {
		s.poll(nodesPath)
		var exited chan error
		if s.proc != nil {
			exited = s.exited
		}
		select {
		case <-ctx.Done():
			return s.stop("shutting down")
		case err := <-exited:
			s.onExit(err)
		case <-tick.C:
		}
	}
}

// poll reads nodes.cfg and starts, restarts or leaves IMEX as its content
// and the backoff say.
func (s *supervisor) poll(nodesPath string) {
	content, err := readNodes(nodesPath)
	now := time.Now()
	switch {
	case errors.Is(err, os.ErrNotExist):
		if !s.missing && s.nodes != nil {
			s.logger.Info("Nodes file is gone; IMEX keeps its last nodes", "path", nodesPath)
		}
		s.missing = true
		return
	case err != nil:
		s.logger.Error(err, "Read the nodes file")
		return
	}
	s.missing = false
	if s.nodes == nil && s.proc == nil && s.restartAt.IsZero() {
		// The first content: start at once.
		s.start(content)
		return
	}
	if !bytes.Equal(content, s.nodes) {
		if !bytes.Equal(content, s.pending) {
			s.pending, s.pendingSince = content, now
		}
		if now.Sub(s.pendingSince) >= s.o.Settle {
			s.pending = nil
			if s.proc != nil {
				if err := s.stop("the nodes file changed"); err != nil {
					s.logger.Error(err, "Stop IMEX")
					return
				}
			}
			s.backoff = s.o.MinBackoff
			s.start(content)
		}
		return
	}
	s.pending = nil
	if s.proc == nil && !now.Before(s.restartAt) {
		s.start(content)
	}
}

func readNodes(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxNodesFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxNodesFile {
		return nil, fmt.Errorf("read %s: larger than %d bytes", path, maxNodesFile)
	}
	if data == nil {
		data = []byte{}
	}
	return data, nil
}

// start starts IMEX with nodes as the nodes file's content; a failure to
// start counts as an exit.
func (s *supervisor) start(nodes []byte) {
	s.nodes, s.restartAt = nodes, time.Time{}
	cmd := exec.Command(s.o.IMEX, "-c", filepath.Join(s.o.Dir, ConfigFile))
	cmd.Stdout, cmd.Stderr = s.o.Stdout, s.o.Stderr
	s.started = time.Now()
	if err := cmd.Start(); err != nil {
		s.logger.Error(err, "Start IMEX", "command", cmd.String())
		s.scheduleRestart()
		return
	}
	s.logger.Info("Started IMEX", "pid", cmd.Process.Pid, "command", cmd.String(), "nodes", countLines(nodes))
	s.proc = cmd
	s.exited = make(chan error, 1)
	exited := s.exited
	go func() { exited <- cmd.Wait() }()
}

func countLines(b []byte) int { return len(bytes.Fields(b)) }

// onExit handles IMEX's exit on its own.
func (s *supervisor) onExit(err error) {
	s.logger.Info("IMEX exited", "pid", s.proc.Process.Pid, "status", exitStatus(err), "ran", time.Since(s.started).Round(time.Millisecond))
	s.proc = nil
	s.scheduleRestart()
}

// scheduleRestart sets when IMEX is started again and doubles the backoff,
// or resets it after a long run.
func (s *supervisor) scheduleRestart() {
	if time.Since(s.started) >= s.o.ResetAfter {
		s.backoff = s.o.MinBackoff
	}
	s.restartAt = time.Now().Add(s.backoff)
	s.logger.Info("Restarting IMEX later", "in", s.backoff)
	s.backoff = min(2*s.backoff, s.o.MaxBackoff)
}

// stop sends IMEX SIGTERM and waits for it to exit, killing it after
// StopTimeout.
func (s *supervisor) stop(why string) error {
	if s.proc == nil {
		return nil
	}
	pid := s.proc.Process.Pid
	s.logger.Info("Stopping IMEX", "pid", pid, "reason", why)
	if err := s.proc.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		s.logger.Error(err, "Signal IMEX", "pid", pid)
	}
	var err error
	select {
	case err = <-s.exited:
	case <-time.After(s.o.StopTimeout):
		s.logger.Info("IMEX did not exit after SIGTERM; killing it", "pid", pid, "waited", s.o.StopTimeout)
		_ = s.proc.Process.Kill()
		select {
		case err = <-s.exited:
		case <-time.After(s.o.StopTimeout):
			return fmt.Errorf("IMEX (pid %d) did not exit after SIGKILL", pid)
		}
	}
	s.logger.Info("IMEX stopped", "pid", pid, "status", exitStatus(err))
	s.proc = nil
	return nil
}

func exitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}
