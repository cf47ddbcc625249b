package v1beta1

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		want    Config
		wantErr string
	}{
		{
			name: "channel as NVIDIA's controller writes it",
			raw:  `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"ComputeDomainChannelConfig","domainID":"d1","allocationMode":"All"}`,
			want: &ComputeDomainChannelConfig{TypeMeta: metav1.TypeMeta{APIVersion: GroupVersion, Kind: ComputeDomainChannelConfigKind}, DomainID: "d1", AllocationMode: AllocationModeAll},
		},
		{
			name: "channel without a mode is Single",
			raw:  `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"ComputeDomainChannelConfig","domainID":"d1"}`,
			want: &ComputeDomainChannelConfig{TypeMeta: metav1.TypeMeta{APIVersion: GroupVersion, Kind: ComputeDomainChannelConfigKind}, DomainID: "d1", AllocationMode: AllocationModeSingle},
		},
		{
			name: "daemon",
			raw:  `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"ComputeDomainDaemonConfig","domainID":"d1"}`,
			want: &ComputeDomainDaemonConfig{TypeMeta: metav1.TypeMeta{APIVersion: GroupVersion, Kind: ComputeDomainDaemonConfigKind}, DomainID: "d1"},
		},
		{name: "unknown field", raw: `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"ComputeDomainDaemonConfig","domainID":"d1","channel":3}`, wantErr: `unknown field "channel"`},
		{name: "no domain", raw: `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"ComputeDomainChannelConfig"}`, wantErr: "parameters.domainID"},
		{name: "bad mode", raw: `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"ComputeDomainChannelConfig","domainID":"d","allocationMode":"some"}`, wantErr: "parameters.allocationMode"},
		{name: "GPU kind", raw: `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig"}`, wantErr: "parameters.kind"},
		{name: "other version", raw: `{"apiVersion":"resource.nvidia.com/v1","kind":"ComputeDomainDaemonConfig","domainID":"d"}`, wantErr: "parameters.apiVersion"},
		{name: "not JSON", raw: `{`, wantErr: "parameters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode([]byte(tt.raw))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Decode() error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode(): %v", err)
			}
			switch w := tt.want.(type) {
			case *ComputeDomainChannelConfig:
				if g, ok := got.(*ComputeDomainChannelConfig); !ok || *g != *w {
					t.Fatalf("Decode() = %#v, want %#v", got, w)
				}
			case *ComputeDomainDaemonConfig:
				if g, ok := got.(*ComputeDomainDaemonConfig); !ok || *g != *w {
					t.Fatalf("Decode() = %#v, want %#v", got, w)
				}
			}
		})
	}
}

func TestValidate(t *testing.T) {
	ch := func(name, mode string) *ComputeDomainChannelSpec {
		return &ComputeDomainChannelSpec{ResourceClaimTemplate: ComputeDomainResourceClaimTemplate{Name: name}, AllocationMode: mode}
	}
	tests := []struct {
		name    string
		spec    ComputeDomainSpec
		wantErr string
	}{
		{name: "NVIDIA's demo", spec: ComputeDomainSpec{NumNodes: 1, Channel: ch("imex-channel-0", "")}},
		{name: "all", spec: ComputeDomainSpec{Channel: ch("t", AllocationModeAll)}},
		{name: "no channel", spec: ComputeDomainSpec{}, wantErr: "spec.channel: required"},
		{name: "no template", spec: ComputeDomainSpec{Channel: ch("", "")}, wantErr: "spec.channel.resourceClaimTemplate.name: required"},
		{name: "bad template", spec: ComputeDomainSpec{Channel: ch("Not_A_Name", "")}, wantErr: "spec.channel.resourceClaimTemplate.name"},
		{name: "bad mode", spec: ComputeDomainSpec{Channel: ch("t", "Many")}, wantErr: "spec.channel.allocationMode"},
		{name: "negative nodes", spec: ComputeDomainSpec{NumNodes: -1, Channel: ch("t", "")}, wantErr: "spec.numNodes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := (&ComputeDomain{Spec: tt.spec}).Validate()
			if tt.wantErr == "" && err != nil {
				t.Fatalf("Validate(): %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestUnstructuredRoundTrip(t *testing.T) {
	cd := &ComputeDomain{
		ObjectMeta: metav1.ObjectMeta{Name: "cd", Namespace: "ns", UID: "u1"},
		Spec:       ComputeDomainSpec{NumNodes: 2, Channel: &ComputeDomainChannelSpec{ResourceClaimTemplate: ComputeDomainResourceClaimTemplate{Name: "t"}}},
		Status:     ComputeDomainStatus{Status: StatusReady, Nodes: []*ComputeDomainNode{{Name: "n1", IPAddress: "10.0.0.1", CliqueID: "c.1", Index: 0, Status: StatusReady}}},
	}
	u, err := ToUnstructured(cd)
	if err != nil {
		t.Fatal(err)
	}
	if u.GetKind() != ComputeDomainKind || u.GetAPIVersion() != GroupVersion {
		t.Fatalf("kind %s apiVersion %s", u.GetKind(), u.GetAPIVersion())
	}
	back, err := FromUnstructured(u)
	if err != nil {
		t.Fatal(err)
	}
	if back.Spec.Channel.ResourceClaimTemplate.Name != "t" || back.Status.Nodes[0].CliqueID != "c.1" || back.UID != "u1" {
		t.Fatalf("round trip lost fields: %#v", back)
	}
	cp := cd.DeepCopy()
	cp.Status.Nodes[0].Status = StatusNotReady
	cp.Spec.Channel.AllocationMode = AllocationModeAll
	if cd.Status.Nodes[0].Status != StatusReady || cd.Spec.Channel.AllocationMode != "" {
		t.Fatal("DeepCopy shares memory with the original")
	}
}
