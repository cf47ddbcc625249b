package kubectlgpu

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// Cells of a slice map besides the letters of what holds a slice.
const (
	freeCell        = '.'
	taintedFreeCell = 'x'
)

// sliceMap is one GPU's memory slices as a row: which device holds each
// slice, with a legend line per holder.
type sliceMap struct {
	// Row is e.g. "[AAAA|BB|C|.]".
	Row string
	// Free counts the free slices, of Slices.
	Free   int
	Slices int
	// Tainted is set when the GPU itself has a taint with an effect: its
	// free slices are drawn as taintedFreeCell.
	Tainted bool
	Legend  []legendEntry
}

// legendEntry is one holder of slices.
type legendEntry struct {
	Letter string
	Device DeviceReport
	// Slices is "0-3" or "6".
	Slices string
}

// noMIGSlices is how many slices the map draws for a GPU without memory
// slice counters (no MIG placements), as it always has.
const noMIGSlices = 8

// slices is how many memory slices a GPU's map has.
func (g GPUReport) slices() int {
	if g.MemorySlices > 0 {
		return g.MemorySlices
	}
	return noMIGSlices
}

// buildSliceMap lays out a GPU's memory slices. A whole GPU or a shared
// GPU in use holds all of them; an allocated MIG device or a pre-created
// MIG instance holds its placement.
func buildSliceMap(g GPUReport) sliceMap {
	var m sliceMap
	for _, d := range g.Devices {
		if d.Name == g.Name {
			m.Tainted = hasEffect(d.Taints)
		}
	}
	m.Slices = g.slices()
	cells := make([]rune, m.Slices)
	for i := range cells {
		cells[i] = freeCell
		if m.Tainted {
			cells[i] = taintedFreeCell
		}
	}
	holds := func(d DeviceReport, start, size int) {
		letter := rune('A' + len(m.Legend)%26)
		// A placement outside the GPU's slices (a slice not of this
		// driver's version) draws only what lies inside them.
		for i := max(start, 0); i < start+size && i < len(cells); i++ {
			cells[i] = letter
		}
		span := fmt.Sprintf("%d-%d", start, start+size-1)
		if size == 1 {
			span = fmt.Sprint(start)
		}
		m.Legend = append(m.Legend, legendEntry{Letter: string(letter), Device: d, Slices: span})
	}
	// MIG devices by placement, so the letters read left to right.
	var migs []DeviceReport
	for _, d := range g.Devices {
		switch {
		case d.Type == names.TypeMIG && d.PlacementStart != nil && (len(d.Allocations) > 0 || d.PreCreated):
			migs = append(migs, d)
		case (d.Type == names.TypeGPU || d.Type == names.TypeShared) && len(d.Allocations) > 0:
			holds(d, 0, m.Slices)
		}
	}
	sortByPlacement(migs)
	for _, d := range migs {
		holds(d, int(*d.PlacementStart), int(max(d.PlacementSize, 1)))
	}
	var b strings.Builder
	b.WriteByte('[')
	for i, c := range cells {
		// A bar between two holders, or a holder and free slices.
		if i > 0 && c != cells[i-1] && (!isFree(c) || !isFree(cells[i-1])) {
			b.WriteByte('|')
		}
		if isFree(c) {
			m.Free++
		}
		b.WriteRune(c)
	}
	b.WriteByte(']')
	m.Row = b.String()
	return m
}

func isFree(c rune) bool { return c == freeCell || c == taintedFreeCell }

func sortByPlacement(ds []DeviceReport) {
	for i := 1; i < len(ds); i++ {
		for j := i; j > 0 && *ds[j].PlacementStart < *ds[j-1].PlacementStart; j-- {
			ds[j], ds[j-1] = ds[j-1], ds[j]
		}
	}
}

// hasEffect reports whether a taint keeps pods off (NoSchedule or
// NoExecute).
func hasEffect(ts []TaintReport) bool {
	for _, t := range ts {
		if t.Effect != "None" && t.Effect != "" {
			return true
		}
	}
	return false
}

// summary is "1 of 8 slices free" and what marks the row.
func (m sliceMap) summary() string {
	s := fmt.Sprintf("%d of %d slices free", m.Free, m.Slices)
	if m.Tainted {
		s += " (GPU tainted: x)"
	}
	return s
}

// writeSliceMaps writes every GPU's slice map with its legend.
func writeSliceMaps(w io.Writer, r Report, now time.Time) error {
	fmt.Fprintf(w, "\nMEMORY SLICES (%s; A, B, …: devices in use or pre-created; .: free; x: free on a tainted GPU; !: tainted)\n", sliceRanges(r))
	for _, n := range r.Nodes {
		for _, g := range n.GPUs {
			m := buildSliceMap(g)
			fmt.Fprintf(w, "%s/%s  %s  %s\n", n.Name, g.Name, m.Row, m.summary())
			if err := writeLegend(w, g, m, now, "  "); err != nil {
				return err
			}
		}
	}
	return nil
}

// sliceRanges is how the report's GPUs number their slices: "0-7", or
// "0-3, 0-7" on a node of A30s and H100s.
func sliceRanges(r Report) string {
	seen := map[int]bool{}
	for _, n := range r.Nodes {
		for _, g := range n.GPUs {
			seen[g.slices()] = true
		}
	}
	if len(seen) == 0 {
		seen[noMIGSlices] = true
	}
	var out []string
	for _, n := range slices.Sorted(maps.Keys(seen)) {
		out = append(out, fmt.Sprintf("0-%d", n-1))
	}
	return strings.Join(out, ", ")
}

// writeLegend writes a slice map's legend, one holder a line (a shared
// GPU: one line per share), indented.
func writeLegend(w io.Writer, g GPUReport, m sliceMap, now time.Time, indent string) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 8, 2, ' ', 0)
	gpuTaints := gpuTaintsOf(g)
	for _, e := range m.Legend {
		d := e.Device
		mark, taints := "", ""
		if own := ownTaintsOf(d, gpuTaints); len(own) > 0 {
			mark, taints = "!", "tainted "+formatTaints(own, now)
		}
		what := d.Profile
		// A whole GPU in consumable shares (NVIDIA's) is allocated in
		// shares, as a shared GPU is.
		inShares := d.Type == names.TypeShared || slices.ContainsFunc(d.Allocations, func(a AllocationReport) bool { return a.ShareID != "" })
		switch {
		case d.Type == names.TypeShared:
			what = fmt.Sprintf("shared, %d shares", len(d.Allocations))
		case d.Type == names.TypeGPU && inShares:
			what = fmt.Sprintf("consumable, %d shares", len(d.Allocations))
		case d.Type == names.TypeGPU:
			what = "whole GPU"
		}
		if d.PreCreated {
			what += " pre-created"
		}
		if inShares {
			fmt.Fprintf(tw, "%s%s%s\t%s\t%s\t%s\t%s\t%s\t%s\n", indent, e.Letter, mark, d.Name, what, sharedMemory(d, g.Memory), "-", "-", taints)
			for _, a := range d.Allocations {
				fmt.Fprintf(tw, "%s \t  share %s\t\t%s\t%s\t%s\t\n", indent, orDash(a.ShareID), orDash(a.Memory),
					formatClaims([]AllocationReport{a}), formatPods([]AllocationReport{a}))
			}
			continue
		}
		fmt.Fprintf(tw, "%s%s%s\t%s\t%s\t%s\t%s\t%s\t%s\n", indent, e.Letter, mark, d.Name, what+" @"+e.Slices, orDash(d.Memory),
			formatClaims(d.Allocations), formatPods(d.Allocations), taints)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// The last column is empty on most lines: no trailing blanks.
	for _, line := range strings.SplitAfter(buf.String(), "\n") {
		if line == "" {
			continue
		}
		if _, err := io.WriteString(w, strings.TrimRight(line, " \n")+"\n"); err != nil {
			return err
		}
	}
	return nil
}

// ownTaintsOf returns a device's taints that its GPU does not have.
func ownTaintsOf(d DeviceReport, gpuTaints []TaintReport) []TaintReport {
	var own []TaintReport
	for _, t := range d.Taints {
		if ownTaints([]TaintReport{t}, gpuTaints) > 0 {
			own = append(own, t)
		}
	}
	return own
}

// gpuTaintsOf returns the taints of the GPU's own device.
func gpuTaintsOf(g GPUReport) []TaintReport {
	for _, d := range g.Devices {
		if d.Name == g.Name {
			return d.Taints
		}
	}
	return nil
}

// sharedMemory is "12Gi of 80Gi": what a shared GPU's shares were
// allocated in all.
func sharedMemory(d DeviceReport, total string) string {
	var sum int64
	for _, a := range d.Allocations {
		if q, err := parseQuantity(a.Memory); err == nil {
			sum += q
		}
	}
	return formatBytes(sum) + " of " + orDash(total)
}

// parseQuantity reads a memory quantity as bytes.
func parseQuantity(s string) (int64, error) {
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return 0, fmt.Errorf("parse quantity %q: %w", s, err)
	}
	return q.Value(), nil
}

// formatBytes renders bytes as a binary-SI quantity, e.g. "12Gi".
func formatBytes(n int64) string { return resource.NewQuantity(n, resource.BinarySI).String() }
