package sim

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// model describes a simulated node: its GPUs (in PCI order) and driver.
type model struct {
	gpus          []PublishedModel
	driverVersion string
	// cudaVersion is NVML's integer form, e.g. 12040 for 12.4.
	cudaVersion int
	// fabric is set for nodes whose GPUs are attached to a multi-node
	// NVLink fabric (GB200 NVL racks): NVML reports their registration
	// with it (fabric.go); on the others fabric info is NOT_SUPPORTED.
	fabric bool
}

// models is the one table of simulated nodes. Their GPUs are NVIDIA's
// published models (hardware.go); the driver versions match go-nvml's dgx*
// mock servers.
var models = map[string]model{
	"l40s":         {gpus: multiple(8, L40S), driverVersion: "550.54.15", cudaVersion: 12040},
	"l4":           {gpus: multiple(8, L4), driverVersion: "550.54.15", cudaVersion: 12040},
	"a30":          {gpus: multiple(4, A3024GB), driverVersion: "550.54.15", cudaVersion: 12040},
	"dgxa100":      {gpus: multiple(8, A100SXM440GB), driverVersion: "550.54.15", cudaVersion: 12040},
	"dgxa100-80gb": {gpus: multiple(8, A100SXM480GB), driverVersion: "550.54.15", cudaVersion: 12040},
	"dgxh100":      {gpus: multiple(8, H100SXM580GB), driverVersion: "550.54.15", cudaVersion: 12040},
	"dgxh200":      {gpus: multiple(8, H200SXM5141GB), driverVersion: "550.54.15", cudaVersion: 12040},
	// gh200 is a node of two GH200 superchips (96GB HBM3 each), as
	// NVIDIA's extended-resources demo mig-1g-12gb.yaml shows one; not
	// fabric attached. Driver as the DGX nodes (GH200 needs 535 or later).
	"gh200":   {gpus: multiple(2, GH20096GB), driverVersion: "550.54.15", cudaVersion: 12040},
	"dgxb200": {gpus: multiple(8, B200SXM180GB), driverVersion: "560.28.03", cudaVersion: 12060},
	// gb200 is one compute tray of a GB200 NVL rack: four GB200 GPUs,
	// fabric attached. Driver 570.133.20 (CUDA 12.8), the first that the
	// MIG user guide names for Blackwell (B200) MIG; IMEX needs 550 or later.
	"gb200": {gpus: multiple(4, GB200186GB), driverVersion: "570.133.20", cudaVersion: 12080, fabric: true},
	"mixed": {
		gpus:          append(multiple(4, A100SXM440GB), multiple(4, H100SXM580GB)...),
		driverVersion: "550.54.15", cudaVersion: 12040,
	},
}

func multiple(n int, m PublishedModel) []PublishedModel {
	out := make([]PublishedModel, n)
	for i := range out {
		out[i] = m
	}
	return out
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

// lookupModel returns the simulated node called name: one of Models(), or
// "<model>:<n>", its first n GPUs (the local clusters' test nodes are small,
// so that a test fills a node with a few pods).
func lookupModel(name string) (model, error) {
	base, count, hasCount := strings.Cut(name, ":")
	m, ok := models[base]
	if !ok {
		return model{}, fmt.Errorf("unknown simulated node %q: want one of %s, optionally followed by :<number of GPUs>", name, strings.Join(Models(), ", "))
	}
	if !hasCount {
		return m, nil
	}
	n, err := strconv.Atoi(count)
	if err != nil || n < 1 || n > len(m.gpus) {
		return model{}, fmt.Errorf("simulated node %q: the number of GPUs after ':' must be 1 to %d", name, len(m.gpus))
	}
	m.gpus = m.gpus[:n:n]
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
