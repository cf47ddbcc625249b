package webhook

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"
)

// TestCertReloader: a renewed pair is served from the next check on; a
// broken one keeps the last good certificate.
func TestCertReloader(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	if err := WriteSelfSigned(dir, []string{"127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	logger, _ := ktesting.NewTestContext(t)
	r, err := NewCertReloader(logger, certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	r.CheckEvery = 0
	first, _ := r.GetCertificate(nil)

	if err := WriteSelfSigned(dir, []string{"127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	// Files rewritten within the clock's resolution still differ in time
	// on Linux; make sure of it.
	later := time.Now().Add(time.Second)
	for _, f := range []string{certFile, keyFile} {
		if err := os.Chtimes(f, later, later); err != nil {
			t.Fatal(err)
		}
	}
	renewed, _ := r.GetCertificate(nil)
	if bytes.Equal(renewed.Certificate[0], first.Certificate[0]) {
		t.Fatal("the renewed certificate is not served")
	}

	if err := os.WriteFile(keyFile, []byte("half written"), 0o600); err != nil {
		t.Fatal(err)
	}
	kept, err := r.GetCertificate(nil)
	if err != nil || !bytes.Equal(kept.Certificate[0], renewed.Certificate[0]) {
		t.Fatalf("a broken pair replaced the good certificate (err %v)", err)
	}

	if _, err := NewCertReloader(logger, certFile, filepath.Join(dir, "missing.key")); err == nil {
		t.Error("a missing key file was accepted at start")
	}
}
