package fleet

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseMix(t *testing.T) {
	cases := []struct {
		in, want, err string
	}{
		{in: "whole=1", want: "whole=1"},
		{in: "whole=2,mig-1g=0.5,share=1", want: "whole=2,mig-1g=0.5,share=1"},
		{in: "whole", err: "want workload=number"},
		{in: "whole=0", err: "must be positive"},
		{in: "whole=-1", err: "must be positive"},
		{in: "whole=+Inf", err: "must be positive"},
		{in: "whole=NaN", err: "must be positive"},
		{in: "gpu=1", err: `unknown workload "gpu"`},
		{in: "", err: "want workload=number"},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			mix, err := ParseMix(c.in)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("ParseMix(%q) = %v, %v; want an error with %q", c.in, mix, err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := MixString(mix); got != c.want {
				t.Errorf("MixString(ParseMix(%q)) = %q, want %q", c.in, got, c.want)
			}
		})
	}
}

func TestQuantile(t *testing.T) {
	sorted := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	cases := []struct {
		values []float64
		q      float64
		want   float64
	}{
		{nil, 0.5, 0},
		{[]float64{7}, 0.99, 7},
		{sorted, 0.5, 5},
		{sorted, 0.99, 10},
		{sorted, 0.1, 1},
		{sorted, 0, 1},
	}
	for _, c := range cases {
		if got := quantile(c.values, c.q); got != c.want {
			t.Errorf("quantile(%v, %v) = %v, want %v", c.values, c.q, got, c.want)
		}
	}
}

func TestChurnValidate(t *testing.T) {
	mix := []WorkloadWeight{{Workload: "whole", Weight: 1}}
	good := Churn{Mix: mix, Rate: 5, Lifetime: 30 * time.Second, Duration: 2 * time.Minute}
	cases := []struct {
		name   string
		change func(*Churn)
		err    string
	}{
		{"valid", func(*Churn) {}, ""},
		{"no mix", func(c *Churn) { c.Mix = nil }, "no workload mix"},
		{"zero rate", func(c *Churn) { c.Rate = 0 }, "positive number of pods"},
		{"NaN rate", func(c *Churn) { c.Rate = math.NaN() }, "positive number of pods"},
		{"infinite rate", func(c *Churn) { c.Rate = math.Inf(1) }, "positive number of pods"},
		{"no lifetime", func(c *Churn) { c.Lifetime = 0 }, "lifetime"},
		{"negative duration", func(c *Churn) { c.Duration = -time.Second }, "duration"},
		{"too many pods", func(c *Churn) { c.Rate = 1e9 }, "more than"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.change(&c)
			err := c.Validate()
			if tc.err == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Validate() = %v, want an error with %q", err, tc.err)
			}
		})
	}
}
