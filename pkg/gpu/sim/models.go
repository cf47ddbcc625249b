package sim

import (
	"fmt"
	"sort"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
)

// model describes a simulated node: its GPUs (in PCI order) and driver.
type model struct {
	gpus          []gpus.Config
	driverVersion string
	// cudaVersion is NVML's integer form, e.g. 12040 for 12.4.
	cudaVersion int
}

// GPUs without MIG, which go-nvml's mock package has no configuration of.
// Name, memory (as nvidia-smi reports it), compute capability and PCI
// device ID are the hardware's; no MIG profiles: NVML answers
// ERROR_NOT_SUPPORTED to their MIG calls.
var (
	l40s = gpus.Config{
		Name: "NVIDIA L40S", Architecture: nvml.DEVICE_ARCH_ADA, Brand: nvml.BRAND_NVIDIA,
		MemoryMB: 46068, CudaMajor: 8, CudaMinor: 9, PciDeviceId: 0x26B910DE,
	}
	l4 = gpus.Config{
		Name: "NVIDIA L4", Architecture: nvml.DEVICE_ARCH_ADA, Brand: nvml.BRAND_NVIDIA,
		MemoryMB: 23034, CudaMajor: 8, CudaMinor: 9, PciDeviceId: 0x27B810DE,
	}
)

// models is the one table of simulated nodes. The GPU configurations come
// from go-nvml's mock package, but for the GPUs without MIG above; the
// driver versions match its dgx* servers.
var models = map[string]model{
	"l40s":    {gpus: gpus.Multiple(8, l40s), driverVersion: "550.54.15", cudaVersion: 12040},
	"l4":      {gpus: gpus.Multiple(8, l4), driverVersion: "550.54.15", cudaVersion: 12040},
	"dgxa100": {gpus: gpus.Multiple(8, gpus.A100_SXM4_40GB), driverVersion: "550.54.15", cudaVersion: 12040},
	"dgxh100": {gpus: gpus.Multiple(8, gpus.H100_SXM5_80GB), driverVersion: "550.54.15", cudaVersion: 12040},
	"dgxh200": {gpus: gpus.Multiple(8, gpus.H200_SXM5_141GB), driverVersion: "550.54.15", cudaVersion: 12040},
	"dgxb200": {gpus: gpus.Multiple(8, gpus.B200_SXM5_180GB), driverVersion: "560.28.03", cudaVersion: 12060},
	"mixed": {
		gpus:          append(gpus.Multiple(4, gpus.A100_SXM4_40GB), gpus.Multiple(4, gpus.H100_SXM5_80GB)...),
		driverVersion: "550.54.15", cudaVersion: 12040,
	},
}

// Models returns the names of the simulated nodes, sorted.
func Models() []string {
	var out []string
	for name := range models {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func lookupModel(name string) (model, error) {
	m, ok := models[name]
	if !ok {
		return model{}, fmt.Errorf("unknown simulated node %q: want one of %s", name, strings.Join(Models(), ", "))
	}
	return m, nil
}

// dgxBusIDs are the PCI bus numbers of the eight GPUs of a DGX H100, used
// for every simulated node so bus IDs look like hardware's.
var dgxBusIDs = []int{0x18, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb}

func busID(index int) string {
	bus := 0x100 - 8 + index
	if index < len(dgxBusIDs) {
		bus = dgxBusIDs[index]
	}
	return fmt.Sprintf("00000000:%02X:00.0", bus)
}
