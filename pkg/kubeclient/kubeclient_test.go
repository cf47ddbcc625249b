package kubeclient

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const config = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://10.0.0.1:6443"}
users:
- name: u
  user: {token: t}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
`

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(file, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "") // not in a pod
	for _, tc := range []struct {
		name, file string
		wantHost   string
		wantErr    string
	}{
		{name: "file", file: file, wantHost: "https://10.0.0.1:6443"},
		{name: "no file", file: filepath.Join(dir, "none"), wantErr: "--kubeconfig " + filepath.Join(dir, "none")},
		{name: "in-cluster outside a pod", wantErr: "in-cluster configuration (or give --kubeconfig)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Config(tc.file, "tool")
			switch {
			case tc.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %v, want one containing %q", err, tc.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			case cfg.Host != tc.wantHost || cfg.UserAgent != "tool":
				t.Errorf("host %q, user agent %q; want %q, tool", cfg.Host, cfg.UserAgent, tc.wantHost)
			}
		})
	}
}
