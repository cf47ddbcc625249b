// Package nodescfg keeps the nodes.cfg of every domain daemon prepared on
// this node equal to its ComputeDomain's status: the IP addresses of the
// domain's nodes in this node's clique, ordered by their index, one per
// line. The controller writes the status; the daemon restarts its IMEX
// daemon when the file changes.
//
// Work is queued per domain (a change of the domain, a daemon claim
// prepared) and every prepared domain is also synced periodically, so a
// failed write or a missed event is repaired.
package nodescfg

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"slices"
	"time"

	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
)

// DefaultResync is how often every prepared domain is synced.
const DefaultResync = 30 * time.Second

// Domains finds ComputeDomains by UID (nil, nil: none).
type Domains interface {
	Get(uid string) (*v1beta1.ComputeDomain, error)
}

// Daemons are the domains with a prepared daemon claim on the node, with
// the clique each was prepared in.
type Daemons interface {
	PreparedDaemons() map[string]string
}

// Writer replaces a domain's nodes.cfg, reporting whether it changed.
type Writer interface {
	WriteNodes(domainUID string, addrs []string) (bool, error)
}

// Syncer keeps the nodes.cfg files.
type Syncer struct {
	domains Domains
	daemons Daemons
	writer  Writer
	resync  time.Duration
	queue   workqueue.TypedRateLimitingInterface[string]
}

// New returns a Syncer; resync 0 is DefaultResync.
func New(domains Domains, daemons Daemons, writer Writer, resync time.Duration) *Syncer {
	if resync <= 0 {
		resync = DefaultResync
	}
	return &Syncer{domains: domains, daemons: daemons, writer: writer, resync: resync,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "compute-domain-nodes-cfg"})}
}

// Enqueue asks for a domain's nodes.cfg to be synced.
func (s *Syncer) Enqueue(domainUID string) { s.queue.Add(domainUID) }

// Run syncs until ctx ends.
func (s *Syncer) Run(ctx context.Context) {
	go func() {
		<-ctx.Done()
		s.queue.ShutDown()
	}()
	go func() {
		ticker := time.NewTicker(s.resync)
		defer ticker.Stop()
		for {
			for uid := range s.daemons.PreparedDaemons() {
				s.queue.Add(uid)
			}
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
			}
		}
	}()
	for s.processNext(ctx) {
	}
}

func (s *Syncer) processNext(ctx context.Context) bool {
	uid, quit := s.queue.Get()
	if quit {
		return false
	}
	defer s.queue.Done(uid)
	if err := s.Sync(ctx, uid); err != nil {
		klog.FromContext(ctx).Error(err, "Writing nodes.cfg failed; retrying", "domain", uid)
		s.queue.AddRateLimited(uid)
		return true
	}
	s.queue.Forget(uid)
	return true
}

// Sync writes one domain's nodes.cfg if its daemon claim is prepared here
// and the domain exists.
func (s *Syncer) Sync(ctx context.Context, domainUID string) error {
	clique, ok := s.daemons.PreparedDaemons()[domainUID]
	if !ok {
		return nil
	}
	cd, err := s.domains.Get(domainUID)
	if err != nil {
		return err
	}
	if cd == nil {
		return nil // deleted: its daemons go, and their claims with them
	}
	addrs := Addresses(cd, clique)
	changed, err := s.writer.WriteNodes(domainUID, addrs)
	if err != nil {
		return fmt.Errorf("ComputeDomain %s/%s: %w", cd.Namespace, cd.Name, err)
	}
	if changed {
		klog.FromContext(ctx).Info("Wrote nodes.cfg", "domain", klog.KObj(cd), "domainUID", domainUID, "clique", clique, "nodes", addrs)
	}
	return nil
}

// Addresses are the IP addresses of the domain's nodes in clique, ordered
// by index (then name). Entries whose address is not an IP address are
// left out, as are repeated addresses: each becomes a line of the IMEX
// daemon's configuration.
func Addresses(cd *v1beta1.ComputeDomain, clique string) []string {
	var nodes []*v1beta1.ComputeDomainNode
	for _, n := range cd.Status.Nodes {
		if n != nil && n.CliqueID == clique && net.ParseIP(n.IPAddress) != nil {
			nodes = append(nodes, n)
		}
	}
	slices.SortStableFunc(nodes, func(a, b *v1beta1.ComputeDomainNode) int {
		return cmp.Or(cmp.Compare(a.Index, b.Index), cmp.Compare(a.Name, b.Name))
	})
	out := make([]string, 0, len(nodes))
	for _, n := range nodes {
		if !slices.Contains(out, n.IPAddress) {
			out = append(out, n.IPAddress)
		}
	}
	return out
}
