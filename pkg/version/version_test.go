package version

import "testing"

func TestGet(t *testing.T) {
	old := Version
	defer func() { Version = old }()
	Version = ""
	if got := Get(); got == "" {
		t.Error("an unstamped build has no version")
	}
	Version = "0.1.1-e2e"
	if got := Get(); got != "0.1.1-e2e" {
		t.Errorf("stamped 0.1.1-e2e, got %q", got)
	}
}
