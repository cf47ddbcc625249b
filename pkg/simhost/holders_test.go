package simhost

import (
	"reflect"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpuholders"
)

// TestSyncHoldersIsWhatGPUHoldersFinds: the simulated clients of a GPU are
// found by the plugin's holder finder as processes, and are gone once
// they close.
func TestSyncHoldersIsWhatGPUHoldersFinds(t *testing.T) {
	proc := t.TempDir()
	f := gpuholders.Finder{ProcRoot: proc, DevRoot: t.TempDir()}
	for _, tc := range []struct {
		holders map[int][]string
		want    map[int][]string // names found, by minor
	}{
		{map[int][]string{4: {"dcgm-exporter", "nvidia-smi"}}, map[int][]string{4: {"dcgm-exporter", "nvidia-smi"}, 3: nil}},
		{map[int][]string{4: {"nvidia-smi"}, 3: {"dcgm-exporter"}}, map[int][]string{4: {"nvidia-smi"}, 3: {"dcgm-exporter"}}},
		{nil, map[int][]string{4: nil, 3: nil}},
	} {
		if err := SyncHolders(proc, tc.holders); err != nil {
			t.Fatal(err)
		}
		for minor, want := range tc.want {
			procs, err := f.HoldersOf(minor)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range procs {
				got = append(got, p.Name)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("holders %v: GPU %d held by %v, want %v", tc.holders, minor, got, want)
			}
		}
	}
}
