package kubectlgpu

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/client-go/kubernetes"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// maxEvents is how many of a GPU's most recent Events describe shows.
const maxEvents = 10

func (a *app) describeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "describe NODE/gpu-<minor>",
		Short: "Show one GPU in full: identity, memory slices, devices in use with their claims, pods and status, taints and recent health events",
		Long: `Show one GPU in full: its UUID, product, memory, PCI bus ID, PCIe root and
NUMA node; its memory slices (as in ls -o wide); every device of it that is in
use, pre-created or tainted, with the claims and pods holding it and what the
node's plugin wrote in each claim's status (Ready and Healthy conditions, MIG
UUID, GPU and compute instance, share limits, CDI devices); its taints; and the
node's recent Events about it (health taints appearing and going).`,
		Args: targetArgs,
		RunE: a.onTarget(func(ctx context.Context, c kubernetes.Interface, t Target) error {
			if !t.HasGPU {
				return usageErrorf("describe takes NODE/gpu-<minor>, one GPU; for a whole node run 'kubectl gpu ls %s -o wide'", t.Node)
			}
			report, err := fetchReport(ctx, c, &t)
			if err != nil {
				return err
			}
			if len(report.Nodes) != 1 || len(report.Nodes[0].GPUs) != 1 {
				return &exitError{code: exitUsage, err: fmt.Errorf("GPU %s not found", t)}
			}
			// The plugin records its Events in the default namespace, the
			// only one its Role lets it write Events to.
			events, err := c.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{FieldSelector: fields.Set{
				"involvedObject.kind": "Node", "involvedObject.name": t.Node,
			}.AsSelector().String()})
			if err != nil {
				return fmt.Errorf("list Events of node %s: %w", t.Node, err)
			}
			return writeDescribe(a.out, t.Node, report.Nodes[0].GPUs[0], gpuEvents(events.Items, t), a.clock.Now())
		}),
	}
}

// gpuEvents returns the GPU's health history: the health Events the
// node's plugin recorded about it, newest first, at most maxEvents. Any
// component allowed to create Events can write one about a Node; only
// those of the plugin (its source component, its node as the source host,
// the default namespace, a health reason) are taken, so that another
// writer's Event is not shown as the GPU's health. The source is what the
// writer says, not proven by the API server: a writer of Events in the
// default namespace could still pass one off as the plugin's, and
// writeDescribe prints it escaped like any other.
func gpuEvents(events []corev1.Event, t Target) []corev1.Event {
	var out []corev1.Event
	for _, e := range events {
		if e.InvolvedObject.Kind != "Node" || e.InvolvedObject.Name != t.Node || e.Namespace != metav1.NamespaceDefault {
			continue
		}
		if e.Source.Component != names.PluginEventSource || e.Source.Host != t.Node {
			continue
		}
		if e.Reason != names.EventHealthTaintAdded && e.Reason != names.EventHealthTaintRemoved {
			continue
		}
		if minor, _, ok := names.ParseGPUEventMessage(e.Message); ok && minor == t.GPU {
			out = append(out, e)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return eventTime(out[i]).After(eventTime(out[j])) })
	if len(out) > maxEvents {
		out = out[:maxEvents]
	}
	return out
}

func eventTime(e corev1.Event) time.Time {
	if !e.LastTimestamp.IsZero() {
		return e.LastTimestamp.Time
	}
	if !e.EventTime.IsZero() {
		return e.EventTime.Time
	}
	return e.CreationTimestamp.Time
}

// writeDescribe writes the description of one GPU.
func writeDescribe(w io.Writer, node string, g GPUReport, events []corev1.Event, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
	numa := "-"
	if g.NUMANode != nil {
		numa = strconv.FormatInt(*g.NUMANode, 10)
	}
	for _, kv := range [][2]string{
		{"GPU", node + "/" + g.Name}, {"UUID", orDash(g.UUID)}, {"Product", orDash(g.ProductName)}, {"Memory", orDash(g.Memory)},
		{"PCI bus ID", orDash(g.PCIBusID)}, {"PCIe root", orDash(g.PCIeRoot)}, {"NUMA node", numa},
		{"Taints", formatTaints(gpuTaintsOf(g), now)},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write description: %w", err)
	}
	m := buildSliceMap(g)
	fmt.Fprintf(w, "Memory slices: %s  %s\n", m.Row, m.summary())
	if err := writeLegend(w, g, m, now, "  "); err != nil {
		return fmt.Errorf("write description: %w", err)
	}

	// Devices in the legend's order (their letters), then those only
	// tainted.
	fmt.Fprintln(w, "Devices:")
	gpuTaints := gpuTaintsOf(g)
	shown := map[string]bool{}
	for _, e := range m.Legend {
		shown[e.Device.Name] = true
		if err := writeDevice(w, e.Letter, e.Device, gpuTaints, now); err != nil {
			return err
		}
	}
	for _, d := range g.Devices {
		if !shown[d.Name] && d.Name != g.Name && len(ownTaintsOf(d, gpuTaints)) > 0 {
			shown[d.Name] = true
			if err := writeDevice(w, "-", d, gpuTaints, now); err != nil {
				return err
			}
		}
	}
	if len(shown) == 0 {
		fmt.Fprintln(w, "  none in use")
	}

	fmt.Fprintln(w, "Events:")
	if len(events) == 0 {
		fmt.Fprintln(w, "  none")
		return nil
	}
	etw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(etw, "  AGE\tTYPE\tREASON\tMESSAGE")
	for _, e := range events {
		_, what, _ := names.ParseGPUEventMessage(e.Message)
		age := "-"
		if t := eventTime(e); !t.IsZero() {
			age = duration.HumanDuration(now.Sub(t))
		}
		count := ""
		if e.Count > 1 {
			count = fmt.Sprintf(" (x%d)", e.Count)
		}
		fmt.Fprintf(etw, "  %s\t%s\t%s\t%s%s\n", age, printable(e.Type), printable(e.Reason), printable(what), count)
	}
	if err := etw.Flush(); err != nil {
		return fmt.Errorf("write description: %w", err)
	}
	return nil
}

// writeDevice writes one device, with its letter in the slice map, and
// its allocations.
func writeDevice(w io.Writer, letter string, d DeviceReport, gpuTaints []TaintReport, now time.Time) error {
	what := d.Type
	if d.Profile != "" {
		what = d.Profile
	}
	if d.PlacementStart != nil {
		if size := max(d.PlacementSize, 1); size == 1 {
			what += fmt.Sprintf(", slice %d", *d.PlacementStart)
		} else {
			what += fmt.Sprintf(", slices %d-%d", *d.PlacementStart, *d.PlacementStart+size-1)
		}
	}
	if d.Memory != "" {
		what += ", " + d.Memory
	}
	if d.PreCreated {
		what += ", pre-created " + d.UUID
	}
	fmt.Fprintf(w, "  %s %s (%s)\n", letter, d.Name, what)
	tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
	if own := ownTaintsOf(d, gpuTaints); len(own) > 0 {
		fmt.Fprintf(tw, "    Taints:\t%s\n", formatTaints(own, now))
	}
	if len(d.Allocations) == 0 {
		fmt.Fprintln(tw, "    Claim:\t-")
	}
	for _, a := range d.Allocations {
		claim := a.Namespace + "/" + a.Claim
		if a.Request != "" {
			claim += " (request " + a.Request + ")"
		}
		rows := [][2]string{{"Claim", claim}, {"Pods", formatPods([]AllocationReport{a})}}
		if a.ShareID != "" {
			rows = append(rows, [2]string{"Share", a.ShareID + ", " + orDash(a.Memory)})
		}
		rows = append(rows, [2]string{"Conditions", formatConditions(a.Conditions, now)})
		rows = append(rows, statusRows(a)...)
		for _, kv := range rows {
			fmt.Fprintf(tw, "    %s:\t%s\n", kv[0], kv[1])
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write description: %w", err)
	}
	return nil
}

// statusRows are the lines of what the plugin reported for a device.
func statusRows(a AllocationReport) [][2]string {
	s := a.Data
	if s == nil {
		return [][2]string{{"Status", "not reported by the node's plugin"}}
	}
	rows := [][2]string{{"GPU UUID", orDash(s.GPU.UUID)}}
	if s.MIG != nil {
		rows = append(rows, [2]string{"MIG UUID", orDash(s.MIG.UUID)},
			[2]string{"MIG instance", fmt.Sprintf("GI %d, CI %d, %s at slices %d+%d", s.MIG.GPUInstanceID, s.MIG.ComputeInstanceID, s.MIG.Profile, s.MIG.PlacementStart, s.MIG.PlacementSize)})
	}
	switch {
	case s.Share != nil:
		limits := "memory " + formatBytes(s.Share.MemoryBytes)
		if s.Share.MemoryBytes == 0 {
			limits = "no memory limit" // a consumable share of no memory or all of it
		}
		if s.Share.ComputePercent > 0 {
			limits += fmt.Sprintf(", compute %d%%", s.Share.ComputePercent)
		}
		rows = append(rows, [2]string{"MPS limits", limits})
	case s.MPS:
		rows = append(rows, [2]string{"MPS", "yes"})
	}
	if s.AdminAccess {
		rows = append(rows, [2]string{"Admin access", "yes"})
	}
	return append(rows, [2]string{"CDI devices", orDash(strings.Join(s.CDIDeviceIDs, ", "))})
}

// formatConditions renders conditions as "Ready=True (Prepared, 5m)".
func formatConditions(cs []metav1.Condition, now time.Time) string {
	var parts []string
	for _, c := range cs {
		s := c.Type + "=" + string(c.Status) + " (" + c.Reason
		if !c.LastTransitionTime.IsZero() {
			s += ", " + duration.HumanDuration(now.Sub(c.LastTransitionTime.Time))
		}
		s += ")"
		if c.Status != metav1.ConditionTrue && c.Message != "" && c.Message != c.Reason {
			s += ": " + c.Message
		}
		parts = append(parts, s)
	}
	return orDash(strings.Join(parts, ", "))
}
