// Package claimreader gives the kubelet plugin a Kubernetes client that
// reads ResourceClaims with the node's own identity, the kubelet's
// (system:node:NAME), and does everything else with the plugin's
// ServiceAccount.
//
// RBAC cannot narrow a read of claims to those of the pods on one node: a
// ServiceAccount allowed to get claims may get any claim of the cluster by
// name, so every node's plugin, or a token stolen from one, could read
// every tenant's claims. The API server's Node authorizer can: it lets a
// node get a claim only when a pod bound to that node references it. The
// kubeletplugin helper gets each claim the kubelet asks to prepare through
// the client it is given; with the client of New that get is the node's,
// and the ServiceAccount needs no read of claims at all.
//
// Only Get is the node's. Whatever else is asked of claims (the status
// entries the plugin applies, which the Node authorizer never allows) keeps
// the ServiceAccount's permissions.
package claimreader

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	resourcev1 "k8s.io/api/resource/v1"
	resourcev1beta1 "k8s.io/api/resource/v1beta1"
	resourcev1beta2 "k8s.io/api/resource/v1beta2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	resourceclientv1 "k8s.io/client-go/kubernetes/typed/resource/v1"
	resourceclientv1beta1 "k8s.io/client-go/kubernetes/typed/resource/v1beta1"
	resourceclientv1beta2 "k8s.io/client-go/kubernetes/typed/resource/v1beta2"
	"k8s.io/client-go/util/watchlist"
)

// New returns a client that is serviceAccount's, except that getting a
// ResourceClaim, in resource.k8s.io v1, v1beta2 and v1beta1, is node's.
//
// All three versions, because the helper's client
// (k8s.io/dynamic-resource-allocation/client) falls back to the older
// versions when a get answers NotFound, as it does for a claim deleted
// meanwhile, and keeps using the version it ended on: a beta get left to
// the ServiceAccount would answer Forbidden, and every later get would
// stay on that version and fail the same way.
func New(serviceAccount, node kubernetes.Interface) kubernetes.Interface {
	return &clientset{Interface: serviceAccount, node: node}
}

// clientset is serviceAccount's client with node's claim reads.
type clientset struct {
	kubernetes.Interface
	node kubernetes.Interface
}

// IsWatchListSemanticsUnSupported tells client-go's informers what the
// ServiceAccount's client supports: every list and watch is its.
func (c *clientset) IsWatchListSemanticsUnSupported() bool {
	return watchlist.DoesClientNotSupportWatchListSemantics(c.Interface)
}

func (c *clientset) ResourceV1() resourceclientv1.ResourceV1Interface {
	return groupV1{ResourceV1Interface: c.Interface.ResourceV1(), node: c.node.ResourceV1()}
}

func (c *clientset) ResourceV1beta2() resourceclientv1beta2.ResourceV1beta2Interface {
	return groupV1beta2{ResourceV1beta2Interface: c.Interface.ResourceV1beta2(), node: c.node.ResourceV1beta2()}
}

func (c *clientset) ResourceV1beta1() resourceclientv1beta1.ResourceV1beta1Interface {
	return groupV1beta1{ResourceV1beta1Interface: c.Interface.ResourceV1beta1(), node: c.node.ResourceV1beta1()}
}

type groupV1 struct {
	resourceclientv1.ResourceV1Interface
	node resourceclientv1.ResourceClaimsGetter
}

func (g groupV1) ResourceClaims(namespace string) resourceclientv1.ResourceClaimInterface {
	return claimsV1{ResourceClaimInterface: g.ResourceV1Interface.ResourceClaims(namespace), node: g.node.ResourceClaims(namespace)}
}

type claimsV1 struct {
	resourceclientv1.ResourceClaimInterface
	node resourceclientv1.ResourceClaimInterface
}

func (c claimsV1) Get(ctx context.Context, name string, opts metav1.GetOptions) (*resourcev1.ResourceClaim, error) {
	return c.node.Get(ctx, name, opts)
}

type groupV1beta2 struct {
	resourceclientv1beta2.ResourceV1beta2Interface
	node resourceclientv1beta2.ResourceClaimsGetter
}

func (g groupV1beta2) ResourceClaims(namespace string) resourceclientv1beta2.ResourceClaimInterface {
	return claimsV1beta2{ResourceClaimInterface: g.ResourceV1beta2Interface.ResourceClaims(namespace), node: g.node.ResourceClaims(namespace)}
}

type claimsV1beta2 struct {
	resourceclientv1beta2.ResourceClaimInterface
	node resourceclientv1beta2.ResourceClaimInterface
}

func (c claimsV1beta2) Get(ctx context.Context, name string, opts metav1.GetOptions) (*resourcev1beta2.ResourceClaim, error) {
	return c.node.Get(ctx, name, opts)
}

type groupV1beta1 struct {
	resourceclientv1beta1.ResourceV1beta1Interface
	node resourceclientv1beta1.ResourceClaimsGetter
}

func (g groupV1beta1) ResourceClaims(namespace string) resourceclientv1beta1.ResourceClaimInterface {
	return claimsV1beta1{ResourceClaimInterface: g.ResourceV1beta1Interface.ResourceClaims(namespace), node: g.node.ResourceClaims(namespace)}
}

type claimsV1beta1 struct {
	resourceclientv1beta1.ResourceClaimInterface
	node resourceclientv1beta1.ResourceClaimInterface
}

func (c claimsV1beta1) Get(ctx context.Context, name string, opts metav1.GetOptions) (*resourcev1beta1.ResourceClaim, error) {
	return c.node.Get(ctx, name, opts)
}

// nodeGroup is the group every node identity is in; the Node authorizer
// judges only users in it named system:node:NAME.
const nodeGroup = "system:nodes"

// ErrNotTheNode is the error of CheckIdentity when the API server says
// the identity is not the node's.
var ErrNotTheNode = errors.New("not the node's identity")

// CheckIdentity asks the API server who node authenticates as
// (SelfSubjectReview) and returns an error unless it is the node nodeName
// itself, wrapping ErrNotTheNode when the answer is another identity: any
// other would either fail every claim read (another node, a bootstrap
// token) or read claims beyond the node's (an administrator, a
// ServiceAccount).
func CheckIdentity(ctx context.Context, node kubernetes.Interface, nodeName string) error {
	review, err := node.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("ask the API server who the identity is: %w", err)
	}
	user := review.Status.UserInfo
	want := "system:node:" + nodeName
	switch {
	case user.Username != want:
		return fmt.Errorf("%w: the identity is %q, not the node's own %q", ErrNotTheNode, user.Username, want)
	case !slices.Contains(user.Groups, nodeGroup):
		return fmt.Errorf("%w: the identity %q is not in group %s (groups %s), so the Node authorizer does not judge it",
			ErrNotTheNode, user.Username, nodeGroup, strings.Join(user.Groups, ", "))
	}
	return nil
}
