// Package clearance reads the Node annotations (names.HealthClearedAnnotation
// and names.HealthClearedGPUAnnotation) by which an admin, after
// checking a GPU, clears its sticky health taints (fatal XIDs, ECC errors):
// `kubectl gpu clear` writes them, the node's plugin reads them. The value
// is an RFC 3339 time; conditions raised at or before it are cleared.
//
// The annotations stay on the Node and are seen again at every Node
// update, so a time ahead of the node's clock would clear every condition
// raised until then: a typo in the year, or an admin's clock that runs
// ahead, would switch sticky taints off. Parse refuses such a time; one
// within MaxSkew (clocks that disagree a little) counts as now.
package clearance

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// MaxSkew is how far ahead of the node's clock a clearance time may be:
// the skew tolerated between the clock of the machine that wrote it and
// the node's. A time up to MaxSkew ahead counts as now.
const MaxSkew = time.Minute

// maxValue bounds the value quoted in errors: annotations are written by
// people, and a Node's annotations may hold 256 KiB.
const maxValue = 64

// ErrFuture is wrapped by the error of a clearance time more than MaxSkew
// ahead of now.
var ErrFuture = errors.New("clearance time is in the future")

// Clearance is what one annotation asks for.
type Clearance struct {
	// Annotation is the annotation's key.
	Annotation string
	// AllGPUs is set for Annotation; otherwise Minor is the GPU's minor
	// number.
	AllGPUs bool
	Minor   int
	// At is the time up to which conditions are cleared, never after the
	// now given to Parse.
	At time.Time
}

// IsClearance reports whether key is a clearance annotation's key.
func IsClearance(key string) bool {
	return key == names.HealthClearedAnnotation || strings.HasPrefix(key, names.HealthClearedGPUAnnotationPrefix)
}

// Parse reads the clearance annotation key=value at the node's time now.
// It refuses a key that names no GPU minor, a value that is not an RFC
// 3339 time, and a time more than MaxSkew after now (ErrFuture); a time
// after now but within MaxSkew is taken as now. Errors name the
// annotation and its value.
func Parse(key, value string, now time.Time) (Clearance, error) {
	c := Clearance{Annotation: key, AllGPUs: key == names.HealthClearedAnnotation}
	if !c.AllGPUs {
		digits, hasPrefix := strings.CutPrefix(key, names.HealthClearedGPUAnnotationPrefix)
		// Only the canonical spelling: "+3" or "03" would clear a GPU
		// that kubectl gpu clear never names so.
		minor, ok := names.ParseMinor(digits)
		if !hasPrefix || !ok {
			return c, fmt.Errorf("annotation %s: %q is not a GPU minor number", key, quote(digits))
		}
		c.Minor = minor
	}
	at, err := time.Parse(time.RFC3339, value)
	if err != nil {
		return c, fmt.Errorf("annotation %s=%s: not an RFC 3339 time", key, quote(value))
	}
	if ahead := at.Sub(now); ahead > MaxSkew {
		return c, fmt.Errorf("annotation %s=%s: %w: %s ahead of the node's clock (%s), more than the %s allowed",
			key, quote(value), ErrFuture, ahead.Round(time.Second), now.UTC().Format(time.RFC3339), MaxSkew)
	}
	if at.After(now) {
		at = now
	}
	c.At = at
	return c, nil
}

// quote returns s cut to maxValue bytes.
func quote(s string) string {
	if len(s) > maxValue {
		return strings.ToValidUTF8(s[:maxValue], "") + "…"
	}
	return s
}
