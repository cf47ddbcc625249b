package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/types"
)

// bigClaim is a ResourceClaim with our (valid) configuration whose
// AdmissionReview is about size bytes, most of them in CEL selectors.
func bigClaim(uid string, size int) []byte {
	sel := `{"cel":{"expression":"device.attributes['gpu.nvidia.com'].productName == '` + strings.Repeat("x", 1000) + `'"}}`
	sels := strings.Repeat(sel+",", size/len(sel))
	object := `{"metadata":{"name":"big","namespace":"default"},"spec":{"devices":{"requests":[{"name":"gpu","exactly":{"deviceClassName":"gpu.nvidia.com","selectors":[` +
		strings.TrimSuffix(sels, ",") + `]}}],"config":[` + opaque(good) + `]}}}`
	return reviewOf(types.UID(uid), admissionv1.Create, "ResourceClaim", object)
}

// allocated is how many bytes f allocates.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestRequestMemory: a review costs about its own size, not a multiple of
// it; one over MaxRequestBytes is refused, naming the limit, to the UID
// of the request (so the API server shows the reason), after reading no
// more than its beginning when its length is announced and no more than
// the limit when it is not.
func TestRequestMemory(t *testing.T) {
	h := NewHandler(1)
	fits := bigClaim("fits", MaxRequestBytes-8<<10)
	if len(fits) > MaxRequestBytes || len(fits) < MaxRequestBytes-32<<10 {
		t.Fatalf("test review of %d bytes", len(fits))
	}
	var resp *admissionv1.AdmissionResponse
	n := allocated(func() { resp = serve(t, h, fits) })
	if !resp.Allowed {
		t.Fatalf("a valid claim of %d bytes refused: %s", len(fits), resp.Result.Message)
	}
	if n > uint64(len(fits))*3/2 {
		t.Errorf("a review of %d bytes allocated %d bytes, over 1.5 times its size", len(fits), n)
	}
	t.Logf("a review of %d bytes allocated %d bytes", len(fits), n)

	huge := bigClaim("huge", 4<<20)
	for _, announced := range []bool{true, false} {
		var rec *httptest.ResponseRecorder
		n := allocated(func() {
			rec = httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(huge))
			if !announced {
				req.ContentLength = -1
			}
			h.ServeHTTP(rec, req)
		})
		var got admissionv1.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || got.Response == nil {
			t.Fatalf("length announced %v: status %d, not an AdmissionReview: %s", announced, rec.Code, rec.Body)
		}
		if r := got.Response; r.Allowed || r.UID != "huge" || r.Result.Code != http.StatusRequestEntityTooLarge ||
			!strings.Contains(r.Result.Message, "over the 1048576 bytes the gpu.nvidia.com webhook reads") {
			t.Errorf("length announced %v: response %+v %+v", announced, r, r.Result)
		}
		limit := uint64(64 << 10)
		if !announced {
			limit = MaxRequestBytes + 64<<10 // a buffer of the limit
		}
		if n > limit {
			t.Errorf("length announced %v: a refused review of %d bytes allocated %d bytes, over %d", announced, len(huge), n, limit)
		}
		t.Logf("length announced %v: a refused review of %d bytes allocated %d bytes", announced, len(huge), n)
	}
}

// TestReviewUID: the UID of a review too large to decode is read from its
// beginning when it is where the API server writes it, and otherwise not
// guessed.
func TestReviewUID(t *testing.T) {
	for _, tc := range []struct{ prefix, want string }{
		{`{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"u-1","kind":{"group":"resource.k8s.io"`, "u-1"},
		{`{"request":{"uid":"u-2"`, "u-2"},
		{`{"kind":"AdmissionReview","request":{"kind":{"kind":"ResourceClaim"},"uid":"late"}}`, ""},
		{`{"request":{"uid":17}}`, ""},
		{`{"request":{"ui`, ""},
		{`{"response":{"uid":"u"}}`, ""},
		{`["request"]`, ""},
		{``, ""},
	} {
		if got, _ := reviewUID([]byte(tc.prefix)); string(got) != tc.want {
			t.Errorf("reviewUID(%s) = %q, want %q", tc.prefix, got, tc.want)
		}
	}
}

// blockedBody is a request body that blocks until released.
type blockedBody struct {
	reading chan struct{} // closed at the first Read
	once    sync.Once
	r       *io.PipeReader
}

func (b *blockedBody) Read(p []byte) (int, error) {
	b.once.Do(func() { close(b.reading) })
	return b.r.Read(p)
}

// TestInFlightBound: reviews beyond the bound wait unread for a slot, and
// one whose caller gives up first is answered 503 without having been
// read; once a slot is free, reviews are answered again.
func TestInFlightBound(t *testing.T) {
	h := NewHandler(2)
	body := reviewOf("u", admissionv1.Create, "ResourceClaim", `{"spec":{"devices":{"config":[`+opaque(good)+`]}}}`)
	var writers []*io.PipeWriter
	var done sync.WaitGroup
	codes := make(chan int, 2)
	for range 2 {
		r, w := io.Pipe()
		b := &blockedBody{reading: make(chan struct{}), r: r}
		writers = append(writers, w)
		done.Add(1)
		go func() {
			defer done.Done()
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodPost, Path, b)
			req.ContentLength = -1
			h.ServeHTTP(rec, req)
			codes <- rec.Code
		}()
		<-b.reading // it holds a slot
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the API server gave up on this one
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, Path, readFails{t}).WithContext(ctx))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "2 admission reviews in flight") {
		t.Errorf("third review: status %d %q, want 503 naming the bound", rec.Code, rec.Body)
	}

	for _, w := range writers {
		if _, err := w.Write(body); err != nil {
			t.Fatal(err)
		}
		w.Close()
	}
	done.Wait()
	for range 2 {
		if code := <-codes; code != http.StatusOK {
			t.Errorf("a review holding a slot: status %d", code)
		}
	}
	if resp := serve(t, h, body); !resp.Allowed {
		t.Errorf("a review after the slots were freed: %+v", resp.Result)
	}
}

// readFails is a body that must not be read.
type readFails struct{ t *testing.T }

func (r readFails) Read([]byte) (int, error) {
	r.t.Error("a review waiting for a slot was read")
	return 0, io.EOF
}

// TestServerLimits: the server closes peers that are slow to send or to
// read, or idle, and bounds headers and HTTP/2 streams.
func TestServerLimits(t *testing.T) {
	srv := NewServer(context.Background(), NewHandler(0), nil)
	for name, v := range map[string]int64{
		"ReadHeaderTimeout": int64(srv.ReadHeaderTimeout), "ReadTimeout": int64(srv.ReadTimeout),
		"WriteTimeout": int64(srv.WriteTimeout), "IdleTimeout": int64(srv.IdleTimeout),
		"MaxHeaderBytes": int64(srv.MaxHeaderBytes), "HTTP2.MaxConcurrentStreams": int64(srv.HTTP2.MaxConcurrentStreams),
	} {
		if v <= 0 {
			t.Errorf("%s unset", name)
		}
	}
	if srv.WriteTimeout <= maxQueueWait {
		t.Errorf("WriteTimeout %s would cut off a review that waited its %s for a slot", srv.WriteTimeout, maxQueueWait)
	}
	if srv.TLSConfig.MinVersion < 0x0303 {
		t.Errorf("TLS minimum version %x", srv.TLSConfig.MinVersion)
	}
}
