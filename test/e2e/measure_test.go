//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpu-dra/gpu-dra-driver/pkg/names"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// TestMeasure prints the local cluster's figures for docs/benchmarks.md:
// plugin start to all slices published, pod creation to Running (median of
// 20) for a whole GPU and a MIG device, and resident memory at idle. It
// runs only with GPU_DRA_MEASURE=1 (make bench). It asserts what it
// measures (every start published the same complete set of devices, every
// pod ran on the kind of device its claim asked for, every process's memory
// was read), never how fast: speed is for the reader of the figures.
func TestMeasure(t *testing.T) {
	if os.Getenv("GPU_DRA_MEASURE") != "1" {
		t.Skip("set GPU_DRA_MEASURE=1 to measure")
	}
	// Plugin start to every slice in the API server: from the label that
	// lets the DaemonSet's pod onto the node, so pod creation, scheduling
	// and the container's start are included.
	var publish []time.Duration
	devices := -1
	for i := 0; i < 5; i++ {
		if err := script("driver.sh", "stop"); err != nil {
			t.Fatal(err)
		}
		kubectl(t, "delete", "resourceslices", "--all", "--wait=true")
		start := time.Now()
		kubectl(t, "label", "node", nodeName, harnessPluginLabel+"=true")
		eventually(t, 60*time.Second, "5 slices", func() (bool, error) {
			l, err := client.ResourceV1().ResourceSlices().List(ctx(), metav1.ListOptions{})
			return err == nil && len(l.Items) == 5, err
		})
		publish = append(publish, time.Since(start))
		n := publishedDevices(t)
		if n == 0 || (devices >= 0 && n != devices) {
			t.Fatalf("start %d published %d devices, the first start %d", i+1, n, devices)
		}
		devices = n
	}
	slices.Sort(publish)
	fmt.Printf("MEASURE plugin start to 5 slices (%d devices) in the API: median %s (of %d; includes the DaemonSet's pod start)\n", devices, publish[len(publish)/2].Round(time.Millisecond), len(publish))

	const ns = "gpu-measure"
	applyYAML(t, `apiVersion: v1
kind: Namespace
metadata: {name: gpu-measure}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: whole, namespace: gpu-measure}
spec: {spec: {devices: {requests: [{name: d, exactly: {deviceClassName: gpu.nvidia.com}}]}}}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: mig, namespace: gpu-measure}
spec: {spec: {devices: {requests: [{name: d, exactly: {deviceClassName: mig.nvidia.com, selectors: [{cel: {expression: 'device.attributes["gpu.nvidia.com"].profile == "1g.10gb"'}}]}}]}}}
`)
	t.Cleanup(func() { cleanNamespace(t, ns) })
	wantDevice := map[string]*regexp.Regexp{"whole": regexp.MustCompile(`^gpu-[0-9]+$`), "mig": regexp.MustCompile(`^gpu-[0-9]+-mig-1g10gb-[0-9]$`)}
	for _, tmpl := range []string{"whole", "mig"} {
		var lat []time.Duration
		for i := 0; i < 20; i++ {
			name := fmt.Sprintf("%s-%d", tmpl, i)
			// A grace period of 0 would be a forced deletion: the API object
			// goes before the kubelet unprepares the claim, and the next pod's
			// claim could be refused the device still prepared for it.
			grace := int64(1)
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &grace,
					Containers: []corev1.Container{{Name: "c", Image: "busybox:local", ImagePullPolicy: corev1.PullNever,
						Command: []string{"sleep", "3600"}, Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "d"}}}}},
					ResourceClaims: []corev1.PodResourceClaim{{Name: "d", ResourceClaimTemplateName: &tmpl}},
				},
			}
			w, err := client.CoreV1().Pods(ns).Watch(ctx(), metav1.ListOptions{FieldSelector: "metadata.name=" + name})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if _, err := client.CoreV1().Pods(ns).Create(ctx(), pod, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			timeout := time.After(60 * time.Second)
		wait:
			for {
				select {
				case ev := <-w.ResultChan():
					if p, ok := ev.Object.(*corev1.Pod); ok && ev.Type != watch.Deleted && p.Status.Phase == corev1.PodRunning {
						break wait
					}
				case <-timeout:
					t.Fatalf("pod %s not running after 60s", name)
				}
			}
			lat = append(lat, time.Since(start))
			w.Stop()
			if got := allocatedDevice(t, ns, name); !wantDevice[tmpl].MatchString(got) {
				t.Fatalf("pod %s of template %s ran on device %q, want one matching %s", name, tmpl, got, wantDevice[tmpl])
			}
			if err := client.CoreV1().Pods(ns).Delete(ctx(), name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			eventually(t, 60*time.Second, "pod gone", func() (bool, error) {
				_, err := client.CoreV1().Pods(ns).Get(ctx(), name, metav1.GetOptions{})
				return err != nil, nil
			})
		}
		slices.Sort(lat)
		fmt.Printf("MEASURE pod creation to Running, %s claim: median %s, min %s, max %s (n=20)\n", tmpl,
			lat[len(lat)/2].Round(time.Millisecond), lat[0].Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
	}

	time.Sleep(5 * time.Second) // idle
	// The cluster's processes by their PID files; the driver's, which run
	// in pods, by their command.
	procs := map[string]int{}
	files, err := filepath.Glob(filepath.Join(runDir, "pids/*.pid"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no PID files of the cluster's processes in %s: %v", runDir, err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil {
			t.Fatalf("PID file %s: %v", f, err)
		}
		procs[strings.TrimSuffix(filepath.Base(f), ".pid")] = pid
	}
	for _, name := range []string{"gpu-kubelet-plugin", "gpu-dra-webhook"} {
		pids := processPIDs(name)
		if len(pids) == 0 {
			t.Fatalf("no %s process to measure", name)
		}
		for i, pid := range pids {
			procs[fmt.Sprintf("%s (pod) %d", name, i+1)] = pid
		}
	}
	procNames := make([]string, 0, len(procs))
	for name := range procs {
		procNames = append(procNames, name)
	}
	slices.Sort(procNames)
	var total int
	for _, name := range procNames {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", procs[name]))
		if err != nil {
			t.Fatalf("memory of %s: %v", name, err)
		}
		kib := map[string]int{}
		for _, line := range strings.Split(string(status), "\n") {
			for _, field := range []string{"VmRSS", "RssAnon", "RssFile"} {
				if v, ok := strings.CutPrefix(line, field+":"); ok {
					kib[field], _ = strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
				}
			}
		}
		if kib["VmRSS"] == 0 {
			t.Fatalf("memory of %s: no VmRSS in /proc/%d/status", name, procs[name])
		}
		total += kib["VmRSS"]
		// Anonymous memory is the process's own (heap, stacks); file-backed
		// pages are its mapped binary, shared and reclaimable.
		fmt.Printf("MEASURE resident memory at idle: %-28s %4d MiB (anonymous %d MiB, file-backed %d MiB)\n",
			name, kib["VmRSS"]/1024, kib["RssAnon"]/1024, kib["RssFile"]/1024)
	}
	fmt.Printf("MEASURE resident memory at idle: %-28s %4d MiB\n", "all", total/1024)
}

// publishedDevices counts the devices of the driver's slices.
func publishedDevices(t *testing.T) int {
	t.Helper()
	l, err := client.ResourceV1().ResourceSlices().List(ctx(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range l.Items {
		if s.Spec.Driver == names.DriverName {
			n += len(s.Spec.Devices)
		}
	}
	return n
}

// allocatedDevice is the device allocated to the first claim of a pod.
func allocatedDevice(t *testing.T, ns, pod string) string {
	t.Helper()
	p, err := client.CoreV1().Pods(ns).Get(ctx(), pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Status.ResourceClaimStatuses) == 0 || p.Status.ResourceClaimStatuses[0].ResourceClaimName == nil {
		t.Fatalf("pod %s has no claim", pod)
	}
	c, err := client.ResourceV1().ResourceClaims(ns).Get(ctx(), *p.Status.ResourceClaimStatuses[0].ResourceClaimName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Status.Allocation == nil || len(c.Status.Allocation.Devices.Results) != 1 {
		t.Fatalf("claim of pod %s: allocation %+v, want one device", pod, c.Status.Allocation)
	}
	return c.Status.Allocation.Devices.Results[0].Device
}
