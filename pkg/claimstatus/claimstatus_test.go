package claimstatus

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	resourceac "k8s.io/client-go/applyconfigurations/resource/v1"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	statusv1 "github.com/gpu-dra/gpu-dra-driver/api/status/v1"
)

const (
	driver = "gpu.nvidia.com"
	pool   = "node-1"
	uid    = "uid-1"
)

// source is a Source whose prepared devices the test sets.
type source struct {
	mu      sync.Mutex
	devices map[string][]Device
}

func (s *source) PreparedDevices(uid string) ([]Device, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[uid]
	return d, ok
}

func (s *source) set(uid string, d []Device) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d == nil {
		delete(s.devices, uid)
		return
	}
	s.devices[uid] = d
}

// allocated is a claim allocated one of our devices, one share of our
// shared GPU and a NIC of another driver, whose driver already wrote its
// status entry.
func allocated(t *testing.T, client *fake.Clientset) *resourceapi.ResourceClaim {
	t.Helper()
	ctx := context.Background()
	c := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Name: "claim", Namespace: "ns", UID: uid}}
	c.Status.Allocation = &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{Results: []resourceapi.DeviceRequestAllocationResult{
		{Request: "gpu", Driver: driver, Pool: pool, Device: "gpu-0"},
		{Request: "share", Driver: driver, Pool: pool, Device: "gpu-1-shared", ShareID: ptrUID("share-a")},
		{Request: "nic", Driver: "nic.example.com", Pool: pool, Device: "eth0"},
	}}}
	c.Status.ReservedFor = []resourceapi.ResourceClaimConsumerReference{{Resource: "pods", Name: "pod-a", UID: "pod-uid"}}
	if _, err := client.ResourceV1().ResourceClaims("ns").Create(ctx, c, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	nic := resourceac.ResourceClaim("claim", "ns").WithStatus(resourceac.ResourceClaimStatus().WithDevices(
		resourceac.AllocatedDeviceStatus().WithDriver("nic.example.com").WithPool(pool).WithDevice("eth0").
			WithData(runtime.RawExtension{Raw: []byte(`{"mac":"00:11"}`)})))
	if _, err := client.ResourceV1().ResourceClaims("ns").ApplyStatus(ctx, nic, metav1.ApplyOptions{FieldManager: "nic-driver"}); err != nil {
		t.Fatal(err)
	}
	return c
}

func ptrUID(s string) *types.UID { u := types.UID(s); return &u }

func prepared() []Device {
	return []Device{
		{Pool: pool, Name: "gpu-0", Health: metav1.ConditionTrue,
			Data: statusv1.DeviceStatus{Type: "gpu", GPU: statusv1.GPU{UUID: "GPU-0", PCIBusID: "0000:18:00.0"}, CDIDeviceIDs: []string{"k8s.gpu.nvidia.com/claim=uid-1-gpu-0"}}},
		{Pool: pool, Name: "gpu-1-shared", ShareID: "share-a", Health: metav1.ConditionTrue,
			Data: statusv1.DeviceStatus{Type: "shared", GPU: statusv1.GPU{UUID: "GPU-1"}, MPS: true, Share: &statusv1.Share{ID: "share-a", MemoryBytes: 1 << 30}}},
	}
}

type fixture struct {
	client  *fake.Clientset
	src     *source
	w       *Writer
	now     time.Time
	applied []*resourceapi.ResourceClaim
}

func newFixture(t *testing.T) *fixture {
	f := &fixture{client: fake.NewClientset(), src: &source{devices: map[string][]Device{}}, now: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	f.w = New(Options{
		Client: f.client.ResourceV1(), DriverName: driver, FieldManager: "gpu-kubelet-plugin", Source: f.src,
		Applied: func(c *resourceapi.ResourceClaim) { f.applied = append(f.applied, c) },
		// Retries wait a millisecond: the test runs every step itself.
		BaseDelay: time.Millisecond, MaxDelay: time.Millisecond,
		Now: func() time.Time { return f.now },
	})
	t.Cleanup(f.w.queue.ShutDown)
	return f
}

// process handles the next queued claim, as a worker does; it fails if
// none is queued (a retry's backoff is a millisecond).
func (f *fixture) process(t *testing.T) {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	for deadline := time.Now().Add(5 * time.Second); f.w.queue.Len() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no claim queued")
		}
	}
	if !f.w.next(ctx) {
		t.Fatal("queue shut down")
	}
}

func (f *fixture) entries(t *testing.T) map[string]resourceapi.AllocatedDeviceStatus {
	t.Helper()
	c, err := f.client.ResourceV1().ResourceClaims("ns").Get(context.Background(), "claim", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]resourceapi.AllocatedDeviceStatus{}
	for _, e := range c.Status.Devices {
		out[e.Driver+"/"+e.Device] = e
	}
	return out
}

func condition(e resourceapi.AllocatedDeviceStatus, typ string) *metav1.Condition {
	for i := range e.Conditions {
		if e.Conditions[i].Type == typ {
			return &e.Conditions[i]
		}
	}
	return nil
}

func TestPreparedClaimGetsItsDevicesAndKeepsOthers(t *testing.T) {
	f := newFixture(t)
	allocated(t, f.client)
	f.src.set(uid, prepared())
	f.w.Update(Ref{"ns", "claim", uid})
	f.process(t)

	got := f.entries(t)
	if len(got) != 3 {
		t.Fatalf("entries %v, want ours two and the NIC's", got)
	}
	if nic := got["nic.example.com/eth0"]; string(nic.Data.Raw) != `{"mac":"00:11"}` {
		t.Errorf("the NIC driver's entry changed: %+v", nic)
	}
	for _, want := range prepared() {
		e, ok := got[driver+"/"+want.Name]
		if !ok {
			t.Fatalf("no entry for %s", want.Name)
		}
		if e.Pool != pool || (want.ShareID != "" && (e.ShareID == nil || string(*e.ShareID) != want.ShareID)) {
			t.Errorf("%s: pool %s share %v", want.Name, e.Pool, e.ShareID)
		}
		data, err := statusv1.Decode(e.Data.Raw)
		if err != nil {
			t.Fatalf("%s: %v", want.Name, err)
		}
		if data.GPU.UUID != want.Data.GPU.UUID || data.Type != want.Data.Type {
			t.Errorf("%s: data %+v, want %+v", want.Name, data, want.Data)
		}
		for _, typ := range []string{statusv1.ConditionReady, statusv1.ConditionHealthy} {
			if c := condition(e, typ); c == nil || c.Status != metav1.ConditionTrue {
				t.Errorf("%s: condition %s = %+v, want True", want.Name, typ, c)
			}
		}
	}
	if len(f.applied) != 1 || len(f.applied[0].Status.ReservedFor) != 1 {
		t.Errorf("Applied got %d claims, want the written claim with its reservedFor", len(f.applied))
	}
}

func TestHealthChangeMovesOnlyItsCondition(t *testing.T) {
	f := newFixture(t)
	allocated(t, f.client)
	f.src.set(uid, prepared())
	f.w.Update(Ref{"ns", "claim", uid})
	f.process(t)
	first := f.entries(t)[driver+"/gpu-0"]

	f.now = f.now.Add(time.Hour)
	devs := prepared()
	devs[0].Health, devs[0].HealthMessage = metav1.ConditionFalse, "XID 79: GPU fell off the bus"
	f.src.set(uid, devs)
	f.w.Update(Ref{"ns", "claim", uid})
	f.process(t)
	after := f.entries(t)[driver+"/gpu-0"]

	healthy := condition(after, statusv1.ConditionHealthy)
	if healthy.Status != metav1.ConditionFalse || healthy.Reason != statusv1.ReasonUnhealthy || healthy.Message != devs[0].HealthMessage {
		t.Errorf("Healthy = %+v, want False with the monitor's message", healthy)
	}
	if !healthy.LastTransitionTime.Equal(&metav1.Time{Time: f.now}) {
		t.Errorf("Healthy moved at %v, want %v", healthy.LastTransitionTime, f.now)
	}
	if was, is := condition(first, statusv1.ConditionReady).LastTransitionTime, condition(after, statusv1.ConditionReady).LastTransitionTime; !was.Equal(&is) {
		t.Errorf("Ready's lastTransitionTime moved from %v to %v without a change", was, is)
	}
}

func TestUnpreparedClaimLosesOnlyOurEntries(t *testing.T) {
	f := newFixture(t)
	allocated(t, f.client)
	f.src.set(uid, prepared())
	f.w.Update(Ref{"ns", "claim", uid})
	f.process(t)

	f.src.set(uid, nil)
	f.w.Update(Ref{"ns", "claim", uid})
	f.process(t)
	got := f.entries(t)
	if _, ok := got["nic.example.com/eth0"]; len(got) != 1 || !ok {
		t.Errorf("entries after unprepare %v, want only the NIC's", got)
	}
	if n := len(f.w.since); n != 0 {
		t.Errorf("%d condition times kept for an unprepared claim", n)
	}
}

func TestRecreatedClaimIsNotWritten(t *testing.T) {
	f := newFixture(t)
	allocated(t, f.client)
	f.src.set("old-uid", prepared())
	// The UID check is the API server's: the fake tracker does not make it.
	f.client.PrependReactor("patch", "resourceclaims", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewConflict(schema.GroupResource{Group: "resource.k8s.io", Resource: "resourceclaims"}, "claim",
			errors.New("Precondition failed: UID in precondition: old-uid, UID in object meta: uid-1"))
	})
	ref := Ref{"ns", "claim", "old-uid"}
	f.w.Update(ref)
	f.process(t)
	if n := f.w.queue.NumRequeues(ref); n != 0 {
		t.Errorf("retried %d times after a UID conflict, want never: it can never be written", n)
	}
}

func TestFailedWriteIsRetried(t *testing.T) {
	f := newFixture(t)
	allocated(t, f.client)
	f.src.set(uid, prepared())
	failures := 3
	f.client.PrependReactor("patch", "resourceclaims", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if failures == 0 {
			return false, nil, nil
		}
		failures--
		return true, nil, apierrors.NewServiceUnavailable("etcd leader changed")
	})
	f.w.Update(Ref{"ns", "claim", uid})
	for i := 0; i < 4; i++ {
		f.process(t)
	}
	if _, ok := f.entries(t)[driver+"/gpu-0"]; !ok {
		t.Fatal("status not written after the API server recovered")
	}
	if n := f.w.queue.NumRequeues(Ref{"ns", "claim", uid}); n != 0 {
		t.Errorf("%d retries still counted after a successful write", n)
	}
}

func TestGoneClaimIsDropped(t *testing.T) {
	f := newFixture(t)
	f.src.set(uid, prepared())
	// The API server's status subresource never creates; the fake would.
	f.client.PrependReactor("patch", "resourceclaims", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewNotFound(schema.GroupResource{Group: "resource.k8s.io", Resource: "resourceclaims"}, "claim")
	})
	f.w.Update(Ref{"ns", "claim", uid})
	f.process(t)
	if n := f.w.queue.NumRequeues(Ref{"ns", "claim", uid}); n != 0 {
		t.Errorf("retried %d times after NotFound, want never", n)
	}
}

// TestRefusedWriteIsNotRetried: a write the API server refuses as invalid
// is never retried. For a prepared claim that is an error; for the
// removal of an unprepared claim's entries it is what the chart's claim
// status policy answers once the claim is no longer allocated on the node
// (its entries went with the allocation), and no error is logged.
func TestRefusedWriteIsNotRetried(t *testing.T) {
	for _, tc := range []struct {
		name      string
		prepared  bool
		wantError bool
	}{
		{"prepared", true, true},
		{"unprepared, deallocated", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			allocated(t, f.client)
			if tc.prepared {
				f.src.set(uid, prepared())
			}
			f.client.PrependReactor("patch", "resourceclaims", func(a k8stesting.Action) (bool, runtime.Object, error) {
				return true, nil, apierrors.NewInvalid(schema.GroupKind{Group: "resource.k8s.io", Kind: "ResourceClaim"}, "claim", nil)
			})
			logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true), ktesting.Verbosity(2)))
			ctx := klog.NewContext(context.Background(), logger)
			ref := Ref{"ns", "claim", uid}
			f.w.Update(ref)
			if !f.w.next(ctx) {
				t.Fatal("queue shut down")
			}
			if n := f.w.queue.NumRequeues(ref); n != 0 || f.w.queue.Len() != 0 {
				t.Errorf("retried (%d requeues, %d queued), want never", n, f.w.queue.Len())
			}
			errs := 0
			for _, e := range logger.GetSink().(ktesting.Underlier).GetBuffer().Data() {
				if e.Type == ktesting.LogError {
					errs++
				}
			}
			if got := errs > 0; got != tc.wantError {
				t.Errorf("error logged: %v, want %v", got, tc.wantError)
			}
		})
	}
}
