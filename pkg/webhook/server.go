package webhook

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"time"
)

// Time limits of the webhook's server. The API server gives up on the
// webhook after its timeoutSeconds (5 s in the chart); a peer slower than
// these is not the API server at work, and its connection is closed rather
// than kept for it.
const (
	// ReadHeaderTimeout bounds reading a request's headers.
	ReadHeaderTimeout = 5 * time.Second
	// ReadTimeout bounds reading a whole request, body included.
	ReadTimeout = 10 * time.Second
	// WriteTimeout bounds a request from the end of its headers to the
	// end of the response, the wait for a slot included.
	WriteTimeout = 15 * time.Second
	// IdleTimeout closes a kept-alive connection with no request.
	IdleTimeout = 60 * time.Second
	// MaxHeaderBytes bounds a request's headers; the API server's are a
	// few hundred bytes.
	MaxHeaderBytes = 16 << 10
	// MaxConcurrentStreams bounds the requests of one HTTP/2 connection
	// (the API server multiplexes its calls over a few), so that one
	// connection cannot queue an unbounded number of handlers.
	MaxConcurrentStreams = 4 * DefaultMaxInFlight
)

// NewServer returns the webhook's HTTPS server (TLS 1.2 or later) serving
// handler, with the certificate from getCertificate and the time and size
// limits above; ctx is the base of every request's context.
func NewServer(ctx context.Context, handler http.Handler, getCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: MaxConcurrentStreams},
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: getCertificate},
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
}
