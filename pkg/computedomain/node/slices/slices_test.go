package slices

import (
	"context"
	"errors"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
	"github.com/gpu-dra/gpu-dra-driver/pkg/publish"
)

type fakePublisher struct{ last []resourceslice.Slice }

func (f *fakePublisher) Publish(_ context.Context, s []resourceslice.Slice) (bool, error) {
	f.last = s
	return true, nil
}

func TestRefresh(t *testing.T) {
	tests := []struct {
		name  string
		reads []struct {
			clique string
			err    error
		}
		wantDevices int
		wantClique  string
	}{
		{name: "with clique", reads: []struct {
			clique string
			err    error
		}{{clique: "uuid.1"}}, wantDevices: 2, wantClique: "uuid.1"},
		{name: "without clique", reads: []struct {
			clique string
			err    error
		}{{clique: ""}}},
		{name: "first read fails: empty pool", reads: []struct {
			clique string
			err    error
		}{{err: errors.New("nvml")}}},
		{name: "registration completes later", reads: []struct {
			clique string
			err    error
		}{{clique: ""}, {clique: "uuid.1"}}, wantDevices: 2, wantClique: "uuid.1"},
		{name: "later failure keeps the pool", reads: []struct {
			clique string
			err    error
		}{{clique: "uuid.1"}, {err: errors.New("nvml")}}, wantDevices: 2, wantClique: "uuid.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			i := 0
			pub := &fakePublisher{}
			p := New(func() (string, error) {
				r := tt.reads[i]
				i++
				return r.clique, r.err
			}, pub, time.Hour)
			for range tt.reads {
				if err := p.Refresh(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if len(pub.last) != 1 || len(pub.last[0].Devices) != tt.wantDevices || p.CliqueID() != tt.wantClique {
				t.Fatalf("published %+v, clique %q", pub.last, p.CliqueID())
			}
			for _, d := range pub.last[0].Devices {
				if d.AllowMultipleAllocations == nil || !*d.AllowMultipleAllocations {
					t.Errorf("device %s does not allow multiple allocations", d.Name)
				}
				if *d.Attributes[names.AttrCliqueID].StringValue != tt.wantClique || *d.Attributes[names.AttrID].IntValue != 0 {
					t.Errorf("device %s attributes %v", d.Name, d.Attributes)
				}
			}
		})
	}
}

// TestPublishesResourceSlice publishes through pkg/publish into a fake
// API server.
func TestPublishesResourceSlice(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", UID: "node-uid"}})
	pub := publish.New(publish.Options{DriverName: names.ComputeDomainDriverName, NodeName: "node-1", Client: client})
	defer pub.Stop()
	p := New(func() (string, error) { return "uuid.7", nil }, pub, time.Hour)
	if err := p.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) == 1 {
			s := list.Items[0]
			if s.Spec.Driver != names.ComputeDomainDriverName || s.Spec.Pool.Name != "node-1" || *s.Spec.NodeName != "node-1" || len(s.Spec.Devices) != 2 {
				t.Fatalf("slice %+v", s.Spec)
			}
			if typ := *s.Spec.Devices[0].Attributes[names.AttrType].StringValue; typ != names.TypeChannel || s.Spec.Devices[0].Name != names.ChannelDevice {
				t.Fatalf("first device %s of type %s", s.Spec.Devices[0].Name, typ)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("slices %d", len(list.Items))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
