package draplugin

import (
	"errors"
	"maps"
	"sync"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
)

// together returns a function that each of n callers calls, which returns
// only once all n have called it (false after a second without them): the
// calls ran at once, not one after another.
func together(n int) func() bool {
	var wg sync.WaitGroup
	wg.Add(n)
	all := make(chan struct{})
	go func() { wg.Wait(); close(all) }()
	return func() bool {
		wg.Done()
		select {
		case <-all:
			return true
		case <-time.After(time.Second):
			return false
		}
	}
}

func TestPrepareAll(t *testing.T) {
	failed := errors.New("failed")
	for _, tc := range []struct {
		name string
		uids []types.UID
		fail map[types.UID]bool
	}{
		{name: "no claims"},
		{name: "one claim", uids: []types.UID{"a"}},
		{name: "claims at once, results by UID", uids: []types.UID{"a", "b", "c"}},
		{name: "a failure is that claim's only", uids: []types.UID{"a", "b", "c"}, fail: map[types.UID]bool{"b": true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var claims []*resourceapi.ResourceClaim
			want := map[types.UID]string{}
			for _, uid := range tc.uids {
				claims = append(claims, &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{UID: uid, Name: "claim-" + string(uid)}})
				want[uid] = "claim-" + string(uid)
				if tc.fail[uid] {
					want[uid] = failed.Error()
				}
			}
			meet := together(len(claims))
			results := PrepareAll(claims, func(c *resourceapi.ResourceClaim) kubeletplugin.PrepareResult {
				if !meet() {
					return kubeletplugin.PrepareResult{Err: errors.New("not prepared at once with the others")}
				}
				if tc.fail[c.UID] {
					return kubeletplugin.PrepareResult{Err: failed}
				}
				return kubeletplugin.PrepareResult{Devices: []kubeletplugin.Device{{DeviceName: c.Name}}}
			})
			got := map[types.UID]string{}
			for uid, r := range results {
				switch {
				case r.Err != nil:
					got[uid] = r.Err.Error()
				case len(r.Devices) == 1:
					got[uid] = r.Devices[0].DeviceName
				}
			}
			if !maps.Equal(got, want) {
				t.Errorf("results %v, want %v", got, want)
			}
		})
	}
}

func TestUnprepareAll(t *testing.T) {
	failed := errors.New("failed")
	for _, tc := range []struct {
		name string
		uids []types.UID
		fail map[types.UID]bool
	}{
		{name: "no claims"},
		{name: "claims at once, results by UID", uids: []types.UID{"a", "b"}},
		{name: "a failure is that claim's only", uids: []types.UID{"a", "b", "c"}, fail: map[types.UID]bool{"a": true, "c": true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var claims []kubeletplugin.NamespacedObject
			want := map[types.UID]error{}
			for _, uid := range tc.uids {
				claims = append(claims, kubeletplugin.NamespacedObject{UID: uid})
				want[uid] = nil
				if tc.fail[uid] {
					want[uid] = failed
				}
			}
			meet := together(len(claims))
			got := UnprepareAll(claims, func(c kubeletplugin.NamespacedObject) error {
				if !meet() {
					return errors.New("not unprepared at once with the others")
				}
				if tc.fail[c.UID] {
					return failed
				}
				return nil
			})
			if !maps.Equal(got, want) {
				t.Errorf("results %v, want %v", got, want)
			}
		})
	}
}
