// Package claimstatus writes, for every ResourceClaim the node's plugin
// prepared, the claim's status.devices entries (KEP-4817) of the devices it
// prepared: a Ready condition, a Healthy condition that follows the health
// monitor, and the device's identity as versioned data (api/status/v1).
// An unprepared claim's entries are removed.
//
// Writes are server-side applies of the status with the plugin's own field
// manager, so the entries of other drivers (and anything else in the
// status) are left alone, and the entries this plugin no longer applies
// are removed. Each apply names the claim's UID, so a claim deleted and
// recreated under the same name is never written to.
//
// Writing is asynchronous and never fails a prepare: Update queues a claim,
// workers write what its state is at the time of writing (so a burst of
// changes becomes one write), and a failed write is retried with
// exponential backoff until it succeeds or the claim is gone.
package claimstatus

import (
	"context"
	"fmt"
	"sync"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	resourceac "k8s.io/client-go/applyconfigurations/resource/v1"
	resourceclient "k8s.io/client-go/kubernetes/typed/resource/v1"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	statusv1 "github.com/gpu-dra/gpu-dra-driver/api/status/v1"
)

// Ref names a claim.
type Ref struct {
	Namespace, Name, UID string
}

// Device is the status of one device the node prepared for a claim.
type Device struct {
	// Pool and Name are the device's, ShareID the allocation's share (for a
	// share of a shared GPU; empty otherwise).
	Pool, Name, ShareID string
	Data                statusv1.DeviceStatus
	// Health is the device's health, HealthMessage why.
	Health        metav1.ConditionStatus
	HealthMessage string
}

// Source says what the node has prepared now.
type Source interface {
	// PreparedDevices returns the devices prepared for the claim with this
	// UID, and false when the claim is not prepared on this node.
	PreparedDevices(uid string) ([]Device, bool)
}

// Options configure a Writer.
type Options struct {
	Client resourceclient.ResourceClaimsGetter
	// DriverName is the driver of every entry; FieldManager owns them.
	DriverName, FieldManager string
	Source                   Source
	// Applied, when set, is called with the claim the API server returned
	// after each successful write (for its labels and reservedFor).
	Applied func(*resourceapi.ResourceClaim)
	// Workers is how many claims are written at once (default 4).
	Workers int
	// BaseDelay and MaxDelay bound the retry backoff (default 100 ms, 1 min).
	BaseDelay, MaxDelay time.Duration
	// Now is the clock of conditions' transition times (default time.Now).
	Now func() time.Time
}

// Writer writes claims' device status. Its zero value is not usable; use
// New.
type Writer struct {
	opts  Options
	queue workqueue.TypedRateLimitingInterface[Ref]

	mu sync.Mutex
	// since is when each condition took its current status, so a rewrite
	// with the same status keeps its lastTransitionTime.
	since map[conditionKey]transition
}

type conditionKey struct{ uid, pool, device, share, condition string }

type transition struct {
	status metav1.ConditionStatus
	at     metav1.Time
}

// New returns a writer; Start runs it.
func New(opts Options) *Writer {
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	if opts.BaseDelay <= 0 {
		opts.BaseDelay = 100 * time.Millisecond
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Writer{
		opts: opts,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[Ref](opts.BaseDelay, opts.MaxDelay),
			workqueue.TypedRateLimitingQueueConfig[Ref]{Name: "claim-status"}),
		since: map[conditionKey]transition{},
	}
}

// Update queues claims whose prepared state or health changed. It never
// blocks on the API server.
func (w *Writer) Update(refs ...Ref) {
	for _, r := range refs {
		w.queue.Add(r)
	}
}

// Start runs the workers until ctx ends; then the queue is shut down and
// what was not written is dropped (the next start rewrites every prepared
// claim).
func (w *Writer) Start(ctx context.Context) {
	for range w.opts.Workers {
		go func() {
			for w.next(ctx) {
			}
		}()
	}
	go func() {
		<-ctx.Done()
		w.queue.ShutDown()
	}()
}

func (w *Writer) next(ctx context.Context) bool {
	ref, shutdown := w.queue.Get()
	if shutdown {
		return false
	}
	defer w.queue.Done(ref)
	logger := klog.FromContext(ctx).WithValues("claim", klog.KRef(ref.Namespace, ref.Name), "claimUID", ref.UID)
	prepared, err := w.write(ctx, ref)
	switch {
	case err == nil:
		w.queue.Forget(ref)
	case apierrors.IsNotFound(err), apierrors.IsConflict(err):
		// Gone, or recreated under another UID: nothing of ours to write.
		logger.V(2).Info("Claim gone; its device status is not written", "err", err)
		w.queue.Forget(ref)
	case apierrors.IsInvalid(err) && !prepared:
		// The removal of an unprepared claim's entries, refused: the
		// chart's policy refuses every write of a claim no longer
		// allocated on this node, whose entries the API server removed
		// with its allocation. Nothing is left to remove.
		logger.V(2).Info("The API server refused to remove the claim's device status; a claim no longer allocated here has none", "err", err)
		w.queue.Forget(ref)
	case apierrors.IsInvalid(err):
		// Writing it again cannot succeed.
		logger.Error(err, "The API server refused the claim's device status")
		w.queue.Forget(ref)
	case ctx.Err() != nil:
	default:
		logger.Error(err, "Writing the claim's device status failed; retrying", "retries", w.queue.NumRequeues(ref))
		w.queue.AddRateLimited(ref)
	}
	return true
}

// write applies the claim's current entries: those of its prepared
// devices, or none; it reports whether the claim is prepared.
func (w *Writer) write(ctx context.Context, ref Ref) (bool, error) {
	devices, prepared := w.opts.Source.PreparedDevices(ref.UID)
	status := resourceac.ResourceClaimStatus()
	for _, d := range devices {
		entry, err := w.entry(ref.UID, d)
		if err != nil {
			return prepared, err
		}
		status.WithDevices(entry)
	}
	if !prepared {
		w.forget(ref.UID)
	}
	claim := resourceac.ResourceClaim(ref.Name, ref.Namespace).WithUID(types.UID(ref.UID)).WithStatus(status)
	out, err := w.opts.Client.ResourceClaims(ref.Namespace).ApplyStatus(ctx, claim,
		metav1.ApplyOptions{FieldManager: w.opts.FieldManager, Force: true})
	if err != nil {
		return prepared, fmt.Errorf("apply status of claim %s/%s: %w", ref.Namespace, ref.Name, err)
	}
	if w.opts.Applied != nil {
		w.opts.Applied(out)
	}
	return prepared, nil
}

func (w *Writer) entry(uid string, d Device) (*resourceac.AllocatedDeviceStatusApplyConfiguration, error) {
	data, err := statusv1.Encode(d.Data)
	if err != nil {
		return nil, fmt.Errorf("device %s: %w", d.Name, err)
	}
	e := resourceac.AllocatedDeviceStatus().WithDriver(w.opts.DriverName).WithPool(d.Pool).WithDevice(d.Name).
		WithData(runtime.RawExtension{Raw: data})
	if d.ShareID != "" {
		e.WithShareID(d.ShareID)
	}
	reason := statusv1.ReasonUnknown
	switch d.Health {
	case metav1.ConditionTrue:
		reason = statusv1.ReasonHealthy
	case metav1.ConditionFalse:
		reason = statusv1.ReasonUnhealthy
	}
	health := d.Health
	if health == "" {
		health = metav1.ConditionUnknown
	}
	e.WithConditions(
		w.condition(conditionKey{uid, d.Pool, d.Name, d.ShareID, statusv1.ConditionReady}, metav1.ConditionTrue, statusv1.ReasonPrepared, "prepared by the node's kubelet plugin"),
		w.condition(conditionKey{uid, d.Pool, d.Name, d.ShareID, statusv1.ConditionHealthy}, health, reason, d.HealthMessage),
	)
	return e, nil
}

// condition builds a condition whose lastTransitionTime changes only with
// its status.
func (w *Writer) condition(k conditionKey, status metav1.ConditionStatus, reason, message string) *metav1ac.ConditionApplyConfiguration {
	w.mu.Lock()
	t, ok := w.since[k]
	if !ok || t.status != status {
		t = transition{status: status, at: metav1.NewTime(w.opts.Now().Truncate(time.Second))}
		w.since[k] = t
	}
	w.mu.Unlock()
	if message == "" {
		message = reason
	}
	return metav1ac.Condition().WithType(k.condition).WithStatus(status).WithReason(reason).
		WithMessage(message).WithLastTransitionTime(t.at)
}

// forget drops the transition times of an unprepared claim.
func (w *Writer) forget(uid string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for k := range w.since {
		if k.uid == uid {
			delete(w.since, k)
		}
	}
}
