package prepare

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
)

// BenchmarkPrepare measures one claim's prepare in process on the
// simulated DGX H100 with real files (checkpoint fsynced, CDI spec written
// and validated). Each op prepares and then unprepares; the reported
// percentiles are of the prepare alone.
func BenchmarkPrepare(b *testing.B) {
	for _, tc := range []struct{ name, device, config string }{
		{"whole-gpu", "gpu-2", ""},
		{"whole-gpu-time-slice", "gpu-2", longTimeSlice},
		{"whole-gpu-mps", "gpu-2", mpsConfig},
		{"mig-1g", "gpu-2-mig-1g10gb-6", ""},
		{"mig-3g", "gpu-2-mig-3g40gb-4", ""},
	} {
		b.Run(tc.name, func(b *testing.B) {
			measurePrepare(b, newFixture(b, "dgxh100"), func() *resourceapi.ResourceClaim {
				if tc.config != "" {
					return withConfig(tc.device, tc.config)
				}
				return allocated(tc.device)
			})
		})
	}
}

// BenchmarkPrepareShare measures the prepare of one share of a shared GPU:
// "first-share" starts the GPU's MPS daemon (and its unprepare stops it),
// "next-share" joins a daemon that another share keeps running.
func BenchmarkPrepareShare(b *testing.B) {
	for _, keep := range []bool{false, true} {
		name := "first-share"
		if keep {
			name = "next-share"
		}
		b.Run(name, func(b *testing.B) {
			f := newFixture(b, "dgxh100")
			ctx := context.Background()
			if keep {
				holder := sharesAllocated(shareOf{"gpu-2-shared", "00000000-0000-4000-8000-000000000000", "10Gi", "0"})
				if _, err := f.p.Prepare(ctx, holder); err != nil {
					b.Fatal(err)
				}
			}
			n := 0
			measurePrepare(b, f, func() *resourceapi.ResourceClaim {
				n++
				return sharesAllocated(shareOf{"gpu-2-shared", fmt.Sprintf("%08d-0000-4000-8000-000000000001", n), "20Gi", "25"})
			})
		})
	}
}

// measurePrepare prepares and unprepares a new claim per op and reports
// the percentiles of the prepares.
func measurePrepare(b *testing.B, f *fixture, newClaim func() *resourceapi.ResourceClaim) {
	ctx := context.Background()
	var lat []time.Duration
	for b.Loop() {
		c := newClaim()
		start := time.Now()
		if _, err := f.p.Prepare(ctx, c); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		if err := f.p.Unprepare(ctx, ref(c)); err != nil {
			b.Fatal(err)
		}
	}
	reportPercentiles(b, lat)
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// BenchmarkBurst prepares claims that arrive at once, as the pods of one job
// do, on a simulated DGX H100 with hardware's timing (sim.HardwareLatencies:
// creating and destroying GPU and compute instances takes time, the changes
// of one GPU queue behind each other and those of different GPUs overlap).
//
// "mig-56" is seven 1g.10gb claims on each of the 8 GPUs. In the same run
// it measures one claim alone, the seven claims of one GPU alone (the
// per-GPU floor: the hardware cannot do them faster) and the 56 with every
// prepare under one node-wide lock, as NVIDIA's driver prepares;
// "mig-56-instant-hardware" is the same without latencies, the driver's own
// cost. "mixed" is two whole GPUs, seven 1g.10gb on each of four GPUs and
// four 10Gi shares on each of the last two (38 claims). Metrics, medians over the
// runs: wall times (ms), vs-floor (burst / per-GPU floor), vs-node-lock
// (node-wide lock / burst), and each claim's time from the burst's start
// to its prepare's return (p50, p99). Run it with `make bench` or
//
//	go test -run XXX -bench BenchmarkBurst -benchtime 3x ./pkg/prepare/
func BenchmarkBurst(b *testing.B) {
	for _, tc := range []struct{ name, latency string }{
		{"mig-56", "hardware"},
		// The driver's own cost: what remains when the hardware is instant.
		{"mig-56-instant-hardware", "off"},
	} {
		b.Run(tc.name, func(b *testing.B) { benchmarkMIGBurst(b, tc.latency) })
	}
	b.Run("mixed", func(b *testing.B) {
		// GPUs 0, 1, 6 and 7 are used whole or shared: MIG mode off.
		f := burstFixture(b, "hardware", []int{2, 3, 4, 5})
		var claims []func() *resourceapi.ResourceClaim
		for _, g := range []int{0, 1} {
			claims = append(claims, func() *resourceapi.ResourceClaim { return allocated(fmt.Sprintf("gpu-%d", g)) })
		}
		for g := 2; g < 6; g++ {
			for s := 0; s < 7; s++ {
				claims = append(claims, func() *resourceapi.ResourceClaim { return allocated(fmt.Sprintf("gpu-%d-mig-1g10gb-%d", g, s)) })
			}
		}
		n := 0
		for _, g := range []int{6, 7} {
			for range 4 {
				claims = append(claims, func() *resourceapi.ResourceClaim {
					n++
					return sharesAllocated(shareOf{fmt.Sprintf("gpu-%d-shared", g), fmt.Sprintf("%08d-0000-4000-8000-000000000002", n), "10Gi", "25"})
				})
			}
		}
		var floor, all, locked, each []time.Duration
		for b.Loop() {
			floor = append(floor, f.burst(b, migClaims(2, 1, 7), nil).wall)
			r := f.burst(b, claims, nil)
			all, each = append(all, r.wall), append(each, r.each...)
			locked = append(locked, f.burst(b, claims, &sync.Mutex{}).wall)
		}
		fl, a, l := median(floor), median(all), median(locked)
		b.ReportMetric(ms(fl), "floor-7-ms")
		b.ReportMetric(ms(a), "38-ms")
		b.ReportMetric(ms(l), "node-lock-ms")
		b.ReportMetric(float64(a)/float64(fl), "vs-floor")
		b.ReportMetric(float64(l)/float64(a), "vs-node-lock")
		reportPercentiles(b, each)
	})
}

func benchmarkMIGBurst(b *testing.B, latency string) {
	f := burstFixture(b, latency, nil)
	var one, floor, all, locked []time.Duration
	var each []time.Duration
	for b.Loop() {
		one = append(one, f.burst(b, migClaims(0, 1, 1), nil).wall)
		floor = append(floor, f.burst(b, migClaims(0, 1, 7), nil).wall)
		r := f.burst(b, migClaims(0, 8, 7), nil)
		all, each = append(all, r.wall), append(each, r.each...)
		locked = append(locked, f.burst(b, migClaims(0, 8, 7), &sync.Mutex{}).wall)
	}
	o, fl, a, l := median(one), median(floor), median(all), median(locked)
	b.ReportMetric(ms(o), "one-ms")
	b.ReportMetric(ms(fl), "floor-7-ms")
	b.ReportMetric(ms(a), "56-ms")
	b.ReportMetric(ms(l), "node-lock-ms")
	b.ReportMetric(float64(a)/float64(fl), "vs-floor")
	b.ReportMetric(float64(l)/float64(a), "vs-node-lock")
	reportPercentiles(b, each)
}

// burstFixture is a DGX H100 fixture with the given simulated latencies
// (sim.LatencyEnv), the GPUs in
// migGPUs (nil: all) already in MIG mode and the others not, as an
// administrator leaves them: a burst measures the instances, not the one
// mode change of a GPU's life.
func burstFixture(b *testing.B, latency string, migGPUs []int) *burstNode {
	b.Setenv(sim.LatencyEnv, latency)
	f := newFixture(b, "dgxh100")
	admin, err := sim.Open("dgxh100", f.simDir)
	if err != nil {
		b.Fatal(err)
	}
	admin.SetLatencies(sim.Latencies{})
	for g := range 8 {
		if err := admin.SetMIGMode(g, migGPUs == nil || slices.Contains(migGPUs, g)); err != nil {
			b.Fatal(err)
		}
	}
	return &burstNode{f}
}

type burstNode struct{ *fixture }

// migClaims returns, for GPUs first to first+gpus-1, perGPU 1g.10gb claims
// each.
func migClaims(first, gpus, perGPU int) []func() *resourceapi.ResourceClaim {
	var out []func() *resourceapi.ResourceClaim
	for g := first; g < first+gpus; g++ {
		for s := range perGPU {
			out = append(out, func() *resourceapi.ResourceClaim { return allocated(fmt.Sprintf("gpu-%d-mig-1g10gb-%d", g, s)) })
		}
	}
	return out
}

type burstResult struct {
	wall time.Duration
	// each is every claim's time from the burst's start to its prepare's
	// return.
	each []time.Duration
}

// burst prepares the claims at once, each prepare under lock when it is
// not nil, and then unprepares them (untimed).
func (n *burstNode) burst(b *testing.B, newClaims []func() *resourceapi.ResourceClaim, lock *sync.Mutex) burstResult {
	b.StopTimer()
	ctx := context.Background()
	claims := make([]*resourceapi.ResourceClaim, len(newClaims))
	for i, c := range newClaims {
		claims[i] = c()
	}
	res := burstResult{each: make([]time.Duration, len(claims))}
	var wg sync.WaitGroup
	b.StartTimer()
	start := time.Now()
	for i, c := range claims {
		wg.Go(func() {
			if lock != nil {
				lock.Lock()
				defer lock.Unlock()
			}
			if _, err := n.p.Prepare(ctx, c); err != nil {
				b.Error(err)
			}
			res.each[i] = time.Since(start)
		})
	}
	wg.Wait()
	res.wall = time.Since(start)
	b.StopTimer()
	for _, c := range claims {
		wg.Go(func() {
			if err := n.p.Unprepare(ctx, ref(c)); err != nil {
				b.Error(err)
			}
		})
	}
	wg.Wait()
	b.StartTimer()
	return res
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
