//go:build scale

// Package scale runs a small fleet of simulated GPU nodes (package fleet)
// on a fresh control plane of test/cluster, without kubelet, and checks
// that the real scheduler places every pod without over-committing a GPU
// and that every claim is released. Speed is measured by make scale, not
// here.
//
// It uses the e2e cluster's ports and a run directory of its own
// (/tmp/gpu-dra-scale-cluster): up.sh refuses to start while another
// cluster holds the ports. On a shared machine run it under
// flock /tmp/gpu-dra-e2e.lock.
package scale

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/fleet"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

const runDir = "/tmp/gpu-dra-scale-cluster"

func script(t *testing.T, name string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(filepath.Join("..", "cluster", name))
	cmd.Env = append(os.Environ(), "GPU_DRA_RUN_DIR="+runDir, "GPU_DRA_CONTROL_PLANE_ONLY=1")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd
}

func TestFleet(t *testing.T) {
	if err := script(t, "up.sh").Run(); err != nil {
		t.Fatalf("start the control plane: %v", err)
	}
	t.Cleanup(func() {
		if err := script(t, "down.sh").Run(); err != nil {
			t.Errorf("stop the control plane: %v", err)
		}
	})
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(runDir, "kubeconfig", "admin.kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The publishers' controllers log every sync above level 1.
	ctx := klog.NewContext(context.Background(), ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(1))))
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()

	// Models of every kind among the nodes: A100s (no 64 GiB, other
	// profiles), A30s (four GPUs, 6 GiB MIG slices), L40S (no MIG at all)
	// and a node of two models; bursts sized so that several pods meet on
	// a GPU or node, and every MIG burst fits the MIG-capable nodes alone.
	rep, err := fleet.Run(ctx, fleet.Config{
		Client: client, Token: cfg.BearerToken, RunDir: runDir,
		Nodes: 50, Models: []string{"dgxa100", "dgxh100", "dgxh200", "dgxb200", "mixed", "a30", "l40s"}, SharedGPUs: true,
		Inventories: fleet.SimulatedInventories(),
		Bursts: []fleet.Burst{
			{Workload: "whole", PodsPerNode: 4}, {Workload: "mig-1g", PodsPerNode: 8}, {Workload: "mig-3g", PodsPerNode: 2},
			{Workload: "mig-7g", PodsPerNode: 2}, {Workload: "first-available", PodsPerNode: 2},
			{Workload: "cel", PodsPerNode: 1}, {Workload: "share", PodsPerNode: 4},
		},
		// Steady traffic of every kind, pods meeting on nodes as they come
		// and go, checked every few seconds while they run.
		Churns: []fleet.Churn{{
			Mix: []fleet.WorkloadWeight{
				{Workload: "whole", Weight: 2}, {Workload: "mig-1g", Weight: 2}, {Workload: "mig-3g", Weight: 1},
				{Workload: "first-available", Weight: 1}, {Workload: "share", Weight: 1},
			},
			Rate: 10, Lifetime: 5 * time.Second, Duration: 20 * time.Second, Seed: 1,
		}},
		ChurnCheck: 3 * time.Second,
		LeaseRenew: 10 * time.Second, Settle: time.Second, Timeout: 5 * time.Minute,
	})
	if err != nil {
		t.Fatalf("run the fleet: %v", err)
	}
	checkReport(t, rep)
	if len(rep.Churns) != 1 {
		t.Fatalf("%d churns ran, want 1", len(rep.Churns))
	}
	if rep.Taint.TaintObjects == 0 || rep.Taint.ClearObjects == 0 {
		t.Errorf("a taint on one GPU and its clearing rewrote %d and %d slices, want at least one each", rep.Taint.TaintObjects, rep.Taint.ClearObjects)
	}

	// docs/fleet.md's steering recipe, on the same control plane: a fifth
	// of the nodes offer MIG only, tainted and labelled; the others whole
	// GPUs. Every MIG pod must find a MIG node (more 1g pods than one MIG
	// node holds), and no pod may land where the recipe does not put it.
	rep, err = fleet.Run(ctx, fleet.Config{
		Client: client, Token: cfg.BearerToken, RunDir: runDir,
		Nodes: 20, Models: []string{"dgxh100"}, SharedGPUs: true,
		Labels:   map[string]string{names.DeviceKindsLabel: "whole"},
		MIGNodes: 4, MIGLabels: map[string]string{names.DeviceKindsLabel: "mig"}, Steer: true,
		Inventories: fleet.SimulatedInventories(),
		Bursts: []fleet.Burst{
			{Workload: "whole", PodsPerNode: 4}, {Workload: "mig-1g", PodsPerNode: 4}, {Workload: "mig-3g", PodsPerNode: 1},
		},
		Churns: []fleet.Churn{{
			Mix:  []fleet.WorkloadWeight{{Workload: "whole", Weight: 1}, {Workload: "mig-1g", Weight: 1}},
			Rate: 10, Lifetime: 3 * time.Second, Duration: 10 * time.Second, Seed: 1,
		}},
		ChurnCheck: 3 * time.Second,
		LeaseRenew: 10 * time.Second, Settle: time.Second, Timeout: 3 * time.Minute,
	})
	if err != nil {
		t.Fatalf("run the steered fleet: %v", err)
	}
	checkReport(t, rep)
	if want := (16*8 + 4*200) / 20.0; rep.DevicesPerNode != want {
		t.Errorf("the steered fleet publishes %.1f devices per node, want %.1f (16 nodes of 8 whole GPUs, 4 of 200 MIG devices)", rep.DevicesPerNode, want)
	}
}

// checkReport fails the test for every pod not bound, over-committed or
// misplaced, and every claim not released.
func checkReport(t *testing.T, rep *fleet.Report) {
	t.Helper()
	var out strings.Builder
	fleet.Print(&out, rep)
	t.Log("\n" + out.String())
	for _, b := range rep.Bursts {
		if b.Bound != b.Pods {
			t.Errorf("burst %s: %d of %d pods bound", b.Workload, b.Bound, b.Pods)
		}
		for _, v := range b.Violations {
			t.Errorf("burst %s: %s", b.Workload, v)
		}
		for _, m := range b.Misplaced {
			t.Errorf("burst %s: %s", b.Workload, m)
		}
		if !b.Released {
			t.Errorf("burst %s: claims left after the pods were deleted", b.Workload)
		}
	}
	for _, c := range rep.Churns {
		if c.Created == 0 || c.Bound != c.Created {
			t.Errorf("churn %s: %d of %d pods bound", c.Mix, c.Bound, c.Created)
		}
		if c.Checks == 0 {
			t.Errorf("churn %s: allocations never checked while pods ran", c.Mix)
		}
		for _, v := range c.Violations {
			t.Errorf("churn %s: %s", c.Mix, v)
		}
		if !c.Released {
			t.Errorf("churn %s: claims left after the pods were deleted", c.Mix)
		}
	}
}
