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

// TestAll: PrepareAll and UnprepareAll call for every claim at once and
// return each call's result under its claim's UID, a failure only there.
func TestAll(t *testing.T) {
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
			var refs []kubeletplugin.NamespacedObject
			want := map[types.UID]error{}
			for _, uid := range tc.uids {
				claims = append(claims, &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{UID: uid, Name: "claim-" + string(uid)}})
				refs = append(refs, kubeletplugin.NamespacedObject{UID: uid})
				want[uid] = nil
				if tc.fail[uid] {
					want[uid] = failed
				}
			}
			call := func(uid types.UID, meet func() bool) error {
				switch {
				case !meet():
					return errors.New("not called at once with the others")
				case tc.fail[uid]:
					return failed
				}
				return nil
			}

			meet := together(len(claims))
			prepared := PrepareAll(claims, func(c *resourceapi.ResourceClaim) kubeletplugin.PrepareResult {
				if err := call(c.UID, meet); err != nil {
					return kubeletplugin.PrepareResult{Err: err}
				}
				return kubeletplugin.PrepareResult{Devices: []kubeletplugin.Device{{DeviceName: c.Name}}}
			})
			got := map[types.UID]error{}
			for uid, r := range prepared {
				got[uid] = r.Err
				if r.Err == nil && (len(r.Devices) != 1 || r.Devices[0].DeviceName != "claim-"+string(uid)) {
					t.Errorf("prepared %s: devices %v, want its own", uid, r.Devices)
				}
			}
			if !maps.Equal(got, want) {
				t.Errorf("prepare results %v, want %v", got, want)
			}

			meet = together(len(refs))
			if got := UnprepareAll(refs, func(c kubeletplugin.NamespacedObject) error { return call(c.UID, meet) }); !maps.Equal(got, want) {
				t.Errorf("unprepare results %v, want %v", got, want)
			}
		})
	}
}
