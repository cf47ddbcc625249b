//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestKueueTeamQuotas runs Kueue (test/cluster/kueue.sh) with the quota
// configuration of test/cluster/kueue/dra.yaml and gives each team a
// ClusterQueue with quota of one kind: whole GPUs counted, MIG devices
// charged by their GPU memory, and shares charged by the memory they
// request. Per kind, Jobs are admitted up to the quota, the next waits
// suspended, and it is admitted once an earlier one finishes.
func TestKueueTeamQuotas(t *testing.T) {
	start := time.Now()
	if err := script("kueue.sh", "start"); err != nil {
		t.Fatalf("kueue.sh start: %v", err)
	}
	t.Logf("kueue started in %s", time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if err := script("kueue.sh", "stop"); err != nil {
			t.Errorf("kueue.sh stop: %v", err)
		}
	})
	applyYAML(t, `
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {name: default-flavor}
`)
	t.Cleanup(func() { kubectlErr("delete", "resourceflavor", "default-flavor", "--ignore-not-found") })

	t.Run("WholeGPUs", testKueueWholeGPUs)
	t.Run("MIGByMemory", testKueueMIGByMemory)
	t.Run("SharesByMemory", testKueueSharesByMemory)
	// Last: it restarts Kueue with another configuration.
	t.Run("NVIDIAsCounterConfig", testKueueNVIDIAsCounterConfig)
}

// testKueueWholeGPUs: a team with quota for two whole GPUs runs two
// one-GPU Jobs; the third waits until one of them finishes.
func testKueueWholeGPUs(t *testing.T) {
	const ns, res = "team-whole", "gpu.nvidia.com/gpus"
	teamQueue(t, ns, res, "2")
	applyTemplate(t, ns, "one-gpu", `deviceClassName: gpu.nvidia.com`)
	// One after the other: Kueue admits in creation order, which one
	// second's resolution would leave open.
	for _, job := range []string{"train-1", "train-2"} {
		createJob(t, ns, job, "one-gpu")
		waitAdmitted(t, ns, job)
	}
	createJob(t, ns, "train-3", "one-gpu")
	waitPending(t, ns, "train-3", res)
	for _, job := range []string{"train-1", "train-2"} {
		if got := usage(t, ns, job, res); got.Cmp(resource.MustParse("1")) != 0 {
			t.Errorf("%s charged %s %s, want 1", job, got.String(), res)
		}
	}

	finishJob(t, ns, "train-1")
	waitAdmitted(t, ns, "train-3")
}

// testKueueMIGByMemory: a team's quota is the memory of one 2g.20gb and
// one 1g.10gb MIG device. A 2g.20gb Job and a 1g.10gb Job are admitted,
// each charged its device's memory; a second 1g.10gb Job would pass a
// quota of two devices but not this one, so it waits until the 2g.20gb
// Job finishes.
func testKueueMIGByMemory(t *testing.T) {
	const ns, res = "team-mig", "gpu.nvidia.com/mig-memory"
	small, large := migMemory(t, "1g.10gb"), migMemory(t, "2g.20gb")
	quota := large.DeepCopy()
	quota.Add(small)
	teamQueue(t, ns, res, quota.String())
	for name, profile := range map[string]string{"mig-1g": "1g.10gb", "mig-2g": "2g.20gb"} {
		applyTemplate(t, ns, name, fmt.Sprintf(`deviceClassName: mig.nvidia.com
          selectors:
          - cel: {expression: 'device.attributes["gpu.nvidia.com"].profile == "%s"'}`, profile))
	}
	createJob(t, ns, "large", "mig-2g")
	waitAdmitted(t, ns, "large")
	createJob(t, ns, "small-1", "mig-1g")
	waitAdmitted(t, ns, "small-1")
	createJob(t, ns, "small-2", "mig-1g")
	waitPending(t, ns, "small-2", res)
	if got := usage(t, ns, "large", res); got.Cmp(large) != 0 {
		t.Errorf("2g.20gb Job charged %s, want the device's memory %s", got.String(), large.String())
	}
	if got := usage(t, ns, "small-1", res); got.Cmp(small) != 0 {
		t.Errorf("1g.10gb Job charged %s, want the device's memory %s", got.String(), small.String())
	}

	finishJob(t, ns, "large")
	waitAdmitted(t, ns, "small-2")
}

// testKueueSharesByMemory: a team with 40Gi of shared GPU memory runs two
// Jobs on 20Gi shares; a third, of only 10Gi, waits until one finishes.
func testKueueSharesByMemory(t *testing.T) {
	const ns, res = "team-shares", "gpu.nvidia.com/shared-memory"
	teamQueue(t, ns, res, "40Gi")
	for name, memory := range map[string]string{"share-20gi": "20Gi", "share-10gi": "10Gi"} {
		applyTemplate(t, ns, name, fmt.Sprintf(`deviceClassName: shared.gpu.nvidia.com
          capacity: {requests: {memory: %s, compute: "25"}}`, memory))
	}
	for _, job := range []string{"infer-1", "infer-2"} {
		createJob(t, ns, job, "share-20gi")
		waitAdmitted(t, ns, job)
	}
	createJob(t, ns, "infer-3", "share-10gi")
	waitPending(t, ns, "infer-3", res)
	if got := usage(t, ns, "infer-1", res); got.Cmp(resource.MustParse("20Gi")) != 0 {
		t.Errorf("20Gi share charged %s, want 20Gi", got.String())
	}

	finishJob(t, ns, "infer-2")
	waitAdmitted(t, ns, "infer-3")
	if got := usage(t, ns, "infer-3", res); got.Cmp(resource.MustParse("10Gi")) != 0 {
		t.Errorf("10Gi share charged %s, want 10Gi", got.String())
	}
}

// testKueueNVIDIAsCounterConfig: the configuration Kueue's docs show for
// NVIDIA's driver charges MIG devices from a `memory` counter, which our
// MIG devices do not consume (they consume memory slices); Kueue says so
// and admits nothing. docs/kueue.md gives the capacity source instead.
func testKueueNVIDIAsCounterConfig(t *testing.T) {
	const ns, res = "team-nvidia-config", "gpu.memory"
	if err := script("kueue.sh", "start", "-c", filepath.Join(repoRoot, "test/e2e/testdata/kueue-nvidia-mig-counter.yaml")); err != nil {
		t.Fatalf("kueue.sh start with NVIDIA's counter configuration: %v", err)
	}
	teamQueue(t, ns, res, "800Gi")
	applyTemplate(t, ns, "mig-1g", `deviceClassName: mig.nvidia.com
          selectors:
          - cel: {expression: 'device.attributes["gpu.nvidia.com"].profile == "1g.10gb"'}`)
	createJob(t, ns, "small", "mig-1g")
	const want = `no consumesCounters entry for counter "memory"`
	eventually(t, 60*time.Second, "Job "+ns+"/small inadmissible: "+want, func() (bool, error) {
		w, err := workloadOf(ns, "small")
		if err != nil {
			return false, err
		}
		c := w.condition("QuotaReserved")
		return c != nil && c.Status == metav1.ConditionFalse && strings.Contains(c.Message, want),
			fmt.Errorf("conditions %+v", w.Status.Conditions)
	})
	if out := kubectl(t, "get", "job", "-n", ns, "small", "-o", "jsonpath={.spec.suspend}"); out != "true" {
		t.Errorf("Job %s/small has suspend=%q, want true", ns, out)
	}
}

// teamQueue makes namespace ns a team's: its LocalQueue "team" points at a
// ClusterQueue of the same name with nominalQuota quota of resource res.
// The namespace and the ClusterQueue are deleted when the test ends.
func teamQueue(t *testing.T, ns, res, quota string) {
	t.Helper()
	t.Cleanup(func() {
		cleanNamespace(t, ns)
		kubectlErr("delete", "clusterqueue", ns, "--ignore-not-found", "--wait=true", "--timeout=60s")
	})
	applyYAML(t, fmt.Sprintf(`
apiVersion: v1
kind: Namespace
metadata: {name: %[1]s}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: ClusterQueue
metadata: {name: %[1]s}
spec:
  namespaceSelector:
    matchLabels: {kubernetes.io/metadata.name: %[1]s}
  resourceGroups:
  - coveredResources: [%[2]q]
    flavors:
    - name: default-flavor
      resources:
      - {name: %[2]q, nominalQuota: %[3]q}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: LocalQueue
metadata: {name: team, namespace: %[1]s}
spec: {clusterQueue: %[1]s}
`, ns, res, quota))
	eventually(t, 30*time.Second, "ClusterQueue "+ns+" active", func() (bool, error) {
		out, err := kubectlErr("get", "clusterqueue", ns, "-o", `jsonpath={.status.conditions[?(@.type=="Active")].status}`)
		return out == "True", err
	})
}

// applyTemplate makes a ResourceClaimTemplate with one request, "gpu",
// whose exactly: fields are request (YAML at its indentation).
func applyTemplate(t *testing.T, ns, name, request string) {
	t.Helper()
	applyYAML(t, fmt.Sprintf(`
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: %s, namespace: %s}
spec:
  spec:
    devices:
      requests:
      - name: gpu
        exactly:
          %s
`, name, ns, request))
}

// createJob creates a Job for the team's LocalQueue whose one pod holds a
// claim from template and runs until finishJob tells it to end.
func createJob(t *testing.T, ns, name, template string) {
	t.Helper()
	applyYAML(t, fmt.Sprintf(`
apiVersion: batch/v1
kind: Job
metadata:
  name: %s
  namespace: %s
  labels: {kueue.x-k8s.io/queue-name: team}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - name: work
        image: busybox:local
        imagePullPolicy: Never
        command: ["sh", "-c", "echo started; until [ -e /tmp/done ]; do sleep 0.2; done"]
        resources: {claims: [{name: gpu}]}
      resourceClaims:
      - {name: gpu, resourceClaimTemplateName: %s}
`, name, ns, template))
}

// workload is what the tests read of a Kueue Workload.
type workload struct {
	Metadata struct {
		OwnerReferences []metav1.OwnerReference `json:"ownerReferences"`
	} `json:"metadata"`
	Status struct {
		Conditions []metav1.Condition `json:"conditions"`
		Admission  *struct {
			PodSetAssignments []struct {
				ResourceUsage map[string]resource.Quantity `json:"resourceUsage"`
			} `json:"podSetAssignments"`
		} `json:"admission"`
	} `json:"status"`
}

// workloadOf returns the Workload Kueue made for a Job.
func workloadOf(ns, job string) (*workload, error) {
	out, err := kubectlErr("get", "workloads.kueue.x-k8s.io", "-n", ns, "-o", "json")
	if err != nil {
		return nil, err
	}
	var list struct {
		Items []workload `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, fmt.Errorf("workloads of %s: %w", ns, err)
	}
	for i := range list.Items {
		for _, o := range list.Items[i].Metadata.OwnerReferences {
			if o.Kind == "Job" && o.Name == job {
				return &list.Items[i], nil
			}
		}
	}
	return nil, fmt.Errorf("no workload for Job %s/%s yet", ns, job)
}

// condition returns the workload's condition of type typ, or nil.
func (w *workload) condition(typ string) *metav1.Condition {
	for i := range w.Status.Conditions {
		if w.Status.Conditions[i].Type == typ {
			return &w.Status.Conditions[i]
		}
	}
	return nil
}

// waitAdmitted waits until Kueue admitted the Job and its pod runs.
func waitAdmitted(t *testing.T, ns, job string) {
	t.Helper()
	eventually(t, 60*time.Second, "Job "+ns+"/"+job+" admitted", func() (bool, error) {
		w, err := workloadOf(ns, job)
		if err != nil {
			return false, err
		}
		c := w.condition("Admitted")
		return c != nil && c.Status == metav1.ConditionTrue, fmt.Errorf("conditions %+v", w.Status.Conditions)
	})
	eventually(t, 90*time.Second, "pod of Job "+ns+"/"+job+" running", func() (bool, error) {
		pods, err := client.CoreV1().Pods(ns).List(ctx(), metav1.ListOptions{LabelSelector: "job-name=" + job})
		if err != nil {
			return false, err
		}
		if len(pods.Items) != 1 {
			return false, fmt.Errorf("%d pods", len(pods.Items))
		}
		return pods.Items[0].Status.Phase == "Running", fmt.Errorf("phase %s", pods.Items[0].Status.Phase)
	})
}

// waitPending waits until Kueue has tried the Job and left it waiting for
// quota of res, and checks that it stays suspended without a pod.
func waitPending(t *testing.T, ns, job, res string) {
	t.Helper()
	eventually(t, 60*time.Second, "Job "+ns+"/"+job+" waiting for "+res, func() (bool, error) {
		w, err := workloadOf(ns, job)
		if err != nil {
			return false, err
		}
		c := w.condition("QuotaReserved")
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == "Pending" && strings.Contains(c.Message, res),
			fmt.Errorf("conditions %+v", w.Status.Conditions)
	})
	if out := kubectl(t, "get", "job", "-n", ns, job, "-o", "jsonpath={.spec.suspend}"); out != "true" {
		t.Errorf("Job %s/%s waiting for quota has suspend=%q, want true", ns, job, out)
	}
	pods, err := client.CoreV1().Pods(ns).List(ctx(), metav1.ListOptions{LabelSelector: "job-name=" + job})
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != 0 {
		t.Errorf("Job %s/%s waiting for quota has %d pods", ns, job, len(pods.Items))
	}
}

// usage returns what Kueue charged the admitted Job's workload of res.
func usage(t *testing.T, ns, job, res string) resource.Quantity {
	t.Helper()
	w, err := workloadOf(ns, job)
	if err != nil {
		t.Fatal(err)
	}
	if w.Status.Admission == nil || len(w.Status.Admission.PodSetAssignments) == 0 {
		t.Fatalf("workload of Job %s/%s is not admitted", ns, job)
	}
	return w.Status.Admission.PodSetAssignments[0].ResourceUsage[res]
}

// finishJob tells the Job's pod to end and waits until the Job completed.
func finishJob(t *testing.T, ns, job string) {
	t.Helper()
	kubectl(t, "exec", "-n", ns, "job/"+job, "--", "touch", "/tmp/done")
	eventually(t, 60*time.Second, "Job "+ns+"/"+job+" complete", func() (bool, error) {
		out, err := kubectlErr("get", "job", "-n", ns, job, "-o", `jsonpath={.status.conditions[?(@.type=="Complete")].status}`)
		return out == "True", err
	})
}

// migMemory returns the memory capacity the node's MIG devices of profile
// publish.
func migMemory(t *testing.T, profile string) resource.Quantity {
	t.Helper()
	slices, err := client.ResourceV1().ResourceSlices().List(ctx(), metav1.ListOptions{FieldSelector: "spec.driver=gpu.nvidia.com"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slices.Items {
		for _, d := range s.Spec.Devices {
			if p := d.Attributes["profile"]; p.StringValue != nil && *p.StringValue == profile {
				if m, ok := d.Capacity[resourceapi.QualifiedName("memory")]; ok {
					return m.Value
				}
			}
		}
	}
	t.Fatalf("no MIG device of profile %s with a memory capacity", profile)
	return resource.Quantity{}
}
