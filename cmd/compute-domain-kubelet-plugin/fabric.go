package main

import "github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/fabric"

// readFabric reads the node's NVLink clique ("<cluster UUID>.<clique ID>",
// "" without fabric) with the NVML library at libraryPath: a variable, so
// that tests can replace the hardware.
var readFabric = fabric.Read
