package driver

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/health"
)

// lateEvents is the node's GPUs with an NVML event watch that reports an
// XID late: once the Driver's context has ended (a handover), and only
// when the test releases it, as a watch blocked in NVML when the plugin
// is told to stop.
type lateEvents struct {
	GPUs
	uuid string
	// late is closed when the watch saw its context end; release lets it
	// report the XID; handled is closed once the report returned.
	late, release, handled chan struct{}
}

func (l *lateEvents) WatchEvents(ctx context.Context, handle func(gpu.Event)) error {
	<-ctx.Done()
	close(l.late)
	<-l.release
	handle(gpu.Event{Kind: gpu.EventXID, GPUUUID: l.uuid, XID: 79, GIID: -1, CIID: -1})
	close(l.handled)
	return ctx.Err()
}

// TestStoppedDriverWritesNoHealthState: at a handover the runner releases
// the node once the Driver is done (serveTerm), and the successor then
// loads health.json. So when Done is closed, every writer of the health
// state must have finished: the health goroutines (here the event watch,
// reporting an XID after the Driver was told to stop) are waited for, what
// they saw is saved before Done, and nothing is written afterwards, not
// even by a caller the Driver did not start. Before, Done was closed with
// the watch still running, and its XID was written after the successor
// could have loaded the file.
func TestStoppedDriverWritesNoHealthState(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	f := newNodeFixture(t)
	cfg := f.config()
	inv, err := cfg.GPUs.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l := &lateEvents{GPUs: cfg.GPUs, uuid: inv.GPUs[0].UUID,
		late: make(chan struct{}), release: make(chan struct{}), handled: make(chan struct{})}
	cfg.GPUs = l
	d, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	stop(errHandedOver)
	select {
	case <-l.late:
	case <-time.After(10 * time.Second):
		t.Fatal("the event watch did not see the Driver stop")
	}
	go func() {
		// Late, but not so late that a Driver waiting for the watch
		// would fail the test: it must wait, however long.
		time.Sleep(100 * time.Millisecond)
		close(l.release)
	}()
	select {
	case <-d.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the Driver did not stop")
	}
	path := cfg.HealthStorePath
	atDone, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	select {
	case <-l.handled:
	case <-time.After(10 * time.Second):
		t.Fatal("the late XID was never reported")
	}
	// A caller the Driver did not start (a stray callback) changes
	// nothing on disk either.
	d.monitor.Observe(ctx, gpu.Event{Kind: gpu.EventDoubleBitECC, GPUUUID: l.uuid, GIID: -1, CIID: -1})
	after, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if !bytes.Equal(atDone, after) {
		t.Errorf("%s was written after the Driver was done:\nat Done: %s\nafter:   %s", filepath.Base(path), atDone, after)
	}
	if !bytes.Contains(atDone, []byte(`"key":"xid"`)) {
		t.Errorf("the XID the watch reported while the Driver stopped was not saved before Done: %s", atDone)
	}
	// The successor finds it.
	saved, err := health.NewStore(path).Load()
	if err != nil || len(saved.Conditions) != 1 || saved.Conditions[0].Value != "79" {
		t.Errorf("the successor loads %+v (%v), want the XID", saved, err)
	}
}
