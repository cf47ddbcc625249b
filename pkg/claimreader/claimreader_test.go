package claimreader

import (
	"context"
	"errors"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	resourcev1beta1 "k8s.io/api/resource/v1beta1"
	resourcev1beta2 "k8s.io/api/resource/v1beta2"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	resourceac "k8s.io/client-go/applyconfigurations/resource/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/util/watchlist"
	draclient "k8s.io/dynamic-resource-allocation/client"
)

const ns = "tenant"

// clients returns a ServiceAccount client that may get no claim (as the
// chart's RBAC says when claims are read as the node) and holds the node
// object, and a node client that holds claim "mine" in every version.
func clients(t *testing.T) (sa, node *fake.Clientset) {
	t.Helper()
	meta := metav1.ObjectMeta{Name: "mine", Namespace: ns, UID: "uid-mine"}
	sa = fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}})
	sa.PrependReactor("get", "resourceclaims", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "resource.k8s.io", Resource: "resourceclaims"},
			a.(k8stesting.GetAction).GetName(), nil)
	})
	node = fake.NewClientset(&resourcev1.ResourceClaim{ObjectMeta: meta}, &resourcev1beta2.ResourceClaim{ObjectMeta: meta},
		&resourcev1beta1.ResourceClaim{ObjectMeta: meta})
	return sa, node
}

// actions are the verbs and resources a fake was asked, "verb resource".
func actions(c *fake.Clientset) []string {
	var out []string
	for _, a := range c.Actions() {
		r := a.GetResource().Resource
		if s := a.GetSubresource(); s != "" {
			r += "/" + s
		}
		out = append(out, a.GetVerb()+" "+r)
	}
	return out
}

// TestClaimGetsAreTheNodes: getting a claim, in every version the helper's
// client may fall back to, is asked of the node's client and nothing else
// is; everything else goes to the ServiceAccount's.
func TestClaimGetsAreTheNodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		call func(kubernetes.Interface) error
		// sa and node are the calls each client must have seen.
		sa, node string
	}{
		{"get a v1 claim", func(c kubernetes.Interface) error {
			_, err := c.ResourceV1().ResourceClaims(ns).Get(context.Background(), "mine", metav1.GetOptions{})
			return err
		}, "", "get resourceclaims"},
		{"get a v1beta2 claim", func(c kubernetes.Interface) error {
			_, err := c.ResourceV1beta2().ResourceClaims(ns).Get(context.Background(), "mine", metav1.GetOptions{})
			return err
		}, "", "get resourceclaims"},
		{"get a v1beta1 claim", func(c kubernetes.Interface) error {
			_, err := c.ResourceV1beta1().ResourceClaims(ns).Get(context.Background(), "mine", metav1.GetOptions{})
			return err
		}, "", "get resourceclaims"},
		{"apply a claim's status", func(c kubernetes.Interface) error {
			_, err := c.ResourceV1().ResourceClaims(ns).ApplyStatus(context.Background(),
				resourceac.ResourceClaim("mine", ns).WithStatus(resourceac.ResourceClaimStatus()),
				metav1.ApplyOptions{FieldManager: "test", Force: true})
			if err != nil && !apierrors.IsNotFound(err) {
				return err
			}
			return nil
		}, "patch resourceclaims/status", ""},
		{"list claims", func(c kubernetes.Interface) error {
			_, err := c.ResourceV1().ResourceClaims(ns).List(context.Background(), metav1.ListOptions{})
			return err
		}, "list resourceclaims", ""},
		{"list slices", func(c kubernetes.Interface) error {
			_, err := c.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{})
			return err
		}, "list resourceslices", ""},
		{"get the node", func(c kubernetes.Interface) error {
			_, err := c.CoreV1().Nodes().Get(context.Background(), "node-a", metav1.GetOptions{})
			return err
		}, "get nodes", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sa, node := clients(t)
			if err := tc.call(New(sa, node)); err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(actions(sa), ", "); got != tc.sa {
				t.Errorf("the ServiceAccount's client was asked %q, want %q", got, tc.sa)
			}
			if got := strings.Join(actions(node), ", "); got != tc.node {
				t.Errorf("the node's client was asked %q, want %q", got, tc.node)
			}
		})
	}
}

// TestHelperClientAfterAMissingClaim: the kubeletplugin helper reads claims
// through k8s.io/dynamic-resource-allocation/client, which on NotFound
// tries the beta versions and keeps the one it ended on. A claim gone
// before its get must leave the next get working.
func TestHelperClientAfterAMissingClaim(t *testing.T) {
	sa, node := clients(t)
	claims := draclient.New(New(sa, node)).ResourceClaims(ns)
	if _, err := claims.Get(context.Background(), "gone", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("get a missing claim: %v, want NotFound", err)
	}
	c, err := claims.Get(context.Background(), "mine", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get a claim after a missing one: %v", err)
	}
	if c.UID != "uid-mine" {
		t.Errorf("got claim %s, want uid-mine", c.UID)
	}
	if got := actions(sa); len(got) != 0 {
		t.Errorf("the ServiceAccount's client was asked %v", got)
	}
}

// TestWatchListSemanticsAreTheServiceAccounts: informers list and watch
// with the ServiceAccount's client, so they are told what it supports.
func TestWatchListSemanticsAreTheServiceAccounts(t *testing.T) {
	sa, node := clients(t)
	if got, want := watchlist.DoesClientNotSupportWatchListSemantics(New(sa, node)),
		watchlist.DoesClientNotSupportWatchListSemantics(sa); got != want {
		t.Errorf("watch-list unsupported: %v, the ServiceAccount's client says %v", got, want)
	}
	if !watchlist.DoesClientNotSupportWatchListSemantics(New(sa, node)) {
		t.Error("a fake ServiceAccount client's lack of watch-list support is hidden")
	}
}

func TestCheckIdentity(t *testing.T) {
	for _, tc := range []struct {
		name    string
		user    authenticationv1.UserInfo
		err     error
		wantErr string
		// notTheNode: the error is ErrNotTheNode.
		notTheNode bool
	}{
		{name: "the node itself", user: authenticationv1.UserInfo{Username: "system:node:node-a", Groups: []string{"system:nodes", "system:authenticated"}}},
		{name: "another node", user: authenticationv1.UserInfo{Username: "system:node:node-b", Groups: []string{"system:nodes"}},
			wantErr: `the identity is "system:node:node-b", not the node's own "system:node:node-a"`, notTheNode: true},
		{name: "an administrator", user: authenticationv1.UserInfo{Username: "admin", Groups: []string{"system:masters"}},
			wantErr: `the identity is "admin"`, notTheNode: true},
		{name: "the node's name without the nodes group", user: authenticationv1.UserInfo{Username: "system:node:node-a", Groups: []string{"system:authenticated"}},
			wantErr: "not in group system:nodes (groups system:authenticated)", notTheNode: true},
		{name: "the API server unreachable", err: apierrors.NewServiceUnavailable("starting"),
			wantErr: "ask the API server who the identity is: starting"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fake.NewClientset()
			c.PrependReactor("create", "selfsubjectreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
				if tc.err != nil {
					return true, nil, tc.err
				}
				return true, &authenticationv1.SelfSubjectReview{Status: authenticationv1.SelfSubjectReviewStatus{UserInfo: tc.user}}, nil
			})
			err := CheckIdentity(context.Background(), c, "node-a")
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
			if errors.Is(err, ErrNotTheNode) != tc.notTheNode {
				t.Errorf("errors.Is(%v, ErrNotTheNode) = %v, want %v", err, !tc.notTheNode, tc.notTheNode)
			}
		})
	}
}
