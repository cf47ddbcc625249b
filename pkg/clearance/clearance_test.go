package clearance

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

func TestParse(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for name, tc := range map[string]struct {
		key, value string
		want       Clearance
		wantErr    string
		future     bool
	}{
		"whole node, in the past": {
			key: names.HealthClearedAnnotation, value: "2026-12-01T09:00:00Z",
			want: Clearance{Annotation: names.HealthClearedAnnotation, AllGPUs: true, At: now.Add(-time.Hour)},
		},
		"one GPU, fractional seconds": {
			key: names.HealthClearedGPUAnnotationPrefix + "3", value: "2026-12-01T09:59:59.5Z",
			want: Clearance{Annotation: names.HealthClearedGPUAnnotationPrefix + "3", Minor: 3, At: now.Add(-500 * time.Millisecond)},
		},
		"within the skew counts as now": {
			key: names.HealthClearedAnnotation, value: "2026-12-01T10:00:30Z",
			want: Clearance{Annotation: names.HealthClearedAnnotation, AllGPUs: true, At: now},
		},
		"another time zone": {
			key: names.HealthClearedAnnotation, value: "2026-12-01T11:00:00+02:00",
			want: Clearance{Annotation: names.HealthClearedAnnotation, AllGPUs: true, At: now.Add(-time.Hour)},
		},
		"a year ahead": {
			key: names.HealthClearedAnnotation, value: "2027-12-01T09:00:00Z", future: true,
			wantErr: "annotation gpu.nvidia.com/health-cleared=2027-12-01T09:00:00Z: clearance time is in the future: 8759h0m0s ahead",
		},
		"just past the skew": {
			key: names.HealthClearedGPUAnnotationPrefix + "0", value: "2026-12-01T10:01:01Z", future: true, wantErr: "1m1s ahead",
		},
		"not a time":        {key: names.HealthClearedAnnotation, value: "yesterday", wantErr: "gpu.nvidia.com/health-cleared=yesterday: not an RFC 3339 time"},
		"date only":         {key: names.HealthClearedAnnotation, value: "2026-12-01", wantErr: "not an RFC 3339 time"},
		"no minor":          {key: names.HealthClearedGPUAnnotationPrefix, value: "2026-12-01T09:00:00Z", wantErr: "not a GPU minor number"},
		"signed minor":      {key: names.HealthClearedGPUAnnotationPrefix + "+3", value: "2026-12-01T09:00:00Z", wantErr: `"+3" is not a GPU minor`},
		"padded minor":      {key: names.HealthClearedGPUAnnotationPrefix + "03", value: "2026-12-01T09:00:00Z", wantErr: `"03" is not a GPU minor`},
		"negative minor":    {key: names.HealthClearedGPUAnnotationPrefix + "-1", value: "2026-12-01T09:00:00Z", wantErr: "not a GPU minor"},
		"huge value is cut": {key: names.HealthClearedAnnotation, value: strings.Repeat("x", 1000), wantErr: strings.Repeat("x", maxValue) + "…: not an RFC 3339 time"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := Parse(tc.key, tc.value, now)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				if errors.Is(err, ErrFuture) != tc.future {
					t.Errorf("errors.Is(err, ErrFuture) = %t", !tc.future)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !got.At.Equal(tc.want.At) || got.Annotation != tc.want.Annotation || got.AllGPUs != tc.want.AllGPUs || got.Minor != tc.want.Minor {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestIsClearance(t *testing.T) {
	for key, want := range map[string]bool{
		names.HealthClearedAnnotation: true, names.HealthClearedGPUAnnotationPrefix + "7": true, names.HealthClearedGPUAnnotationPrefix + "x": true,
		"gpu.nvidia.com/health-cleared-": false, "node.alpha.kubernetes.io/ttl": false,
	} {
		if IsClearance(key) != want {
			t.Errorf("IsClearance(%q) = %t", key, !want)
		}
	}
}
