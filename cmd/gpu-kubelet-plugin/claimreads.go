package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/gpu-dra/gpu-dra-driver/pkg/claimreader"
)

// identityCheckTimeout bounds the start-up question of who the
// --claim-reader-kubeconfig identity is.
const identityCheckTimeout = 10 * time.Second

// nodeClaimReads returns client with its claim reads made as the node,
// with the kubelet's kubeconfig at path (--claim-reader-kubeconfig). A
// kubeconfig that cannot be read, or files it names that cannot, is an
// error, and so is an identity the API server refuses or says is not the
// node nodeName's. An API server that cannot be asked is logged: the
// plugin starts (it can unprepare without one), and a wrong identity
// would show in its prepares' errors.
//
// client-go re-reads the client certificate and key files a kubeconfig
// names when the kubelet rotates them, and a token file; a kubeconfig
// whose credentials come from an exec plugin needs that plugin in the
// image.
func nodeClaimReads(ctx context.Context, client kubernetes.Interface, path, nodeName string) (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("--claim-reader-kubeconfig %s: %w", path, err)
	}
	cfg.UserAgent = "gpu-kubelet-plugin"
	node, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("--claim-reader-kubeconfig %s: %w", path, err)
	}
	checkCtx, cancel := context.WithTimeout(ctx, identityCheckTimeout)
	defer cancel()
	logger := klog.FromContext(ctx)
	if err := claimreader.CheckIdentity(checkCtx, node, nodeName); err != nil {
		if errors.Is(err, claimreader.ErrNotTheNode) || apierrors.IsUnauthorized(err) {
			return nil, fmt.Errorf("--claim-reader-kubeconfig %s: %w", path, err)
		}
		logger.Error(err, "Could not check the identity of --claim-reader-kubeconfig; starting anyway", "kubeconfig", path)
	}
	logger.Info("Reading claims as the node", "kubeconfig", path, "server", cfg.Host)
	return claimreader.New(client, node), nil
}
