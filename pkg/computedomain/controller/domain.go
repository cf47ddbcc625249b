package controller

import (
	"context"
	"fmt"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	cdv1 "github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/controller/cdstatus"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/controller/nodelabels"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/controller/templates"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// Event reasons on ComputeDomains.
const (
	ReasonInvalidSpec        = "InvalidSpec"
	ReasonTemplateConflict   = "TemplateConflict"
	ReasonDaemonSetConflict  = "DaemonSetConflict"
	ReasonCleanupWaitingPods = "WaitingForDaemonPods"
)

// ConflictRetryInterval is how often a domain whose template name is taken
// looks again whether it became free.
const ConflictRetryInterval = 30 * time.Second

// DeletionPollInterval is how often deletion checks whether the daemon
// pods are gone (their events also bring the domain back).
const DeletionPollInterval = 2 * time.Second

// syncDomain reconciles one ComputeDomain: the finalizer, the workload
// template, the daemons' template and DaemonSet, and the status; or, for a
// domain being deleted, the ordered clean-up.
func (c *Controller) syncDomain(ctx context.Context, k key) error {
	u, ok := c.inf.domain(k.namespace, k.name)
	if !ok {
		c.forget(k)
		return nil
	}
	cd, err := cdv1.FromUnstructured(u)
	if err != nil {
		c.opts.Recorder.Event(ref(u), corev1.EventTypeWarning, ReasonInvalidSpec, err.Error())
		return nil
	}
	if cd.DeletionTimestamp != nil {
		return c.finalize(ctx, u, cd)
	}
	if err := cd.Validate(); err != nil {
		c.opts.Recorder.Eventf(ref(u), corev1.EventTypeWarning, ReasonInvalidSpec, "invalid spec, nothing created: %v", err)
		return c.writeStatus(ctx, k, u, cd.Status, cdv1.ComputeDomainStatus{Status: cdv1.StatusNotReady})
	}
	if !slices.Contains(u.GetFinalizers(), names.ComputeDomainFinalizer) {
		if u, err = c.setFinalizer(ctx, u, true); err != nil {
			return err
		}
	}
	conflict, err := c.ensureWorkloadTemplate(ctx, u, cd)
	if err != nil {
		return err
	}
	if err := c.ensureDaemonTemplate(ctx, u, cd); err != nil {
		return err
	}
	if err := c.ensureDaemonSet(ctx, u, cd); err != nil {
		return err
	}
	if err := c.ensureNetworkPolicy(ctx, cd); err != nil {
		return err
	}
	if err := c.deleteRenamedTemplates(ctx, cd); err != nil {
		return err
	}
	status := cdstatus.Compute(cd.Status, c.daemonPods(string(cd.UID)), c.inf.cliqueOf, cd.Spec.NumNodes)
	if conflict {
		status.Status = cdv1.StatusNotReady
	}
	if err := c.writeStatus(ctx, k, u, cd.Status, status); err != nil || !conflict {
		return err
	}
	// The foreign template is not in the (labelled) cache, so its removal
	// brings no event: look again later.
	return &errRequeue{after: ConflictRetryInterval, reason: "claim template name taken"}
}

// deleteRenamedTemplates deletes the domain's workload templates of names
// its spec no longer gives.
func (c *Controller) deleteRenamedTemplates(ctx context.Context, cd *cdv1.ComputeDomain) error {
	for _, t := range c.inf.templatesOf(string(cd.UID)) {
		if t.Namespace == cd.Namespace && t.Name != cd.Spec.Channel.ResourceClaimTemplate.Name && ownedBy(t.OwnerReferences, cd.UID) {
			if err := c.deleteTemplate(ctx, t); err != nil {
				return err
			}
		}
	}
	return nil
}

// daemonPods are the domain's daemon pods that its DaemonSet controls.
func (c *Controller) daemonPods(uid string) []*corev1.Pod {
	var out []*corev1.Pod
	for _, p := range c.inf.podsOf(uid) {
		if owner := metav1.GetControllerOf(p); owner != nil && owner.Kind == "DaemonSet" && owner.Name == names.DomainDaemonSetName(uid) {
			out = append(out, p)
		}
	}
	return out
}

// ref is the reference of Events about the domain u.
func ref(u *unstructured.Unstructured) *corev1.ObjectReference {
	return &corev1.ObjectReference{
		APIVersion:      cdv1.GroupVersion,
		Kind:            cdv1.ComputeDomainKind,
		Namespace:       u.GetNamespace(),
		Name:            u.GetName(),
		UID:             u.GetUID(),
		ResourceVersion: u.GetResourceVersion(),
	}
}

// setFinalizer adds or removes the controller's finalizer with an update
// at u's resourceVersion (a conflict is retried on a fresher copy).
func (c *Controller) setFinalizer(ctx context.Context, u *unstructured.Unstructured, add bool) (*unstructured.Unstructured, error) {
	obj := u.DeepCopy()
	fin := slices.DeleteFunc(slices.Clone(obj.GetFinalizers()), func(s string) bool { return s == names.ComputeDomainFinalizer })
	if add {
		fin = append(fin, names.ComputeDomainFinalizer)
	}
	obj.SetFinalizers(fin)
	updated, err := c.dyn.Resource(cdv1.Resource).Namespace(u.GetNamespace()).Update(ctx, obj, metav1.UpdateOptions{})
	if err != nil {
		c.metrics.Errors.WithLabelValues("update-finalizer").Inc()
		return nil, fmt.Errorf("update finalizers of ComputeDomain %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	klog.FromContext(ctx).V(2).Info("Updated finalizer", "added", add)
	return updated, nil
}

// ensureWorkloadTemplate creates the domain's workload template if it is
// missing (also after a user deleted it). A template of that name that is
// not the domain's is left alone and reported: the result is true.
func (c *Controller) ensureWorkloadTemplate(ctx context.Context, u *unstructured.Unstructured, cd *cdv1.ComputeDomain) (conflict bool, err error) {
	want, err := templates.WorkloadTemplate(cd)
	if err != nil {
		return false, err
	}
	if t, ok := c.inf.template(want.Namespace, want.Name); ok && templates.Owned(t.Labels, string(cd.UID)) {
		return false, nil
	}
	_, err = c.kube.ResourceV1().ResourceClaimTemplates(want.Namespace).Create(ctx, want, metav1.CreateOptions{})
	if err == nil {
		klog.FromContext(ctx).Info("Created workload claim template", "template", klog.KObj(want))
		return false, nil
	}
	if !apierrors.IsAlreadyExists(err) {
		c.metrics.Errors.WithLabelValues("create-template").Inc()
		return false, fmt.Errorf("create ResourceClaimTemplate %s/%s: %w", want.Namespace, want.Name, err)
	}
	got, err := c.kube.ResourceV1().ResourceClaimTemplates(want.Namespace).Get(ctx, want.Name, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("get ResourceClaimTemplate %s/%s: %w", want.Namespace, want.Name, err)
	}
	if templates.Owned(got.Labels, string(cd.UID)) {
		return false, nil // the cache lags behind our own create
	}
	c.opts.Recorder.Eventf(ref(u), corev1.EventTypeWarning, ReasonTemplateConflict,
		"ResourceClaimTemplate %s/%s (spec.channel.resourceClaimTemplate.name) exists and is not this domain's; it is left alone and the domain stays NotReady until it is removed or the name changes",
		want.Namespace, want.Name)
	return true, nil
}

// ensureDaemonTemplate creates the daemons' claim template if missing.
func (c *Controller) ensureDaemonTemplate(ctx context.Context, u *unstructured.Unstructured, cd *cdv1.ComputeDomain) error {
	want, err := templates.DaemonTemplate(cd, c.opts.Daemon.Namespace)
	if err != nil {
		return err
	}
	if t, ok := c.inf.template(want.Namespace, want.Name); ok && templates.Owned(t.Labels, string(cd.UID)) {
		return nil
	}
	_, err = c.kube.ResourceV1().ResourceClaimTemplates(want.Namespace).Create(ctx, want, metav1.CreateOptions{})
	switch {
	case err == nil:
		klog.FromContext(ctx).Info("Created daemon claim template", "template", klog.KObj(want))
		return nil
	case apierrors.IsAlreadyExists(err):
		got, gerr := c.kube.ResourceV1().ResourceClaimTemplates(want.Namespace).Get(ctx, want.Name, metav1.GetOptions{})
		if gerr == nil && templates.Owned(got.Labels, string(cd.UID)) {
			return nil
		}
		c.opts.Recorder.Eventf(ref(u), corev1.EventTypeWarning, ReasonTemplateConflict,
			"ResourceClaimTemplate %s/%s exists and is not this domain's", want.Namespace, want.Name)
		return fmt.Errorf("create ResourceClaimTemplate %s/%s: %w", want.Namespace, want.Name, err)
	default:
		c.metrics.Errors.WithLabelValues("create-template").Inc()
		return fmt.Errorf("create ResourceClaimTemplate %s/%s: %w", want.Namespace, want.Name, err)
	}
}

// ensureDaemonSet creates the domain's DaemonSet, or updates its pod
// template when the controller's options (image, pull policy, priority
// class) changed since it was made.
func (c *Controller) ensureDaemonSet(ctx context.Context, u *unstructured.Unstructured, cd *cdv1.ComputeDomain) error {
	want := templates.DaemonSet(cd, c.opts.Daemon)
	hash, err := templates.WithSpecHash(want)
	if err != nil {
		return err
	}
	client := c.kube.AppsV1().DaemonSets(want.Namespace)
	have := c.daemonSet(string(cd.UID))
	if have == nil {
		_, err := client.Create(ctx, want, metav1.CreateOptions{})
		switch {
		case err == nil:
			klog.FromContext(ctx).Info("Created daemon set", "daemonSet", klog.KObj(want))
			return nil
		case apierrors.IsAlreadyExists(err):
			got, gerr := client.Get(ctx, want.Name, metav1.GetOptions{})
			if gerr == nil && templates.Owned(got.Labels, string(cd.UID)) {
				return nil // the cache lags behind our own create
			}
			c.opts.Recorder.Eventf(ref(u), corev1.EventTypeWarning, ReasonDaemonSetConflict,
				"DaemonSet %s/%s exists and is not this domain's", want.Namespace, want.Name)
			return fmt.Errorf("create DaemonSet %s/%s: %w", want.Namespace, want.Name, err)
		default:
			c.metrics.Errors.WithLabelValues("create-daemonset").Inc()
			return fmt.Errorf("create DaemonSet %s/%s: %w", want.Namespace, want.Name, err)
		}
	}
	if have.Annotations[templates.SpecHashAnnotation] == hash {
		return nil
	}
	upd := have.DeepCopy()
	upd.Spec.Template = want.Spec.Template
	if upd.Annotations == nil {
		upd.Annotations = map[string]string{}
	}
	upd.Annotations[templates.SpecHashAnnotation] = hash
	if _, err := client.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		c.metrics.Errors.WithLabelValues("update-daemonset").Inc()
		return fmt.Errorf("update DaemonSet %s/%s: %w", want.Namespace, want.Name, err)
	}
	klog.FromContext(ctx).Info("Updated daemon set to the controller's options", "daemonSet", klog.KObj(want))
	return nil
}

// ensureNetworkPolicy creates the domain's NetworkPolicy, owned by its
// DaemonSet, once the DaemonSet is in the cache (its arrival syncs the
// domain again). The garbage collector deletes it with the DaemonSet.
func (c *Controller) ensureNetworkPolicy(ctx context.Context, cd *cdv1.ComputeDomain) error {
	if !c.opts.NetworkPolicy {
		return nil
	}
	uid := string(cd.UID)
	ds := c.daemonSet(uid)
	if ds == nil {
		return nil
	}
	want := templates.NetworkPolicy(ds)
	for _, p := range c.inf.policiesOf(uid) {
		if p.Name == want.Name {
			return nil
		}
	}
	_, err := c.kube.NetworkingV1().NetworkPolicies(want.Namespace).Create(ctx, want, metav1.CreateOptions{})
	switch {
	case err == nil:
		klog.FromContext(ctx).Info("Created network policy", "networkPolicy", klog.KObj(want))
		return nil
	case apierrors.IsAlreadyExists(err):
		return nil // the cache lags behind our own create
	default:
		c.metrics.Errors.WithLabelValues("create-networkpolicy").Inc()
		return fmt.Errorf("create NetworkPolicy %s/%s: %w", want.Namespace, want.Name, err)
	}
}

// finalize cleans up a domain being deleted, in order:
//  1. delete the workload template (only the domain's: label and owner);
//  2. delete the DaemonSet (its pods go with it);
//  3. wait until no daemon pod of the domain is left, so that no daemon
//     claim is still prepared when its template goes;
//  4. delete the daemons' claim template;
//  5. remove the domain's label from every node;
//  6. remove the finalizer.
//
// Each step checks the current state, so a controller restarted anywhere
// in between picks up where it left off.
func (c *Controller) finalize(ctx context.Context, u *unstructured.Unstructured, cd *cdv1.ComputeDomain) error {
	if !slices.Contains(u.GetFinalizers(), names.ComputeDomainFinalizer) {
		return nil
	}
	uid := string(cd.UID)
	for _, t := range c.inf.templatesOf(uid) {
		if t.Namespace == cd.Namespace && ownedBy(t.OwnerReferences, cd.UID) {
			if err := c.deleteTemplate(ctx, t); err != nil {
				return err
			}
		}
	}
	if err := c.deleteDaemons(ctx, uid); err != nil {
		return err
	}
	if n := len(c.inf.podsOf(uid)); n > 0 {
		c.opts.Recorder.Eventf(ref(u), corev1.EventTypeNormal, ReasonCleanupWaitingPods, "waiting for %d daemon pods to terminate", n)
		return &errRequeue{after: DeletionPollInterval, reason: fmt.Sprintf("%d daemon pods left", n)}
	}
	if err := c.deleteDaemonTemplate(ctx, uid); err != nil {
		return err
	}
	if err := c.unlabelNodes(ctx, uid); err != nil {
		return err
	}
	if _, err := c.setFinalizer(ctx, u, false); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	klog.FromContext(ctx).Info("ComputeDomain cleaned up")
	return nil
}

func ownedBy(refs []metav1.OwnerReference, uid types.UID) bool {
	for _, r := range refs {
		if r.UID == uid && r.Kind == cdv1.ComputeDomainKind {
			return true
		}
	}
	return false
}

// deleteTemplate deletes t if it still is the object the cache holds
// (UID precondition); a template already gone is fine.
func (c *Controller) deleteTemplate(ctx context.Context, t *resourcev1.ResourceClaimTemplate) error {
	err := c.kube.ResourceV1().ResourceClaimTemplates(t.Namespace).Delete(ctx, t.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &t.UID}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		c.metrics.Errors.WithLabelValues("delete-template").Inc()
		return fmt.Errorf("delete ResourceClaimTemplate %s/%s: %w", t.Namespace, t.Name, err)
	}
	if err == nil {
		klog.FromContext(ctx).Info("Deleted claim template", "template", klog.KObj(t))
	}
	return nil
}

// daemonSet is the domain's DaemonSet in the cache (by name, in the
// driver's namespace), nil if there is none.
func (c *Controller) daemonSet(uid string) *appsv1.DaemonSet {
	for _, ds := range c.inf.daemonSetsOf(uid) {
		if ds.Namespace == c.opts.Daemon.Namespace && ds.Name == names.DomainDaemonSetName(uid) {
			return ds
		}
	}
	return nil
}

// deleteDaemons deletes the domain's DaemonSet (by name and label, in the
// driver's namespace); the garbage collector deletes its pods.
func (c *Controller) deleteDaemons(ctx context.Context, uid string) error {
	ds := c.daemonSet(uid)
	if ds == nil {
		return nil
	}
	err := c.kube.AppsV1().DaemonSets(ds.Namespace).Delete(ctx, ds.Name, metav1.DeleteOptions{
		Preconditions:     &metav1.Preconditions{UID: &ds.UID},
		PropagationPolicy: ptr.To(metav1.DeletePropagationBackground),
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		c.metrics.Errors.WithLabelValues("delete-daemonset").Inc()
		return fmt.Errorf("delete DaemonSet %s/%s: %w", ds.Namespace, ds.Name, err)
	}
	if err == nil {
		klog.FromContext(ctx).Info("Deleted daemon set", "daemonSet", klog.KObj(ds))
	}
	return nil
}

// deleteDaemonTemplate deletes the daemons' claim template of uid.
func (c *Controller) deleteDaemonTemplate(ctx context.Context, uid string) error {
	for _, t := range c.inf.templatesOf(uid) {
		if t.Namespace == c.opts.Daemon.Namespace && t.Name == names.DomainDaemonTemplateName(uid) {
			if err := c.deleteTemplate(ctx, t); err != nil {
				return err
			}
		}
	}
	return nil
}

// unlabelNodes removes the domain's label from every node that has it.
func (c *Controller) unlabelNodes(ctx context.Context, uid string) error {
	for _, n := range c.inf.nodesLabelled(uid) {
		if err := c.patchNodeLabels(ctx, n.Name, nodelabels.Patch{Remove: []string{names.DomainNodeLabel(uid)}}); err != nil {
			return err
		}
	}
	return nil
}
