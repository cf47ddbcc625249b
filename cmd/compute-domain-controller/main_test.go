package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestFlags: flags and their environment twins parse, and validate names
// the flag that is wrong.
func TestFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
		check   func(*options) bool
	}{
		{name: "namespace from POD_NAMESPACE", args: []string{"--image=cd:1"}, env: map[string]string{"POD_NAMESPACE": "drv"},
			check: func(o *options) bool {
				return o.namespace == "drv" && o.leaderElect && o.statusMinInterval == 500*time.Millisecond && o.leaseName == "compute-domain-controller"
			}},
		{name: "env twins", args: []string{"--namespace=drv"}, env: map[string]string{"GPU_DRA_IMAGE": "cd:2", "GPU_DRA_LEADER_ELECT": "false", "GPU_DRA_STATUS_MIN_INTERVAL": "2s"},
			check: func(o *options) bool {
				return o.image == "cd:2" && !o.leaderElect && o.statusMinInterval == 2*time.Second
			}},
		{name: "flag beats env", args: []string{"--namespace=drv", "--image=cd:1"}, env: map[string]string{"GPU_DRA_IMAGE": "cd:2"},
			check: func(o *options) bool { return o.image == "cd:1" }},
		{name: "no image", args: []string{"--namespace=drv"}, wantErr: "--image"},
		{name: "no namespace", args: []string{"--image=cd:1"}, env: map[string]string{"POD_NAMESPACE": ""}, wantErr: "--namespace"},
		{name: "bad pull policy", args: []string{"--namespace=drv", "--image=cd:1", "--image-pull-policy=Sometimes"}, wantErr: "--image-pull-policy"},
		{name: "bad lease timing", args: []string{"--namespace=drv", "--image=cd:1", "--leader-election-renew-deadline=20s"}, wantErr: "--leader-election"},
		{name: "bad env value", args: []string{"--namespace=drv", "--image=cd:1"}, env: map[string]string{"GPU_DRA_WORKERS": "many"}, wantErr: "GPU_DRA_WORKERS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var got *options
			cmd := newRootCommand(func(_ context.Context, o *options) error {
				got = o
				return nil
			})
			cmd.SetArgs(tt.args)
			err := cmd.Execute()
			switch {
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %v, want one naming %s", err, tt.wantErr)
				}
			case err != nil:
				t.Errorf("error %v", err)
			case !tt.check(got):
				t.Errorf("options %+v", got)
			}
		})
	}
}
