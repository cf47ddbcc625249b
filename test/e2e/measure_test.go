//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// TestMeasure prints the local cluster's figures for docs/benchmarks.md:
// plugin start to all slices published, pod creation to Running (median of
// 20) for a whole GPU and a MIG device, and resident memory at idle. It
// runs only with GPU_DRA_MEASURE=1 (make bench); it asserts nothing about
// speed.
func TestMeasure(t *testing.T) {
	if os.Getenv("GPU_DRA_MEASURE") != "1" {
		t.Skip("set GPU_DRA_MEASURE=1 to measure")
	}
	// Plugin start to every slice in the API server: from the label that
	// lets the DaemonSet's pod onto the node, so pod creation, scheduling
	// and the container's start are included.
	var publish []time.Duration
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
	}
	slices.Sort(publish)
	fmt.Printf("MEASURE plugin start to 5 slices (216 devices) in the API: median %s (of %d; includes the DaemonSet's pod start)\n", publish[len(publish)/2].Round(time.Millisecond), len(publish))

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
	files, _ := filepath.Glob(filepath.Join(runDir, "pids/*.pid"))
	for _, f := range files {
		data, _ := os.ReadFile(f)
		pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
		procs[strings.TrimSuffix(filepath.Base(f), ".pid")] = pid
	}
	for _, name := range []string{"gpu-kubelet-plugin", "gpu-dra-webhook"} {
		for i, pid := range processPIDs(name) {
			procs[fmt.Sprintf("%s (pod) %d", name, i+1)] = pid
		}
	}
	names := make([]string, 0, len(procs))
	for name := range procs {
		names = append(names, name)
	}
	slices.Sort(names)
	var total int
	for _, name := range names {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", procs[name]))
		if err != nil {
			continue
		}
		kib := map[string]int{}
		for _, line := range strings.Split(string(status), "\n") {
			for _, field := range []string{"VmRSS", "RssAnon", "RssFile"} {
				if v, ok := strings.CutPrefix(line, field+":"); ok {
					kib[field], _ = strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
				}
			}
		}
		total += kib["VmRSS"]
		// Anonymous memory is the process's own (heap, stacks); file-backed
		// pages are its mapped binary, shared and reclaimable.
		fmt.Printf("MEASURE resident memory at idle: %-28s %4d MiB (anonymous %d MiB, file-backed %d MiB)\n",
			name, kib["VmRSS"]/1024, kib["RssAnon"]/1024, kib["RssFile"]/1024)
	}
	fmt.Printf("MEASURE resident memory at idle: %-28s %4d MiB\n", "all", total/1024)
}
