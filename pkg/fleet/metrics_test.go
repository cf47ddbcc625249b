package fleet

import (
	"math"
	"testing"
)

const exposition = `# HELP scheduler_scheduling_attempt_duration_seconds x
scheduler_scheduling_attempt_duration_seconds_bucket{profile="default-scheduler",result="scheduled",le="0.01"} 2
scheduler_scheduling_attempt_duration_seconds_bucket{profile="default-scheduler",result="scheduled",le="0.1"} 8
scheduler_scheduling_attempt_duration_seconds_bucket{profile="default-scheduler",result="scheduled",le="1"} 10
scheduler_scheduling_attempt_duration_seconds_bucket{profile="default-scheduler",result="scheduled",le="+Inf"} 10
scheduler_scheduling_attempt_duration_seconds_bucket{profile="default-scheduler",result="unschedulable",le="0.01"} 5
scheduler_scheduling_attempt_duration_seconds_bucket{profile="default-scheduler",result="unschedulable",le="+Inf"} 5
etcd_mvcc_db_total_size_in_use_in_bytes 4096
`

func TestHistogram(t *testing.T) {
	h, err := parseHistogram(exposition, "scheduler_scheduling_attempt_duration_seconds", `result="scheduled"`)
	if err != nil {
		t.Fatal(err)
	}
	if h.Count != 10 {
		t.Fatalf("count %v, want 10 (the scheduled series only)", h.Count)
	}
	before := Histogram{Buckets: map[float64]float64{0.01: 2, 0.1: 2, 1: 2, math.Inf(1): 2}, Count: 2}
	for _, tc := range []struct {
		name string
		h    Histogram
		q    float64
		want float64
	}{
		{"median within the second bucket", h, 0.5, 0.01 + 0.09*(5-2)/6},
		{"p99 within the third bucket", h, 0.99, 0.1 + 0.9*(9.9-8)/2},
		{"low quantile within the first bucket", h, 0.1, 0.005},
		{"since before: the first bucket is empty", h.Sub(before), 0.5, 0.01 + 0.09*(4-0)/6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.h.Quantile(tc.q); math.Abs(got-tc.want) > 1e-9 {
				t.Errorf("quantile %v = %v, want %v", tc.q, got, tc.want)
			}
		})
	}
	if q := (Histogram{}).Quantile(0.5); q != 0 {
		t.Errorf("quantile without observations = %v, want 0", q)
	}
	if g, err := gauge(exposition, "etcd_mvcc_db_total_size_in_use_in_bytes"); err != nil || g != 4096 {
		t.Errorf("gauge = %v, %v; want 4096", g, err)
	}
}

func TestVmRSS(t *testing.T) {
	got, err := vmRSS("Name:\tetcd\nVmRSS:\t   2048 kB\nVmSwap:\t0 kB\n")
	if err != nil || got != 2048<<10 {
		t.Errorf("vmRSS = %d, %v; want %d", got, err, 2048<<10)
	}
	if _, err := vmRSS("Name:\tetcd\n"); err == nil {
		t.Error("vmRSS without the line: no error")
	}
}
