package hwcheck

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Status is the verdict of one item of the check.
type Status string

// The verdicts, from best to worst.
const (
	// Pass: the item is as the driver needs it.
	Pass Status = "PASS"
	// Warn: the driver runs, but something needs the operator's attention
	// (a GPU reset is due, a feature will not work).
	Warn Status = "WARN"
	// Fail: the driver cannot work with this item as it is.
	Fail Status = "FAIL"
)

// Item is one checked thing with its verdict.
type Item struct {
	Status Status `json:"status"`
	// Name says what was checked, e.g. "MIG mode".
	Name string `json:"name"`
	// Message is what was found, or why the item is not a PASS.
	Message string `json:"message"`
	// Details are further lines about the item (paths, devices, profiles).
	Details []string `json:"details,omitempty"`
}

// Section is a group of items: NVML, one GPU, the driver files, the
// device nodes or the tools.
type Section struct {
	Title string `json:"title"`
	Items []Item `json:"items"`
}

// Report is the check's result.
type Report struct {
	Sections []Section `json:"sections"`
	// Result is Fail when any item failed, else Warn when any warned,
	// else Pass.
	Result Status `json:"result"`
	// Counts are the number of items of each status.
	Counts map[Status]int `json:"counts"`
}

// Failed reports whether any item failed: the check's exit status is then 1.
func (r *Report) Failed() bool { return r.Result == Fail }

// Find returns the items of the section titled title whose name is name.
func (r *Report) Find(title, name string) []Item {
	var out []Item
	for _, s := range r.Sections {
		if s.Title != title {
			continue
		}
		for _, it := range s.Items {
			if it.Name == name {
				out = append(out, it)
			}
		}
	}
	return out
}

// section starts a section and returns it for adding items.
func (r *Report) section(title string) *Section {
	r.Sections = append(r.Sections, Section{Title: title})
	return &r.Sections[len(r.Sections)-1]
}

func (s *Section) add(status Status, name, format string, args ...any) *Item {
	s.Items = append(s.Items, Item{Status: status, Name: name, Message: fmt.Sprintf(format, args...)})
	return &s.Items[len(s.Items)-1]
}

// finish sets Result and Counts.
func (r *Report) finish() {
	r.Counts = map[Status]int{Pass: 0, Warn: 0, Fail: 0}
	r.Result = Pass
	for _, s := range r.Sections {
		for _, it := range s.Items {
			r.Counts[it.Status]++
		}
	}
	switch {
	case r.Counts[Fail] > 0:
		r.Result = Fail
	case r.Counts[Warn] > 0:
		r.Result = Warn
	}
}

// nameWidth aligns the items' messages.
const nameWidth = 26

// WriteText writes the report for a person: a heading per section, a line
// per item ("PASS  name  message"), its details indented below it, and the
// result last.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	for i, s := range r.Sections {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%s\n", s.Title)
		for _, it := range s.Items {
			fmt.Fprintf(&b, "  %-4s  %-*s %s\n", it.Status, nameWidth, it.Name, it.Message)
			for _, d := range it.Details {
				fmt.Fprintf(&b, "  %-4s  %-*s   %s\n", "", nameWidth, "", d)
			}
		}
	}
	fmt.Fprintf(&b, "\nResult: %s (%d FAIL, %d WARN, %d PASS)\n", r.Result, r.Counts[Fail], r.Counts[Warn], r.Counts[Pass])
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON writes the report as one indented JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	return nil
}
