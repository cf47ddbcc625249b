package fleet

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Endpoints of the local control plane (test/cluster/up.sh).
const (
	schedulerMetricsURL = "https://127.0.0.1:10259/metrics"
	etcdMetricsURL      = "http://127.0.0.1:2379/metrics"
)

// ControlPlane are the processes whose memory the harness reports, by
// the names of their PID files under the cluster's run directory.
var ControlPlane = []string{"kube-apiserver", "etcd", "kube-scheduler"}

// RSS reads the resident memory of each control-plane process, in bytes,
// from /proc through the PID files up.sh writes under runDir/pids.
func RSS(runDir string) (map[string]int64, error) {
	out := map[string]int64{}
	for _, name := range ControlPlane {
		raw, err := os.ReadFile(filepath.Join(runDir, "pids", name+".pid"))
		if err != nil {
			return nil, fmt.Errorf("read PID of %s: %w", name, err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
		if err != nil {
			return nil, fmt.Errorf("PID file of %s: %w", name, err)
		}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return nil, fmt.Errorf("read status of %s (pid %d): %w", name, pid, err)
		}
		rss, err := vmRSS(string(status))
		if err != nil {
			return nil, fmt.Errorf("status of %s (pid %d): %w", name, pid, err)
		}
		out[name] = rss
	}
	return out, nil
}

// vmRSS reads "VmRSS:  123 kB" from /proc/PID/status.
func vmRSS(status string) (int64, error) {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("unexpected VmRSS line %q", line)
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmRSS line %q: %w", line, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS line")
}

// metricsClient scrapes the control plane's metrics endpoints. The
// scheduler serves them on its self-signed loopback certificate and
// authorizes the bearer token through the API server.
type metricsClient struct {
	http  *http.Client
	token string
}

func newMetricsClient(token string) *metricsClient {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // loopback, self-signed, measurement only
	return &metricsClient{http: &http.Client{Transport: tr}, token: token}
}

func (m *metricsClient) scrape(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", fmt.Errorf("scrape %s: %w", url, err)
	}
	if m.token != "" && strings.HasPrefix(url, "https:") {
		req.Header.Set("Authorization", "Bearer "+m.token)
	}
	resp, err := m.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("scrape %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	return string(body), nil
}

// Histogram is a Prometheus histogram's cumulative buckets, summed over
// the series that match a filter.
type Histogram struct {
	// Buckets maps an upper bound to the count of observations at or below it.
	Buckets map[float64]float64
	Count   float64
}

// parseHistogram reads the histogram named name from a text exposition,
// summing the series whose labels contain every one of match.
func parseHistogram(text, name string, match ...string) (Histogram, error) {
	h := Histogram{Buckets: map[float64]float64{}}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name+"_bucket{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok || !containsAll(labels, match) {
			continue
		}
		le, ok := label(labels, "le")
		if !ok {
			return Histogram{}, fmt.Errorf("bucket without le: %q", line)
		}
		bound, err := strconv.ParseFloat(le, 64)
		if err != nil {
			return Histogram{}, fmt.Errorf("bucket bound of %q: %w", line, err)
		}
		n, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
		if err != nil {
			return Histogram{}, fmt.Errorf("bucket count of %q: %w", line, err)
		}
		h.Buckets[bound] += n
		if math.IsInf(bound, 1) {
			h.Count += n
		}
	}
	if err := sc.Err(); err != nil {
		return Histogram{}, fmt.Errorf("read metrics: %w", err)
	}
	return h, nil
}

// label is the value of one label in `a="x",b="y"`.
func label(labels, name string) (string, bool) {
	for _, part := range strings.Split(labels, ",") {
		if v, ok := strings.CutPrefix(part, name+`="`); ok {
			return strings.TrimSuffix(v, `"`), true
		}
	}
	return "", false
}

func containsAll(labels string, match []string) bool {
	for _, m := range match {
		if !strings.Contains(labels, m) {
			return false
		}
	}
	return true
}

// Sub is the histogram of the observations made since before.
func (h Histogram) Sub(before Histogram) Histogram {
	out := Histogram{Buckets: map[float64]float64{}, Count: h.Count - before.Count}
	for b, n := range h.Buckets {
		out.Buckets[b] = n - before.Buckets[b]
	}
	return out
}

// Quantile estimates the q-quantile by linear interpolation within its
// bucket, as Prometheus' histogram_quantile does. It is 0 without
// observations.
func (h Histogram) Quantile(q float64) float64 {
	if h.Count <= 0 {
		return 0
	}
	bounds := make([]float64, 0, len(h.Buckets))
	for b := range h.Buckets {
		bounds = append(bounds, b)
	}
	sort.Float64s(bounds)
	rank := q * h.Count
	lower, below := 0.0, 0.0
	for _, b := range bounds {
		n := h.Buckets[b]
		if n >= rank {
			if math.IsInf(b, 1) {
				return lower
			}
			if n == below {
				return b
			}
			return lower + (b-lower)*(rank-below)/(n-below)
		}
		lower, below = b, n
	}
	return lower
}

// gauge reads an unlabelled gauge from a text exposition.
func gauge(text, name string) (float64, error) {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0, fmt.Errorf("gauge %s: %w", name, err)
			}
			return f, nil
		}
	}
	return 0, fmt.Errorf("gauge %s not found", name)
}
