package webhook

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// CertReloader serves the certificate in a pair of files and picks up a
// new one when the files change, as they do when cert-manager renews the
// Secret mounted into the webhook's pod, without a restart. A pair that
// cannot be loaded (a renewal caught half written) keeps the last good
// certificate in service and is retried on the next check.
type CertReloader struct {
	certFile, keyFile string
	logger            klog.Logger
	// CheckEvery bounds how often the files are looked at; handshakes in
	// between use the loaded certificate.
	CheckEvery time.Duration

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   string // the files' sizes and modification times when loaded
	checked time.Time
}

// NewCertReloader loads the pair once; an error names the files.
func NewCertReloader(logger klog.Logger, certFile, keyFile string) (*CertReloader, error) {
	r := &CertReloader{certFile: certFile, keyFile: keyFile, logger: logger, CheckEvery: 10 * time.Second}
	stamp, err := r.fileStamp()
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load certificate %s and key %s: %w", certFile, keyFile, err)
	}
	r.cert, r.stamp, r.checked = &cert, stamp, time.Now()
	return r, nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (r *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) < r.CheckEvery {
		return r.cert, nil
	}
	r.checked = time.Now()
	stamp, err := r.fileStamp()
	if err != nil || stamp == r.stamp {
		if err != nil {
			r.logger.Error(err, "Cannot check the serving certificate; keeping the loaded one")
		}
		return r.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		r.logger.Error(err, "Serving certificate changed but does not load; keeping the loaded one", "cert", r.certFile, "key", r.keyFile)
		return r.cert, nil
	}
	r.cert, r.stamp = &cert, stamp
	r.logger.Info("Serving certificate reloaded", "cert", r.certFile)
	return r.cert, nil
}

// fileStamp identifies the files' current contents cheaply.
func (r *CertReloader) fileStamp() (string, error) {
	var stamp string
	for _, f := range []string{r.certFile, r.keyFile} {
		st, err := os.Stat(f)
		if err != nil {
			return "", fmt.Errorf("serving certificate: %w", err)
		}
		stamp += fmt.Sprintf("%d/%d;", st.Size(), st.ModTime().UnixNano())
	}
	return stamp, nil
}
