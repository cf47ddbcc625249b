// Package clearance names the Node annotations by which an admin, after
// checking a GPU, clears its sticky health taints (fatal XIDs, ECC errors):
// `kubectl gpu clear` writes them, the node's plugin reads them. The value
// is an RFC 3339 time; conditions raised at or before it are cleared.
package clearance

// Annotation clears every GPU of the node.
const Annotation = "gpu.nvidia.com/health-cleared"

// GPUAnnotationPrefix followed by a GPU's minor number clears that GPU,
// e.g. "gpu.nvidia.com/health-cleared-gpu-3".
const GPUAnnotationPrefix = "gpu.nvidia.com/health-cleared-gpu-"
