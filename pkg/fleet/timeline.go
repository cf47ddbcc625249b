package fleet

import (
	"sync"
	"time"
)

// timeline records when things first happened during a run, by event and
// by key (a node, a pod), so that a milestone is the moment the last of a
// set of keys saw an event.
type timeline struct {
	start time.Time

	mu     sync.Mutex
	events map[string]map[string]time.Time
}

func newTimeline(start time.Time) *timeline {
	return &timeline{start: start, events: map[string]map[string]time.Time{}}
}

// restart makes t's times count from start.
func (t *timeline) restart(start time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.start = start
}

// mark records event for key at now, unless it was recorded before.
func (t *timeline) mark(event, key string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.events[event]
	if m == nil {
		m = map[string]time.Time{}
		t.events[event] = m
	}
	if _, seen := m[key]; !seen {
		m[key] = now
	}
}

// count is how many keys saw event.
func (t *timeline) count(event string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.events[event])
}

// has reports whether key saw event.
func (t *timeline) has(event, key string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.events[event][key]
	return ok
}

// first and last are the seconds from start to the first and the last key
// that saw event, when at least want keys saw it (want 0: any number
// but at least one); -1 otherwise.
func (t *timeline) first(event string, want int) float64 { return t.edge(event, want, false) }
func (t *timeline) last(event string, want int) float64  { return t.edge(event, want, true) }

func (t *timeline) edge(event string, want int, last bool) float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.events[event]
	if len(m) == 0 || len(m) < want {
		return -1
	}
	var edge time.Time
	for _, at := range m {
		if edge.IsZero() || (last && at.After(edge)) || (!last && at.Before(edge)) {
			edge = at
		}
	}
	return edge.Sub(t.start).Seconds()
}
