package domains

import (
	"context"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
)

func TestGetAndOnChange(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cd := &v1beta1.ComputeDomain{ObjectMeta: metav1.ObjectMeta{Name: "cd", Namespace: "team-a", UID: types.UID("aaaa-0001")},
		Status: v1beta1.ComputeDomainStatus{Nodes: []*v1beta1.ComputeDomainNode{{Name: "n", IPAddress: "10.0.0.1", CliqueID: "u.1"}}}}
	u, err := v1beta1.ToUnstructured(cd)
	if err != nil {
		t.Fatal(err)
	}
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{v1beta1.Resource: "ComputeDomainList"}, u)
	inf, err := New(client)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	if err := inf.OnChange(func(uid string) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, uid)
	}); err != nil {
		t.Fatal(err)
	}
	if err := inf.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer inf.Shutdown()
	got, err := inf.Get("aaaa-0001")
	if err != nil || got == nil || got.Namespace != "team-a" || len(got.Status.Nodes) != 1 || got.Status.Nodes[0].IPAddress != "10.0.0.1" {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	if got, err := inf.Get("ffff-0000"); got != nil || err != nil {
		t.Fatalf("Get of an unknown UID = %+v, %v", got, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(seen)
		mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("OnChange not called for the existing domain")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
