package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/pkg/claimreader"
)

// apiServer answers who the caller is (user, or 401 when user is empty)
// and claim gets, and records the Authorization header of the claim gets.
type apiServer struct {
	user authenticationv1.UserInfo
	mu   sync.Mutex
	auth []string
}

func (s *apiServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/apis/authentication.k8s.io/v1/selfsubjectreviews":
		if s.user.Username == "" {
			w.WriteHeader(http.StatusUnauthorized)
			_ = json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
				Status: metav1.StatusFailure, Reason: metav1.StatusReasonUnauthorized, Code: http.StatusUnauthorized, Message: "Unauthorized"})
			return
		}
		_ = json.NewEncoder(w).Encode(authenticationv1.SelfSubjectReview{
			TypeMeta: metav1.TypeMeta{Kind: "SelfSubjectReview", APIVersion: "authentication.k8s.io/v1"},
			Status:   authenticationv1.SelfSubjectReviewStatus{UserInfo: s.user}})
	case r.Method == http.MethodGet && r.URL.Path == "/apis/resource.k8s.io/v1/namespaces/tenant/resourceclaims/mine":
		s.mu.Lock()
		s.auth = append(s.auth, r.Header.Get("Authorization"))
		s.mu.Unlock()
		_ = json.NewEncoder(w).Encode(resourceapi.ResourceClaim{
			TypeMeta:   metav1.TypeMeta{Kind: "ResourceClaim", APIVersion: "resource.k8s.io/v1"},
			ObjectMeta: metav1.ObjectMeta{Name: "mine", Namespace: "tenant", UID: "uid-mine"}})
	default:
		http.NotFound(w, r)
	}
}

// kubeconfig writes a kubeconfig for srv with a token, or with a client
// certificate file when certFile is set.
func kubeconfig(t *testing.T, srv *httptest.Server, certFile string) string {
	t.Helper()
	user := "    token: node-token\n"
	if certFile != "" {
		user = "    client-certificate: " + certFile + "\n    client-key: " + certFile + "\n"
	}
	ca := base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	path := filepath.Join(t.TempDir(), "kubelet.kubeconfig")
	cfg := `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "` + srv.URL + `", certificate-authority-data: ` + ca + `}
users:
- name: u
  user:
` + user + `contexts:
- name: ctx
  context: {cluster: c, user: u}
current-context: ctx
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestNodeClaimReads: --claim-reader-kubeconfig is refused, naming the
// flag, when it cannot be read or the API server says it is not the node;
// once accepted, the claims are read with its credentials.
func TestNodeClaimReads(t *testing.T) {
	node := authenticationv1.UserInfo{Username: "system:node:node-a", Groups: []string{"system:nodes", "system:authenticated"}}
	for _, tc := range []struct {
		name string
		// user is who the API server says the identity is; none: 401.
		user authenticationv1.UserInfo
		// path makes the kubeconfig's path for the server.
		path func(t *testing.T, srv *httptest.Server) string
		// down: the API server is not there.
		down       bool
		wantErr    string
		notTheNode bool
	}{
		{name: "the node's kubeconfig", user: node},
		{name: "the API server not reachable: started anyway", user: node, down: true},
		{name: "no kubeconfig", user: node, path: func(t *testing.T, _ *httptest.Server) string { return filepath.Join(t.TempDir(), "missing") },
			wantErr: "--claim-reader-kubeconfig "},
		{name: "its client certificate missing", user: node,
			path: func(t *testing.T, srv *httptest.Server) string {
				return kubeconfig(t, srv, "/nonexistent/kubelet-client-current.pem")
			},
			wantErr: "/nonexistent/kubelet-client-current.pem"},
		{name: "another node's", user: authenticationv1.UserInfo{Username: "system:node:node-b", Groups: []string{"system:nodes"}},
			wantErr: `--claim-reader-kubeconfig`, notTheNode: true},
		{name: "an administrator's", user: authenticationv1.UserInfo{Username: "admin", Groups: []string{"system:masters"}},
			wantErr: `the identity is "admin"`, notTheNode: true},
		{name: "credentials the API server refuses", wantErr: "Unauthorized"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := &apiServer{user: tc.user}
			srv := httptest.NewTLSServer(api)
			if tc.down {
				srv.Close()
			} else {
				t.Cleanup(srv.Close)
			}
			path := kubeconfig(t, srv, "")
			if tc.path != nil {
				path = tc.path(t, srv)
			}
			_, ctx := ktesting.NewTestContext(t)
			client, err := nodeClaimReads(ctx, fake.NewClientset(), path, "node-a")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "--claim-reader-kubeconfig "+path) {
					t.Fatalf("error %v, want one naming --claim-reader-kubeconfig %s and containing %q", err, path, tc.wantErr)
				}
				if errors.Is(err, claimreader.ErrNotTheNode) != tc.notTheNode {
					t.Errorf("errors.Is(%v, ErrNotTheNode) != %v", err, tc.notTheNode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.down {
				return
			}
			c, err := client.ResourceV1().ResourceClaims("tenant").Get(context.Background(), "mine", metav1.GetOptions{})
			if err != nil {
				t.Fatalf("get a claim: %v", err)
			}
			if c.UID != "uid-mine" {
				t.Errorf("got claim %s", c.UID)
			}
			api.mu.Lock()
			defer api.mu.Unlock()
			if len(api.auth) != 1 || api.auth[0] != "Bearer node-token" {
				t.Errorf("claim gets authenticated as %q, want the kubeconfig's token once", api.auth)
			}
		})
	}
}
