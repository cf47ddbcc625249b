package miguuid

import (
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	for _, w := range []Where{{0, 0, 0}, {7, 19, 0}, {255, 255, 255}, {3, 9, 2}} {
		s, err := New(w)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(s, "MIG-") || len(s) != 40 {
			t.Errorf("New(%+v) = %q, want MIG- and a UUID", w, s)
		}
		if got, ok := Parse(s); !ok || got != w {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", s, got, ok, w)
		}
		if again, _ := New(w); again == s {
			t.Errorf("New(%+v) twice gave %s", w, s)
		}
	}
}

func TestRefused(t *testing.T) {
	for _, w := range []Where{{-1, 0, 0}, {0, 256, 0}, {0, 0, 1000}} {
		if s, err := New(w); err == nil {
			t.Errorf("New(%+v) = %s, want an error", w, s)
		}
	}
	for _, s := range []string{"", "MIG-", "GPU-5a000000-0000-4000-8000-5a0000000000",
		"MIG-12345678-1234-4234-8234-123456789abc", "MIG-not-a-uuid"} {
		if w, ok := Parse(s); ok {
			t.Errorf("Parse(%q) = %+v, want not ours", s, w)
		}
	}
}
