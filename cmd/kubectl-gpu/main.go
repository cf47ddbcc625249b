// Command kubectl-gpu is a kubectl plugin (kubectl gpu …) for cluster admins
// of the gpu.nvidia.com DRA driver; its commands and exit codes are those of
// package kubectlgpu.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/gpu-dra/gpu-dra-driver/pkg/kubectlgpu"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := kubectlgpu.Run(ctx, os.Args[1:], os.Stdout, os.Stderr, nil)
	stop()
	os.Exit(code)
}
