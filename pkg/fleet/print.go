package fleet

import (
	"fmt"
	"io"
	"math"
)

const mib = 1 << 20

// Print writes a report for humans.
func Print(w io.Writer, r *Report) {
	fmt.Fprintf(w, "FLEET nodes=%d models=%v pool=%s\n", r.Nodes, r.Models, side(r))
	fmt.Fprintf(w, "FLEET slices/node=%.1f devices/node=%.1f slice-bytes/node=%.0f startup=%.1fs etcd-db=%.1fMiB\n",
		r.SlicesPerNode, r.DevicesPerNode, r.SliceBytesPerNode, r.StartupSeconds, r.EtcdDBBytes/mib)
	for _, name := range ControlPlane {
		fmt.Fprintf(w, "FLEET rss %-15s before=%6.0fMiB published=%6.0fMiB end=%6.0fMiB per-node=%.2fMiB\n", name,
			float64(r.RSSBefore[name])/mib, float64(r.RSSAfter[name])/mib, float64(r.RSSEnd[name])/mib, float64(r.RSSPerNode[name])/mib)
	}
	fmt.Fprintf(w, "FLEET rss harness (publishers of every node) %.0fMiB\n", float64(r.HarnessRSS)/mib)
	t := r.Taint
	fmt.Fprintf(w, "FLEET taint one GPU: %d slices %d bytes rewritten; clear: %d slices %d bytes; generation bumps %d\n",
		t.TaintObjects, t.TaintBytes, t.ClearObjects, t.ClearBytes, t.GenerationBumps)
	if c := r.ComputeDomain; c != nil {
		fmt.Fprintf(w, "FLEET compute-domain pods=%d bound=%d on %d nodes, numNodes=%d, ready=%t with %d nodes: %.1fs from creation to Ready and every pod bound\n",
			c.Pods, c.Bound, c.PodNodes, c.NumNodes, c.Ready, c.Nodes, c.Seconds)
		fmt.Fprintf(w, "FLEET compute-domain status writes=%.0f (conflicts %.0f, after Ready %.0f) node label patches=%.0f (+%.0f clique labels before) reconciles=%.0f\n",
			c.StatusWrites, c.StatusConflicts, c.StatusWritesAfter, c.NodePatches, c.CliquePatches, c.Reconciles)
		fmt.Fprintf(w, "FLEET compute-domain milestones (s): first pod bound %.1f, last %.1f; nodes labelled %.1f; daemons created %.1f, bound %.1f, running %.1f, ready %.1f; status lists all %.1f, all ready %.1f; domain Ready %.1f\n",
			c.FirstBound, c.LastBound, c.Labelled, c.DaemonsCreated, c.DaemonsBound, c.DaemonsRunning, c.DaemonsReady, c.Listed, c.ListedReady, c.DomainReady)
		fmt.Fprintf(w, "FLEET compute-domain attempt p50=%.1fms p99=%.1fms sli p50=%.2fs p99=%.2fs over-commitments=%d cleanup=%.1fs released=%t\n",
			c.AttemptP50*1000, c.AttemptP99*1000, c.SLIP50, c.SLIP99, len(c.Violations), c.CleanupSeconds, c.Released)
		for _, v := range c.Violations {
			fmt.Fprintf(w, "FLEET   over-commitment: %s\n", v)
		}
	}
	for _, b := range r.Bursts {
		fmt.Fprintf(w, "FLEET burst %-16s pods=%d bound=%d %.1fs %.2f pods/s attempt p50=%.1fms p99=%.1fms sli p50=%.2fs p99=%.2fs over-commitments=%d released=%t\n",
			b.Workload, b.Pods, b.Bound, b.Seconds, b.PodsPerSecond, b.AttemptP50*1000, b.AttemptP99*1000, b.SLIP50, b.SLIP99, len(b.Violations), b.Released)
		for _, v := range b.Violations {
			fmt.Fprintf(w, "FLEET   over-commitment: %s\n", v)
		}
		for _, m := range b.Misplaced {
			fmt.Fprintf(w, "FLEET   misplaced: %s\n", m)
		}
	}
	for _, c := range r.Churns {
		fmt.Fprintf(w, "FLEET churn %s at %.1f pods/s, %.0fs lifetime, %.0fs: created=%d bound=%d max-running=%d bind p50=%.2fs p99=%.2fs attempt p50=%.1fms p99=%.1fms sli p99=%.2fs checks=%d over-commitments=%d released=%t\n",
			c.Mix, c.Rate, c.LifetimeSeconds, c.Duration, c.Created, c.Bound, c.MaxRunning, c.BindP50, c.BindP99,
			c.AttemptP50*1000, c.AttemptP99*1000, c.SLIP99, c.Checks, len(c.Violations), c.Released)
		for _, v := range c.Violations {
			fmt.Fprintf(w, "FLEET   over-commitment: %s\n", v)
		}
	}
}

// side names what a run's fleet published: NVIDIA's pool at a release,
// or ours with the nodes' labels.
func side(r *Report) string {
	if r.Peer != "" {
		return "NVIDIA's driver " + r.Peer
	}
	if r.MIGNodes > 0 {
		steered := "not steered"
		if r.Steer {
			steered = "steered"
		}
		return fmt.Sprintf("ours %v, %d MIG nodes %v, %s", r.Labels, r.MIGNodes, r.MIGLabels, steered)
	}
	return fmt.Sprintf("ours %v", r.Labels)
}

// Compare writes a Markdown table of a run and its baseline (the same
// fleet publishing less), with their ratio.
func Compare(w io.Writer, a, b *Report) {
	row := func(what string, x, y float64, format string) {
		ratio := "–"
		if y != 0 {
			ratio = fmt.Sprintf("%.2f×", x/y)
		}
		fmt.Fprintf(w, "| %s | "+format+" | "+format+" | %s |\n", what, x, y, ratio)
	}
	fmt.Fprintf(w, "| %d nodes %v | %s | %s | ratio |\n|---|---|---|---|\n", a.Nodes, a.Models, side(a), side(b))
	row("devices per node", a.DevicesPerNode, b.DevicesPerNode, "%.0f")
	row("slices per node", a.SlicesPerNode, b.SlicesPerNode, "%.0f")
	row("slice bytes per node", a.SliceBytesPerNode, b.SliceBytesPerNode, "%.0f")
	row("start-up to all slices published, s", a.StartupSeconds, b.StartupSeconds, "%.1f")
	row("etcd database in use, MiB", a.EtcdDBBytes/mib, b.EtcdDBBytes/mib, "%.1f")
	for _, name := range ControlPlane {
		row(name+" RSS with slices, MiB", float64(a.RSSAfter[name])/mib, float64(b.RSSAfter[name])/mib, "%.0f")
		row(name+" RSS per node of slices, MiB", float64(a.RSSPerNode[name])/mib, float64(b.RSSPerNode[name])/mib, "%.2f")
	}
	row("taint one GPU: slices rewritten", float64(a.Taint.TaintObjects), float64(b.Taint.TaintObjects), "%.0f")
	row("taint one GPU: bytes rewritten", float64(a.Taint.TaintBytes), float64(b.Taint.TaintBytes), "%.0f")
	row("clear it: bytes rewritten", float64(a.Taint.ClearBytes), float64(b.Taint.ClearBytes), "%.0f")
	row("taint and clear: generation bumps", float64(a.Taint.GenerationBumps), float64(b.Taint.GenerationBumps), "%.0f")
	bursts := map[string]BurstResult{}
	for _, x := range b.Bursts {
		bursts[x.Workload] = x
	}
	for _, x := range a.Bursts {
		y := bursts[x.Workload]
		if y.Workload == "" {
			// Compare with the baseline's whole-GPU burst when it cannot run this one.
			y = bursts["whole"]
		}
		label := x.Workload + " vs " + y.Workload
		row(label+": pods/s bound", x.PodsPerSecond, y.PodsPerSecond, "%.2f")
		row(label+": attempt p50, ms", x.AttemptP50*1000, y.AttemptP50*1000, "%.1f")
		row(label+": attempt p99, ms", x.AttemptP99*1000, y.AttemptP99*1000, "%.1f")
		row(label+": SLI p99, s", x.SLIP99, y.SLIP99, "%.2f")
	}
	// Churns pair up in order: the baseline runs what it can serve at the
	// same rate.
	for i, x := range a.Churns {
		if i >= len(b.Churns) {
			break
		}
		y := b.Churns[i]
		label := fmt.Sprintf("churn %s vs %s at %.1f/s", x.Mix, y.Mix, x.Rate)
		if x.Rate != y.Rate || x.LifetimeSeconds != y.LifetimeSeconds || x.Duration != y.Duration {
			label = fmt.Sprintf("churn %s at %.1f/s, %.0fs, %.0fs vs %s at %.1f/s, %.0fs, %.0fs (not the same traffic)",
				x.Mix, x.Rate, x.LifetimeSeconds, x.Duration, y.Mix, y.Rate, y.LifetimeSeconds, y.Duration)
		}
		row(label+": pods bound of created", float64(x.Bound)/math.Max(float64(x.Created), 1), float64(y.Bound)/math.Max(float64(y.Created), 1), "%.2f")
		row(label+": bind p50, s", x.BindP50, y.BindP50, "%.2f")
		row(label+": bind p99, s", x.BindP99, y.BindP99, "%.2f")
		row(label+": attempt p99, ms", x.AttemptP99*1000, y.AttemptP99*1000, "%.1f")
	}
}
