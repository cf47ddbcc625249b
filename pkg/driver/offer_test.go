package driver

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// TestOfferLabels: the node's labels choose what the first model offers;
// a change is applied, a label the plugin cannot read is refused with a
// Warning Event and changes nothing.
func TestOfferLabels(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	f := newNodeFixture(t)
	node, err := f.client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Labels = map[string]string{names.DeviceKindsLabel: names.KindWhole}
	if _, err := f.client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	d := f.newDriver(ctx)
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = d.Wait() }()
	devices := func() int {
		_, m := d.state.current()
		return m.Stats().Devices
	}
	if n := devices(); n != 8 {
		t.Fatalf("labelled whole only, the first model has %d devices, want the 8 GPUs", n)
	}
	// What the publisher wrote first is that model: the slices it creates
	// never held more.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		published := 0
		for _, s := range f.slices() {
			published += len(s.Spec.Devices)
		}
		if published > 8 {
			t.Fatalf("labelled whole only, %d devices published", published)
		}
		if published == 8 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never published the 8 GPUs")
		}
	}
	for i, s := range []struct {
		labels      map[string]string
		wantChanged bool
		wantDevices int
		// wantEvents counts the Events recorded so far.
		wantEvents int
		// clearEvents deletes the Events before the step (the fake
		// client names no second Event of a GenerateName); eventPrefix is
		// the first Event's start, if not the device kinds label's refusal.
		clearEvents bool
		eventPrefix string
		// wantShared says whether gpu-0 allows multiple allocations
		// (consumable shares).
		wantShared bool
	}{
		{labels: map[string]string{names.DeviceKindsLabel: "whole_mig", names.MIGProfilesLabel: "7g"}, wantChanged: true, wantDevices: 16},
		{labels: map[string]string{names.DeviceKindsLabel: "whole_mig", names.MIGProfilesLabel: "7g"}, wantChanged: false, wantDevices: 16},
		{labels: map[string]string{names.DeviceKindsLabel: "all"}, wantChanged: false, wantDevices: 16, wantEvents: 1},
		{labels: map[string]string{names.DeviceKindsLabel: "whole_mig", names.MIGProfilesLabel: "7g", names.ConsumableSharesLabel: "4"}, wantChanged: true, wantDevices: 16, wantEvents: 1, wantShared: true},
		{labels: map[string]string{names.DeviceKindsLabel: "whole_mig", names.MIGProfilesLabel: "7g", names.ConsumableSharesLabel: "some"}, wantChanged: false, wantDevices: 16, wantEvents: 1, wantShared: true,
			clearEvents: true, eventPrefix: "OfferLabelRefused: label " + names.ConsumableSharesLabel + `="some": "some" is not`},
		{labels: nil, wantChanged: true, wantDevices: 216, wantEvents: 1, eventPrefix: "OfferLabelRefused: label " + names.ConsumableSharesLabel},
	} {
		if s.clearEvents {
			list, err := f.client.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range list.Items {
				if err := f.client.CoreV1().Events(metav1.NamespaceDefault).Delete(ctx, e.Name, metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
			}
		}
		if changed := d.applyOffer(ctx, s.labels); changed != s.wantChanged {
			t.Errorf("step %d: changed %t, want %t", i, changed, s.wantChanged)
		}
		if err := d.rebuildAndPublish(context.WithoutCancel(ctx)); err != nil {
			t.Fatal(err)
		}
		if n := devices(); n != s.wantDevices {
			t.Errorf("step %d: %d devices, want %d", i, n, s.wantDevices)
		}
		events := f.events()
		if len(events) != s.wantEvents {
			t.Errorf("step %d: events %q, want %d", i, events, s.wantEvents)
		}
		if s.eventPrefix == "" {
			s.eventPrefix = "OfferLabelRefused: label " + names.DeviceKindsLabel
		}
		if s.wantEvents > 0 && !strings.HasPrefix(events[0], s.eventPrefix) {
			t.Errorf("step %d: event %q, want an OfferLabelRefused naming the label", i, events[0])
		}
		_, m := d.state.current()
		shared := false
		for _, sl := range m.Slices {
			for _, dev := range sl.Devices {
				if dev.Name == "gpu-0" {
					shared = dev.AllowMultipleAllocations != nil && *dev.AllowMultipleAllocations
				}
			}
		}
		if shared != s.wantShared {
			t.Errorf("step %d: gpu-0 allows multiple allocations: %t, want %t", i, shared, s.wantShared)
		}
	}
}
