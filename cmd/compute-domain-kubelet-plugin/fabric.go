package main

import "context"

// readFabric reads the node's NVLink clique ("<cluster UUID>.<clique ID>",
// "" without fabric) with the NVML library at libraryPath. The lead sets it
// to pkg/computedomain/fabric.Read when that package is merged:
//
//	var readFabric = fabric.Read
//
// Until then the plugin publishes an empty pool unless --clique-id is set.
var readFabric func(ctx context.Context, libraryPath string) (string, error)
