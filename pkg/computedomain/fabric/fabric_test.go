package fabric

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/google/uuid"
)

// fakeGPU is a GPU with a fixed fabric answer.
type fakeGPU struct {
	nvml.Device // nil: calls CliqueID must not make
	uuidRet     nvml.Return
	info        nvml.GpuFabricInfo
	ret         nvml.Return
}

func (g fakeGPU) GetUUID() (string, nvml.Return) { return "GPU-fake", g.uuidRet }
func (g fakeGPU) GetGpuFabricInfo() (nvml.GpuFabricInfo, nvml.Return) {
	return g.info, g.ret
}

// fakeLib is a node of fake GPUs.
type fakeLib struct {
	gpus     []fakeGPU
	countRet nvml.Return
}

func (l fakeLib) DeviceGetCount() (int, nvml.Return) { return len(l.gpus), l.countRet }
func (l fakeLib) DeviceGetHandleByIndex(i int) (nvml.Device, nvml.Return) {
	if i < 0 || i >= len(l.gpus) {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	return l.gpus[i], nvml.SUCCESS
}

const (
	clusterA = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
	clusterB = "8c3b5b52-1f4e-4c1a-9a6e-6d9f3e0f2b10"
)

func completed(cluster string, clique uint32) fakeGPU {
	info := nvml.GpuFabricInfo{CliqueId: clique, State: nvml.GPU_FABRIC_STATE_COMPLETED, Status: uint32(nvml.SUCCESS)}
	if cluster != "" {
		u := uuid.MustParse(cluster)
		copy(info.ClusterUuid[:], u[:])
	}
	return fakeGPU{info: info}
}

func inState(state uint8) fakeGPU {
	return fakeGPU{info: nvml.GpuFabricInfo{State: state}}
}

var notSupported = fakeGPU{ret: nvml.ERROR_NOT_SUPPORTED}

func TestCliqueID(t *testing.T) {
	failed := completed(clusterA, 1)
	failed.info.Status = uint32(nvml.ERROR_UNKNOWN)
	tests := []struct {
		name string
		lib  fakeLib
		want string
		// wantErr is a substring of the error; pending whether it is
		// IsPending.
		wantErr string
		pending bool
	}{
		{name: "every GPU in one clique", lib: fakeLib{gpus: []fakeGPU{completed(clusterA, 7), completed(clusterA, 7), completed(clusterA, 7), completed(clusterA, 7)}},
			want: clusterA + ".7"},
		{name: "clique 0", lib: fakeLib{gpus: []fakeGPU{completed(clusterB, 0)}}, want: clusterB + ".0"},
		{name: "no GPU", lib: fakeLib{}, want: ""},
		{name: "NVML says not supported", lib: fakeLib{gpus: []fakeGPU{notSupported, notSupported}}, want: ""},
		{name: "state not supported", lib: fakeLib{gpus: []fakeGPU{inState(nvml.GPU_FABRIC_STATE_NOT_SUPPORTED)}}, want: ""},
		{name: "NVLink but not multi-node: zero cluster UUID", lib: fakeLib{gpus: []fakeGPU{completed("", 0), completed("", 0)}}, want: ""},
		{name: "registration in progress", lib: fakeLib{gpus: []fakeGPU{completed(clusterA, 1), inState(nvml.GPU_FABRIC_STATE_IN_PROGRESS)}},
			wantErr: "not completed", pending: true},
		{name: "registration not started", lib: fakeLib{gpus: []fakeGPU{inState(nvml.GPU_FABRIC_STATE_NOT_STARTED)}},
			wantErr: "not completed", pending: true},
		{name: "registration failed", lib: fakeLib{gpus: []fakeGPU{completed(clusterA, 1), failed}},
			wantErr: "registration failed"},
		{name: "failure wins over pending", lib: fakeLib{gpus: []fakeGPU{inState(nvml.GPU_FABRIC_STATE_IN_PROGRESS), failed}},
			wantErr: "registration failed"},
		{name: "different cliques", lib: fakeLib{gpus: []fakeGPU{completed(clusterA, 1), completed(clusterA, 2)}},
			wantErr: "disagree"},
		{name: "different clusters", lib: fakeLib{gpus: []fakeGPU{completed(clusterA, 1), completed(clusterB, 1)}},
			wantErr: "disagree"},
		{name: "disagreement is certain though one is pending", lib: fakeLib{gpus: []fakeGPU{completed(clusterA, 1), completed(clusterA, 2), inState(nvml.GPU_FABRIC_STATE_IN_PROGRESS)}},
			wantErr: "disagree"},
		{name: "some with fabric, some without", lib: fakeLib{gpus: []fakeGPU{completed(clusterA, 1), notSupported}},
			wantErr: "no fabric"},
		{name: "unknown state", lib: fakeLib{gpus: []fakeGPU{inState(9)}}, wantErr: "unknown NVLink fabric state 9"},
		{name: "lost GPU", lib: fakeLib{gpus: []fakeGPU{completed(clusterA, 1), {ret: nvml.ERROR_GPU_IS_LOST}}},
			wantErr: "read NVLink fabric info"},
		{name: "UUID unreadable", lib: fakeLib{gpus: []fakeGPU{{uuidRet: nvml.ERROR_UNKNOWN}}}, wantErr: "read UUID"},
		{name: "count fails", lib: fakeLib{countRet: nvml.ERROR_UNINITIALIZED}, wantErr: "count GPUs"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CliqueID(context.Background(), tc.lib)
			if tc.wantErr == "" {
				if err != nil || got != tc.want {
					t.Fatalf("CliqueID = %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("CliqueID = %q, %v; want an error with %q", got, err, tc.wantErr)
			}
			if got != "" {
				t.Errorf("CliqueID returned %q with its error", got)
			}
			if IsPending(err) != tc.pending {
				t.Errorf("IsPending(%v) = %t, want %t", err, IsPending(err), tc.pending)
			}
		})
	}
}

func TestNVMLErrorsAreWrapped(t *testing.T) {
	_, err := CliqueID(context.Background(), fakeLib{gpus: []fakeGPU{{ret: nvml.ERROR_GPU_IS_LOST}}})
	if !errors.Is(err, nvml.ERROR_GPU_IS_LOST) {
		t.Fatalf("error %v does not wrap ERROR_GPU_IS_LOST", err)
	}
	if IsPending(fmt.Errorf("other: %w", err)) {
		t.Fatal("a lost GPU is not a pending registration")
	}
}
