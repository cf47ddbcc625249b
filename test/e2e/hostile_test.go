//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// hostileTenant is a root container holding an MPS claim that, every
// second, writes into every file and directory it was given (the daemon's
// pipe/ and log/): each regular file overwritten with a host PID, a FIFO
// and a symlink to /dev/zero beside them, and the daemon's PID file
// replaced by $ATTACK (the host PID, a FIFO, or a symlink to /dev/zero).
// It logs whether log/ took a write, then "planted N" after each round.
const hostileTenant = `
apiVersion: v1
kind: Pod
metadata: {name: %[1]s, namespace: gpu-hostile}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: ctr
    image: busybox:local
    imagePullPolicy: Never
    env:
    - {name: VICTIM, value: "%[2]d"}
    - {name: ATTACK, value: %[3]s}
    command:
    - sh
    - -c
    - |
      if touch /var/log/nvidia-mps/probe 2>/dev/null; then echo "log dir writable"; else echo "log dir read-only"; fi
      n=0
      while true; do
        for d in /tmp/nvidia-mps /var/log/nvidia-mps; do
          for f in "$d"/*; do
            if [ -f "$f" ] && [ ! -L "$f" ]; then echo "$VICTIM" > "$f" 2>/dev/null; fi
          done
          p="$d/nvidia-cuda-mps-control.pid"
          rm -f "$p" 2>/dev/null
          case "$ATTACK" in
            pid) echo "$VICTIM" > "$p" ;;
            fifo) mkfifo "$p" ;;
            zero) ln -s /dev/zero "$p" ;;
          esac 2>/dev/null
          [ -p "$d/fifo" ] || mkfifo "$d/fifo" 2>/dev/null
          [ -L "$d/zero" ] || ln -s /dev/zero "$d/zero" 2>/dev/null
        done
        n=$((n+1)); echo "planted $n"; sleep 1
      done
    resources: {claims: [{name: gpu}]}
  resourceClaims:
  - {name: gpu, resourceClaimTemplateName: mps}
`

// TestHostileTenantCannotKillOrStallTheNode: tenants whose containers
// plant host PIDs, FIFOs and /dev/zero symlinks in the MPS directories
// they were given make neither the plugin nor the daemons' supervisors
// kill a host process or hang (at start-up reconciliation after a plugin
// restart, at a crashed daemon's restart, and at unprepare),
// nor run out of memory; log/ is read-only to them; their claims are
// unprepared, and a new claim on the node prepares afterwards.
func TestHostileTenantCannotKillOrStallTheNode(t *testing.T) {
	const ns = "gpu-hostile"
	t.Cleanup(func() { cleanNamespace(t, ns) })
	victim := exec.Command("sleep", "3600")
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = victim.Wait(); close(exited) }()
	t.Cleanup(func() { _ = victim.Process.Kill(); <-exited })
	victimAlive := func() bool {
		select {
		case <-exited:
			return false
		default:
			return true
		}
	}

	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata: {name: gpu-hostile}
---
`+mpsClaimTemplate("gpu-hostile"))
	attacks := []string{"pid", "fifo", "zero"}
	starts, quits := mpsDaemonEvents("start"), mpsDaemonEvents("quit")
	var docs []string
	for _, a := range attacks {
		docs = append(docs, fmt.Sprintf(hostileTenant, "tenant-"+a, victim.Process.Pid, a))
	}
	applyYAML(t, strings.Join(docs, "---\n"))
	var uids []types.UID
	for _, a := range attacks {
		pod := waitPodRunning(t, ns, "tenant-"+a)
		if log := podLogs(t, ns, pod.Name, "planted 1"); !strings.Contains(log, "log dir read-only") {
			t.Errorf("%s could write to the MPS log directory:\n%s", pod.Name, log)
		}
		uids = append(uids, claimOf(t, pod, "gpu").UID)
	}
	if n := mpsDaemonEvents("start") - starts; n != len(attacks) {
		t.Fatalf("%d MPS daemons started for %d claims", n, len(attacks))
	}

	// A restarted plugin reconciles every claim with the plants in place:
	// its daemons, in pods of their own, run on, and are found by their
	// records (not by the planted PID files), none hanging on a FIFO or
	// reading /dev/zero; none is started again.
	if err := script("driver.sh", "restart"); err != nil {
		t.Fatal(err)
	}
	if n := mpsDaemonEvents("start") - starts; n != len(attacks) {
		t.Errorf("%d MPS daemons started after a plugin restart, want %d (the same)", n, len(attacks))
	}
	// Each daemon crashes: its supervisor is restarted, clears the planted
	// pipe directory and starts it again.
	for key, pid := range mpsDaemonPIDs(t) {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill the MPS daemon of %s: %v", key, err)
		}
	}
	eventually(t, 90*time.Second, "every claim's MPS daemon started again", func() (bool, error) {
		n := mpsDaemonEvents("start") - starts
		return n == 2*len(attacks) && len(mpsDaemonPIDs(t)) == len(attacks),
			fmt.Errorf("%d daemons started, want %d; %d alive", n, 2*len(attacks), len(mpsDaemonPIDs(t)))
	})
	// The tenants plant again in the new daemons' pipe directories.
	for _, a := range attacks {
		log := podLogs(t, ns, "tenant-"+a, "planted")
		last := strings.Count(log, "planted")
		podLogs(t, ns, "tenant-"+a, "planted "+strconv.Itoa(last+2))
	}
	// And the plugin, restarted again, reconciles with those plants.
	if err := script("driver.sh", "restart"); err != nil {
		t.Fatal(err)
	}

	kubectl(t, "delete", "pod", "-n", ns, "tenant-pid", "tenant-fifo", "tenant-zero", "--wait=true")
	mpsRoot := filepath.Join(runDir, "kubelet/plugins/gpu.nvidia.com/mps")
	eventually(t, 90*time.Second, "the tenants' claims unprepared", func() (bool, error) {
		cp := checkpointClaims(t)
		for _, uid := range uids {
			if _, ok := cp[string(uid)]; ok {
				return false, fmt.Errorf("claim %s still in the checkpoint", uid)
			}
			if _, err := os.Lstat(filepath.Join(mpsRoot, string(uid))); err == nil {
				return false, fmt.Errorf("MPS directory of %s left", uid)
			}
		}
		return true, nil
	})
	if n := mpsDaemonEvents("quit") - quits; n != len(attacks) {
		t.Errorf("%d MPS daemons quit, want %d", n, len(attacks))
	}
	if !victimAlive() {
		t.Fatal("the host process whose PID the tenants planted was killed")
	}
	if cs := pluginPod(t).Status.ContainerStatuses; len(cs) == 0 || cs[0].RestartCount != 0 {
		t.Errorf("the plugin restarted (killed for memory?): %+v", cs)
	}

	// The node is not stalled: a new claim prepares.
	applyYAML(t, claimPod(ns, "after", "mps"))
	waitPodRunning(t, ns, "after")
	if !victimAlive() {
		t.Fatal("the host process whose PID the tenants planted was killed")
	}
}
