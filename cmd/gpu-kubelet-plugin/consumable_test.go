package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/flags"
	"github.com/gpu-dra/gpu-dra-driver/pkg/gpu/nvmlnode"
	"github.com/gpu-dra/gpu-dra-driver/pkg/simhost"
)

// simulatedSysRoot is a sysfs for the simulated DGX H100's GPUs.
func simulatedSysRoot(t *testing.T) string {
	t.Helper()
	node, err := nvmlnode.Open(nvmlnode.Options{Simulate: "dgxh100"})
	if err != nil {
		t.Fatal(err)
	}
	inv, err := node.Inventory(context.Background())
	node.Close()
	if err != nil {
		t.Fatal(err)
	}
	var busIDs []string
	for _, g := range inv.GPUs {
		busIDs = append(busIDs, g.PCIBusID)
	}
	root, err := simhost.CreateSysRoot(t.TempDir(), busIDs)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// TestConsumableSharesFlag: --consumable-shares (and its environment
// twin) takes NVIDIA's values and changes what the plugin publishes; a bad
// value stops the command, naming the flag and the value.
func TestConsumableSharesFlag(t *testing.T) {
	sysRoot := simulatedSysRoot(t)
	for _, tc := range []struct {
		args    []string
		env     string
		want    string // in the printed slices
		wantErr string
	}{
		{args: []string{"--consumable-shares=4"}, want: `"shares"`},
		{args: []string{"--consumable-shares=memory"}, want: `"allowMultipleAllocations": true`},
		{env: "unlimited", want: `"allowMultipleAllocations": true`},
		{args: []string{"--consumable-shares=lots"}, wantErr: `invalid argument "lots" for "--consumable-shares"`},
		{env: "0", wantErr: `(flag --consumable-shares): invalid argument "0" for "--consumable-shares" flag: "0" is not`},
	} {
		if tc.env != "" {
			t.Setenv(flags.EnvName("consumable-shares"), tc.env)
		}
		cmd := newRootCommand()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetArgs(append([]string{"inventory", "--simulate=dgxh100", "--node-name=n1", "--shared-gpus=false", "--sys-root=" + sysRoot, "-o", "json"}, tc.args...))
		err := cmd.ExecuteContext(context.Background())
		t.Setenv(flags.EnvName("consumable-shares"), "")
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%v %s: error %v, want one with %q", tc.args, tc.env, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%v %s: %v", tc.args, tc.env, err)
		}
		if !strings.Contains(out.String(), tc.want) {
			t.Errorf("%v %s: no %s in:\n%.1500s", tc.args, tc.env, tc.want, out.String())
		}
	}
}
