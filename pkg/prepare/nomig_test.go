package prepare

import (
	"context"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
)

// TestPrepareOnGPUsWithoutMIG: on GPUs without MIG (L4, L40S), where NVML
// answers ERROR_NOT_SUPPORTED to every MIG call, a whole GPU and a share
// prepare and unprepare: there is no MIG mode to turn off.
func TestPrepareOnGPUsWithoutMIG(t *testing.T) {
	cases := []struct {
		model, what string
		claim       *resourceapi.ResourceClaim
	}{
		{"l40s", "whole GPU", allocated("gpu-0")},
		{"l4", "whole GPU", allocated("gpu-1")},
		{"l40s", "share", sharesAllocated(shareOf{"gpu-2-shared", "aaaaaaaa-0000-4000-8000-000000000001", "8Gi", "50"})},
	}
	for _, tc := range cases {
		t.Run(tc.model+" "+tc.what, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, tc.model)
			if _, err := f.p.Prepare(ctx, tc.claim); err != nil {
				t.Fatalf("prepare %s: %v", tc.what, err)
			}
			if err := f.p.Unprepare(ctx, ref(tc.claim)); err != nil {
				t.Fatalf("unprepare %s: %v", tc.what, err)
			}
		})
	}
}
