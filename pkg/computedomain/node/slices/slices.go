// Package slices publishes the node's pool of the ComputeDomain driver: on
// a node whose GPUs are in an NVLink fabric clique, the two devices
// channel-0 and daemon-0, each allocatable many times (the node plugin,
// not the scheduler, gives each domain its own kernel channel), with
// attributes type, id and cliqueID; on any other node an empty pool.
//
// The clique is re-read periodically: fabric registration can complete
// after the plugin started, and a node's pool follows it.
package slices

import (
	"context"
	"sync"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// DefaultInterval is how often the clique is re-read.
const DefaultInterval = 30 * time.Second

// CliqueFunc returns the node's "<cluster UUID>.<clique ID>", or "" when
// its GPUs are in no (complete) NVLink fabric.
type CliqueFunc func() (string, error)

// Publisher makes slices the node's pool (pkg/publish.Publisher).
type Publisher interface {
	Publish(ctx context.Context, slices []resourceslice.Slice) (bool, error)
}

// Devices are the devices a node of clique publishes; none without one.
func Devices(clique string) []resourceapi.Device {
	if clique == "" {
		return nil
	}
	dev := func(name, typ string) resourceapi.Device {
		return resourceapi.Device{
			Name:                     name,
			AllowMultipleAllocations: ptr.To(true),
			Attributes: map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
				names.AttrType:     {StringValue: ptr.To(typ)},
				names.AttrID:       {IntValue: ptr.To[int64](0)},
				names.AttrCliqueID: {StringValue: ptr.To(clique)},
			},
		}
	}
	return []resourceapi.Device{dev(names.ChannelDevice, names.TypeChannel), dev(names.DomainDaemonDevice, names.TypeDomainDaemon)}
}

// Slices is the pool of a node of clique: one slice, empty without clique.
func Slices(clique string) []resourceslice.Slice {
	return []resourceslice.Slice{{Devices: Devices(clique)}}
}

// Publishing keeps the pool equal to the clique last read.
type Publishing struct {
	clique    CliqueFunc
	publisher Publisher
	interval  time.Duration

	mu      sync.Mutex
	current string
	read    bool // the clique was read at least once
}

// New returns a Publishing; interval 0 is DefaultInterval.
func New(clique CliqueFunc, publisher Publisher, interval time.Duration) *Publishing {
	if interval <= 0 {
		interval = DefaultInterval
	}
	return &Publishing{clique: clique, publisher: publisher, interval: interval}
}

// CliqueID is the clique as last published ("" for none).
func (p *Publishing) CliqueID() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.current
}

// Refresh reads the clique and republishes when it changed. A failed read
// keeps what was published (an empty pool before the first good read).
func (p *Publishing) Refresh(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	clique, err := p.clique()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		logger.Error(err, "Reading the node's NVLink clique failed; keeping the published pool", "clique", p.current)
		if p.read {
			return nil
		}
		clique = ""
	}
	if _, err := p.publisher.Publish(ctx, Slices(clique)); err != nil {
		return err
	}
	if clique != p.current || !p.read {
		logger.Info("Published the node's ComputeDomain devices", "clique", clique, "devices", len(Devices(clique)))
	}
	p.current, p.read = clique, err == nil || p.read
	return nil
}

// Run refreshes every interval until ctx ends.
func (p *Publishing) Run(ctx context.Context) {
	ticker := time.NewTicker(p.interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			if err := p.Refresh(ctx); err != nil {
				klog.FromContext(ctx).Error(err, "Publishing the node's ComputeDomain devices failed; retrying")
			}
		}
	}
}
