package kubectlgpu

import (
	"sort"

	statusv1 "github.com/gpu-dra/gpu-dra-driver/api/status/v1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Report schema identifiers, printed by ls -o yaml|json.
const (
	reportAPIVersion = "kubectl-gpu.gpu.nvidia.com/v1"
	reportKind       = "GPUReport"
)

// Taint sources in TaintReport.Source.
const (
	// SourceSlice marks a taint the driver published in its ResourceSlice
	// (health taints).
	SourceSlice = "slice"
	// SourceRule marks a taint added by a DeviceTaintRule (admin taints).
	SourceRule = "rule"
)

// Report is what "kubectl gpu ls -o yaml|json" prints. Its field names are
// stable: scripts may rely on them. Nodes are sorted by name, GPUs by
// minor, devices by name.
type Report struct {
	// APIVersion is "kubectl-gpu.gpu.nvidia.com/v1".
	APIVersion string `json:"apiVersion"`
	// Kind is "GPUReport".
	Kind string `json:"kind"`
	// Nodes are the nodes whose pools the driver publishes.
	Nodes []NodeReport `json:"nodes"`
}

// NodeReport describes the GPUs of one node.
type NodeReport struct {
	// Name is the node name, which is also the driver's pool name.
	Name string `json:"name"`
	// GPUs are the node's GPUs.
	GPUs []GPUReport `json:"gpus"`
}

// GPUReport describes one physical GPU and its devices.
type GPUReport struct {
	// Name is the name of the whole-GPU device, "gpu-<minor>".
	Name string `json:"name"`
	// Minor is the GPU's minor number.
	Minor int `json:"minor"`
	// UUID is the GPU's UUID.
	UUID string `json:"uuid,omitempty"`
	// ProductName is the GPU model, e.g. "NVIDIA H100 80GB HBM3".
	ProductName string `json:"productName,omitempty"`
	// Memory is the GPU's memory capacity, as a quantity (e.g. "80Gi").
	Memory string `json:"memory,omitempty"`
	// PCIBusID, PCIeRoot and NUMANode are where the GPU sits in its host
	// (the standard attributes); NUMANode is nil when it has none.
	PCIBusID string `json:"pciBusID,omitempty"`
	PCIeRoot string `json:"pcieRoot,omitempty"`
	NUMANode *int64 `json:"numaNode,omitempty"`
	// Devices are the whole GPU and its MIG devices. In yaml and json
	// output every published device is listed; the table shows only the
	// allocated or tainted MIG devices unless -o wide.
	Devices []DeviceReport `json:"devices"`
	// MemorySlices is the GPU's number of memory slices, from its counter
	// set (8 on an H100, 4 on an A30; 0 without MIG). It sizes the slice
	// map and is not part of the yaml and json output.
	MemorySlices int `json:"-"`
}

// DeviceReport describes one published device: the whole GPU or a MIG
// placement.
type DeviceReport struct {
	// Name is the device name in the ResourceSlice, e.g. "gpu-3" or
	// "gpu-3-mig-1g10gb-0".
	Name string `json:"name"`
	// Type is "gpu", "mig" or "shared".
	Type string `json:"type"`
	// Profile is the MIG profile, e.g. "1g.10gb"; empty for a whole GPU.
	Profile string `json:"profile,omitempty"`
	// Memory is the device's memory capacity, as a quantity.
	Memory string `json:"memory,omitempty"`
	// PlacementStart and PlacementSize are a MIG device's memory slices.
	PlacementStart *int64 `json:"placementStart,omitempty"`
	PlacementSize  int64  `json:"placementSize,omitempty"`
	// PreCreated is set for a MIG instance that existed before the driver
	// (not created for a claim); UUID is its MIG UUID.
	PreCreated bool   `json:"preCreated,omitempty"`
	UUID       string `json:"uuid,omitempty"`
	// Taints are the taints on the device, from the slice and from
	// DeviceTaintRules, sorted by key, source and rule name.
	Taints []TaintReport `json:"taints,omitempty"`
	// Allocations are the claims the device is allocated to.
	Allocations []AllocationReport `json:"allocations,omitempty"`
}

// TaintReport is one taint on a device.
type TaintReport struct {
	// Key is the taint key, e.g. "gpu.nvidia.com/maintenance".
	Key string `json:"key"`
	// Value is the taint value (the reason).
	Value string `json:"value,omitempty"`
	// Effect is NoSchedule, NoExecute or None.
	Effect string `json:"effect"`
	// TimeAdded is when the taint was added or its effect last changed.
	TimeAdded *metav1.Time `json:"timeAdded,omitempty"`
	// Source is "slice" (published by the driver) or "rule" (a
	// DeviceTaintRule).
	Source string `json:"source"`
	// Rule is the name of the DeviceTaintRule when Source is "rule".
	Rule string `json:"rule,omitempty"`
	// Eviction is the message of the rule's EvictionInProgress
	// condition, if it has one.
	Eviction string `json:"eviction,omitempty"`
}

// AllocationReport is a claim a device is allocated to.
type AllocationReport struct {
	// Namespace of the ResourceClaim.
	Namespace string `json:"namespace"`
	// Claim is the ResourceClaim's name.
	Claim string `json:"claim"`
	// Request is the claim's request that the device satisfies.
	Request string `json:"request,omitempty"`
	// Pods are the pods the claim is reserved for, i.e. that use it.
	Pods []PodReport `json:"pods,omitempty"`
	// ShareID and Memory are set for a share of a shared GPU: its share
	// ID and the memory it was allocated.
	ShareID string `json:"shareID,omitempty"`
	Memory  string `json:"memory,omitempty"`
	// Conditions and Data are what the node's plugin wrote for the device
	// in the claim's status.devices: Ready and Healthy, and the device's
	// identity (nil until the plugin prepared it, or when it cannot be
	// read).
	Conditions []metav1.Condition     `json:"conditions,omitempty"`
	Data       *statusv1.DeviceStatus `json:"data,omitempty"`
}

// PodReport is a pod that holds a claim.
type PodReport struct {
	// Namespace of the pod.
	Namespace string `json:"namespace"`
	// Name of the pod.
	Name string `json:"name"`
	// Phase is the pod's phase; empty if the pod was not found.
	Phase string `json:"phase,omitempty"`
}

// reportInput is what a report is built from: lists as the API returns them.
type reportInput struct {
	slices []resourceapi.ResourceSlice
	claims []resourceapi.ResourceClaim
	rules  []resourceapi.DeviceTaintRule
	pods   []corev1.Pod
	// target, if set, limits the report to a node or a GPU.
	target *Target
}

// deviceKey identifies a device of the driver: pool and device name.
type deviceKey struct{ pool, device string }

// buildReport combines slices, claims, rules and pods into a Report. It is
// pure: no API calls, deterministic order.
func buildReport(in reportInput) Report {
	inv := NewInventory(in.slices)

	allocations := map[deviceKey][]AllocationReport{}
	pods := map[string]*corev1.Pod{}
	for i := range in.pods {
		pods[in.pods[i].Namespace+"/"+in.pods[i].Name] = &in.pods[i]
	}
	for i := range in.claims {
		c := &in.claims[i]
		if c.Status.Allocation == nil {
			continue
		}
		var holders []PodReport
		for _, r := range c.Status.ReservedFor {
			if r.Resource != "pods" || r.APIGroup != "" {
				continue
			}
			pr := PodReport{Namespace: c.Namespace, Name: r.Name}
			if p := pods[c.Namespace+"/"+r.Name]; p != nil && p.UID == r.UID {
				pr.Phase = string(p.Status.Phase)
			}
			holders = append(holders, pr)
		}
		sort.Slice(holders, func(i, j int) bool { return holders[i].Name < holders[j].Name })
		for _, res := range c.Status.Allocation.Devices.Results {
			if res.Driver != names.DriverName {
				continue
			}
			k := deviceKey{res.Pool, res.Device}
			ar := AllocationReport{Namespace: c.Namespace, Claim: c.Name, Request: res.Request, Pods: holders}
			if res.ShareID != nil {
				ar.ShareID = string(*res.ShareID)
				if q, ok := res.ConsumedCapacity[names.CapacityMemory]; ok {
					ar.Memory = q.String()
				}
			}
			if st := deviceStatusOf(c, res); st != nil {
				ar.Conditions = st.Conditions
				if data, err := statusv1.Decode(st.Data.Raw); err == nil {
					ar.Data = data
				}
			}
			allocations[k] = append(allocations[k], ar)
		}
	}

	report := Report{APIVersion: reportAPIVersion, Kind: reportKind, Nodes: []NodeReport{}}
	for _, nodeName := range inv.NodeNames() {
		if in.target != nil && in.target.Node != nodeName {
			continue
		}
		node := inv.Nodes[nodeName]
		nr := NodeReport{Name: nodeName, GPUs: []GPUReport{}}
		for _, minor := range node.Minors() {
			if in.target != nil && in.target.HasGPU && in.target.GPU != minor {
				continue
			}
			gr := GPUReport{Name: names.GPUDevice(minor), Minor: minor, Devices: []DeviceReport{}, MemorySlices: node.GPUs[minor].MemorySlices}
			for _, d := range node.GPUs[minor].Devices {
				dr := DeviceReport{
					Name:    d.Name,
					Type:    stringAttr(d, names.AttrType),
					Profile: stringAttr(d, names.AttrProfile),
					Memory:  capacity(d, names.CapacityMemory),
				}
				// The GPU's own device says what the GPU is; without one (a GPU
				// of pre-created MIG instances only) its MIG devices do.
				if d.Name == gr.Name || (gr.UUID == "" && dr.Type == names.TypeMIG) {
					gr.UUID = stringAttr(d, names.AttrUUID)
					if d.Name != gr.Name {
						gr.UUID = stringAttr(d, names.AttrParentUUID)
					} else {
						gr.Memory = dr.Memory
					}
					gr.ProductName = stringAttr(d, names.AttrProductName)
					gr.PCIBusID = stringAttr(d, names.AttrStandardPCIBusID)
					gr.PCIeRoot = stringAttr(d, names.AttrPCIeRoot)
					gr.NUMANode = intAttr(d, names.AttrNUMANode)
				}
				if dr.Type == names.TypeMIG {
					dr.PlacementStart = intAttr(d, names.AttrPlacementStart)
					dr.PlacementSize = memorySlices(d)
					if n := intAttr(d, names.AttrPlacementSize); n != nil {
						dr.PlacementSize = *n
					}
					if dr.UUID = stringAttr(d, names.AttrUUID); dr.UUID != "" {
						dr.PreCreated = true
					}
				}
				for _, t := range d.Taints {
					dr.Taints = append(dr.Taints, TaintReport{
						Key: t.Key, Value: t.Value, Effect: string(t.Effect), TimeAdded: t.TimeAdded, Source: SourceSlice,
					})
				}
				for i := range in.rules {
					r := &in.rules[i]
					if !ruleSelects(r, names.DriverName, nodeName, d.Name) {
						continue
					}
					dr.Taints = append(dr.Taints, TaintReport{
						Key: r.Spec.Taint.Key, Value: r.Spec.Taint.Value, Effect: string(r.Spec.Taint.Effect),
						TimeAdded: r.Spec.Taint.TimeAdded, Source: SourceRule, Rule: r.Name, Eviction: evictionMessage(r),
					})
				}
				sort.SliceStable(dr.Taints, func(i, j int) bool {
					a, b := dr.Taints[i], dr.Taints[j]
					if a.Key != b.Key {
						return a.Key < b.Key
					}
					if a.Source != b.Source {
						return a.Source > b.Source // slice before rule
					}
					return a.Rule < b.Rule
				})
				dr.Allocations = allocations[deviceKey{nodeName, d.Name}]
				sort.SliceStable(dr.Allocations, func(i, j int) bool {
					a, b := dr.Allocations[i], dr.Allocations[j]
					if a.Namespace != b.Namespace {
						return a.Namespace < b.Namespace
					}
					return a.Claim < b.Claim
				})
				gr.Devices = append(gr.Devices, dr)
			}
			nr.GPUs = append(nr.GPUs, gr)
		}
		report.Nodes = append(report.Nodes, nr)
	}
	return report
}

// ruleSelects tells whether a DeviceTaintRule's selector matches a device.
// Without a selector a rule matches nothing; unset fields match anything.
func ruleSelects(r *resourceapi.DeviceTaintRule, driver, pool, device string) bool {
	sel := r.Spec.DeviceSelector
	if sel == nil {
		return false
	}
	return (sel.Driver == nil || *sel.Driver == driver) &&
		(sel.Pool == nil || *sel.Pool == pool) &&
		(sel.Device == nil || *sel.Device == device)
}

// evictionMessage returns the message of a rule's EvictionInProgress
// condition, or "".
func evictionMessage(r *resourceapi.DeviceTaintRule) string {
	for _, c := range r.Status.Conditions {
		if c.Type == resourceapi.DeviceTaintConditionEvictionInProgress {
			return c.Message
		}
	}
	return ""
}

// stringAttr returns a string attribute of a device, or "".
func stringAttr(d resourceapi.Device, name resourceapi.QualifiedName) string {
	if a, ok := d.Attributes[name]; ok && a.StringValue != nil {
		return *a.StringValue
	}
	return ""
}

// intAttr returns an int attribute of a device, or nil.
func intAttr(d resourceapi.Device, name resourceapi.QualifiedName) *int64 {
	if a, ok := d.Attributes[name]; ok && a.IntValue != nil {
		v := *a.IntValue
		return &v
	}
	return nil
}

// deviceStatusOf returns the claim's status.devices entry of an allocated
// device, or nil.
func deviceStatusOf(c *resourceapi.ResourceClaim, res resourceapi.DeviceRequestAllocationResult) *resourceapi.AllocatedDeviceStatus {
	for i := range c.Status.Devices {
		st := &c.Status.Devices[i]
		same := st.Driver == res.Driver && st.Pool == res.Pool && st.Device == res.Device
		if same && (st.ShareID == nil) == (res.ShareID == nil) && (st.ShareID == nil || *st.ShareID == string(*res.ShareID)) {
			return st
		}
	}
	return nil
}

// capacity returns a capacity of a device as a quantity string, or "".
func capacity(d resourceapi.Device, name resourceapi.QualifiedName) string {
	if c, ok := d.Capacity[name]; ok {
		return c.Value.String()
	}
	return ""
}

// memorySlices is how many memory slices a MIG device spans: one counter
// of its GPU's counter set per slice (a pre-created instance consumes none
// and says it in placementSize).
func memorySlices(d resourceapi.Device) int64 {
	var n int64
	for _, cc := range d.ConsumesCounters {
		for name := range cc.Counters {
			if names.IsMemorySliceCounter(name) {
				n++
			}
		}
	}
	return n
}
