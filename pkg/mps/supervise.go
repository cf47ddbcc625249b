package mps

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/driverroot"
	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
)

// ErrDirectoryGone is returned by Supervisor.Run when the daemon's
// directory is gone: the plugin stopped the daemon and removed it (as a
// previous release, which knows no supervisor, does), so there is nothing
// to serve and nothing to restart.
var ErrDirectoryGone = errors.New("the MPS daemon's directory is gone: its claim was unprepared")

// Supervisor runs one daemon, in the foreground, and lives as long as it:
// it starts the control program as its child, records it in the daemon's
// directory (the record the plugin checks before it signals anything),
// and stops it when told to. It is what a Launcher runs: the container of
// a pod of its own (package daemonpod), which outlives the plugin's, or a
// goroutine of the plugin (InProcess).
//
// A supervisor that returns an error is run again by whoever launched it
// (the kubelet, for a pod: restartPolicy OnFailure): a daemon that crashed
// is restarted, its pipe directory cleared first.
type Supervisor struct {
	// Dir is the daemon's directory, made by the plugin: pipe/, log/ and
	// the record.
	Dir string
	// DriverRoot is where the control program is found.
	DriverRoot string
	// GPUs are the UUIDs (MIG or whole) the daemon is given, as its
	// launcher was told them. The plugin's spec in Dir, when there is one,
	// decides: GPUs must then be empty or the same (resolveSpec).
	GPUs []string
	// ProcRoot is the root above /proc in which processes are identified:
	// the host's ("/"), the supervisor running with hostPID, so that the
	// PIDs it records mean the same to the plugin.
	ProcRoot string
	// Timeout bounds the quit command and the wait for the daemon to
	// stop once told to.
	Timeout time.Duration
	// writeFile replaces a file atomically and durably; nil means
	// hostfs.WriteFileAtomic.
	writeFile func(path string, data []byte) error
	// run is this Supervisor's token in the record, made at its first Run.
	run string
}

// runID is the Supervisor's token, the same for each of its runs (a
// daemon of its own earlier run is its to replace).
func (s *Supervisor) runID() string {
	if s.run == "" {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		s.run = hex.EncodeToString(b)
	}
	return s.run
}

func (s *Supervisor) procs() procs {
	if s.ProcRoot == "" {
		return procs{root: "/"}
	}
	return procs{root: s.ProcRoot}
}

func (s *Supervisor) timeout() time.Duration {
	if s.Timeout <= 0 {
		return 10 * time.Second
	}
	return s.Timeout
}

// Run starts the daemon and returns when it has stopped: nil once ctx
// is done and the daemon stopped with it, ErrDirectoryGone when its
// directory is gone, or why the daemon could not start or exited.
func (s *Supervisor) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	if _, err := os.Lstat(s.Dir); errors.Is(err, fs.ErrNotExist) {
		return ErrDirectoryGone
	} else if err != nil {
		return fmt.Errorf("MPS daemon directory: %w", err)
	}
	bin, err := driverrootControl(s.DriverRoot)
	if err != nil {
		return err
	}
	sp, err := resolveSpec(s.Dir, s.GPUs)
	if err != nil {
		return fmt.Errorf("MPS control daemon's spec: %w", err)
	}
	if sp.Filesystem != "" {
		if err := checkFS(sp.Filesystem); err != nil {
			return err
		}
	}
	p := s.procs()
	self, err := p.identify(os.Getpid())
	if err != nil {
		return fmt.Errorf("identify the supervisor: %w", err)
	}
	// One daemon per directory. One recorded and alive whose supervisor
	// lives is that supervisor's (two pods of one key: one being deleted
	// while its successor starts, or an abandoned start's pod that a slow
	// kubelet starts late): this one waits until that supervisor ends, or
	// until it is told to stop itself. One without a live supervisor (it
	// died without its daemon) is stopped before another starts.
	for {
		rec, err := loadRecordIn(s.Dir)
		if err != nil || !p.is(rec.identity) {
			break
		}
		if sup := rec.Supervisor; sup != nil && rec.Run != s.runID() && p.is(*sup) {
			logger.Info("Another supervisor serves this MPS daemon directory; waiting for it to end", "dir", s.Dir, "supervisor", sup.PID, "pid", rec.PID)
			if !s.waitGone(ctx, *sup) {
				return nil // told to stop first: nothing was started
			}
			continue
		}
		// Only the driver's control program is signalled: a record that
		// names another program's process is no daemon's.
		if _, dev, ino, err := controlFileIn(s.DriverRoot); err != nil || rec.ExeDevice != dev || rec.ExeInode != ino {
			logger.Info("The MPS daemon directory's record names a process that does not run the control program; not signalling it", "dir", s.Dir, "pid", rec.PID, "exe", rec.Exe)
			break
		}
		logger.Info("A previous MPS control daemon of this directory still runs; stopping it", "dir", s.Dir, "pid", rec.PID)
		if err := p.kill(rec.identity); err != nil {
			return fmt.Errorf("stop the previous MPS control daemon: %w", err)
		}
		break
	}
	if ctx.Err() != nil {
		return nil // told to stop before anything was started
	}
	// No daemon serves pipe/: what is in it is stale, or planted (say,
	// a symlink where the daemon creates a file).
	if err := hostfs.EmptyTree(resolvedPipe(s.Dir)); err != nil {
		return fmt.Errorf("clear the MPS pipe directory: %w", err)
	}
	out, err := os.OpenFile(filepath.Join(s.Dir, outputFile), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("MPS control daemon output: %w", err)
	}
	// In the foreground, as this process's child: its PID is the one fork
	// returned, not one read from a file.
	cmd := exec.Command(bin, append([]string{"-f"}, sp.Limits.Args()...)...)
	// The limits are the daemon's defaults for every server it starts and
	// so for every client: a client can lower its own, not raise them.
	env := append(envIn(s.Dir), "CUDA_VISIBLE_DEVICES="+strings.Join(sp.GPUs, ","))
	// The daemon and the MPS servers it starts load the driver's
	// libraries (libcuda.so.1).
	if cmd.Env, err = driverroot.ToolEnv(s.DriverRoot, append(env, sp.Limits.Env(sp.GPUs)...)); err != nil {
		out.Close()
		return fmt.Errorf("start MPS control daemon: %w", err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	// The daemon must not get the signals of the supervisor's terminal or
	// process group: the supervisor decides how it stops.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	out.Close() // the daemon has its own
	if err != nil {
		return fmt.Errorf("start MPS control daemon: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	kill := func() {
		_ = cmd.Process.Kill() // this process's own child: no stranger
		if err := <-exited; err != nil {
			logger.V(4).Info("Killed MPS control daemon exited", "err", err)
		}
	}
	id, err := p.identify(cmd.Process.Pid)
	if err != nil {
		kill()
		return fmt.Errorf("start MPS control daemon: %w", err)
	}
	write := s.writeFile
	if write == nil {
		write = hostfs.WriteFileAtomic
	}
	// A daemon the plugin cannot find in its record would be unknown to
	// it: never left running.
	if err := saveRecordIn(s.Dir, record{identity: id, Supervisor: &self, Run: s.runID()}, write); err != nil {
		kill()
		return fmt.Errorf("start MPS control daemon: %w", err)
	}
	logger.Info("MPS control daemon started", "dir", s.Dir, "gpus", sp.GPUs, "limits", sp.Limits, "pid", id.PID)
	select {
	case err := <-exited:
		if s.directoryGoes() {
			return ErrDirectoryGone
		}
		if err == nil {
			err = errors.New("exit status 0: told to quit by someone else")
		}
		return fmt.Errorf("MPS control daemon %d exited (%w)%s", id.PID, err, outputIn(s.Dir))
	case <-ctx.Done():
	}
	s.stop(logger, id, exited, kill)
	return nil
}

// waitGone waits until the process id is gone (true) or ctx is done
// (false).
func (s *Supervisor) waitGone(ctx context.Context, id identity) bool {
	for s.procs().is(id) {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
	return true
}

// directoryGoneWait is how long a supervisor whose daemon exited waits
// for the daemon's directory to go before it fails: a plugin that knows
// no supervisor (a previous release) quits the daemon, waits for it to be
// gone, then removes the directory. Failing at once would have the
// kubelet start a new daemon in the directory being removed.
const directoryGoneWait = 2 * time.Second

// directoryGoes reports whether the daemon's directory is gone, or goes
// within directoryGoneWait.
func (s *Supervisor) directoryGoes() bool {
	deadline := time.Now().Add(directoryGoneWait)
	for {
		if _, err := os.Lstat(s.Dir); errors.Is(err, fs.ErrNotExist) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the supervisor's daemon: the quit command while the record
// still names it (a record naming another daemon means that daemon serves
// pipe/, and the command would reach it), then SIGKILL after Timeout.
func (s *Supervisor) stop(logger klog.Logger, id identity, exited <-chan error, kill func()) {
	if rec, err := loadRecordIn(s.Dir); err == nil && rec.identity == id {
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout())
		err := quitIn(ctx, s.DriverRoot, s.Dir)
		cancel()
		if err != nil {
			logger.Info("MPS control daemon did not take the quit command; killing it", "dir", s.Dir, "pid", id.PID, "err", err)
			kill()
			return
		}
	}
	select {
	case err := <-exited:
		logger.Info("MPS control daemon stopped", "exit", err, "dir", s.Dir, "pid", id.PID)
	case <-time.After(s.timeout()):
		logger.Info("MPS control daemon did not stop; killing it", "dir", s.Dir, "pid", id.PID)
		kill()
	}
}
