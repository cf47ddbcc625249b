// Package draplugin holds what the two kubelet plugins (package driver,
// gpu.nvidia.com, and package computedomain/node/plugin,
// compute-domain.nvidia.com) share of serving the kubelet through
// kubeletplugin.
package draplugin

import (
	"sync"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
)

// PrepareAll prepares the claims of a PrepareResourceClaims call at once,
// each with prepare in its own goroutine, and returns the results by
// claim UID once every prepare has returned. prepare serialises what must
// be (calls for one claim, or for one GPU), observes its metrics and logs
// its failure.
func PrepareAll(claims []*resourceapi.ResourceClaim, prepare func(*resourceapi.ResourceClaim) kubeletplugin.PrepareResult) map[types.UID]kubeletplugin.PrepareResult {
	return forEach(claims, func(c *resourceapi.ResourceClaim) types.UID { return c.UID }, prepare)
}

// UnprepareAll is PrepareAll for the claims of an UnprepareResourceClaims
// call.
func UnprepareAll(claims []kubeletplugin.NamespacedObject, unprepare func(kubeletplugin.NamespacedObject) error) map[types.UID]error {
	return forEach(claims, func(c kubeletplugin.NamespacedObject) types.UID { return c.UID }, unprepare)
}

// forEach calls fn for every claim, each in its own goroutine, and returns
// what each call returned by the claim's UID when all have returned.
func forEach[C, R any](claims []C, uid func(C) types.UID, fn func(C) R) map[types.UID]R {
	results := make(map[types.UID]R, len(claims))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, claim := range claims {
		wg.Go(func() {
			r := fn(claim)
			mu.Lock()
			results[uid(claim)] = r
			mu.Unlock()
		})
	}
	wg.Wait()
	return results
}
