package channels

import (
	"strings"
	"testing"

	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/checkpoint"
)

func claim(domain string, ch int, all bool) *checkpoint.Claim {
	return &checkpoint.Claim{UID: domain + "-claim", Namespace: "ns", Name: "c", Kind: checkpoint.KindChannel,
		Domain: checkpoint.Domain{UID: domain}, Channel: ch, All: all}
}

func TestAssign(t *testing.T) {
	daemon := &checkpoint.Claim{Kind: checkpoint.KindDaemon, Domain: checkpoint.Domain{UID: "x"}, Channel: 0}
	tests := []struct {
		name    string
		claims  []*checkpoint.Claim
		req     Request
		want    int
		wantErr string
	}{
		{name: "first domain gets 0", req: Request{DomainUID: "a"}, want: 0},
		{name: "second domain gets the next", claims: []*checkpoint.Claim{claim("a", 0, false)}, req: Request{DomainUID: "b"}, want: 1},
		{name: "same domain shares", claims: []*checkpoint.Claim{claim("a", 0, false), claim("b", 1, false)}, req: Request{DomainUID: "b"}, want: 1},
		{name: "lowest free is reused", claims: []*checkpoint.Claim{claim("a", 1, false)}, req: Request{DomainUID: "b"}, want: 0},
		{name: "daemon claims hold no channel", claims: []*checkpoint.Claim{daemon}, req: Request{DomainUID: "b"}, want: 0},
		{name: "All on an empty node", req: Request{DomainUID: "a", All: true}, want: 0},
		{name: "All beside own single claim", claims: []*checkpoint.Claim{claim("a", 2, false)}, req: Request{DomainUID: "a", All: true}, want: 0},
		{name: "All refused beside another domain", claims: []*checkpoint.Claim{claim("a", 0, false)}, req: Request{DomainUID: "b", All: true}, wantErr: "ComputeDomain(s) a use channels"},
		{name: "other domain refused while All is held", claims: []*checkpoint.Claim{claim("a", 0, true)}, req: Request{DomainUID: "b"}, wantErr: "allocationMode All"},
		{name: "own single claim while own All is held", claims: []*checkpoint.Claim{claim("a", 0, true)}, req: Request{DomainUID: "a"}, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Assign(tt.claims, tt.req)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Assign = %d, %v; want %d", got, err, tt.want)
			}
		})
	}
}

func TestAssignExhausted(t *testing.T) {
	var claims []*checkpoint.Claim
	for i := 0; i < Count; i++ {
		c := claim("d", i, false)
		c.Domain.UID = "d" + string(rune('0'+i%10)) + strings.Repeat("x", i/10)
		claims = append(claims, c)
	}
	if _, err := Assign(claims, Request{DomainUID: "new"}); err == nil {
		t.Fatal("no error with every channel used")
	}
}
