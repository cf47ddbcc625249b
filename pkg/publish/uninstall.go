package publish

import (
	"context"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ParseDaemonSet splits ref, the NAMESPACE/NAME of the DaemonSet that runs
// a plugin (its --daemonset flag).
func ParseDaemonSet(ref string) (namespace, name string, err error) {
	namespace, name, ok := strings.Cut(ref, "/")
	if !ok || namespace == "" || name == "" || strings.Contains(name, "/") {
		return "", "", fmt.Errorf("DaemonSet %q: want NAMESPACE/NAME", ref)
	}
	return namespace, name, nil
}

// Uninstalling returns the function that tells, as a plugin stops, whether
// its DaemonSet ref (NAMESPACE/NAME) is gone or being deleted: an
// uninstall of the driver, after which the plugin removes its node's pool
// (RemovePool), not a restart or an upgrade, which keep it. An empty ref
// returns nil: the pool is always kept.
func Uninstalling(client kubernetes.Interface, ref string) (func(context.Context) (bool, error), error) {
	if ref == "" {
		return nil, nil
	}
	ns, name, err := ParseDaemonSet(ref)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) (bool, error) {
		ds, err := client.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return true, nil
		case err != nil:
			return false, fmt.Errorf("get DaemonSet %s: %w", ref, err)
		}
		return ds.DeletionTimestamp != nil, nil
	}, nil
}
