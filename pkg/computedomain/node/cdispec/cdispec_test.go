package cdispec

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/klog/v2/ktesting"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/gpu-dra/gpu-dra-driver/pkg/computedomain/node/devnode"
)

func TestWriteReadDelete(t *testing.T) {
	tests := []struct {
		name    string
		uid     string
		devices []Device
		wantErr string
	}{
		{name: "channel", uid: "0123-abcd", devices: []Device{{Name: "channel-0",
			Nodes: []devnode.Node{{Path: devnode.Path(3), HostPath: "/dev" + devnode.Path(3), Major: 234, Minor: 3}},
			Env:   map[string]string{"COMPUTE_DOMAIN_UUID": "u", "CLIQUE_ID": "c.1"}, Record: map[string]string{"uid": "0123-abcd"}}}},
		{name: "daemon", uid: "0123-abce", devices: []Device{{Name: "daemon-0",
			Mounts: []Mount{{HostPath: "/var/lib/x", ContainerPath: "/imexd"}, {HostPath: "/usr/bin/nvidia-imex", ContainerPath: "/usr/bin/nvidia-imex", ReadOnly: true}},
			Record: map[string]string{"uid": "0123-abce"}}}},
		{name: "bad uid", uid: "../x", devices: []Device{{Name: "channel-0"}}, wantErr: "invalid claim UID"},
		{name: "no devices", uid: "0123-abcf", wantErr: "no devices"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "cdi")
			w, err := New(ktesting.NewLogger(t, ktesting.NewConfig()), root)
			if err != nil {
				t.Fatal(err)
			}
			ids, err := w.Write(tt.uid, tt.devices)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			name := tt.devices[0].Name
			if want := Vendor + "/" + Class + "=" + tt.uid + "-" + name; ids[name][0] != want {
				t.Fatalf("ids %v, want %s", ids, want)
			}
			// The CDI library's registry resolves the device.
			cache, err := cdiapi.NewCache(cdiapi.WithSpecDirs(root), cdiapi.WithAutoRefresh(false))
			if err != nil {
				t.Fatal(err)
			}
			if dev := cache.GetDevice(ids[name][0]); dev == nil {
				t.Fatalf("CDI cache does not know %s: %v", ids[name][0], cache.GetErrors())
			}
			if fi, err := os.Stat(w.Path(tt.uid)); err != nil || fi.Mode().Perm() != SpecMode {
				t.Fatalf("spec file %v, %v", fi, err)
			}
			var rec map[string]string
			if err := w.Record(tt.uid, &rec); err != nil || rec["uid"] != tt.uid {
				t.Fatalf("record %v, %v", rec, err)
			}
			if uids, err := w.ClaimUIDs(); err != nil || len(uids) != 1 || uids[0] != tt.uid {
				t.Fatalf("ClaimUIDs %v, %v", uids, err)
			}
			for range 2 {
				if err := w.Delete(tt.uid); err != nil {
					t.Fatal(err)
				}
			}
			if uids, _ := w.ClaimUIDs(); len(uids) != 0 {
				t.Fatalf("left %v", uids)
			}
		})
	}
}

func TestAllChannelsSpecIsValid(t *testing.T) {
	w, err := New(ktesting.NewLogger(t, ktesting.NewConfig()), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var nodes []devnode.Node
	for ch := range 2048 {
		nodes = append(nodes, devnode.Node{Path: devnode.Path(ch), HostPath: "/dev" + devnode.Path(ch), Major: 234, Minor: int64(ch)})
	}
	if _, err := w.Write("0123-abcd", []Device{{Name: "channel-0", Nodes: nodes}}); err != nil {
		t.Fatal(err)
	}
}
