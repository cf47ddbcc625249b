package kubectlgpu

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clienttesting "k8s.io/client-go/testing"
)

func TestExitCodes(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		apiError  bool // the API server fails every list
		wantCode  int
		wantError string // in stderr, after "error: "
	}{
		{name: "help", args: nil, wantCode: exitOK},
		{name: "ls", args: []string{"ls"}, wantCode: exitOK},
		{name: "taint", args: []string{"taint", "node-a/gpu-3", "--reason", "fan"}, wantCode: exitOK},
		{name: "untaint nothing", args: []string{"untaint", "node-a"}, wantCode: exitOK},
		{name: "clear", args: []string{"clear", "node-a/gpu-3"}, wantCode: exitOK},
		{name: "drain done", args: []string{"drain", "node-a/gpu-4", "--timeout=1m"}, wantCode: exitOK},
		{name: "drain timeout", args: []string{"drain", "node-a/gpu-3", "--timeout=1m"}, wantCode: exitDrainTimeout, wantError: "timed out"},
		{name: "unknown node", args: []string{"ls", "node-x"}, wantCode: exitUsage, wantError: `unknown node "node-x"`},
		{name: "unknown node taint", args: []string{"taint", "node-x", "--reason", "x"}, wantCode: exitUsage, wantError: `unknown node "node-x"`},
		{name: "unknown GPU", args: []string{"drain", "node-a/gpu-5"}, wantCode: exitUsage, wantError: "it has gpu-3, gpu-4, gpu-30"},
		{name: "bad target", args: []string{"untaint", "node-a/gpu-x"}, wantCode: exitUsage, wantError: "invalid GPU"},
		{name: "no target", args: []string{"taint", "--reason", "x"}, wantCode: exitUsage, wantError: "exactly one"},
		{name: "two targets", args: []string{"clear", "a", "b"}, wantCode: exitUsage, wantError: "exactly one"},
		{name: "no reason", args: []string{"taint", "node-a/gpu-3"}, wantCode: exitUsage, wantError: "--reason is required"},
		{name: "long reason", args: []string{"taint", "node-a/gpu-3", "--reason", strings.Repeat("r", 64)}, wantCode: exitUsage, wantError: "invalid --reason"},
		{name: "bad effect", args: []string{"taint", "node-a/gpu-3", "--reason", "x", "--effect", "PreferNoSchedule"}, wantCode: exitUsage, wantError: "invalid --effect"},
		{name: "bad output", args: []string{"ls", "-o", "table"}, wantCode: exitUsage, wantError: "invalid --output"},
		{name: "bad flag", args: []string{"ls", "--nope"}, wantCode: exitUsage, wantError: "unknown flag"},
		{name: "bad timeout", args: []string{"drain", "node-a", "--timeout=-1s"}, wantCode: exitUsage, wantError: "--timeout"},
		{name: "unknown command", args: []string{"cordon", "node-a"}, wantCode: exitUsage, wantError: `unknown command "cordon"`},
		{name: "API failure", args: []string{"ls"}, apiError: true, wantCode: exitFailure, wantError: "list ResourceSlices: boom"},
		{name: "API failure taint", args: []string{"taint", "node-a", "--reason", "x"}, apiError: true, wantCode: exitFailure, wantError: "boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			claims, pods := drainFixture()
			c := fakeClient(t, nodeSlices(), claims, nil, pods)
			if tt.apiError {
				c.PrependReactor("list", "*", func(clienttesting.Action) (bool, runtime.Object, error) {
					return true, nil, errors.New("boom")
				})
			}
			a, out, errOut := testApp(c)
			code := a.execute(context.Background(), tt.args)
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.wantCode, out, errOut)
			}
			if tt.wantError != "" && (!strings.HasPrefix(errOut.String(), "error: ") || !strings.Contains(errOut.String(), tt.wantError)) {
				t.Errorf("stderr %q, want \"error: …%s…\"", errOut, tt.wantError)
			}
			if tt.wantCode == exitOK && errOut.Len() > 0 {
				t.Errorf("stderr %q on success", errOut)
			}
		})
	}
}

func TestClientErrorIsFailure(t *testing.T) {
	a, _, errOut := testApp(nil)
	a.newClient = func() (kubernetes.Interface, error) {
		return nil, fmt.Errorf("load kubeconfig: %w", errors.New("no such file"))
	}
	if code := a.execute(context.Background(), []string{"ls"}); code != exitFailure {
		t.Errorf("exit code %d, want %d", code, exitFailure)
	}
	if got := errOut.String(); got != "error: load kubeconfig: no such file\n" {
		t.Errorf("stderr %q", got)
	}
}

func TestHelpDocumentsExitCodes(t *testing.T) {
	for _, cmd := range [][]string{{"--help"}, {"drain", "--help"}, {"ls", "--help"}} {
		a, out, _ := testApp(nil)
		if code := a.execute(context.Background(), cmd); code != exitOK {
			t.Fatalf("%v: exit code %d", cmd, code)
		}
		if !strings.Contains(out.String(), "3  drain timed out") || !strings.Contains(out.String(), "kubectl gpu") {
			t.Errorf("%v help lacks exit codes:\n%s", cmd, out)
		}
	}
}

func TestClear(t *testing.T) {
	tests := []struct {
		name    string
		target  string
		wantKey string
	}{
		{"node", "node-a", "gpu.nvidia.com/health-cleared"},
		{"GPU", "node-a/gpu-30", "gpu.nvidia.com/health-cleared-gpu-30"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fakeClient(t, nodeSlices(), nil, nil, nil)
			a, out, errOut := testApp(c)
			now := t0.Add(250 * time.Millisecond)
			a.clock = &stepClock{now: now}
			if code := a.execute(context.Background(), []string{"clear", tt.target}); code != exitOK {
				t.Fatalf("exit code %d: %s", code, errOut)
			}
			node, err := c.CoreV1().Nodes().Get(context.Background(), "node-a", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			got := node.Annotations[tt.wantKey]
			// The plugin reads the value with time.RFC3339; sub-second
			// precision must survive.
			if at, err := time.Parse(time.RFC3339, got); err != nil || !at.Equal(now) || len(node.Annotations) != 1 || !strings.HasSuffix(got, "Z") {
				t.Errorf("annotations %v (%v), want %s=%s in UTC", node.Annotations, err, tt.wantKey, now)
			}
			if !strings.Contains(out.String(), tt.wantKey) {
				t.Errorf("output %q", out)
			}
			var sawMergePatch bool
			for _, act := range c.Actions() {
				if p, ok := act.(clienttesting.PatchAction); ok && p.GetPatchType() == "application/merge-patch+json" {
					sawMergePatch = true
				}
			}
			if !sawMergePatch {
				t.Errorf("no merge patch in %v", c.Actions())
			}
		})
	}
}

func TestClearUnknownNodeObject(t *testing.T) {
	slices := nodeSlices()
	slices = append(slices, slice("c-0", "node-c", gpuDevice(0)))
	c := fakeClient(t, slices, nil, nil, nil)
	a, _, errOut := testApp(c)
	if code := a.execute(context.Background(), []string{"clear", "node-c"}); code != exitUsage {
		t.Fatalf("exit code %d, want %d: %s", code, exitUsage, errOut)
	}
}
