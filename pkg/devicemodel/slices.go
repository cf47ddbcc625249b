package devicemodel

import (
	"fmt"
	"strconv"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ResourceSlices returns the model as complete ResourceSlice objects of the
// node's pool, named as the kubeletplugin helper's slice controller names
// them (generateName "<index>-gpu.nvidia.com-<node>-"; the index, in hex,
// makes the name order the allocation order). It is what the plugin
// publishes, for humans and tests.
func (m *Model) ResourceSlices(nodeName string) []resourceapi.ResourceSlice {
	width := max(5, len(strconv.FormatInt(int64(len(m.Slices)-1), 16)))
	out := make([]resourceapi.ResourceSlice, 0, len(m.Slices))
	for i, s := range m.Slices {
		rs := resourceapi.ResourceSlice{
			TypeMeta: metav1.TypeMeta{APIVersion: resourceapi.SchemeGroupVersion.String(), Kind: "ResourceSlice"},
			ObjectMeta: metav1.ObjectMeta{
				GenerateName: fmt.Sprintf("%0*x-%s-%s-", width, i, names.DriverName, nodeName),
			},
			Spec: resourceapi.ResourceSliceSpec{
				Driver: names.DriverName,
				Pool: resourceapi.ResourcePool{
					Name:               nodeName,
					Generation:         1,
					ResourceSliceCount: int64(len(m.Slices)),
				},
				NodeName:       &nodeName,
				Devices:        s.Devices,
				SharedCounters: s.SharedCounters,
			},
		}
		out = append(out, rs)
	}
	return out
}

// Stats summarises a model for reports.
type Stats struct {
	Slices, CounterSets, Devices, GPUs, MIGDevices, SharedGPUs, VFIOGPUs int
}

// Stats counts the model's slices and devices.
func (m *Model) Stats() Stats {
	var s Stats
	s.Slices = len(m.Slices)
	for _, sl := range m.Slices {
		s.CounterSets += len(sl.SharedCounters)
		s.Devices += len(sl.Devices)
	}
	for _, d := range m.Devices {
		switch d.Kind {
		case KindGPU:
			s.GPUs++
		case KindGPUShare:
			s.SharedGPUs++
		case KindVFIO:
			s.VFIOGPUs++
		default:
			s.MIGDevices++
		}
	}
	return s
}
