package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/prepare"
)

// uninstalling tells, from --daemonset, whether the plugin's DaemonSet is
// gone or being deleted: an uninstall, not a restart or an upgrade.
func (o *options) uninstalling(client kubernetes.Interface) (func(context.Context) (bool, error), error) {
	if o.daemonSet == "" {
		return nil, nil
	}
	ns, name, ok := strings.Cut(o.daemonSet, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return nil, fmt.Errorf("--daemonset %q: want NAMESPACE/NAME", o.daemonSet)
	}
	return func(ctx context.Context) (bool, error) {
		ds, err := client.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return true, nil
		case err != nil:
			return false, fmt.Errorf("get DaemonSet %s: %w", o.daemonSet, err)
		}
		return ds.DeletionTimestamp != nil, nil
	}, nil
}

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
