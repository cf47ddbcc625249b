package kubectlgpu

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"
)

// printable returns s with every character that a terminal could act on,
// or that would make the text look other than it is, escaped visibly:
// C0 and C1 control characters (ESC, and so CSI and OSC sequences; BEL,
// carriage return, newline and tab included), DEL, Unicode format
// characters (bidirectional overrides and isolates, zero-width
// characters), line and paragraph separators and spaces other than ' ',
// as \xHH (ASCII) or \uHHHH; a byte that is no UTF-8 as \xHH too.
//
// Whoever may write an object kubectl gpu prints (an Event, any
// component with RBAC to create one; a claim's status; a node's
// ResourceSlice attributes) chooses that text, and the admin's terminal
// must not run it. Everything else, backslashes included, is kept as it
// is, so that ordinary text reads the same.
func printable(s string) string {
	clean := true
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || !strconv.IsPrint(r) {
			clean = false
			break
		}
		i += size
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case strconv.IsPrint(r):
			b.WriteString(s[i : i+size])
		case r < utf8.RuneSelf:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r <= 0xFFFF:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
		i += size
	}
	return b.String()
}

// sanitizeReport makes every string of the report printable, in place.
// The report holds only what the API returned (names, attributes,
// conditions, the plugin's status data, rules' messages), and every
// output prints it: the table, describe and yaml or json alike. Strings
// are found by reflection, so that a field added to the report later is
// covered without a list to keep.
func sanitizeReport(r *Report) {
	sanitizeStrings(reflect.ValueOf(r).Elem())
}

// sanitizeStrings replaces every settable string reachable from v with
// its printable form. Each string is rewritten where it is: shared slices
// are rewritten more than once, which printable, idempotent, allows.
func sanitizeStrings(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			sanitizeStrings(v.Elem())
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if f := v.Field(i); f.CanSet() {
				sanitizeStrings(f)
			}
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			sanitizeStrings(v.Index(i))
		}
	case reflect.String:
		if v.CanSet() {
			v.SetString(printable(v.String()))
		}
	default:
		// Numbers, booleans and times print nothing a writer chose. A
		// map or an interface in the report would need handling here.
	}
}
