package fleet

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Churn is steady traffic, as a busy cluster sees between bursts: pods of a
// mix of workloads arrive one at a time at a steady rate (Poisson
// arrivals), each runs for a random time once bound (exponential, with the
// given mean), then finishes and is deleted, and its claim is released.
type Churn struct {
	// Mix is each workload's weight among the arrivals.
	Mix []WorkloadWeight
	// Rate is the pods arriving per second.
	Rate float64
	// Lifetime is a pod's mean time running.
	Lifetime time.Duration
	// Duration is how long pods keep arriving.
	Duration time.Duration
	// Seed makes the arrivals, workloads and lifetimes repeatable.
	Seed uint64
}

// WorkloadWeight is one workload's share of a churn's arrivals.
type WorkloadWeight struct {
	Workload string
	Weight   float64
}

// maxChurnArrivals bounds a churn's schedule (Rate × Duration), which is
// drawn up front.
const maxChurnArrivals = 1_000_000

// Validate says what is wrong with a churn's parameters.
func (c Churn) Validate() error {
	switch {
	case len(c.Mix) == 0:
		return fmt.Errorf("churn: no workload mix")
	case !(c.Rate > 0) || math.IsInf(c.Rate, 0):
		return fmt.Errorf("churn %s: rate %v must be a positive number of pods per second", MixString(c.Mix), c.Rate)
	case c.Lifetime <= 0:
		return fmt.Errorf("churn %s: lifetime %v must be positive", MixString(c.Mix), c.Lifetime)
	case c.Duration <= 0:
		return fmt.Errorf("churn %s: duration %v must be positive", MixString(c.Mix), c.Duration)
	case c.Rate*c.Duration.Seconds() > maxChurnArrivals:
		return fmt.Errorf("churn %s: %v pods/s for %v is more than %d pods", MixString(c.Mix), c.Rate, c.Duration, maxChurnArrivals)
	}
	return nil
}

// ParseMix reads "whole=2,mig-1g=1": workloads and their weights.
func ParseMix(s string) ([]WorkloadWeight, error) { return ParseWorkloads("churn mix", s) }

// ParseWorkloads reads "whole=2,mig-1g=0.5": workloads of Workloads, each
// with a positive number (a churn's weight, a burst's pods per node); what
// names the list in errors.
func ParseWorkloads(what, s string) ([]WorkloadWeight, error) {
	var out []WorkloadWeight
	for _, part := range strings.Split(s, ",") {
		w, n, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("%s %q: want workload=number", what, part)
		}
		weight, err := strconv.ParseFloat(n, 64)
		if err != nil || !(weight > 0) || math.IsInf(weight, 0) {
			return nil, fmt.Errorf("%s %q: the number must be positive", what, part)
		}
		if _, err := template(w); err != nil {
			return nil, fmt.Errorf("%s %q: %w", what, part, err)
		}
		out = append(out, WorkloadWeight{Workload: w, Weight: weight})
	}
	return out, nil
}

// MixString is a mix as ParseMix reads it.
func MixString(mix []WorkloadWeight) string {
	parts := make([]string, len(mix))
	for i, m := range mix {
		parts[i] = m.Workload + "=" + strconv.FormatFloat(m.Weight, 'g', -1, 64)
	}
	return strings.Join(parts, ",")
}

// ChurnResult is what one churn measured.
type ChurnResult struct {
	Mix                       string
	Rate                      float64
	LifetimeSeconds, Duration float64
	// Created counts the pods that arrived, Bound those the scheduler
	// bound (all of them, unless the fleet could not keep up).
	Created, Bound int
	// BindP50, BindP99 are quantiles of each pod's time from creation to
	// bound, in seconds, as the harness saw it: what the pod's user waits.
	BindP50, BindP99 float64
	// SchedulerQuantiles are over the churn.
	SchedulerQuantiles
	// MaxRunning is the most pods bound and not yet finished at once.
	MaxRunning int
	// Checks counts the over-commit checks made while pods were running;
	// Violations are what they found.
	Checks     int
	Violations []string
	// Released says that every claim was gone after the last pod.
	Released bool
}

// runChurn runs one churn: arrivals for its duration, every pod finished
// once its lifetime has passed after it was bound, the allocations checked
// every checkEvery while pods run; then it waits for the last pods to be
// bound, finishes them and waits for their claims to be released.
func (h *harness) runChurn(ctx context.Context, c Churn, checkEvery, timeout time.Duration) (ChurnResult, error) {
	logger := klog.FromContext(ctx)
	res := ChurnResult{Mix: MixString(c.Mix), Rate: c.Rate, LifetimeSeconds: c.Lifetime.Seconds(), Duration: c.Duration.Seconds()}
	if err := c.Validate(); err != nil {
		return res, err
	}
	// The arrivals and the finishing stop, and are waited for, whatever
	// way this returns.
	ctx, cancel := context.WithCancel(ctx)
	arrivalsCtx, stopArrivals := context.WithCancel(ctx)
	var workers sync.WaitGroup
	defer func() { stopArrivals(); cancel(); workers.Wait() }()
	mark, err := h.schedulerHistograms(ctx)
	if err != nil {
		return res, err
	}
	rng := rand.New(rand.NewPCG(c.Seed, 0x636875726e))
	var total float64
	for _, m := range c.Mix {
		total += m.Weight
	}
	pick := func() string {
		x := rng.Float64() * total
		for _, m := range c.Mix {
			if x < m.Weight {
				return m.Workload
			}
			x -= m.Weight
		}
		return c.Mix[len(c.Mix)-1].Workload
	}

	type churnPod struct {
		name     string
		created  time.Time
		lifetime time.Duration
		finished bool
	}
	var (
		mu      sync.Mutex
		pods    []*churnPod
		created = make(chan error, 1)
	)
	// Arrivals. The schedule is drawn up front, so that the workloads and
	// lifetimes do not depend on how fast the API server answers.
	type arrival struct {
		at       time.Duration
		workload string
		lifetime time.Duration
	}
	var schedule []arrival
	for at := 0.0; ; {
		at += rng.ExpFloat64() / c.Rate
		if at >= c.Duration.Seconds() {
			break
		}
		schedule = append(schedule, arrival{
			at: time.Duration(at * float64(time.Second)), workload: pick(),
			lifetime: time.Duration(rng.ExpFloat64() * float64(c.Lifetime)),
		})
	}
	run := h.bursts
	h.bursts++
	start := time.Now()
	workers.Add(1)
	go func() {
		defer workers.Done()
		sem := make(chan struct{}, 16)
		var wg sync.WaitGroup
		var first error
		var errMu sync.Mutex
		for i, a := range schedule {
			select {
			case <-arrivalsCtx.Done():
			case <-time.After(time.Until(start.Add(a.at))):
			}
			if arrivalsCtx.Err() != nil {
				break
			}
			select {
			case <-arrivalsCtx.Done():
			case sem <- struct{}{}:
			}
			if arrivalsCtx.Err() != nil {
				break
			}
			// Created is stamped once the harness sends the pod: time
			// queued here is the harness's, not the cluster's.
			p := &churnPod{name: fmt.Sprintf("churn-%d-%d-%s", run, i, a.workload), created: time.Now(), lifetime: a.lifetime}
			mu.Lock()
			pods = append(pods, p)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				if err := h.createPod(arrivalsCtx, p.name, a.workload); err != nil {
					errMu.Lock()
					if first == nil {
						first = err
					}
					errMu.Unlock()
				}
			}()
		}
		wg.Wait()
		created <- first
	}()

	// Finishing, checking, counting, until the arrivals are done and every
	// pod that arrived is bound (or timeout passed after the arrivals).
	var (
		arrivalsDone bool
		doneAt       time.Time
		lastCheck    = time.Now()
		finishErr    error
		finishMu     sync.Mutex
		seen         = map[string]bool{}
	)
	finishOne := func(name string) {
		defer workers.Done()
		if err := h.finishPods(ctx, []string{name}); err != nil {
			finishMu.Lock()
			if finishErr == nil {
				finishErr = err
			}
			finishMu.Unlock()
		}
	}
	for {
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case err := <-created:
			if err != nil && arrivalsCtx.Err() == nil {
				return res, fmt.Errorf("churn %s: %w", res.Mix, err)
			}
			arrivalsDone, doneAt = true, time.Now()
		case <-time.After(200 * time.Millisecond):
		}
		mu.Lock()
		current := append([]*churnPod(nil), pods...)
		mu.Unlock()
		running, unbound := 0, 0
		now := time.Now()
		for _, p := range current {
			if p.finished {
				continue
			}
			at, ok := h.pods.boundTime(p.name)
			if !ok {
				unbound++
				continue
			}
			running++
			if now.Sub(at) >= p.lifetime {
				p.finished = true
				workers.Add(1)
				go finishOne(p.name)
			}
		}
		res.MaxRunning = max(res.MaxRunning, running)
		if running > 0 && time.Since(lastCheck) >= checkEvery {
			lastCheck = time.Now()
			problems, err := h.checkAllocations(ctx)
			if err != nil {
				return res, err
			}
			res.Checks++
			for _, v := range problems {
				if !seen[v] {
					seen[v] = true
					res.Violations = append(res.Violations, v)
				}
			}
		}
		// Past its arrivals and the timeout the churn ends even if an
		// arrival is stuck in the API server: what was not bound counts.
		late := time.Since(start) > c.Duration+timeout
		if late && !arrivalsDone {
			stopArrivals()
		}
		if arrivalsDone && (unbound == 0 || late || time.Since(doneAt) > timeout) {
			if unbound > 0 {
				logger.Info("Churn timed out", "mix", res.Mix, "unbound", unbound)
			}
			break
		}
	}
	// The arrivals are done (the loop ends only then), so this waits for
	// the pods being finished, and pods has no writer left.
	workers.Wait()
	if finishErr != nil {
		return res, finishErr
	}
	names := make([]string, len(pods))
	var latencies []float64
	for i, p := range pods {
		names[i] = p.name
		if at, ok := h.pods.boundTime(p.name); ok {
			latencies = append(latencies, max(at.Sub(p.created).Seconds(), 0))
		}
	}
	res.Created, res.Bound = len(pods), len(latencies)
	sort.Float64s(latencies)
	res.BindP50, res.BindP99 = quantile(latencies, 0.5), quantile(latencies, 0.99)
	if res.SchedulerQuantiles, err = h.schedulerQuantilesSince(ctx, mark); err != nil {
		return res, err
	}
	sort.Strings(res.Violations)
	// The pods still running (and any never bound) finish now.
	if res.Released, err = h.finish(ctx, names, timeout); err != nil {
		return res, err
	}
	logger.Info("Churn done", "mix", res.Mix, "created", res.Created, "bound", res.Bound, "bindP99", res.BindP99,
		"maxRunning", res.MaxRunning, "violations", len(res.Violations), "released", res.Released)
	return res, nil
}

// quantile is the q-quantile of sorted values (nearest rank); 0 for none.
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
