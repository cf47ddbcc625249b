package prepare

import (
	"fmt"
	"slices"
	"strings"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// request is what a claim asks of this driver on this node, read from its
// allocation and checked: every result of the driver is in the node's pool,
// is the device its configuration's kind serves, and has the same
// configuration.
type request struct {
	kind    checkpoint.Kind
	devices []checkpoint.Device
	// channel is set for a channel claim, daemon for a daemon claim.
	channel *v1beta1.ComputeDomainChannelConfig
	daemon  *v1beta1.ComputeDomainDaemonConfig
}

func (r *request) domainUID() string {
	if r.channel != nil {
		return r.channel.DomainID
	}
	return r.daemon.DomainID
}

// parseClaim reads the claim's allocation. Errors name the claim and the
// field at fault: the claim comes from a tenant.
func parseClaim(claim *resourceapi.ResourceClaim, pool string) (*request, error) {
	what := "claim " + claim.Namespace + "/" + claim.Name
	alloc := claim.Status.Allocation
	if alloc == nil {
		return nil, fmt.Errorf("%s: status.allocation: not allocated", what)
	}
	req := &request{}
	var cfgRaw []byte
	for i, res := range alloc.Devices.Results {
		if res.Driver != names.ComputeDomainDriverName {
			continue
		}
		field := fmt.Sprintf("%s: status.allocation.devices.results[%d]", what, i)
		if res.Pool != pool {
			return nil, fmt.Errorf("%s: device %s of pool %s is not on this node (pool %s)", field, res.Device, res.Pool, pool)
		}
		raw, err := configFor(alloc.Devices.Config, res.Request)
		if err != nil {
			return nil, fmt.Errorf("%s: status.allocation.devices.config for request %q: %w", what, res.Request, err)
		}
		if cfgRaw == nil {
			cfgRaw = raw
		} else if string(cfgRaw) != string(raw) {
			return nil, fmt.Errorf("%s: status.allocation.devices.config: requests of driver %s have different configurations; one ComputeDomain configuration per claim is supported", what, names.ComputeDomainDriverName)
		}
		dev := checkpoint.Device{Requests: []string{res.Request}, Pool: res.Pool, Name: res.Device}
		if res.ShareID != nil {
			dev.ShareID = string(*res.ShareID)
		}
		req.devices = append(req.devices, dev)
	}
	if len(req.devices) == 0 {
		return nil, fmt.Errorf("%s: status.allocation.devices.results: no device of driver %s", what, names.ComputeDomainDriverName)
	}
	cfg, err := v1beta1.Decode(cfgRaw)
	if err != nil {
		return nil, fmt.Errorf("%s: status.allocation.devices.config: opaque %w", what, err)
	}
	want := names.ChannelDevice
	switch c := cfg.(type) {
	case *v1beta1.ComputeDomainChannelConfig:
		req.kind, req.channel = checkpoint.KindChannel, c
	case *v1beta1.ComputeDomainDaemonConfig:
		req.kind, req.daemon, want = checkpoint.KindDaemon, c, names.DomainDaemonDevice
	}
	for _, d := range req.devices {
		if d.Name != want {
			return nil, fmt.Errorf("%s: status.allocation.devices.results: device %s cannot serve a %s configuration (want %s)", what, d.Name, req.kind, want)
		}
	}
	return req, nil
}

// configFor returns the opaque parameters of this driver that apply to a
// request (or subrequest "request/sub"): of the matching configurations,
// the claim's override the class's, and a later one an earlier one. A
// request with no such configuration, or configurations of other drivers
// only, is an error.
func configFor(configs []resourceapi.DeviceAllocationConfiguration, request string) ([]byte, error) {
	main, _, _ := strings.Cut(request, "/")
	var best []byte
	bestClaim := false
	var others []string
	for _, c := range configs {
		if len(c.Requests) > 0 && !slices.Contains(c.Requests, request) && !slices.Contains(c.Requests, main) {
			continue
		}
		if c.Opaque == nil {
			continue
		}
		if c.Opaque.Driver != names.ComputeDomainDriverName {
			others = append(others, c.Opaque.Driver)
			continue
		}
		fromClaim := c.Source == resourceapi.AllocationConfigSourceClaim
		if best == nil || fromClaim || !bestClaim {
			best, bestClaim = c.Opaque.Parameters.Raw, fromClaim
		}
	}
	switch {
	case best != nil:
		return best, nil
	case len(others) > 0:
		return nil, fmt.Errorf("only configurations of other drivers (%s), none of %s", strings.Join(others, ", "), names.ComputeDomainDriverName)
	}
	return nil, fmt.Errorf("no opaque configuration of driver %s", names.ComputeDomainDriverName)
}
