package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// inventory prints what the plugin publishes, the GPUs' topology
// attributes included, read from --sys-root as the plugin reads them.
func TestInventoryPrintsTopology(t *testing.T) {
	sysRoot := simulatedSysRoot(t)
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{[]string{"inventory", "--simulate=dgxh100", "--node-name=n1", "--sys-root=" + sysRoot}, true},
		{[]string{"inventory", "--simulate=dgxh100", "--node-name=n1", "--sys-root=" + t.TempDir()}, false},
	} {
		cmd := newRootCommand()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetArgs(tc.args)
		err := cmd.ExecuteContext(context.Background())
		if !tc.want {
			if err == nil || !strings.Contains(err.Error(), "--sys-root") {
				t.Errorf("%v: error %v, want one naming --sys-root", tc.args, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		for _, attr := range []string{"resource.kubernetes.io/pcieRoot", "numaNode"} {
			if !strings.Contains(out.String(), attr) {
				t.Errorf("%v: no %s attribute in:\n%.1500s", tc.args, attr, out.String())
			}
		}
	}
}
