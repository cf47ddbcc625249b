package kubectlgpu

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

func (a *app) lsCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "ls [NODE[/gpu-<minor>]] [-o wide|yaml|json]",
		Short: "List GPUs with their taints and the claims and pods that hold them",
		Long: `List, per node and GPU, the whole GPU and its MIG devices that are allocated
or have a taint their GPU does not have, with their taints (key=value:effect, source and age) and the
claims (namespace/name) and pods that hold them.

Taints come from the driver's ResourceSlices (source "slice": health) and from
DeviceTaintRules that select the device (source "rule": admin maintenance).

  -o wide   every device, including free MIG placements, plus UUID, product
            and memory; then each GPU's eight memory slices as a row: which
            MIG device, whole GPU or shared GPU holds which slice, which are
            free, the shares with their memory, and taints marked
  -o yaml   the structured report (kind GPUReport), every device
  -o json   the same as json`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usageErrorf("ls takes at most one NODE or NODE/gpu-<minor> argument, got %d", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			switch output {
			case "", "wide", "yaml", "json":
			default:
				return usageErrorf("invalid --output %q: want wide, yaml or json", output)
			}
			var target *Target
			if len(args) == 1 {
				t, err := ParseTarget(args[0])
				if err != nil {
					return err
				}
				target = &t
			}
			c, err := a.newClient()
			if err != nil {
				return err
			}
			report, err := fetchReport(cmd.Context(), c, target)
			if err != nil {
				return err
			}
			return printReport(a.out, report, output, a.clock.Now())
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: wide, yaml or json")
	return cmd
}

// fetchReport lists what a report needs and builds it. A target that does
// not exist is a usage error.
func fetchReport(ctx context.Context, c kubernetes.Interface, target *Target) (Report, error) {
	if target != nil {
		if _, err := resolveTarget(ctx, c, *target); err != nil {
			return Report{}, err
		}
	}
	slices, err := listSlices(ctx, c, target)
	if err != nil {
		return Report{}, err
	}
	claims, err := c.ResourceV1().ResourceClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return Report{}, fmt.Errorf("list ResourceClaims: %w", err)
	}
	rules, err := c.ResourceV1().DeviceTaintRules().List(ctx, metav1.ListOptions{})
	if err != nil {
		return Report{}, fmt.Errorf("list DeviceTaintRules: %w", err)
	}
	podOpts := metav1.ListOptions{}
	if target != nil {
		podOpts.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", target.Node).String()
	}
	pods, err := c.CoreV1().Pods("").List(ctx, podOpts)
	if err != nil {
		return Report{}, fmt.Errorf("list pods: %w", err)
	}
	report := buildReport(reportInput{
		slices: slices, claims: claims.Items, rules: rules.Items, pods: pods.Items, target: target,
	})
	sanitizeReport(&report)
	return report, nil
}

// listSlices lists the driver's ResourceSlices, only the target node's if
// a target is given. The selectors are also applied here, for clients that
// ignore field selectors.
func listSlices(ctx context.Context, c kubernetes.Interface, target *Target) ([]resourceapi.ResourceSlice, error) {
	sel := fields.Set{resourceapi.ResourceSliceSelectorDriver: names.DriverName}
	if target != nil {
		sel[resourceapi.ResourceSliceSelectorPoolName] = target.Node
	}
	list, err := c.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: sel.AsSelector().String()})
	if err != nil {
		return nil, fmt.Errorf("list ResourceSlices: %w", err)
	}
	var out []resourceapi.ResourceSlice
	for _, s := range list.Items {
		if s.Spec.Driver == names.DriverName && (target == nil || s.Spec.Pool.Name == target.Node) {
			out = append(out, s)
		}
	}
	return out, nil
}

// printReport writes the report as a table ("" or "wide"), yaml or json.
func printReport(w io.Writer, r Report, output string, now time.Time) error {
	switch output {
	case "json":
		data, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			return fmt.Errorf("encode report as json: %w", err)
		}
		_, err = fmt.Fprintf(w, "%s\n", data)
		return err
	case "yaml":
		data, err := yaml.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode report as yaml: %w", err)
		}
		_, err = w.Write(data)
		return err
	}
	wide := output == "wide"
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	header := "NODE\tGPU\tDEVICE\tTAINTS\tCLAIMS\tPODS"
	if wide {
		header += "\tUUID\tPRODUCT\tMEMORY"
	}
	fmt.Fprintln(tw, header)
	for _, n := range r.Nodes {
		for _, g := range n.GPUs {
			var gpuTaints []TaintReport
			inherited := 0 // MIG devices whose taints are all the GPU's
			sharedInherits := false
			for _, d := range g.Devices {
				if d.Name == g.Name {
					gpuTaints = d.Taints
				}
			}
			for _, d := range g.Devices {
				if d.Name == g.Name || len(d.Taints) == 0 || ownTaints(d.Taints, gpuTaints) != 0 {
					continue
				}
				if d.Type == "shared" {
					sharedInherits = true
				} else {
					inherited++
				}
			}
			for _, d := range g.Devices {
				isGPU := d.Name == g.Name
				// Without -o wide a MIG device is shown when it is in use
				// or has a taint its GPU lacks: a GPU's taint on all its
				// MIG devices is one line, not 26.
				if !wide && !isGPU && len(d.Allocations) == 0 && ownTaints(d.Taints, gpuTaints) == 0 {
					continue
				}
				taints := formatTaints(d.Taints, now)
				if !wide && isGPU {
					switch {
					case inherited > 0 && sharedInherits:
						taints += fmt.Sprintf(" [also on %d MIG devices and its shared device]", inherited)
					case inherited > 0:
						taints += fmt.Sprintf(" [also on %d MIG devices]", inherited)
					case sharedInherits:
						taints += " [also on its shared device]"
					}
				}
				row := []string{n.Name, g.Name, d.Name, taints, formatClaims(d.Allocations), formatPods(d.Allocations)}
				if wide {
					if d.Name == g.Name {
						row = append(row, orDash(g.UUID), orDash(g.ProductName), orDash(d.Memory))
					} else if d.Type == "shared" {
						row = append(row, "-", "shared "+orDash(g.ProductName), orDash(d.Memory))
					} else {
						row = append(row, "-", orDash("MIG "+d.Profile), orDash(d.Memory))
					}
				}
				fmt.Fprintln(tw, strings.Join(row, "\t"))
			}
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	if wide {
		if err := writeSliceMaps(w, r, now); err != nil {
			return fmt.Errorf("write memory slices: %w", err)
		}
	}
	return nil
}

// ownTaints counts the taints in ts that are not in gpu (same key, value,
// effect and source).
func ownTaints(ts, gpu []TaintReport) int {
	n := 0
	for _, t := range ts {
		found := false
		for _, g := range gpu {
			if t.Key == g.Key && t.Value == g.Value && t.Effect == g.Effect && t.Source == g.Source {
				found = true
				break
			}
		}
		if !found {
			n++
		}
	}
	return n
}

// formatTaints renders taints as "key=value:effect (source, age)".
func formatTaints(taints []TaintReport, now time.Time) string {
	var parts []string
	for _, t := range taints {
		s := t.Key
		if t.Value != "" {
			s += "=" + t.Value
		}
		s += ":" + t.Effect + " (" + t.Source
		if t.TimeAdded != nil {
			s += ", " + duration.HumanDuration(now.Sub(t.TimeAdded.Time))
		}
		parts = append(parts, s+")")
	}
	return orDash(strings.Join(parts, ", "))
}

// formatClaims renders the claims as namespace/name.
func formatClaims(allocs []AllocationReport) string {
	var parts []string
	for _, a := range allocs {
		parts = append(parts, a.Namespace+"/"+a.Claim)
	}
	return orDash(strings.Join(parts, ","))
}

// formatPods renders the pods holding the claims as namespace/name,
// with the phase when it is not Running.
func formatPods(allocs []AllocationReport) string {
	var parts []string
	seen := map[string]bool{}
	for _, a := range allocs {
		for _, p := range a.Pods {
			s := p.Namespace + "/" + p.Name
			if p.Phase != "" && p.Phase != string(corev1.PodRunning) {
				s += "(" + p.Phase + ")"
			}
			if !seen[s] {
				seen[s] = true
				parts = append(parts, s)
			}
		}
	}
	return orDash(strings.Join(parts, ","))
}

// orDash returns s, or "-" for an empty cell.
func orDash(s string) string {
	if strings.TrimSpace(s) == "" || s == "MIG " {
		return "-"
	}
	return s
}
