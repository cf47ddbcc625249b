package prepare

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
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

// BenchmarkConcurrentClaims prepares 56 MIG claims on 8 GPUs at once (seven
// 1g.10gb per GPU, the most an H100 holds) and reports the wall time
// relative to preparing one such claim alone.
func BenchmarkConcurrentClaims(b *testing.B) {
	f := newFixture(b, "dgxh100")
	ctx := context.Background()
	var one, all []time.Duration
	for b.Loop() {
		c := allocated("gpu-0-mig-1g10gb-6")
		start := time.Now()
		if _, err := f.p.Prepare(ctx, c); err != nil {
			b.Fatal(err)
		}
		one = append(one, time.Since(start))
		if err := f.p.Unprepare(ctx, ref(c)); err != nil {
			b.Fatal(err)
		}

		var claims []*resourceapi.ResourceClaim
		for g := 0; g < 8; g++ {
			for s := 0; s < 7; s++ {
				claims = append(claims, allocated(fmt.Sprintf("gpu-%d-mig-1g10gb-%d", g, s)))
			}
		}
		var wg sync.WaitGroup
		start = time.Now()
		for _, c := range claims {
			wg.Go(func() {
				if _, err := f.p.Prepare(ctx, c); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		all = append(all, time.Since(start))
		for _, c := range claims {
			wg.Go(func() {
				if err := f.p.Unprepare(ctx, ref(c)); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
	}
	slices.Sort(one)
	slices.Sort(all)
	o, a := one[len(one)/2], all[len(all)/2]
	b.ReportMetric(float64(o.Microseconds())/1000, "one-ms")
	b.ReportMetric(float64(a.Microseconds())/1000, "56-claims-ms")
	b.ReportMetric(float64(a)/float64(o), "ratio")
}
