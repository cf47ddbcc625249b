package nodescfg

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/imexcfg"
)

type fakeDomains map[string]*v1beta1.ComputeDomain

func (f fakeDomains) Get(uid string) (*v1beta1.ComputeDomain, error) { return f[uid], nil }

type fakeDaemons map[string]string

func (f fakeDaemons) PreparedDaemons() map[string]string { return f }

func cd(nodes ...*v1beta1.ComputeDomainNode) *v1beta1.ComputeDomain {
	return &v1beta1.ComputeDomain{ObjectMeta: metav1.ObjectMeta{UID: types.UID("aaaa-0001"), Namespace: "ns", Name: "cd"},
		Status: v1beta1.ComputeDomainStatus{Nodes: nodes}}
}

func n(name, ip, clique string, index int) *v1beta1.ComputeDomainNode {
	return &v1beta1.ComputeDomainNode{Name: name, IPAddress: ip, CliqueID: clique, Index: index}
}

func TestAddresses(t *testing.T) {
	tests := []struct {
		name string
		cd   *v1beta1.ComputeDomain
		want []string
	}{
		{name: "none", cd: cd()},
		{name: "ordered by index", cd: cd(n("c", "10.0.0.3", "k.1", 2), n("a", "10.0.0.1", "k.1", 1), n("b", "10.0.0.2", "k.1", 0)),
			want: []string{"10.0.0.2", "10.0.0.1", "10.0.0.3"}},
		{name: "same clique only", cd: cd(n("a", "10.0.0.1", "k.1", 0), n("b", "10.0.0.2", "k.2", 0)), want: []string{"10.0.0.1"}},
		{name: "no injection, no repeats", cd: cd(n("a", "10.0.0.1\nSERVER_PORT=1", "k.1", 0), n("b", "", "k.1", 1),
			n("c", "fd00::1", "k.1", 2), n("d", "fd00::1", "k.1", 3), nil), want: []string{"fd00::1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Addresses(tt.cd, "k.1"); strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("Addresses = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSyncWritesFromStatus(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dirs := &imexcfg.Dirs{Root: t.TempDir()}
	dir, err := dirs.Ensure("aaaa-0001")
	if err != nil {
		t.Fatal(err)
	}
	domains := fakeDomains{"aaaa-0001": cd(n("b", "10.0.0.2", "k.1", 1), n("a", "10.0.0.1", "k.1", 0))}
	daemons := fakeDaemons{"aaaa-0001": "k.1"}
	s := New(domains, daemons, dirs, 20*time.Millisecond)
	// A domain without daemon claim here is left alone.
	if err := s.Sync(ctx, "bbbb-0002"); err != nil {
		t.Fatal(err)
	}
	go s.Run(ctx)
	path := filepath.Join(dir, imexcfg.NodesFile)
	deadline := time.Now().Add(5 * time.Second)
	for {
		data, _ := os.ReadFile(path)
		if string(data) == "10.0.0.1\n10.0.0.2\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nodes.cfg %q", data)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
