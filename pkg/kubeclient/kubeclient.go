// Package kubeclient finds how the driver's commands reach the API server:
// the file of their --kubeconfig flag, else the pod's in-cluster
// configuration.
package kubeclient

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Config returns the configuration in file, or for "" the in-cluster one
// (the pod's service account). userAgent names the command in the API
// server's logs and audit.
func Config(file, userAgent string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if file == "" {
		if cfg, err = rest.InClusterConfig(); err != nil {
			return nil, fmt.Errorf("in-cluster configuration (or give --kubeconfig): %w", err)
		}
	} else if cfg, err = clientcmd.BuildConfigFromFlags("", file); err != nil {
		return nil, fmt.Errorf("--kubeconfig %s: %w", file, err)
	}
	cfg.UserAgent = userAgent
	return cfg, nil
}
