// Package opaque strictly decodes the opaque configurations of the API
// groups' DRA requests (the parameters of a claim's device config). It
// depends on nothing but the JSON decoder Kubernetes uses, as the api
// packages do.
package opaque

import (
	"bytes"
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"
)

// Kind is one kind of configuration an API group's parameters may hold:
// its name and a new, empty object of it.
type Kind[T any] struct {
	Name string
	New  func() T
}

// Decode strictly decodes raw, the parameters of an opaque configuration
// of apiVersion groupVersion, into a new object of the one of kinds its
// kind names. Another apiVersion or kind, a field of another case, an
// unknown or a duplicate field is an error naming the field.
func Decode[T any](raw []byte, groupVersion string, kinds ...Kind[T]) (T, error) {
	var zero T
	var meta metav1.TypeMeta
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &meta); err != nil {
		return zero, fmt.Errorf("parameters: %w", err)
	}
	if meta.APIVersion != groupVersion {
		return zero, fmt.Errorf("parameters.apiVersion: %q is not supported, want %q", meta.APIVersion, groupVersion)
	}
	var names []string
	for _, k := range kinds {
		if k.Name != meta.Kind {
			names = append(names, k.Name)
			continue
		}
		cfg := k.New()
		strictErrs, err := sigsjson.UnmarshalStrict(bytes.TrimSpace(raw), cfg)
		if err != nil {
			return zero, fmt.Errorf("parameters: %w", err)
		}
		if len(strictErrs) > 0 {
			return zero, fmt.Errorf("parameters (%s): %w", meta.Kind, strictErrs[0])
		}
		return cfg, nil
	}
	return zero, fmt.Errorf("parameters.kind: %q is not supported, want %s", meta.Kind, strings.Join(names, " or "))
}
