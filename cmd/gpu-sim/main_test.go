package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/sim/miguuid"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

// TestSMIGPUsNameTheMIGDevicesTheSimulatorMakes: the simulated nvidia-smi's
// table names every MIG device the simulated node creates with the profile
// the driver reads, through what the device's UUID carries.
func TestSMIGPUsNameTheMIGDevicesTheSimulatorMakes(t *testing.T) {
	for _, model := range []string{"dgxh100", "dgxa100", "a30"} {
		t.Run(model, func(t *testing.T) {
			dir := t.TempDir()
			admin, err := sim.Open(model, dir)
			if err != nil {
				t.Fatal(err)
			}
			if err := admin.SetMIGMode(1, true); err != nil {
				t.Fatal(err)
			}
			if err := admin.Reset(1); err != nil {
				t.Fatal(err)
			}
			n, err := sim.Open(model, dir)
			if err != nil {
				t.Fatal(err)
			}
			node, err := nvmlnode.NewNode(n)
			if err != nil {
				t.Fatal(err)
			}
			defer node.Close()
			ctx := context.Background()
			inv, err := node.Inventory(ctx)
			if err != nil {
				t.Fatal(err)
			}
			g := inv.GPUs[1]
			made := 0
			for _, p := range g.MIGProfiles {
				if len(p.Placements) == 0 || p.MemorySlices > g.MemorySlices/2 {
					continue
				}
				if _, err := node.CreateMIG(ctx, gpu.MIGRequest{ParentUUID: g.UUID, ProfileID: p.ID, Placement: p.Placements[len(p.Placements)-1]}); err == nil {
					made++
				}
			}
			if inv, err = node.Inventory(ctx); err != nil {
				t.Fatal(err)
			}
			table := smiGPUs(inv)
			if len(table) != len(inv.GPUs) || made == 0 || len(inv.GPUs[1].MIGInstances) != made {
				t.Fatalf("%d GPUs in the table for %d, %d MIG devices made, %d read", len(table), len(inv.GPUs), made, len(inv.GPUs[1].MIGInstances))
			}
			for _, m := range inv.GPUs[1].MIGInstances {
				w, ok := miguuid.Parse(m.UUID)
				if !ok || w.GPU != 1 || table[w.GPU].UUID != m.ParentUUID || table[w.GPU].MIGProfiles[strconv.Itoa(w.GIProfile)] != m.Profile {
					t.Errorf("MIG device %s (%s on %s): carries %+v (%v), the table names %q", m.UUID, m.Profile, m.ParentUUID, w, ok, table[1].MIGProfiles[strconv.Itoa(w.GIProfile)])
				}
			}
		})
	}
}

// TestMIGCreateAndDestroy: gpu-sim mig create makes a MIG device of a
// profile on a GPU in MIG mode, as an administrator does, prints its UUID
// and keeps the capability files under --proc-root those of the GPU's
// instances; mig destroy removes one by UUID; bad arguments are refused
// with an error naming them. The steps run in order on one node.
func TestMIGCreateAndDestroy(t *testing.T) {
	dir := t.TempDir()
	state, proc := filepath.Join(dir, "state"), filepath.Join(dir, "proc")
	procRoot := migMinorsRoot(t, proc)
	run := func(args ...string) (string, error) {
		cmd := newRootCommand()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(append([]string{"--model", "dgxh100", "--state-dir", state}, args...))
		err := cmd.Execute()
		return out.String(), err
	}
	uuidLine := regexp.MustCompile(`^MIG-[0-9a-f-]{36}\n$`)
	// made are the UUIDs printed, by step name; {name} in a later
	// step's arguments is replaced by that step's UUID.
	made := map[string]string{}
	for _, step := range []struct {
		name string
		args []string
		// wantErr is a part of the error; empty: the step succeeds.
		wantErr string
		// wantUUID: the step prints a new MIG device's UUID.
		wantUUID bool
		// live is the number of MIG devices on GPU 1 after the step.
		live int
	}{
		{name: "MIG mode off", args: []string{"mig", "create", "1", "1g.10gb"}, wantErr: "GPU 1 is not in MIG mode"},
		{name: "MIG mode on", args: []string{"mig-mode", "1", "on"}},
		{name: "3g", args: []string{"mig", "create", "gpu-1", "3g.40gb", "--start", "4", "--proc-root", procRoot}, wantUUID: true, live: 1},
		{name: "1g", args: []string{"mig", "create", "1", "1g.10gb", "--proc-root", procRoot}, wantUUID: true, live: 2},
		{name: "1g at 1", args: []string{"mig", "create", "1", "1g.10gb", "--start", "1"}, wantUUID: true, live: 3},
		{name: "occupied", args: []string{"mig", "create", "1", "1g.10gb", "--start", "5"}, wantErr: "1g.10gb at 5 on GPU 1", live: 3},
		{name: "no such start", args: []string{"mig", "create", "1", "3g.40gb", "--start", "2"}, wantErr: "--start 2: 3g.40gb starts at 0, 4", live: 3},
		{name: "no such profile", args: []string{"mig", "create", "1", "5g.50gb"}, wantErr: `profile "5g.50gb": GPU 1 (NVIDIA H100 80GB HBM3) has 1g.10gb,`, live: 3},
		{name: "no such GPU", args: []string{"mig", "create", "8", "1g.10gb"}, wantErr: "GPU 8: the node has GPUs 0 to 7", live: 3},
		{name: "not a GPU", args: []string{"mig", "create", "one", "1g.10gb"}, wantErr: `GPU "one": want an index`, live: 3},
		{name: "no profile", args: []string{"mig", "create", "1"}, wantErr: "accepts 2 arg(s)", live: 3},
		{name: "4g where the 1g are", args: []string{"mig", "create", "1", "4g.40gb"}, wantErr: "4g.40gb at 0 on GPU 1", live: 3},
		{name: "destroy unknown", args: []string{"mig", "destroy", "1", "MIG-00000000-0000-0000-0000-000000000000"}, wantErr: `MIG device "MIG-00000000-0000-0000-0000-000000000000" is not on GPU 1`, live: 3},
		{name: "destroy on another GPU", args: []string{"mig", "destroy", "0", "{3g}"}, wantErr: "GPU 0 is not in MIG mode", live: 3},
		{name: "MIG mode stays while devices exist", args: []string{"mig-mode", "1", "off"}, wantErr: "ERROR_IN_USE", live: 3},
		{name: "destroy 3g", args: []string{"mig", "destroy", "1", "{3g}", "--proc-root", procRoot}, live: 2},
		{name: "destroy 1g", args: []string{"mig", "destroy", "1", "{1g}", "--proc-root", procRoot}, live: 1},
		{name: "destroy 1g at 1", args: []string{"mig", "destroy", "1", "{1g at 1}", "--proc-root", procRoot}, live: 0},
		{name: "MIG mode back off", args: []string{"mig-mode", "1", "off"}},
	} {
		args := make([]string, len(step.args))
		for i, a := range step.args {
			if strings.HasPrefix(a, "{") {
				a = made[strings.Trim(a, "{}")]
			}
			args[i] = a
		}
		out, err := run(args...)
		switch {
		case step.wantErr == "" && err != nil:
			t.Fatalf("%s: gpu-sim %v: %v\n%s", step.name, args, err, out)
		case step.wantErr != "" && (err == nil || !strings.Contains(err.Error(), step.wantErr)):
			t.Fatalf("%s: gpu-sim %v: error %v, want one with %q", step.name, args, err, step.wantErr)
		case step.wantUUID && !uuidLine.MatchString(out):
			t.Fatalf("%s: gpu-sim %v printed %q, want a MIG UUID", step.name, args, out)
		case !step.wantUUID && err == nil && out != "":
			t.Fatalf("%s: gpu-sim %v printed %q, want nothing", step.name, args, out)
		}
		if step.wantUUID {
			made[step.name] = strings.TrimSpace(out)
		}
		n, err := sim.Open("dgxh100", state)
		if err != nil {
			t.Fatal(err)
		}
		inv, err := inventory(n)
		if err != nil {
			t.Fatal(err)
		}
		g := inv.GPUs[1]
		if len(g.MIGInstances) != step.live {
			t.Fatalf("%s: %d MIG devices on GPU 1, want %d: %+v", step.name, len(g.MIGInstances), step.live, g.MIGInstances)
		}
		if step.wantUUID {
			found := false
			for _, m := range g.MIGInstances {
				found = found || m.UUID == made[step.name]
			}
			if !found {
				t.Fatalf("%s: printed %s, not one of GPU 1's MIG devices %+v", step.name, made[step.name], g.MIGInstances)
			}
		}
	}
	// The capability files followed the instances: none is left.
	caps, err := filepath.Glob(filepath.Join(procRoot, "proc/driver/nvidia/capabilities/gpu1/mig/gi*"))
	if err != nil || len(caps) != 0 {
		t.Errorf("capability files left: %v (%v)", caps, err)
	}
}

// TestMIGCreateWritesCapabilities: with --proc-root, the new instance's
// capability files exist, as the kernel driver shows them.
func TestMIGCreateWritesCapabilities(t *testing.T) {
	dir := t.TempDir()
	state, proc := filepath.Join(dir, "state"), filepath.Join(dir, "proc")
	procRoot := migMinorsRoot(t, proc)
	for _, args := range [][]string{{"mig-mode", "2", "on"}, {"mig", "create", "2", "2g.20gb", "--proc-root", procRoot}} {
		cmd := newRootCommand()
		cmd.SetOut(&bytes.Buffer{})
		cmd.SetArgs(append([]string{"--model", "dgxh100", "--state-dir", state}, args...))
		if err := cmd.Execute(); err != nil {
			t.Fatalf("gpu-sim %v: %v", args, err)
		}
	}
	for _, f := range []string{"gi1/access", "gi1/ci0/access"} {
		if _, err := os.Stat(filepath.Join(procRoot, "proc/driver/nvidia/capabilities/gpu2/mig", f)); err != nil {
			t.Errorf("capability file %s: %v", f, err)
		}
	}
}

// migMinorsRoot makes a /proc root in dir with the kernel's mig-minors
// table of a node of eight GPUs, as gpu-sim host makes it, and returns it.
func migMinorsRoot(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	for _, e := range simhost.MIGMinors([]int{0, 1, 2, 3, 4, 5, 6, 7}) {
		fmt.Fprintf(&b, "%s %d\n", e.Key, e.Minor)
	}
	path := filepath.Join(dir, "proc/driver/nvidia-caps/mig-minors")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}
