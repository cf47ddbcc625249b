// Command gpu-fleet is the scale harness (package fleet): it runs a fleet
// of simulated GPU nodes, whose pools the driver's own publishing code
// publishes, against the local control plane of test/cluster, and prints
// what it measured. `gpu-fleet compare A.json B.json` prints two runs side
// by side. test/scale/scale.sh (make scale) runs both sides of a
// comparison. With --compute-domain-pods it first runs one ComputeDomain
// over the fleet, the ComputeDomain controller in this process
// (test/scale/compute-domain.sh, make scale-compute-domain).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	cdcontroller "github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/controller"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/controller/templates"
	"github.com/gpu-dra/gpu-dra-driver/pkg/devicemodel"
	"github.com/gpu-dra/gpu-dra-driver/pkg/fleet"
	"github.com/gpu-dra/gpu-dra-driver/pkg/fleet/peer"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = klog.NewContext(ctx, klog.Background())
	var err error
	switch {
	case len(os.Args) > 1 && os.Args[1] == "compare":
		err = compare(os.Stdout, os.Args[2:])
	case len(os.Args) > 1 && os.Args[1] == "cost":
		err = cost(ctx, os.Stdout, os.Args[2:])
	default:
		err = run(ctx, os.Args[1:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gpu-fleet:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("gpu-fleet", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", os.Getenv("KUBECONFIG"), "the cluster admin's kubeconfig")
	runDir := fs.String("run-dir", envOr("GPU_DRA_RUN_DIR", "/tmp/gpu-dra-cluster"), "the cluster's run directory (PID files)")
	nodes := fs.Int("nodes", 10, "number of simulated GPU nodes")
	models := fs.String("models", "dgxh100", "simulated node models, comma-separated, assigned round robin: "+strings.Join(nvmlnode.SimulatedModels(), ", "))
	kinds := fs.String("kinds", "", "the nodes' "+names.DeviceKindsLabel+" label (e.g. whole, whole_mig_shared); empty: no label")
	profiles := fs.String("mig-profiles", "", "the nodes' "+names.MIGProfilesLabel+" label (e.g. 1g_7g); empty: no label")
	migNodes := fs.Int("mig-nodes", 0, "how many of the nodes offer MIG, spread evenly; they take --mig-node-kinds and --mig-node-profiles instead of --kinds and --mig-profiles; 0: every node takes those")
	migKinds := fs.String("mig-node-kinds", "mig", "the MIG nodes' "+names.DeviceKindsLabel+" label; empty: no label")
	migProfiles := fs.String("mig-node-profiles", "", "the MIG nodes' "+names.MIGProfilesLabel+" label; empty: no label")
	steer := fs.Bool("steer", false, "steer pods as docs/fleet.md's recipe does: the MIG nodes carry the label and NoSchedule taint "+fleet.SteerKey+", MIG pods its toleration and a required node affinity; every burst checks where its pods went")
	shared := fs.Bool("shared-gpus", true, "the plugin's --shared-gpus")
	peerPool := fs.Bool("peer", false, "publish the pool NVIDIA's driver (dra-driver-nvidia-gpu "+peer.Release+", DynamicMIG) publishes for the same hardware, with its DeviceClasses, instead of ours; no --kinds, --mig-profiles or share workload")
	bursts := fs.String("bursts", "whole=3", "workloads run in turn, with pods per node: "+strings.Join(fleet.Workloads, ", ")+", e.g. whole=3,mig-1g=3; empty: none")
	churns := fs.String("churn", "", "steady traffic run after the bursts: mixes of workloads with weights, separated by ';', each run in turn, e.g. 'whole=1;whole=2,mig-1g=2,share=1'; empty: none")
	churnRate := fs.Float64("churn-rate", 5, "pods arriving per second in each churn")
	churnLifetime := fs.Duration("churn-lifetime", 30*time.Second, "a churn pod's mean time running once bound")
	churnDuration := fs.Duration("churn-duration", 2*time.Minute, "how long pods keep arriving in each churn")
	out := fs.String("out", "", "also write the report as JSON to this file")
	settle := fs.Duration("settle", 15*time.Second, "wait before reading memory")
	timeout := fs.Duration("timeout", 10*time.Minute, "limit of each wait")
	leaseRenew := fs.Duration("lease-renew", 20*time.Second, "how often each node renews its Lease")
	cdPods := fs.Int("compute-domain-pods", 0, "run a ComputeDomain first (the controller in this process; needs the ComputeDomain CRD, test/scale/compute-domain.sh): one domain and this many workload pods, each with the domain's channel and one whole GPU; 0: none")
	cdNumNodes := fs.Int("compute-domain-num-nodes", 0, "the domain's spec.numNodes; 0: the fleet's size")
	cdCliqueSize := fs.Int("compute-domain-clique-size", 0, "nodes per NVLink clique, in order; 0: every node in one clique")
	cdReady := fs.String("compute-domain-daemon-ready", string(fleet.DaemonReadyQuorum), "when a daemon pod is Ready: quorum (once the domain's status lists its node, at a startup-probe tick) or running (at once)")
	cdProbe := fs.Duration("compute-domain-probe-period", time.Duration(templates.StartupPeriodSeconds)*time.Second, "the daemons' startup probe period")
	cdQPS := fs.Float64("compute-domain-controller-qps", 20, "the controller's API rate limit (its --kube-api-qps)")
	cdBurst := fs.Int("compute-domain-controller-burst", 40, "the controller's API burst (its --kube-api-burst)")
	cdWorkers := fs.Int("compute-domain-controller-workers", 4, "the controller's --workers")
	cdInterval := fs.Duration("compute-domain-status-min-interval", cdcontroller.DefaultStatusMinInterval, "the controller's --status-min-interval")
	klog.InitFlags(fs) // -v=2 shows, e.g., the ComputeDomain controller's label patches
	if err := fs.Parse(args); err != nil {
		return err
	}
	bs, err := parseBursts(*bursts)
	if err != nil {
		return err
	}
	var cs []fleet.Churn
	if *churns != "" {
		for i, mix := range strings.Split(*churns, ";") {
			m, err := fleet.ParseMix(mix)
			if err != nil {
				return fmt.Errorf("--churn: %w", err)
			}
			c := fleet.Churn{Mix: m, Rate: *churnRate, Lifetime: *churnLifetime, Duration: *churnDuration, Seed: uint64(i + 1)}
			if err := c.Validate(); err != nil {
				return fmt.Errorf("--churn-rate, --churn-lifetime, --churn-duration: %w", err)
			}
			cs = append(cs, c)
		}
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fmt.Errorf("read kubeconfig %s: %w", *kubeconfig, err)
	}
	// One client for the whole fleet: each real plugin has its own, so the
	// fleet's is limited only by the API server.
	cfg.QPS, cfg.Burst = 1000, 2000
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	labels := map[string]string{}
	if *kinds != "" {
		labels[names.DeviceKindsLabel] = *kinds
	}
	if *profiles != "" {
		labels[names.MIGProfilesLabel] = *profiles
	}
	migLabels := map[string]string{}
	if *migKinds != "" {
		migLabels[names.DeviceKindsLabel] = *migKinds
	}
	if *migProfiles != "" {
		migLabels[names.MIGProfilesLabel] = *migProfiles
	}
	var cd *fleet.ComputeDomainRun
	if *cdPods > 0 {
		ready := fleet.DaemonReady(*cdReady)
		if ready != fleet.DaemonReadyQuorum && ready != fleet.DaemonReadyRunning {
			return fmt.Errorf("--compute-domain-daemon-ready: %q is not quorum or running", *cdReady)
		}
		if *cdNumNodes <= 0 {
			*cdNumNodes = *nodes
		}
		// The controller's own clients, with its rate limits.
		ctlCfg := rest.CopyConfig(cfg)
		ctlCfg.QPS, ctlCfg.Burst = float32(*cdQPS), *cdBurst
		ctlClient, err := kubernetes.NewForConfig(ctlCfg)
		if err != nil {
			return fmt.Errorf("controller client: %w", err)
		}
		dyn, err := dynamic.NewForConfig(ctlCfg)
		if err != nil {
			return fmt.Errorf("controller dynamic client: %w", err)
		}
		cd = &fleet.ComputeDomainRun{
			Pods: *cdPods, NumNodes: *cdNumNodes, CliqueSize: *cdCliqueSize, DaemonReady: ready, ProbePeriod: *cdProbe,
			Client: ctlClient, Dynamic: dyn, Workers: *cdWorkers, StatusMinInterval: *cdInterval,
		}
	}
	rep, err := fleet.Run(ctx, fleet.Config{
		Client: client, Token: cfg.BearerToken, RunDir: *runDir,
		Nodes: *nodes, Models: strings.Split(*models, ","), Labels: labels, SharedGPUs: *shared, Peer: *peerPool,
		MIGNodes: *migNodes, MIGLabels: migLabels, Steer: *steer,
		Inventories: fleet.SimulatedInventories(), ComputeDomain: cd, Bursts: bs, Churns: cs,
		LeaseRenew: *leaseRenew, Settle: *settle, Timeout: *timeout,
	})
	if err != nil {
		return err
	}
	fleet.Print(os.Stdout, rep)
	if *out != "" {
		data, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return fmt.Errorf("encode report: %w", err)
		}
		if err := os.WriteFile(*out, data, 0o644); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	}
	if c := rep.ComputeDomain; c != nil && (!c.Ready || c.Bound < c.Pods || len(c.Violations) > 0 || !c.Released) {
		return fmt.Errorf("ComputeDomain: Ready %t, %d of %d pods bound, %d over-commitments, cleaned up: %t", c.Ready, c.Bound, c.Pods, len(c.Violations), c.Released)
	}
	for _, b := range rep.Bursts {
		if b.Bound < b.Pods || len(b.Violations) > 0 || len(b.Misplaced) > 0 || !b.Released {
			return fmt.Errorf("burst %s: %d of %d pods bound, %d over-commitments, %d misplaced, claims released: %t", b.Workload, b.Bound, b.Pods, len(b.Violations), len(b.Misplaced), b.Released)
		}
	}
	for _, c := range rep.Churns {
		if c.Created == 0 || c.Bound < c.Created || len(c.Violations) > 0 || !c.Released {
			return fmt.Errorf("churn %s: %d of %d pods bound, %d over-commitments, claims released: %t", c.Mix, c.Bound, c.Created, len(c.Violations), c.Released)
		}
	}
	return nil
}

func parseBursts(s string) ([]fleet.Burst, error) {
	if s == "" {
		return nil, nil
	}
	ws, err := fleet.ParseWorkloads("burst", s)
	if err != nil {
		return nil, err
	}
	out := make([]fleet.Burst, len(ws))
	for i, w := range ws {
		out[i] = fleet.Burst{Workload: w.Workload, PodsPerNode: w.Weight}
	}
	return out, nil
}

func compare(w io.Writer, args []string) error {
	if len(args) != 2 {
		return errors.New("usage: gpu-fleet compare FULL.json BASELINE.json")
	}
	var reps [2]fleet.Report
	for i, path := range args {
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read report: %w", err)
		}
		if err := json.Unmarshal(data, &reps[i]); err != nil {
			return fmt.Errorf("decode report %s: %w", path, err)
		}
	}
	fleet.Compare(w, &reps[0], &reps[1])
	return nil
}

// cost prints what each part of a node's pool costs, for each model and
// for each of the offers given.
func cost(ctx context.Context, w io.Writer, args []string) error {
	fs := flag.NewFlagSet("gpu-fleet cost", flag.ContinueOnError)
	models := fs.String("models", "dgxh100", "simulated node models, comma-separated")
	kinds := fs.String("kinds", "", "the "+names.DeviceKindsLabel+" label")
	profiles := fs.String("mig-profiles", "", "the "+names.MIGProfilesLabel+" label")
	shared := fs.Bool("shared-gpus", true, "the plugin's --shared-gpus")
	consumable := fs.String("consumable-shares", "", "the "+names.ConsumableSharesLabel+" label")
	overheadFlag := fs.String("node-allocatable-overhead", "", "the plugin's --node-allocatable-overhead (KIND:RESOURCE=QUANTITY,...)")
	peerPool := fs.Bool("peer", false, "the pool NVIDIA's driver ("+peer.Release+") publishes instead of ours")
	if err := fs.Parse(args); err != nil {
		return err
	}
	overhead, err := devicemodel.ParseOverhead(*overheadFlag)
	if err != nil {
		return fmt.Errorf("--node-allocatable-overhead: %w", err)
	}
	labels := map[string]string{}
	if *consumable != "" {
		labels[names.ConsumableSharesLabel] = *consumable
	}
	if *kinds != "" {
		labels[names.DeviceKindsLabel] = *kinds
	}
	if *profiles != "" {
		labels[names.MIGProfilesLabel] = *profiles
	}
	offer, err := devicemodel.ParseOffer(labels)
	if err != nil {
		return err
	}
	invs := fleet.SimulatedInventories()
	for _, model := range strings.Split(*models, ",") {
		inv, err := invs(ctx, model)
		if err != nil {
			return err
		}
		const node = "gpu-node-0000"
		in, err := fleet.NodeInput(node, inv, offer, *shared)
		if err != nil {
			return err
		}
		in.Overhead = overhead
		title := fmt.Sprintf("%s %v", model, labels)
		if !overhead.Empty() {
			title += " overhead " + overhead.String()
		}
		var m *devicemodel.Model
		if *peerPool {
			title = fmt.Sprintf("%s, NVIDIA's driver %s", model, peer.Release)
			s, err := peer.Slices(in.Inventory, in.Topology)
			if err != nil {
				return err
			}
			m = &devicemodel.Model{Slices: s}
		} else if m, err = devicemodel.Build(in); err != nil {
			return err
		}
		r, err := fleet.Cost(m, node)
		if err != nil {
			return err
		}
		fleet.PrintCost(w, title, r)
		fmt.Fprintln(w)
	}
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
