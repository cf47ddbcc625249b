package prepare

import (
	"context"
	"fmt"
	"slices"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/utils/ptr"

	"github.com/gpu-dra/gpu-dra-driver/pkg/cdi"
	"github.com/gpu-dra/gpu-dra-driver/pkg/checkpoint"
	"github.com/gpu-dra/gpu-dra-driver/pkg/mps"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// cdiDevices turns a claim record into CDI devices with their annotations:
// names.PreparedDeviceAnnotation carries each device's record
// (checkpoint.EncodeDevice, versioned and checksummed like the
// checkpoint), so a lost checkpoint can be rebuilt from the spec files.
func cdiDevices(rec *checkpoint.Claim) ([]cdi.Device, error) {
	out := make([]cdi.Device, 0, len(rec.Devices))
	for _, d := range rec.Devices {
		record, err := checkpoint.EncodeDevice(rec, d)
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", d.Name, err)
		}
		cd := cdi.Device{Name: cdiName(d), Request: d.Requests[0], GPUMinor: d.GPUMinor, UUID: d.GPUUUID, Env: d.Env,
			Annotations: map[string]string{names.PreparedDeviceAnnotation: record}}
		if d.MPSDir != "" {
			cd.Mounts = []cdi.Mount{
				// The CUDA clients connect through pipe/; only the daemon
				// and its servers, host processes, write log/.
				{HostPath: mps.PipeDirIn(d.MPSDir), ContainerPath: mps.ContainerPipeDir},
				{HostPath: mps.LogDirIn(d.MPSDir), ContainerPath: mps.ContainerLogDir, ReadOnly: true},
			}
			if mps.Bounded(d.MPSDir) {
				// The MPS server and its clients share memory in
				// /dev/shm: the daemon's, on its bounded tmpfs as pipe/ is.
				cd.Mounts = append(cd.Mounts, cdi.Mount{HostPath: mps.ShmDirIn(d.MPSDir), ContainerPath: mps.ContainerShmDir})
			}
		}
		if v := d.VFIO; v != nil {
			cd.VFIO = &cdi.VFIODevice{Group: v.Group, IOMMUFD: v.IOMMUFD, CharDevice: v.CharDevice, APIDevice: v.APIDevice}
		}
		if d.MIG != nil {
			cd.UUID = d.MIG.UUID
			cd.MIG = &cdi.MIGDevice{GIID: d.MIG.GIID, CIID: d.MIG.CIID, Graphics: names.HasGraphics(d.MIG.Profile)}
		}
		out = append(out, cd)
	}
	return out, nil
}

// cdiName is the device's name in its claim's CDI spec: its name in the
// ResourceSlice, and for a share also its share ID, as one claim may hold
// two shares of the same GPU.
func cdiName(d checkpoint.Device) string {
	if d.ShareID != "" {
		return d.Name + "-" + d.ShareID
	}
	return d.Name
}

// rewriteSpec writes the claim's CDI spec again from its record.
func rewriteSpec(ctx context.Context, c *checkpoint.Claim, specs CDI) error {
	devs, err := cdiDevices(c)
	if err != nil {
		return err
	}
	_, err = specs.WriteClaimSpec(ctx, c.UID, devs)
	return err
}

// SpecAnnotations reads the device annotations of claims' CDI specs.
type SpecAnnotations interface {
	DeviceAnnotations(claimUID string) (map[string]map[string]string, error)
}

// rebuildClaim recovers a prepared claim from its CDI spec's annotations.
func rebuildClaim(uid string, specs SpecAnnotations) (*checkpoint.Claim, error) {
	anns, err := specs.DeviceAnnotations(uid)
	if err != nil {
		return nil, err
	}
	rec := &checkpoint.Claim{UID: uid, State: checkpoint.PrepareCompleted}
	for _, name := range sortedKeys(anns) {
		raw, ok := anns[name][names.PreparedDeviceAnnotation]
		if !ok {
			return nil, fmt.Errorf("device %s of claim %s has no %s annotation", name, uid, names.PreparedDeviceAnnotation)
		}
		r, err := checkpoint.DecodeDevice(raw)
		if err != nil {
			return nil, fmt.Errorf("device %s of claim %s: %w", name, uid, err)
		}
		rec.Namespace, rec.Name = r.Namespace, r.Claim
		r.Device.CDIDeviceIDs = []string{cdi.DeviceID(uid, cdiName(r.Device))}
		rec.Devices = append(rec.Devices, r.Device)
	}
	return rec, nil
}

// kubeletDevices is what the kubelet is told of a prepared claim, with
// each device's metadata from the devices published now.
func (p *Preparer) kubeletDevices(rec *checkpoint.Claim) []kubeletplugin.Device {
	out := make([]kubeletplugin.Device, 0, len(rec.Devices))
	for _, d := range rec.Devices {
		kd := kubeletplugin.Device{
			Requests: slices.Clone(d.Requests), PoolName: d.Pool, DeviceName: d.Name, CDIDeviceIDs: slices.Clone(d.CDIDeviceIDs),
		}
		var published map[resourceapi.QualifiedName]resourceapi.DeviceAttribute
		if dev, ok := p.devices.Lookup(d.Name); ok {
			published = dev.Attributes
		}
		kd.Metadata = deviceMetadata(published, d)
		if d.ShareID != "" {
			kd.ShareID = ptr.To(types.UID(d.ShareID))
		}
		out = append(out, kd)
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
