package opaque

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

type thing interface{ name() string }

type a struct {
	metav1.TypeMeta `json:",inline"`
	Size            int `json:"size"`
}

type b struct {
	metav1.TypeMeta `json:",inline"`
}

func (x *a) name() string { return "A" }
func (x *b) name() string { return "B" }

func TestDecode(t *testing.T) {
	kinds := []Kind[thing]{{Name: "A", New: func() thing { return &a{} }}, {Name: "B", New: func() thing { return &b{} }}}
	for _, tc := range []struct {
		name, raw string
		want      string // the kind decoded
		wantErr   string
	}{
		{name: "first kind", raw: `{"apiVersion": "x/v1", "kind": "A", "size": 3}`, want: "A"},
		{name: "second kind", raw: ` {"apiVersion": "x/v1", "kind": "B"} `, want: "B"},
		{name: "another apiVersion", raw: `{"apiVersion": "x/v2", "kind": "A"}`, wantErr: `parameters.apiVersion: "x/v2" is not supported, want "x/v1"`},
		{name: "another kind", raw: `{"apiVersion": "x/v1", "kind": "C"}`, wantErr: `parameters.kind: "C" is not supported, want A or B`},
		{name: "unknown field", raw: `{"apiVersion": "x/v1", "kind": "B", "size": 3}`, wantErr: `parameters (B): unknown field "size"`},
		{name: "field of another case", raw: `{"apiVersion": "x/v1", "kind": "A", "Size": 3}`, wantErr: `parameters (A): unknown field "Size"`},
		{name: "duplicate field", raw: `{"apiVersion": "x/v1", "kind": "A", "size": 3, "size": 4}`, wantErr: `parameters (A): duplicate field "size"`},
		{name: "not JSON", raw: `{"apiVersion": `, wantErr: "parameters: "},
		{name: "wrong type", raw: `{"apiVersion": "x/v1", "kind": "A", "size": "3"}`, wantErr: "parameters: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Decode([]byte(tc.raw), "x/v1", kinds...)
			switch {
			case tc.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %v, want one containing %q", err, tc.wantErr)
				}
			case err != nil:
				t.Errorf("unexpected error: %v", err)
			case got.name() != tc.want:
				t.Errorf("decoded a %s, want a %s", got.name(), tc.want)
			}
		})
	}
}
