// Package health turns what NVML reports about a GPU into conditions, and
// conditions into device taints and the health kubelet shows in pod
// status.
//
// Two sources feed it: NVML event sets (XID errors, double-bit ECC errors)
// and a periodic probe (GPU lost, temperature against the GPU's own
// thresholds, memory repairs pending or failed, volatile ECC counters).
// One table, Policy, classifies every cause:
//
//	class     taint effect   pod health   example
//	Ignore    none at all    Healthy      XID 13, 31, 43, 45, 68, 109 (the application's fault)
//	Info      None           Healthy      an XID the policy lists as informational
//	Degraded  NoSchedule     Healthy      thermal slowdown, memory repair pending a reset
//	Fatal     NoExecute      Unhealthy    XID 48/79/94/95/…, double-bit ECC, GPU lost
//
// Conditions are sticky or transient. A sticky one (an XID, an ECC error,
// a failed row remap) stays until the GPU was reset (seen as the volatile
// ECC counter going back, the GPU coming back on the bus, or a node
// reboot) or an admin clears it; it is persisted so a plugin restart does
// not forget it. A transient one (temperature, GPU lost, a pending repair,
// health not readable) goes away by itself once its cause has been gone
// for Policy.ClearAfter, so a flapping sensor does not flap the taint.
package health

import (
	"fmt"
	"slices"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/gpu-dra/gpu-dra-driver/pkg/hostfs"
)

// Class is how serious a condition is; Policy.Effects maps it to a taint
// effect.
type Class string

// The classes, from harmless to fatal.
const (
	// ClassIgnore changes nothing: the fault was the application's.
	ClassIgnore Class = "Ignore"
	// ClassInfo is worth showing to admins (taint effect None) but not
	// worth steering work away.
	ClassInfo Class = "Info"
	// ClassDegraded keeps new work off the device (NoSchedule); running
	// pods stay.
	ClassDegraded Class = "Degraded"
	// ClassFatal evicts the pods using the device (NoExecute).
	ClassFatal Class = "Fatal"
)

// rank orders classes by severity.
func (c Class) rank() int {
	switch c {
	case ClassInfo:
		return 1
	case ClassDegraded:
		return 2
	case ClassFatal:
		return 3
	}
	return 0
}

// Policy is the health policy: how each cause is classified, the
// thresholds, and the timing. DefaultPolicy gives safe defaults; a policy
// file (LoadPolicy) overrides any field it sets.
type Policy struct {
	// Effects maps each class except Ignore to a taint effect.
	Effects map[Class]resourceapi.DeviceTaintEffect `json:"effects,omitempty"`
	// XIDs classifies XID numbers; an XID in no list is UnknownXID.
	XIDs map[Class][]uint64 `json:"xids,omitempty"`
	// UnknownXID classifies XIDs that XIDs does not list.
	UnknownXID Class `json:"unknownXID,omitempty"`
	// DoubleBitECC classifies an uncorrectable ECC error event.
	DoubleBitECC Class `json:"doubleBitECC,omitempty"`
	// GPULost classifies a GPU that fell off the bus.
	GPULost Class `json:"gpuLost,omitempty"`
	// ThermalSlowdown classifies a GPU at or above its slowdown
	// temperature minus ThermalMarginC; ThermalShutdown one at or above
	// its shutdown temperature.
	ThermalSlowdown Class `json:"thermalSlowdown,omitempty"`
	ThermalShutdown Class `json:"thermalShutdown,omitempty"`
	// ThermalMarginC raises the thermal condition this many °C before
	// the GPU's own slowdown threshold.
	ThermalMarginC int `json:"thermalMarginC,omitempty"`
	// ThermalHysteresisC is how far under the raising temperature the
	// GPU must cool before the condition counts as gone.
	ThermalHysteresisC int `json:"thermalHysteresisC,omitempty"`
	// RepairPending classifies retired pages or remapped rows pending a
	// reset; RemapFailure a row remapping that failed.
	RepairPending Class `json:"repairPending,omitempty"`
	RemapFailure  Class `json:"remapFailure,omitempty"`
	// Unmonitored classifies a GPU whose health cannot be read or whose
	// events cannot be watched.
	Unmonitored Class `json:"unmonitored,omitempty"`
	// ClearAfter is how long the cause of a transient condition must be
	// gone before its taint is removed.
	ClearAfter metav1.Duration `json:"clearAfter,omitempty"`
	// ProbeInterval is how often the probe reads every GPU.
	ProbeInterval metav1.Duration `json:"probeInterval,omitempty"`
}

// DefaultPolicy is the policy without a file. The XID lists follow
// NVIDIA's XID catalogue: the application-caused XIDs NVIDIA's own device
// plugin skips are ignored; XIDs that mean the GPU needs a reset or is
// gone are fatal; XIDs that warn of failing memory are degraded. Any other
// XID keeps new work off the GPU until it is understood (UnknownXID
// Degraded), which an operator can relax to Info.
func DefaultPolicy() Policy {
	return Policy{
		Effects: map[Class]resourceapi.DeviceTaintEffect{
			ClassInfo:     resourceapi.DeviceTaintEffectNone,
			ClassDegraded: resourceapi.DeviceTaintEffectNoSchedule,
			ClassFatal:    resourceapi.DeviceTaintEffectNoExecute,
		},
		XIDs: map[Class][]uint64{
			// 13 graphics engine exception, 31 memory page fault, 43
			// channel stopped, 45 preemptive cleanup, 68 video
			// processor exception, 109 context switch timeout.
			ClassIgnore: {13, 31, 43, 45, 68, 109},
			// 48 double-bit ECC, 61/62 internal micro-controller
			// breakpoint/halt, 64 row remapper failure, 74 NVLink, 79
			// fallen off the bus, 95 uncontained ECC, 119/120 GSP
			// timeout/error, 140 unrecovered ECC.
			ClassFatal: {48, 61, 62, 64, 74, 79, 95, 119, 120, 140},
			// 63 row remapping pending, 92 high single-bit ECC rate,
			// 94 contained ECC error.
			ClassDegraded: {63, 92, 94},
		},
		UnknownXID:         ClassDegraded,
		DoubleBitECC:       ClassFatal,
		GPULost:            ClassFatal,
		ThermalSlowdown:    ClassDegraded,
		ThermalShutdown:    ClassFatal,
		ThermalMarginC:     0,
		ThermalHysteresisC: 5,
		RepairPending:      ClassDegraded,
		RemapFailure:       ClassFatal,
		Unmonitored:        ClassInfo,
		ClearAfter:         metav1.Duration{Duration: 30 * time.Second},
		ProbeInterval:      metav1.Duration{Duration: 5 * time.Second},
	}
}

// LoadPolicy reads a policy file (YAML or JSON, a regular file of at most
// 1 MiB) over the defaults. Unknown fields are errors naming the field, so
// a typo is never silently ignored.
func LoadPolicy(path string) (Policy, error) {
	p := DefaultPolicy()
	if path == "" {
		return p, nil
	}
	data, err := hostfs.ReadBounded(path, maxFileSize, false)
	if err != nil {
		return p, fmt.Errorf("read health policy: %w", err)
	}
	var file Policy
	if err := yaml.UnmarshalStrict(data, &file); err != nil {
		return p, fmt.Errorf("health policy %s: %w", path, err)
	}
	p.merge(file)
	if err := p.Validate(); err != nil {
		return p, fmt.Errorf("health policy %s: %w", path, err)
	}
	return p, nil
}

// merge overrides p with every field o sets. An XID listed in o leaves
// whatever class p had it in.
func (p *Policy) merge(o Policy) {
	for c, e := range o.Effects {
		p.Effects[c] = e
	}
	for c, xids := range o.XIDs {
		for other := range p.XIDs {
			p.XIDs[other] = slices.DeleteFunc(p.XIDs[other], func(x uint64) bool { return slices.Contains(xids, x) })
		}
		p.XIDs[c] = append(p.XIDs[c], xids...)
	}
	set := func(dst *Class, v Class) {
		if v != "" {
			*dst = v
		}
	}
	set(&p.UnknownXID, o.UnknownXID)
	set(&p.DoubleBitECC, o.DoubleBitECC)
	set(&p.GPULost, o.GPULost)
	set(&p.ThermalSlowdown, o.ThermalSlowdown)
	set(&p.ThermalShutdown, o.ThermalShutdown)
	set(&p.RepairPending, o.RepairPending)
	set(&p.RemapFailure, o.RemapFailure)
	set(&p.Unmonitored, o.Unmonitored)
	if o.ThermalMarginC != 0 {
		p.ThermalMarginC = o.ThermalMarginC
	}
	if o.ThermalHysteresisC != 0 {
		p.ThermalHysteresisC = o.ThermalHysteresisC
	}
	if o.ClearAfter.Duration != 0 {
		p.ClearAfter = o.ClearAfter
	}
	if o.ProbeInterval.Duration != 0 {
		p.ProbeInterval = o.ProbeInterval
	}
}

// Validate checks every field and names the first bad one.
func (p *Policy) Validate() error {
	valid := func(field string, c Class) error {
		switch c {
		case ClassIgnore, ClassInfo, ClassDegraded, ClassFatal:
			return nil
		}
		return fmt.Errorf("%s: unknown class %q (want Ignore, Info, Degraded or Fatal)", field, c)
	}
	for c, e := range p.Effects {
		if err := valid("effects", c); err != nil {
			return err
		}
		switch e {
		case resourceapi.DeviceTaintEffectNone, resourceapi.DeviceTaintEffectNoSchedule, resourceapi.DeviceTaintEffectNoExecute:
		default:
			return fmt.Errorf("effects[%s]: unknown taint effect %q (want None, NoSchedule or NoExecute)", c, e)
		}
	}
	for _, c := range []Class{ClassInfo, ClassDegraded, ClassFatal} {
		if _, ok := p.Effects[c]; !ok {
			return fmt.Errorf("effects: class %s has no effect", c)
		}
	}
	seen := map[uint64]Class{}
	for c, xids := range p.XIDs {
		if err := valid("xids", c); err != nil {
			return err
		}
		for _, x := range xids {
			if prev, dup := seen[x]; dup && prev != c {
				return fmt.Errorf("xids: XID %d is both %s and %s", x, prev, c)
			}
			seen[x] = c
		}
	}
	for field, c := range map[string]Class{
		"unknownXID": p.UnknownXID, "doubleBitECC": p.DoubleBitECC, "gpuLost": p.GPULost,
		"thermalSlowdown": p.ThermalSlowdown, "thermalShutdown": p.ThermalShutdown,
		"repairPending": p.RepairPending, "remapFailure": p.RemapFailure, "unmonitored": p.Unmonitored,
	} {
		if err := valid(field, c); err != nil {
			return err
		}
	}
	if p.ThermalMarginC < 0 || p.ThermalMarginC > 50 {
		return fmt.Errorf("thermalMarginC: %d is outside 0..50", p.ThermalMarginC)
	}
	if p.ThermalHysteresisC < 0 || p.ThermalHysteresisC > 50 {
		return fmt.Errorf("thermalHysteresisC: %d is outside 0..50", p.ThermalHysteresisC)
	}
	if p.ClearAfter.Duration < 0 {
		return fmt.Errorf("clearAfter: %s is negative", p.ClearAfter.Duration)
	}
	if p.ProbeInterval.Duration < 100*time.Millisecond {
		return fmt.Errorf("probeInterval: %s is under 100ms", p.ProbeInterval.Duration)
	}
	return nil
}

// ClassifyXID returns an XID's class.
func (p *Policy) ClassifyXID(xid uint64) Class {
	for c, xids := range p.XIDs {
		if slices.Contains(xids, xid) {
			return c
		}
	}
	return p.UnknownXID
}

// Effect is the taint effect of a class; ok is false for Ignore.
func (p *Policy) Effect(c Class) (resourceapi.DeviceTaintEffect, bool) {
	if c == ClassIgnore {
		return "", false
	}
	e, ok := p.Effects[c]
	return e, ok
}
