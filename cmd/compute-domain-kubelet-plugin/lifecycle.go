package main

import (
	"os"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/prepare"
)

// stepNames are the steps --test-crash-at accepts.
func stepNames() []string {
	var out []string
	for _, s := range []prepare.Step{prepare.StepRecorded, prepare.StepDevNodes, prepare.StepDaemonDir, prepare.StepCDI, prepare.StepCompleted, prepare.StepUndone} {
		out = append(out, string(s))
	}
	return out
}

// crashAfter kills the process at a step, as a node failure would.
func crashAfter(at prepare.Step) func(prepare.Step) {
	return func(s prepare.Step) {
		if s == at {
			klog.Background().Info("Killing the plugin for a fault-injection test", "step", s)
			klog.Flush()
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
	}
}
