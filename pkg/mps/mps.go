// Package mps runs one CUDA MPS control daemon per claim that asks for MPS
// sharing, with the driver's own nvidia-cuda-mps-control from the driver
// root.
//
// Each daemon has a directory <root>/<key> (key: a claim's UID, or the
// key of a shared GPU's daemon) with pipe/ (the daemon's control pipe and
// PID file; mounted read-write into the containers that use the daemon,
// whose CUDA runtime connects through it) and log/ (mounted read-only).
// Whatever is in pipe/ and log/ is written by tenants' containers as much
// as by the daemon, so the plugin reads nothing there that it acts on
// (docs/security.md, "Threat model").
//
// Each daemon runs under a Supervisor, which a Launcher runs: in the
// chart, a pod of its own per daemon (package daemonpod), so that the
// daemon, and the MPS server it starts for the claim's containers, outlive
// the plugin's restart, upgrade and crash; a supervisor that fails is
// restarted by the kubelet. The supervisor starts the control program as
// its child, in the foreground, so that the PID comes from fork and not
// from a file, and writes the record by which the plugin knows the daemon,
// <root>/<key>/daemon.json, which no tenant's container can write: the
// PID, start time, boot and executable. A process is the daemon only while
// all of these match and its executable is the driver root's control
// program (a record is not trusted to name one); only then is it
// signalled. A plugin that starts
// finds the daemons that run and starts only those that do not: it
// neither leaks a daemon nor starts one twice.
//
// A previous release knew its daemons only by the daemon's PID file in
// pipe/. Where there is no record, that file is read once, defensively, and
// the process it names is adopted (and recorded) only if it runs the driver
// root's control program, serves this directory's pipe/ and started between
// the directory's creation and this plugin's start; otherwise the daemon is
// gone and a new one is started.
package mps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/driverroot"
	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
)

// ControlBinary is the MPS control program.
const ControlBinary = "nvidia-cuda-mps-control"

// Files the daemon makes in its pipe directory: its control pipe, whose
// existence says it is ready for clients, and the PID file by which a
// previous release of the plugin knew it.
const (
	controlPipe   = "control"
	legacyPIDFile = "nvidia-cuda-mps-control.pid"
)

// Files of the plugin's own in a daemon's directory, beside pipe/ and log/
// and out of every container's reach.
const (
	recordFile = "daemon.json"
	outputFile = "daemon.out" // the daemon's standard output and error
)

// recordVersion is the version of the record's format.
const recordVersion = 1

// adoptSlack is how far, either way, the start of a previous release's
// daemon may lie outside the window it must have started in: start times
// converted to wall time are good to about a second.
const adoptSlack = 2 * time.Second

// Container paths of the daemon's directories.
const (
	ContainerPipeDir = "/tmp/nvidia-mps"
	ContainerLogDir  = "/var/log/nvidia-mps"
)

// DirMode is the mode of the daemons' directories, owned by root (the
// plugin, whose child the daemon is). pipe/ and log/ are bind-mounted into
// the claim's containers, whose processes may run as any user: they must
// search pipe/ to reach the daemon's pipes and sockets (which the daemon
// creates with modes of its own) and may read log/. They must not create
// or remove entries there: in a 0777 pipe directory one container could
// replace the control pipe that the claim's other containers connect to.
// So 0755, never 0777. The directories above them need nothing more, as
// the container runtime (root) resolves a bind mount's source. A root
// container can still write to pipe/ whatever its mode: that is why the
// plugin trusts nothing in it.
//
// The MPS server that the daemon starts for a client runs as the client's
// user. Should it need to create files in pipe/ or log/ for a non-root
// client, the fix is to give these directories to that user (chown), not
// to open them to everyone.
const DirMode fs.FileMode = 0o755

// Manager starts and stops claims' daemons. It is safe for concurrent use
// with different keys.
type Manager struct {
	root       string
	driverRoot string
	// ProcRoot is the root above the process table (/proc) in which the
	// daemons are looked up: "/", which for the plugin, running with
	// hostPID, is the host's. It is not --proc-root, the driver's /proc
	// files, a simulated tree in simulation. Tests point it at a fake tree.
	ProcRoot string
	// Timeout bounds waiting for a daemon to take the quit command and
	// to stop.
	Timeout time.Duration
	// ReadyTimeout bounds waiting for a launched daemon to be ready: its
	// pod, where the Launcher makes one, to start and its daemon to make
	// its control pipe.
	ReadyTimeout time.Duration
	// FS bounds what clients can write to each daemon's pipe/ and shm/
	// (fs.go); its zero value leaves them plain directories.
	FS Filesystem
	// Launcher runs the daemons' supervisors. Nil runs them in this
	// process, whose container they then do not outlive: the chart sets
	// a daemonpod.Launcher.
	Launcher Launcher
	// Logger logs what Running, which has no context, finds: a previous
	// release's daemon adopted or refused. The zero Logger discards.
	Logger klog.Logger
	// writeFile replaces a file atomically and durably.
	writeFile func(path string, data []byte) error
	// created is when the Manager was made: a previous release's daemon
	// started before it.
	created time.Time
	// inProcess is the Launcher where Launcher is nil.
	inProcess *inProcess
}

// NewManager keeps daemon directories under root and runs the control
// program found under driverRoot.
func NewManager(root, driverRoot string) *Manager {
	m := &Manager{root: root, driverRoot: driverRoot, ProcRoot: "/", Timeout: 10 * time.Second,
		ReadyTimeout: 30 * time.Second, writeFile: hostfs.WriteFileAtomic, created: time.Now()}
	m.inProcess = &inProcess{m: m}
	return m
}

func (m *Manager) launcher() Launcher {
	if m.Launcher != nil {
		return m.Launcher
	}
	return m.inProcess
}

// record is the plugin's own record of a daemon, in its directory.
type record struct {
	Version int `json:"version"`
	identity
	// Adopted is set for a previous release's daemon, found by its PID
	// file.
	Adopted bool `json:"adopted,omitempty"`
	// Supervisor is the process that supervises the daemon, when one
	// does: a second supervisor of the directory leaves a daemon alone
	// while its supervisor lives. (A previous release ignores it.)
	Supervisor *identity `json:"supervisor,omitempty"`
	// Run tells apart the supervisors of one process (the plugin's own):
	// a random token per Supervisor.
	Run string `json:"run,omitempty"`
}

// Dir is the host directory of a claim's daemon.
func (m *Manager) Dir(claimUID string) string { return filepath.Join(m.root, claimUID) }

// PipeDir is the daemon's pipe directory on the host, mounted into the
// claim's containers at ContainerPipeDir.
func (m *Manager) PipeDir(claimUID string) string { return PipeDirIn(m.Dir(claimUID)) }

// LogDir is the daemon's log directory on the host, mounted at
// ContainerLogDir.
func (m *Manager) LogDir(claimUID string) string { return LogDirIn(m.Dir(claimUID)) }

// PipeDirIn and LogDirIn locate the directories in a daemon directory.
func PipeDirIn(dir string) string { return filepath.Join(dir, "pipe") }

// LogDirIn is the log directory in a daemon directory.
func LogDirIn(dir string) string { return filepath.Join(dir, "log") }

func (m *Manager) procs() procs { return procs{root: m.ProcRoot} }

func (m *Manager) control() (string, error) { return driverrootControl(m.driverRoot) }

// controlFile finds the driver root's control program and identifies its
// file: the device and inode that /proc/<pid>/exe of a daemon it runs
// has.
func (m *Manager) controlFile() (path string, dev, ino uint64, err error) {
	return controlFileIn(m.driverRoot)
}

// controlFileIn finds the control program under a driver root, with the
// device and inode a daemon's executable must have.
func controlFileIn(driverRoot string) (path string, dev, ino uint64, err error) {
	bin, err := driverrootControl(driverRoot)
	if err != nil {
		return "", 0, 0, err
	}
	fi, err := os.Stat(bin)
	if err != nil {
		return "", 0, 0, fmt.Errorf("identify the MPS control program: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", 0, 0, fmt.Errorf("%s: no device and inode", bin)
	}
	return bin, st.Dev, st.Ino, nil
}

// daemonOf returns the daemon a record names: its process while it runs
// (the PID, start time, boot and executable match, procs.is) and its
// executable is the driver root's control program, found as the
// supervisor finds it. The record is the plugin's own, but the identity
// alone would let a record that names another program (written by
// mistake, or by whoever could write the directory) have that program
// signalled as the daemon. Otherwise it returns nil, and why when a
// process runs under the record's identity: it is not the daemon, and is
// never signalled. A daemon whose driver was reinstalled since it started
// (its executable another inode) is not the daemon either, as a previous
// release's is not adopted then (legacyDaemon).
func (m *Manager) daemonOf(rec record) (*identity, string) {
	p := m.procs()
	if !p.is(rec.identity) {
		return nil, ""
	}
	bin, dev, ino, err := m.controlFile()
	if err != nil {
		return nil, fmt.Sprintf("process %d cannot be checked against the MPS control program: %v", rec.PID, err)
	}
	if rec.ExeDevice != dev || rec.ExeInode != ino {
		return nil, fmt.Sprintf("process %d runs %s (device %d, inode %d), not %s (device %d, inode %d): another program, or a driver reinstalled since it started",
			rec.PID, rec.Exe, rec.ExeDevice, rec.ExeInode, bin, dev, ino)
	}
	return &rec.identity, ""
}

// driverrootControl finds the control program under a driver root.
func driverrootControl(driverRoot string) (string, error) {
	return driverroot.FindBinary(driverRoot, ControlBinary)
}

// envIn is the environment in which the control program reaches the
// daemon of directory dir.
func envIn(dir string) []string {
	return append(os.Environ(),
		"CUDA_MPS_PIPE_DIRECTORY="+PipeDirIn(dir),
		"CUDA_MPS_LOG_DIRECTORY="+LogDirIn(dir))
}

// Start starts the claim's daemon for the GPUs (UUIDs, MIG or whole) with
// the limits it imposes on its clients, and waits until it is ready. The
// GPUs and limits are written to the daemon's directory first (specFile),
// where its supervisor reads them. A daemon that already runs is kept:
// Start is idempotent. A daemon that does not get ready (or cannot be
// recorded, which would leave it unknown to the plugin) is stopped again
// and the failure returned.
func (m *Manager) Start(ctx context.Context, key string, gpuUUIDs []string, limits Limits) error {
	logger := klog.FromContext(ctx)
	if d, err := m.lookup(logger, key); err != nil {
		return err
	} else if d != nil {
		logger.V(2).Info("MPS control daemon already running", "key", key, "pid", d.PID)
		return nil
	}
	if _, err := m.control(); err != nil {
		return err
	}
	for _, dir := range []string{m.root, m.Dir(key), m.LogDir(key)} {
		if err := hostfs.EnsureDir(logger, dir, DirMode); err != nil {
			return fmt.Errorf("MPS directory: %w", err)
		}
	}
	if err := m.ensureFS(logger, key); err != nil {
		return err
	}
	if m.unproven(key) {
		// A previous release's daemon that could not prove itself, or
		// one of a reinstalled driver, may still serve pipe/: ask it to
		// quit (signalling nothing) before the supervisor clears its
		// pipes under it. A record naming a process that is not the
		// daemon goes first: the supervisor stops the daemon its
		// directory's record names before it starts one.
		stranger := m.forgetStranger(logger, key)
		if err := m.quit(ctx, key); err != nil {
			logger.V(2).Info("No MPS control daemon took the quit command", "key", key, "err", err)
		} else if stranger != nil && !m.waitGone(ctx, *stranger) {
			// Only looked at: it may be a reinstalled driver's daemon
			// that takes its time, or not a daemon at all.
			logger.Info("The process of the MPS control daemon's old record still runs after the quit command; starting the daemon beside it", "key", key, "pid", stranger.PID)
		}
	}
	filesystem := ""
	if Bounded(m.Dir(key)) {
		filesystem = m.fsDir(key)
	}
	if err := saveSpecIn(m.Dir(key), gpuUUIDs, limits, filesystem, m.writeFile); err != nil {
		return err
	}
	l := m.launcher()
	if err := l.Launch(ctx, Daemon{Key: key, Dir: m.Dir(key), GPUs: gpuUUIDs, Filesystem: filesystem, SharesOnly: limits.SharesOnly}); err != nil {
		return fmt.Errorf("launch MPS control daemon: %w", err)
	}
	fail := func(err error) error {
		m.abandon(ctx, key)
		return fmt.Errorf("start MPS control daemon: %w", err)
	}
	deadline := time.Now().Add(m.ReadyTimeout)
	nextCheck := time.Now()
	for {
		if d := m.recorded(key); d != nil && m.ready(key) {
			logger.Info("MPS control daemon ready", "key", key, "gpus", gpuUUIDs, "limits", limits, "pid", d.PID)
			return nil
		}
		if now := time.Now(); !now.Before(nextCheck) {
			// Asking a pod's status is an API call: a few times a
			// second, not at every look at the pipe directory.
			if err := l.Failure(ctx, key); err != nil {
				return fail(err)
			}
			nextCheck = now.Add(250 * time.Millisecond)
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("not ready after %s (log: %s)%s", m.ReadyTimeout, m.LogDir(key), m.output(key)))
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// recorded returns the daemon the key's record names if it runs
// (daemonOf).
func (m *Manager) recorded(key string) *identity {
	rec, err := m.loadRecord(key)
	if err != nil {
		return nil
	}
	d, _ := m.daemonOf(rec)
	return d
}

// abandon stops the supervisor and the daemon of a start that failed,
// leaving the directory to Stop.
func (m *Manager) abandon(ctx context.Context, key string) {
	logger := klog.FromContext(ctx)
	if _, err := m.launcher().Remove(context.WithoutCancel(ctx), key); err != nil {
		logger.Error(err, "Cannot stop the supervisor of an MPS control daemon that did not start", "key", key)
	}
	if d := m.recorded(key); d != nil {
		if err := m.procs().kill(*d); err != nil {
			logger.Error(err, "Cannot kill an MPS control daemon that did not start", "key", key, "pid", d.PID)
		}
	}
}

// ready reports whether the daemon made its control pipe. The entry is
// only looked at, never opened.
func (m *Manager) ready(key string) bool {
	_, err := os.Lstat(filepath.Join(m.PipeDir(key), controlPipe))
	return err == nil
}

// output is the start of what the daemon printed, for an error message.
func (m *Manager) output(key string) string { return outputIn(m.Dir(key)) }

// outputIn is the start of what the daemon of directory dir printed.
func outputIn(dir string) string {
	f, err := os.Open(filepath.Join(dir, outputFile))
	if err != nil {
		return ""
	}
	defer f.Close()
	data, _ := io.ReadAll(io.LimitReader(f, 2<<10))
	if s := strings.TrimSpace(string(data)); s != "" {
		return ": " + s
	}
	return ""
}

// Running reports whether the claim's daemon runs.
func (m *Manager) Running(key string) bool {
	d, _ := m.lookup(m.Logger, key)
	return d != nil
}

// lookup returns the identity of the key's running daemon, or nil if it
// has none. The record decides, if it names a process that runs the driver
// root's control program (daemonOf); without one, a previous release's
// daemon is adopted if it proves itself (see the package comment). An
// error means that a daemon was adopted but could not be recorded.
func (m *Manager) lookup(logger klog.Logger, key string) (*identity, error) {
	rec, err := m.loadRecord(key)
	switch {
	case err == nil:
		d, why := m.daemonOf(rec)
		if why != "" {
			logger.Info("The process in the record of an MPS control daemon is not the driver's control daemon; taking the daemon as gone, signalling nothing", "key", key, "pid", rec.PID, "reason", why)
		}
		return d, nil
	case !errors.Is(err, fs.ErrNotExist):
		logger.Info("Unreadable record of an MPS control daemon; taking the daemon as gone", "key", key, "err", err)
		return nil, nil
	}
	id, why := m.legacyDaemon(key)
	if id == nil {
		if why != "" {
			logger.Info("Not adopting the process in a previous release's MPS PID file", "key", key, "reason", why)
		}
		return nil, nil
	}
	logger.Info("Adopting a previous release's MPS control daemon", "key", key, "pid", id.PID)
	if err := m.saveRecord(key, record{identity: *id, Adopted: true}); err != nil {
		return id, err
	}
	return id, nil
}

// legacyDaemon returns the previous release's daemon named by the PID file
// in the key's pipe directory, if the process proves to be it; otherwise
// why not ("" when there is no PID file).
func (m *Manager) legacyDaemon(key string) (*identity, string) {
	path := filepath.Join(m.PipeDir(key), legacyPIDFile)
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, ""
	}
	data, err := hostfs.ReadBounded(path, maxSmallSize, true)
	if err != nil {
		return nil, err.Error()
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return nil, fmt.Sprintf("%s holds no PID", path)
	}
	bin, dev, ino, err := m.controlFile()
	if err != nil {
		return nil, err.Error()
	}
	p := m.procs()
	id, err := p.identify(pid)
	if err != nil {
		return nil, err.Error()
	}
	if id.ExeDevice != dev || id.ExeInode != ino {
		return nil, fmt.Sprintf("process %d runs %s, not %s", pid, id.Exe, bin)
	}
	env, err := p.environ(pid)
	if err != nil {
		return nil, err.Error()
	}
	if !slices.Contains(env, "CUDA_MPS_PIPE_DIRECTORY="+m.PipeDir(key)) {
		return nil, fmt.Sprintf("process %d serves another pipe directory", pid)
	}
	started, err := p.startedAt(id.StartTime)
	if err != nil {
		return nil, err.Error()
	}
	dir, err := os.Lstat(m.Dir(key))
	if err != nil {
		return nil, err.Error()
	}
	// The previous release made the directory, then started the daemon;
	// this plugin has not started it.
	if started.Before(dir.ModTime().Add(-adoptSlack)) || started.After(m.created.Add(adoptSlack)) {
		return nil, fmt.Sprintf("process %d started at %s, not between its directory's creation (%s) and this plugin's start (%s)",
			pid, started.UTC().Format(time.RFC3339), dir.ModTime().UTC().Format(time.RFC3339), m.created.UTC().Format(time.RFC3339))
	}
	return &id, ""
}

// unproven reports whether key may have a daemon that the plugin does not
// take for one, which it asks to quit through pipe/ (signalling nothing)
// rather than leak: a previous release's PID file without a record (its
// daemon, if any, was not adopted), or a record whose process runs but is
// not the driver root's control program (daemonOf: a daemon of a driver
// reinstalled since, or another program).
func (m *Manager) unproven(key string) bool {
	rec, err := m.loadRecord(key)
	if err == nil {
		d, why := m.daemonOf(rec)
		return d == nil && why != ""
	}
	if _, lerr := os.Lstat(filepath.Join(m.PipeDir(key), legacyPIDFile)); lerr != nil {
		return false
	}
	return errors.Is(err, fs.ErrNotExist)
}

// forgetStranger removes the key's record if it names a running process
// that is not the daemon (daemonOf), so that nothing takes that process
// for the daemon any more, and returns that process.
func (m *Manager) forgetStranger(logger klog.Logger, key string) *identity {
	rec, err := m.loadRecord(key)
	if err != nil {
		return nil
	}
	if d, why := m.daemonOf(rec); d != nil || why == "" {
		return nil
	}
	if err := os.Remove(filepath.Join(m.Dir(key), recordFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		logger.Error(err, "Cannot remove the record of an MPS control daemon that names another process", "key", key, "pid", rec.PID)
	} else {
		logger.Info("Removed the record of an MPS control daemon that names another process", "key", key, "pid", rec.PID)
	}
	return &rec.identity
}

func (m *Manager) loadRecord(key string) (record, error) { return loadRecordIn(m.Dir(key)) }

// loadRecordIn reads the record in a daemon directory.
func loadRecordIn(dir string) (record, error) {
	data, err := hostfs.ReadBounded(filepath.Join(dir, recordFile), maxSmallSize, true)
	if err != nil {
		return record{}, err
	}
	var rec record
	if err := json.Unmarshal(data, &rec); err != nil {
		return record{}, fmt.Errorf("decode %s: %w", recordFile, err)
	}
	if rec.Version != recordVersion {
		return record{}, fmt.Errorf("%s: version %d, want %d", recordFile, rec.Version, recordVersion)
	}
	return rec, nil
}

// saveRecord replaces the key's record, atomically and durably.
func (m *Manager) saveRecord(key string, rec record) error {
	return saveRecordIn(m.Dir(key), rec, m.writeFile)
}

// saveRecordIn replaces the record in a daemon directory with write.
func saveRecordIn(dir string, rec record, write func(string, []byte) error) error {
	rec.Version = recordVersion
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode the MPS control daemon's record: %w", err)
	}
	if err := write(filepath.Join(dir, recordFile), data); err != nil {
		return fmt.Errorf("record the MPS control daemon: %w", err)
	}
	return nil
}

// Stop asks the claim's daemon to quit, kills it if it does not, waits for
// it, and removes its directories. Stopping a claim without a daemon is
// not an error. Only the recorded (or adopted) daemon is ever signalled.
func (m *Manager) Stop(ctx context.Context, key string) error {
	logger := klog.FromContext(ctx)
	d, err := m.lookup(logger, key)
	if err != nil {
		// An adopted daemon that could not be recorded is stopped all
		// the same.
		logger.Info("Stopping an unrecorded MPS control daemon", "key", key, "err", err)
	}
	// The supervisor first: it stops the daemon, and must not restart
	// it once the plugin has. One that cannot be reached (its pod, the
	// API server away) does not stop the unprepare: the daemon is stopped
	// below and its directory removed, and a supervisor whose daemon
	// exits and whose directory is gone ends (ErrDirectoryGone); its pod
	// is deleted at a later reconcile.
	stopping, err := m.launcher().Remove(ctx, key)
	if err != nil {
		logger.Error(err, "Cannot stop the MPS control daemon's supervisor; stopping the daemon without it", "key", key)
	}
	switch {
	case d != nil && stopping && m.waitGone(ctx, *d):
		logger.Info("MPS control daemon stopped", "key", key, "pid", d.PID)
	case d != nil:
		// No supervisor (a previous release's daemon, or one that
		// outlived the plugin process that supervised it), or one that
		// did not stop it.
		if err := m.stop(ctx, key, *d); err != nil {
			return err
		}
	case m.unproven(key):
		// A previous release's daemon that could not prove itself, or
		// one of a reinstalled driver, may still serve pipe/: ask
		// whatever does to quit, signalling nothing, rather than leak
		// it.
		if err := m.quit(ctx, key); err != nil {
			logger.V(2).Info("No MPS control daemon took the quit command", "key", key, "err", err)
		}
	}
	if err := m.removeFS(key); err != nil {
		return err
	}
	// Not os.RemoveAll: a previous release's pipe/ holds what the claim's
	// containers wrote, such as a chain of directories deeper than the
	// open-file limit.
	if err := hostfs.RemoveTree(m.Dir(key)); err != nil {
		return fmt.Errorf("remove MPS directory: %w", err)
	}
	return nil
}

// stop ends the daemon d: the quit command through its pipe directory
// first, bounded by Timeout (a container may have replaced the control
// pipe, making the command fail or hang), then SIGKILL.
func (m *Manager) stop(ctx context.Context, key string, d identity) error {
	logger := klog.FromContext(ctx)
	if err := m.quit(ctx, key); err != nil {
		logger.Info("MPS control daemon did not take the quit command; killing it", "key", key, "pid", d.PID, "err", err)
	} else if m.waitGone(ctx, d) {
		logger.Info("MPS control daemon stopped", "key", key, "pid", d.PID)
		return nil
	} else {
		logger.Info("MPS control daemon did not quit; killing it", "key", key, "pid", d.PID)
	}
	if err := m.procs().kill(d); err != nil {
		return fmt.Errorf("stop MPS control daemon: %w", err)
	}
	if !m.waitGone(ctx, d) {
		return fmt.Errorf("stop MPS control daemon: process %d still runs %s after SIGKILL", d.PID, m.Timeout)
	}
	logger.Info("MPS control daemon killed", "key", key, "pid", d.PID)
	return nil
}

// quit sends the daemon the quit command.
func (m *Manager) quit(ctx context.Context, key string) error {
	ctx, cancel := context.WithTimeout(ctx, m.Timeout)
	defer cancel()
	return quitIn(ctx, m.driverRoot, m.Dir(key))
}

// quitIn sends the quit command to the daemon of directory dir, until ctx
// is done. The driver's client writes it into the control pipe in pipe/
// as root, following whatever is at that path; a container may have put a
// symlink to a host file there, so the command is not sent through one
// (the caller kills the verified daemon instead). A client's container is
// gone by the time its daemon is stopped, so none swaps it meanwhile.
func quitIn(ctx context.Context, driverRoot, dir string) error {
	bin, err := driverrootControl(driverRoot)
	if err != nil {
		return err
	}
	control := filepath.Join(PipeDirIn(dir), controlPipe)
	if fi, err := os.Lstat(control); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("control pipe %s is a symlink (a container replaced it); not writing through it", control)
	}
	env, err := driverroot.ToolEnv(driverRoot, envIn(dir))
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = env
	cmd.Stdin = strings.NewReader("quit\n")
	cmd.WaitDelay = time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// waitGone waits up to Timeout for d to be gone and reports whether it is.
func (m *Manager) waitGone(ctx context.Context, d identity) bool {
	deadline := time.Now().Add(m.Timeout)
	for m.procs().is(d) {
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return !m.procs().is(d)
		case <-time.After(10 * time.Millisecond):
		}
	}
	return true
}

// Claims lists the keys that have a daemon directory or a supervisor,
// sorted.
func (m *Manager) Claims(ctx context.Context) ([]string, error) {
	if err := m.sweepFS(klog.FromContext(ctx)); err != nil {
		klog.FromContext(ctx).Error(err, "Cannot remove the tmpfs of MPS daemons that are gone; they stay mounted until the next start")
	}
	entries, err := os.ReadDir(m.root)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("list MPS daemons: %w", err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	// Supervisors without a directory (their claim's unprepare was cut
	// short) are only found through the Launcher. Not reaching it (the
	// API server away) must not stop a start-up reconcile, which works
	// from the directories: the next one finds them.
	if launched, err := m.launcher().Keys(ctx); err != nil {
		klog.FromContext(ctx).Error(err, "Cannot list the MPS control daemons' supervisors; listing their directories only")
	} else {
		out = append(out, launched...)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
