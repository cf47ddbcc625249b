package fleet

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"sort"
	"strings"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// PartCost is what one part of the published devices costs in a node's
// pool: how many entries and how many bytes of JSON.
type PartCost struct {
	Part    string
	Entries int
	Bytes   int
}

// CostReport breaks a node's pool down by part.
type CostReport struct {
	Devices int
	// Bytes is the JSON size of the node's ResourceSlices.
	Bytes int
	// HeapBytes is what the slices take in a Go heap once decoded from
	// JSON, as an informer holds them (every scheduler holds one copy).
	HeapBytes int64
	Parts     []PartCost
}

// Cost measures a model's pool: each attribute, capacity and consumed
// counter by name, the counter sets and the devices' other fields.
func Cost(m *devicemodel.Model, node string) (CostReport, error) {
	var r CostReport
	parts := map[string]*PartCost{}
	add := func(part string, v any) error {
		data, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode %s: %w", part, err)
		}
		p := parts[part]
		if p == nil {
			p = &PartCost{Part: part}
			parts[part] = p
		}
		p.Entries++
		p.Bytes += len(data)
		return nil
	}
	slices := m.ResourceSlices(node)
	for _, s := range slices {
		data, err := json.Marshal(&s)
		if err != nil {
			return r, fmt.Errorf("encode slice: %w", err)
		}
		r.Bytes += len(data)
		for _, cs := range s.Spec.SharedCounters {
			if err := add("counter sets", cs); err != nil {
				return r, err
			}
		}
		for _, d := range s.Spec.Devices {
			r.Devices++
			for k, a := range d.Attributes {
				// A key's cost is its entry in the map: `"key":{...},`.
				if err := add("attribute "+string(k), map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{k: a}); err != nil {
					return r, err
				}
			}
			for k, c := range d.Capacity {
				if err := add("capacity "+string(k), map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{k: c}); err != nil {
					return r, err
				}
			}
			for _, cc := range d.ConsumesCounters {
				for k, c := range cc.Counters {
					if err := add("consumed counter "+counterKind(k), map[string]resourceapi.Counter{k: c}); err != nil {
						return r, err
					}
				}
			}
			rest := d
			rest.Attributes, rest.Capacity, rest.ConsumesCounters = nil, nil, nil
			if err := add("device name, taints and flags", rest); err != nil {
				return r, err
			}
		}
	}
	for _, p := range parts {
		r.Parts = append(r.Parts, *p)
	}
	sort.Slice(r.Parts, func(a, b int) bool { return r.Parts[a].Bytes > r.Parts[b].Bytes })
	heap, err := decodedHeap(slices)
	if err != nil {
		return r, err
	}
	r.HeapBytes = heap
	return r, nil
}

// counterKind groups the memory-slice counters.
func counterKind(name string) string {
	if names.IsMemorySliceCounter(name) {
		return strings.TrimSuffix(names.MemorySliceCounter(0), "0") + "N"
	}
	return name
}

// decodedHeap is the heap that copies of the slices take once decoded,
// per copy.
func decodedHeap(slices []resourceapi.ResourceSlice) (int64, error) {
	const copies = 20
	var raw [][]byte
	for i := range slices {
		data, err := json.Marshal(&slices[i])
		if err != nil {
			return 0, fmt.Errorf("encode slice: %w", err)
		}
		raw = append(raw, data)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	keep := make([][]resourceapi.ResourceSlice, copies)
	for c := range copies {
		for _, data := range raw {
			var s resourceapi.ResourceSlice
			if err := json.Unmarshal(data, &s); err != nil {
				return 0, fmt.Errorf("decode slice: %w", err)
			}
			keep[c] = append(keep[c], s)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(keep)
	return int64(after.HeapAlloc-before.HeapAlloc) / copies, nil
}

// PrintCost writes a cost report as a Markdown table.
func PrintCost(w io.Writer, title string, r CostReport) {
	fmt.Fprintf(w, "%s: %d devices, %d bytes of JSON, %.2f MiB of heap once decoded\n\n", title, r.Devices, r.Bytes, float64(r.HeapBytes)/mib)
	fmt.Fprintf(w, "| part | entries | bytes | share |\n|---|---|---|---|\n")
	for _, p := range r.Parts {
		fmt.Fprintf(w, "| %s | %d | %d | %.1f%% |\n", p.Part, p.Entries, p.Bytes, 100*float64(p.Bytes)/float64(r.Bytes))
	}
}
