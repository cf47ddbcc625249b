package prepare

import (
	"slices"
	"sort"
	"sync"

	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
)

// locks are the Preparer's per-claim and per-GPU locks; guarded by the
// Preparer's mu. A claim's lock lives only while someone holds or waits
// for it, so the map does not grow with every claim the node ever saw;
// GPUs are few and fixed.
type locks struct {
	claims map[string]*claimLock
	gpus   map[string]*sync.Mutex
}

type claimLock struct {
	sync.Mutex
	users int // holders and waiters; guarded by the Preparer's mu
}

func (l *locks) init() {
	l.claims = map[string]*claimLock{}
	l.gpus = map[string]*sync.Mutex{}
}

// lockClaim serialises work on one claim (the kubelet may retry while a
// call is still running).
func (p *Preparer) lockClaim(uid string) func() {
	p.mu.Lock()
	l, ok := p.locks.claims[uid]
	if !ok {
		l = &claimLock{}
		p.locks.claims[uid] = l
	}
	l.users++
	p.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		p.mu.Lock()
		defer p.mu.Unlock()
		if l.users--; l.users == 0 {
			delete(p.locks.claims, uid)
		}
	}
}

// lockGPUs takes the locks of every GPU the claim uses, in a fixed order so
// that two claims can never wait for each other.
func (p *Preparer) lockGPUs(rec *checkpoint.Claim) func() {
	var uuids []string
	for _, d := range rec.Devices {
		uuids = append(uuids, d.GPUUUID)
	}
	sort.Strings(uuids)
	uuids = slices.Compact(uuids)
	p.mu.Lock()
	held := make([]*sync.Mutex, len(uuids))
	for i, u := range uuids {
		l, ok := p.locks.gpus[u]
		if !ok {
			l = &sync.Mutex{}
			p.locks.gpus[u] = l
		}
		held[i] = l
	}
	p.mu.Unlock()
	for _, l := range held {
		l.Lock()
	}
	return func() {
		for i := len(held) - 1; i >= 0; i-- {
			held[i].Unlock()
		}
	}
}
