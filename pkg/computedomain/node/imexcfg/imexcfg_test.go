package imexcfg

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfig(t *testing.T) {
	want := "IMEX_NODE_CONFIG_FILE=/imexd/nodes.cfg\nSERVER_PORT=50000\nIMEX_CMD_ENABLED=1\nIMEX_CMD_PORT=50005\nLOG_FILE_NAME=\nDAEMONIZE=0\n"
	if got := string(Config()); got != want {
		t.Fatalf("Config() = %q, want %q", got, want)
	}
}

func TestDirs(t *testing.T) {
	d := &Dirs{Root: filepath.Join(t.TempDir(), "domains")}
	const uid = "0a1b-2c"
	if _, err := d.WriteNodes(uid, []string{"10.0.0.1"}); err == nil {
		t.Fatal("WriteNodes before Ensure succeeded")
	}
	dir, err := d.Ensure(uid)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Ensure(uid); err != nil {
		t.Fatalf("Ensure is not idempotent: %v", err)
	}
	for _, step := range []struct {
		addrs   []string
		changed bool
	}{{[]string{"10.0.0.1", "10.0.0.2"}, true}, {[]string{"10.0.0.1", "10.0.0.2"}, false}, {nil, true}} {
		changed, err := d.WriteNodes(uid, step.addrs)
		if err != nil || changed != step.changed {
			t.Fatalf("WriteNodes(%v) = %v, %v; want changed %v", step.addrs, changed, err, step.changed)
		}
		data, _ := os.ReadFile(filepath.Join(dir, NodesFile))
		if want := strings.Join(step.addrs, "\n"); strings.TrimSuffix(string(data), "\n") != want {
			t.Fatalf("nodes.cfg %q, want %q", data, want)
		}
	}
	if uids, err := d.List(); err != nil || len(uids) != 1 || uids[0] != uid {
		t.Fatalf("List = %v, %v", uids, err)
	}
	if err := d.Remove(uid); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("directory left: %v", err)
	}
	if err := d.Remove(uid); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	if _, err := d.Ensure("../etc"); err == nil {
		t.Fatal("a path as UID was accepted")
	}
}
