package names

// ComputeDomain names: the second driver, compute-domain.nvidia.com, that
// serves IMEX channels for multi-node NVLink (docs/compute-domains.md).
// Spelled as NVIDIA's driver spells them where users or NVIDIA's tools see
// them; the GPU driver's packages do not use them.

// ComputeDomainDriverName is the DRA driver of IMEX channels and domain
// daemons. Its pool on a node is named after the node.
const ComputeDomainDriverName = "compute-domain.nvidia.com"

// DeviceClasses of the ComputeDomain driver (NVIDIA-compatible).
const (
	// ChannelDeviceClass is the class of workload channel requests.
	ChannelDeviceClass = "compute-domain-default-channel.nvidia.com"
	// DomainDaemonDeviceClass is the class of the domain daemons' requests.
	DomainDaemonDeviceClass = "compute-domain-daemon.nvidia.com"
)

// Devices a node publishes for the ComputeDomain driver. Each may be
// allocated many times (allowMultipleAllocations): the node plugin, not
// the scheduler, gives each domain on the node its own kernel channel.
const (
	// ChannelDevice is the channel device, type "channel", id 0, as the
	// DeviceClass of NVIDIA's driver selects it.
	ChannelDevice = "channel-0"
	// DomainDaemonDevice is the daemon device, type "daemon", id 0.
	DomainDaemonDevice = "daemon-0"
)

// Attributes of the ComputeDomain driver's devices, and their type values.
const (
	// AttrID is the device's number (NVIDIA-compatible).
	AttrID = "id"
	// AttrCliqueID is "<cluster UUID>.<clique ID>" of the node's NVLink
	// fabric: nodes with the same value share one NVLink domain.
	AttrCliqueID = "cliqueID"
	// TypeChannel and TypeDomainDaemon are AttrType values.
	TypeChannel      = "channel"
	TypeDomainDaemon = "daemon"
)

// GPUCliqueLabel is the node label with the node's AttrCliqueID, under the
// key NVIDIA's GPU feature discovery uses: a pod affinity with it as
// topologyKey keeps a job's pods within one NVLink clique.
const GPUCliqueLabel = "nvidia.com/gpu.clique"

// ComputeDomainLabel labels what the controller makes for a domain (claim
// templates, daemon sets, daemon pods) with the domain's UID
// (NVIDIA-compatible key).
const ComputeDomainLabel = "resource.nvidia.com/computeDomain"

// DomainCliqueLabel labels a daemon pod with its node's clique ID; the
// daemons of one clique are one IMEX domain.
const DomainCliqueLabel = ComputeDomainDriverName + "/clique"

// DomainNodeLabel is the label the controller puts on each node that holds
// an allocated channel of the domain; the domain's DaemonSet selects it.
// One key per domain, so a node can serve several domains at once.
func DomainNodeLabel(domainUID string) string {
	return ComputeDomainDriverName + "/" + domainUID
}

// ComputeDomainFinalizer is the controller's finalizer on ComputeDomains.
const ComputeDomainFinalizer = ComputeDomainDriverName + "/cleanup"

// DomainDaemonSetName is the name of a domain's daemon set (and of its
// daemons' claim template, with DomainDaemonTemplateSuffix) in the driver's
// namespace.
func DomainDaemonSetName(domainUID string) string { return "cd-" + domainUID }

// DomainDaemonTemplateName is the daemons' claim template of a domain.
func DomainDaemonTemplateName(domainUID string) string { return "cd-" + domainUID + "-daemon" }

// Environment a domain's containers get through CDI (NVIDIA-compatible).
const (
	EnvCliqueID               = "CLIQUE_ID"
	EnvComputeDomainUUID      = "COMPUTE_DOMAIN_UUID"
	EnvComputeDomainName      = "COMPUTE_DOMAIN_NAME"
	EnvComputeDomainNamespace = "COMPUTE_DOMAIN_NAMESPACE"
)

// IMEX facts shared by the node plugin, the daemon and the simulator.
const (
	// IMEXChannelDir is where IMEX channel device nodes live under /dev.
	IMEXChannelDir = "nvidia-caps-imex-channels"
	// IMEXChannelMajorName is the channels' entry in /proc/devices.
	IMEXChannelMajorName = "nvidia-caps-imex-channels"
	// IMEXChannelCount is the number of channels the kernel driver offers.
	IMEXChannelCount = 2048
	// IMEXServerPort is the daemons' peer port; IMEXCommandPort is the
	// port nvidia-imex-ctl queries.
	IMEXServerPort  = 50000
	IMEXCommandPort = 50005
	// IMEXDaemonDir is where a daemon container finds its domain's
	// configuration directory (mounted by CDI).
	IMEXDaemonDir = "/imexd"
)
