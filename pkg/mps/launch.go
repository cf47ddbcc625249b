package mps

import (
	"context"
	"errors"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Daemon is what a Launcher launches a Supervisor for.
type Daemon struct {
	// Key names the daemon: a claim's UID or a shared GPU's daemon key.
	Key string
	// Dir is its directory (Manager.Dir), made before the launch.
	Dir string
	// GPUs are the UUIDs the daemon is given.
	GPUs []string
	// Filesystem is the daemon's tmpfs (fs.go), or empty: its pod must
	// see it, and mount its shm/ at ContainerShmDir.
	Filesystem string
	// SharesOnly says that every device the daemon serves is a share of a
	// shared GPU (Limits.SharesOnly), whose pods may reserve its cost on
	// the node (daemonpod.Launcher.Reserved).
	SharesOnly bool
}

// Launcher runs daemons' supervisors somewhere, restarts one that fails,
// and stops them. Implementations: the plugin's own goroutines (the
// default, see Manager.Launcher), whose daemons end with the plugin's
// container, and package daemonpod, a pod per daemon, which outlives it.
type Launcher interface {
	// Launch makes sure that a supervisor of d runs: one already running
	// for d.Key is kept, so Launch is idempotent.
	Launch(ctx context.Context, d Daemon) error
	// Failure returns why the key's supervisor failed (its daemon would
	// not start, or exited) while it waits to be run again, or nil: a
	// supervisor that runs, or is being started, is not failing.
	Failure(ctx context.Context, key string) error
	// Remove stops the key's supervisor, which stops its daemon, and is
	// not an error for a key without one. stopping reports whether there
	// was one, now told to stop; the daemon may not be gone yet.
	Remove(ctx context.Context, key string) (stopping bool, err error)
	// Keys lists the keys of the supervisors launched on this node.
	Keys(ctx context.Context) ([]string, error)
}

// Backoff of a supervisor restarted in the plugin's process, as the
// kubelet's for a container: doubled from restartBackoff at each failure
// in a row, at most maxRestartBackoff.
const (
	restartBackoff    = time.Second
	maxRestartBackoff = 30 * time.Second
)

// inProcess runs each supervisor in a goroutine of the plugin. Its daemons
// survive the plugin's process (they are in their own session), not its
// container: a plugin run by hand, or the unit tests, not the chart.
type inProcess struct {
	m *Manager

	mu   sync.Mutex
	runs map[string]*inProcessRun
}

type inProcessRun struct {
	cancel context.CancelFunc
	done   chan struct{}
	// failure is why the run's supervisor failed, while it waits to be
	// run again; under mu.
	failure error
}

func (l *inProcess) Launch(ctx context.Context, d Daemon) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r, ok := l.runs[d.Key]; ok {
		select {
		case <-r.done:
		default:
			return nil
		}
	}
	if l.runs == nil {
		l.runs = map[string]*inProcessRun{}
	}
	// The supervisor lives until Remove, not until the request that
	// launched it ends.
	runCtx, cancel := context.WithCancel(klog.NewContext(context.Background(), klog.FromContext(ctx)))
	r := &inProcessRun{cancel: cancel, done: make(chan struct{})}
	l.runs[d.Key] = r
	s := &Supervisor{Dir: d.Dir, DriverRoot: l.m.driverRoot, GPUs: d.GPUs, ProcRoot: l.m.ProcRoot,
		Timeout: l.m.Timeout, writeFile: l.m.writeFile}
	go l.supervise(runCtx, r, s)
	return nil
}

// supervise runs s until ctx is done or its directory is gone, again
// after each failure.
func (l *inProcess) supervise(ctx context.Context, r *inProcessRun, s *Supervisor) {
	defer close(r.done)
	logger := klog.FromContext(ctx)
	backoff := restartBackoff
	for {
		l.mu.Lock()
		r.failure = nil // running again: the last failure is over
		l.mu.Unlock()
		err := s.Run(ctx)
		if err == nil || errors.Is(err, ErrDirectoryGone) || ctx.Err() != nil {
			return
		}
		l.mu.Lock()
		r.failure = err
		l.mu.Unlock()
		logger.Error(err, "MPS control daemon failed; starting it again", "dir", s.Dir, "after", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxRestartBackoff)
	}
}

func (l *inProcess) Failure(_ context.Context, key string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r, ok := l.runs[key]; ok {
		return r.failure
	}
	return nil
}

func (l *inProcess) Remove(_ context.Context, key string) (bool, error) {
	l.mu.Lock()
	r, ok := l.runs[key]
	delete(l.runs, key)
	l.mu.Unlock()
	if !ok {
		return false, nil
	}
	r.cancel()
	<-r.done
	return true, nil
}

func (l *inProcess) Keys(context.Context) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	keys := make([]string, 0, len(l.runs))
	for k := range l.runs {
		keys = append(keys, k)
	}
	return keys, nil
}
