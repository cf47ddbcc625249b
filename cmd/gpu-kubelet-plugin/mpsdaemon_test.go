package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/klog/v2/textlogger"
)

// TestProtectFromOOMKiller: the supervisor writes a Guaranteed pod's OOM
// score where it is asked to, and only logs when it cannot.
func TestProtectFromOOMKiller(t *testing.T) {
	file := filepath.Join(t.TempDir(), "oom_score_adj")
	var log bytes.Buffer
	logger := textlogger.NewLogger(textlogger.NewConfig(textlogger.Output(&log)))
	protectFromOOMKiller(logger, file)
	if got, err := os.ReadFile(file); err != nil || string(got) != "-997" {
		t.Fatalf("oom_score_adj %q, %v; want -997", got, err)
	}
	protectFromOOMKiller(logger, filepath.Join(t.TempDir(), "missing", "oom_score_adj"))
	if !strings.Contains(log.String(), "keeps its pod's OOM score") {
		t.Errorf("log %q: want a warning", log.String())
	}
}
