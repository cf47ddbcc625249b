//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	cdapi "github.com/gpu-dra/gpu-dra-driver/api/computedomain/v1beta1"
	"github.com/gpu-dra/gpu-dra-driver/pkg/names"
)

// The ComputeDomain tests run on the rack cluster (GPU_DRA_E2E_NODES=3
// GPU_DRA_E2E_RACK=1): three GB200 nodes, 127.0.0.1 and 127.0.0.2 in one
// NVLink clique, 127.0.0.3 in another, with the chart's computeDomains on.

// needRack skips a test written for the rack cluster.
func needRack(t *testing.T) {
	t.Helper()
	if !rack {
		t.Skip("a rack test: it runs with GPU_DRA_E2E_NODES=3 GPU_DRA_E2E_RACK=1 -run '^TestComputeDomain' (make e2e runs it so)")
	}
}

// dynamicClient reaches the API server as admin, for ComputeDomains.
func dynamicClient(t *testing.T) dynamic.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(runDir, "kubeconfig/admin.kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	return dynamic.NewForConfigOrDie(cfg)
}

// computeDomain reads a domain.
func computeDomain(t *testing.T, ns, name string) (*cdapi.ComputeDomain, error) {
	t.Helper()
	u, err := dynamicClient(t).Resource(cdapi.Resource).Namespace(ns).Get(ctx(), name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return cdapi.FromUnstructured(u)
}

// domainYAML is a ComputeDomain as NVIDIA's docs write one.
func domainYAML(ns, name, template string, numNodes int, mode string) string {
	m := ""
	if mode != "" {
		m = "\n    allocationMode: " + mode
	}
	return fmt.Sprintf(`---
apiVersion: resource.nvidia.com/v1beta1
kind: ComputeDomain
metadata: {name: %s, namespace: %s}
spec:
  numNodes: %d
  channel:
    resourceClaimTemplate:
      name: %s%s
`, name, ns, numNodes, template, m)
}

// channelPod is a workload pod of a domain: it holds the domain's channel
// (claim "channel" from the domain's template) and a whole GPU, lists its
// channel devices and prints the domain's environment. nodeName pins it,
// when not empty; job labels it for the clique recipe.
func channelPod(ns, name, template, nodeName, job string) string {
	pin := ""
	if nodeName != "" {
		pin = "\n  nodeSelector: {kubernetes.io/hostname: " + nodeName + "}"
	}
	affinity := ""
	if job != "" {
		affinity = fmt.Sprintf(`
  affinity:
    podAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
      - labelSelector: {matchLabels: {job: %[1]s}}
        topologyKey: nvidia.com/gpu.clique
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
      - labelSelector: {matchLabels: {job: %[1]s}}
        topologyKey: kubernetes.io/hostname`, job)
	}
	return fmt.Sprintf(`---
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s, labels: {job: "%s"}}
spec:
  terminationGracePeriodSeconds: 1%s%s
  containers:
  - name: ctr
    image: busybox:local
    imagePullPolicy: Never
    command: ["sh", "-c", "echo CHANNELS=$(ls /dev/nvidia-caps-imex-channels | tr '\\n' ' '); echo DOMAIN=$COMPUTE_DOMAIN_UUID $COMPUTE_DOMAIN_NAME $COMPUTE_DOMAIN_NAMESPACE CLIQUE=$CLIQUE_ID; sleep 3600"]
    resources:
      claims: [{name: channel}]
  resourceClaims:
  - {name: channel, resourceClaimTemplateName: %s}
`, name, ns, job, pin, affinity, template)
}

var channelsLine = regexp.MustCompile(`CHANNELS=([^\n]*)`)

// podChannels waits for a pod to run and returns the channel devices its
// container sees and its DOMAIN line.
func podChannels(t *testing.T, ns, name string) (channels []string, domain string) {
	t.Helper()
	// Longer than waitPodRunning: a channel prepare that waited out its
	// 30 s for the node's daemon is retried after the kubelet's backoff
	// (docs/compute-domains.md, "Limits").
	eventually(t, 240*time.Second, fmt.Sprintf("pod %s/%s Running", ns, name), func() (bool, error) {
		p, err := client.CoreV1().Pods(ns).Get(ctx(), name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return p.Status.Phase == corev1.PodRunning, fmt.Errorf("phase %s, conditions %+v", p.Status.Phase, p.Status.Conditions)
	})
	log := podLogs(t, ns, name, "DOMAIN=")
	if m := channelsLine.FindStringSubmatch(log); m != nil {
		channels = strings.Fields(m[1])
	}
	for _, line := range strings.Split(log, "\n") {
		if strings.HasPrefix(line, "DOMAIN=") {
			domain = line
		}
	}
	return channels, domain
}

// waitDomainStatus waits until a domain's status is want with n nodes.
func waitDomainStatus(t *testing.T, ns, name, want string, n int, timeout time.Duration) *cdapi.ComputeDomain {
	t.Helper()
	var cd *cdapi.ComputeDomain
	eventually(t, timeout, fmt.Sprintf("ComputeDomain %s/%s %s with %d nodes", ns, name, want, n), func() (bool, error) {
		var err error
		cd, err = computeDomain(t, ns, name)
		if err != nil {
			return false, err
		}
		return cd.Status.Status == want && len(cd.Status.Nodes) == n, fmt.Errorf("status %+v", statusString(cd))
	})
	return cd
}

func statusString(cd *cdapi.ComputeDomain) string {
	b, _ := json.Marshal(cd.Status)
	return string(b)
}

// domainLeftovers lists what a deleted domain left behind: node labels,
// claim templates, DaemonSets, daemon pods, CDI specs and checkpoint
// entries of the domain's UID on any node.
func domainLeftovers(t *testing.T, uid string) []string {
	t.Helper()
	var left []string
	nodes, err := client.CoreV1().Nodes().List(ctx(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes.Items {
		if _, ok := n.Labels[names.DomainNodeLabel(uid)]; ok {
			left = append(left, "label on node "+n.Name)
		}
	}
	sel := metav1.ListOptions{LabelSelector: names.ComputeDomainLabel + "=" + uid}
	rcts, err := client.ResourceV1().ResourceClaimTemplates("").List(ctx(), sel)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rcts.Items {
		left = append(left, "template "+r.Namespace+"/"+r.Name)
	}
	dss, err := client.AppsV1().DaemonSets(driverNamespace).List(ctx(), sel)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dss.Items {
		left = append(left, "daemonset "+d.Name)
	}
	nps, err := client.NetworkingV1().NetworkPolicies(driverNamespace).List(ctx(), sel)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range nps.Items {
		left = append(left, "network policy "+p.Name)
	}
	pods, err := client.CoreV1().Pods(driverNamespace).List(ctx(), sel)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		left = append(left, "daemon pod "+p.Name)
	}
	for i := range clusterModels {
		dir := clusterNodeDir(i)
		specs, _ := filepath.Glob(filepath.Join(dir, "cdi", "*compute-domain*"))
		for _, s := range specs {
			if data, err := os.ReadFile(s); err == nil && strings.Contains(string(data), uid) {
				left = append(left, "CDI spec "+s)
			}
		}
		for _, f := range []string{"checkpoint.json"} {
			p := filepath.Join(dir, "kubelet/plugins", names.ComputeDomainDriverName, f)
			if data, err := os.ReadFile(p); err == nil && strings.Contains(string(data), uid) {
				left = append(left, "checkpoint entry in "+p)
			}
		}
		if _, err := os.Stat(filepath.Join(dir, "kubelet/plugins", names.ComputeDomainDriverName, "domains", uid)); err == nil {
			left = append(left, "daemon directory on node "+clusterNode(i))
		}
	}
	return left
}

// deleteDomain deletes a domain and its pods and waits until nothing of it
// is left.
func deleteDomain(t *testing.T, ns, name string) {
	t.Helper()
	cd, err := computeDomain(t, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	kubectl(t, "delete", "pods", "-n", ns, "--all", "--wait=true", "--timeout=120s")
	kubectl(t, "delete", "computedomain", "-n", ns, name, "--wait=true", "--timeout=120s")
	var left []string
	eventually(t, 90*time.Second, "nothing of domain "+name+" left", func() (bool, error) {
		left = domainLeftovers(t, string(cd.UID))
		return len(left) == 0, fmt.Errorf("left: %v", left)
	})
}

// TestComputeDomainJobAcrossTwoNodes runs NVIDIA's two-node ComputeDomain
// shape: a domain of numNodes 2 and one worker per node, kept in one clique
// by the documented recipe. Every worker sees its channel and the domain's
// environment, both nodes' daemons form one IMEX domain, and the domain is
// Ready with both nodes, each with its address, clique and index.
func TestComputeDomainJobAcrossTwoNodes(t *testing.T) {
	needRack(t)
	ns := "cd-job"
	kubectl(t, "create", "namespace", ns)
	defer cleanNamespace(t, ns)
	// Both workers are pinned to clique 1 (two nodes), by its label: the
	// recipe keeps a job in the clique of whichever pod is scheduled
	// first, it does not pick a clique with room (docs/compute-domains.md).
	// With only worker-0 pinned, worker-1 was now and then scheduled first,
	// into clique 2 (one node), and worker-0 stayed Pending.
	node0, err := client.CoreV1().Nodes().Get(ctx(), clusterNode(0), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clique1 := node0.Labels[names.GPUCliqueLabel]
	if clique1 == "" {
		t.Fatalf("node %s has no %s label", node0.Name, names.GPUCliqueLabel)
	}
	inClique1 := func(name string) string {
		return strings.Replace(channelPod(ns, name, "job-channel", clusterNode(0), "job"),
			"kubernetes.io/hostname: "+clusterNode(0), names.GPUCliqueLabel+": "+clique1, 1)
	}
	applyYAML(t, domainYAML(ns, "job", "job-channel", 2, "")+inClique1("worker-0")+inClique1("worker-1"))
	cd := waitDomainStatus(t, ns, "job", cdapi.StatusReady, 2, 240*time.Second)
	cliques := map[string]bool{}
	indices := map[string]bool{}
	for _, n := range cd.Status.Nodes {
		cliques[n.CliqueID] = true
		if n.IPAddress == "" || n.Status != cdapi.StatusReady {
			t.Errorf("node entry %+v: want an address and Ready", *n)
		}
		indices[fmt.Sprintf("%s/%d", n.CliqueID, n.Index)] = true
	}
	if len(cliques) != 1 || len(indices) != 2 {
		t.Errorf("nodes %s: want one clique and two indices", statusString(cd))
	}
	nodesSeen := map[string]bool{}
	for _, w := range []string{"worker-0", "worker-1"} {
		channels, domain := podChannels(t, ns, w)
		if len(channels) != 1 {
			t.Errorf("%s sees channels %v, want one", w, channels)
		}
		if !strings.Contains(domain, string(cd.UID)) || !strings.Contains(domain, "job "+ns) || strings.HasSuffix(domain, "CLIQUE=") {
			t.Errorf("%s: %q, want the domain's UID, name, namespace and clique", w, domain)
		}
		p, err := client.CoreV1().Pods(ns).Get(ctx(), w, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		nodesSeen[p.Spec.NodeName] = true
	}
	if nodesSeen[clusterNode(2)] || len(nodesSeen) != 2 {
		t.Errorf("workers on %v: want the two nodes of clique 1, never %s", nodesSeen, clusterNode(2))
	}
	// The domain's NetworkPolicy (the chart's default) admits the IMEX
	// peer port from its own daemons, which reached quorum through it
	// (where the network plugin enforces it; the local cluster's does not).
	np, err := client.NetworkingV1().NetworkPolicies(driverNamespace).Get(ctx(), names.DomainDaemonSetName(string(cd.UID)), metav1.GetOptions{})
	if err != nil {
		t.Errorf("the domain's NetworkPolicy: %v", err)
	} else if np.Spec.PodSelector.MatchLabels[names.ComputeDomainLabel] != string(cd.UID) || len(np.Spec.Ingress) != 1 ||
		len(np.Spec.Ingress[0].Ports) != 1 || np.Spec.Ingress[0].Ports[0].Port.IntValue() != names.IMEXServerPort {
		t.Errorf("the domain's NetworkPolicy: %+v", np.Spec)
	}
	deleteDomain(t, ns, "job")
}

// TestComputeDomainTwoDomainsTwoPodsPerNode puts two domains with two pods
// each on one node: the pods of one domain share its channel, the two
// domains have different channels, and no pod sees another domain's.
func TestComputeDomainTwoDomainsTwoPodsPerNode(t *testing.T) {
	needRack(t)
	ns := "cd-two"
	kubectl(t, "create", "namespace", ns)
	defer cleanNamespace(t, ns)
	node := clusterNode(1)
	applyYAML(t, domainYAML(ns, "a", "a-channel", 0, "")+domainYAML(ns, "b", "b-channel", 0, "")+
		channelPod(ns, "a-0", "a-channel", node, "")+channelPod(ns, "a-1", "a-channel", node, "")+
		channelPod(ns, "b-0", "b-channel", node, "")+channelPod(ns, "b-1", "b-channel", node, ""))
	seen := map[string][]string{}
	for _, p := range []string{"a-0", "a-1", "b-0", "b-1"} {
		channels, _ := podChannels(t, ns, p)
		if len(channels) != 1 {
			t.Fatalf("pod %s sees channels %v, want exactly one", p, channels)
		}
		seen[p] = channels
	}
	if seen["a-0"][0] != seen["a-1"][0] || seen["b-0"][0] != seen["b-1"][0] {
		t.Errorf("pods of one domain got different channels: %v", seen)
	}
	if seen["a-0"][0] == seen["b-0"][0] {
		t.Errorf("two domains share channel %s: %v", seen["a-0"][0], seen)
	}
	for _, d := range []string{"a", "b"} {
		waitDomainStatus(t, ns, d, cdapi.StatusReady, 1, 120*time.Second)
	}
	deleteDomain(t, ns, "a")
	deleteDomain(t, ns, "b")
}

// TestComputeDomainClaimFromAnotherNamespaceRefused writes, in another
// namespace, a claim with the domain's UID in its configuration: its
// prepare fails with an error naming both namespaces, and the pod never
// runs.
func TestComputeDomainClaimFromAnotherNamespaceRefused(t *testing.T) {
	needRack(t)
	owner, intruder := "cd-owner", "cd-intruder"
	for _, ns := range []string{owner, intruder} {
		kubectl(t, "create", "namespace", ns)
		defer cleanNamespace(t, ns)
	}
	applyYAML(t, domainYAML(owner, "private", "private-channel", 0, ""))
	var uid string
	eventually(t, 30*time.Second, "domain created", func() (bool, error) {
		cd, err := computeDomain(t, owner, "private")
		if err != nil {
			return false, err
		}
		uid = string(cd.UID)
		return true, nil
	})
	applyYAML(t, fmt.Sprintf(`---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: stolen, namespace: %s}
spec:
  spec:
    devices:
      requests:
      - name: channel
        exactly: {deviceClassName: %s}
      config:
      - requests: [channel]
        opaque:
          driver: %s
          parameters: {apiVersion: %s, kind: %s, domainID: "%s"}
`, intruder, names.ChannelDeviceClass, names.ComputeDomainDriverName, cdapi.GroupVersion, cdapi.ComputeDomainChannelConfigKind, uid)+
		channelPod(intruder, "thief", "stolen", "", ""))
	eventually(t, 90*time.Second, "a prepare error naming both namespaces", func() (bool, error) {
		events, err := client.CoreV1().Events(intruder).List(ctx(), metav1.ListOptions{FieldSelector: "involvedObject.name=thief"})
		if err != nil {
			return false, err
		}
		var msgs []string
		for _, e := range events.Items {
			if strings.Contains(e.Message, owner) && strings.Contains(e.Message, intruder) {
				return true, nil
			}
			msgs = append(msgs, e.Message)
		}
		return false, fmt.Errorf("events: %v", msgs)
	})
	p, err := client.CoreV1().Pods(intruder).Get(ctx(), "thief", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.Phase == corev1.PodRunning {
		t.Errorf("the pod with another namespace's domain runs")
	}
}

// TestComputeDomainDaemonLossDegradesAndRecovers kills one of a two-node
// domain's daemons: the domain goes NotReady (its daemons lost quorum) and
// is Ready again once the DaemonSet's replacement has joined.
func TestComputeDomainDaemonLossDegradesAndRecovers(t *testing.T) {
	needRack(t)
	ns := "cd-loss"
	kubectl(t, "create", "namespace", ns)
	defer cleanNamespace(t, ns)
	applyYAML(t, domainYAML(ns, "loss", "loss-channel", 2, "")+
		channelPod(ns, "w-0", "loss-channel", clusterNode(0), "")+
		channelPod(ns, "w-1", "loss-channel", clusterNode(1), ""))
	cd := waitDomainStatus(t, ns, "loss", cdapi.StatusReady, 2, 240*time.Second)
	pods, err := client.CoreV1().Pods(driverNamespace).List(ctx(), metav1.ListOptions{
		LabelSelector: names.ComputeDomainLabel + "=" + string(cd.UID),
		FieldSelector: "spec.nodeName=" + clusterNode(1),
	})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("daemon pod of node %s: %v, %d pods", clusterNode(1), err, len(pods.Items))
	}
	victim := pods.Items[0]
	if err := client.CoreV1().Pods(driverNamespace).Delete(ctx(), victim.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "the domain NotReady after losing a daemon", func() (bool, error) {
		cd, err := computeDomain(t, ns, "loss")
		if err != nil {
			return false, err
		}
		return cd.Status.Status == cdapi.StatusNotReady, fmt.Errorf("status %s", statusString(cd))
	})
	waitDomainStatus(t, ns, "loss", cdapi.StatusReady, 2, 240*time.Second)
	deleteDomain(t, ns, "loss")
}

// TestComputeDomainAllChannelsHoldTheNode runs a domain of allocationMode
// All: its pod sees every channel of the node, and a pod of a second
// domain on that node does not start, with an error naming the first.
func TestComputeDomainAllChannelsHoldTheNode(t *testing.T) {
	needRack(t)
	ns := "cd-all"
	kubectl(t, "create", "namespace", ns)
	defer cleanNamespace(t, ns)
	node := clusterNode(2)
	applyYAML(t, domainYAML(ns, "all", "all-channel", 0, cdapi.AllocationModeAll)+domainYAML(ns, "late", "late-channel", 0, "")+
		channelPod(ns, "greedy", "all-channel", node, ""))
	channels, _ := podChannels(t, ns, "greedy")
	if len(channels) != names.IMEXChannelCount {
		t.Errorf("an All pod sees %d channels, want %d", len(channels), names.IMEXChannelCount)
	}
	applyYAML(t, channelPod(ns, "late-0", "late-channel", node, ""))
	eventually(t, 90*time.Second, "the second domain's prepare refused", func() (bool, error) {
		events, err := client.CoreV1().Events(ns).List(ctx(), metav1.ListOptions{FieldSelector: "involvedObject.name=late-0"})
		if err != nil {
			return false, err
		}
		var msgs []string
		for _, e := range events.Items {
			if strings.Contains(e.Message, ns+"/all") && strings.Contains(e.Message, "allocationMode All") {
				return true, nil
			}
			msgs = append(msgs, e.Message)
		}
		return false, fmt.Errorf("events: %v", msgs)
	})
	kubectl(t, "delete", "pod", "-n", ns, "greedy", "--wait=true")
	channels, _ = podChannels(t, ns, "late-0")
	if len(channels) != 1 {
		t.Errorf("once the All domain left, the second domain's pod sees %v, want one channel", channels)
	}
	deleteDomain(t, ns, "late")
	deleteDomain(t, ns, "all")
}

// TestComputeDomainRestartsConverge restarts the controller while a domain
// is being created and the node plugins while it is deleted: the domain
// still gets Ready, and nothing of it is left after its deletion.
func TestComputeDomainRestartsConverge(t *testing.T) {
	needRack(t)
	ns := "cd-restart"
	kubectl(t, "create", "namespace", ns)
	defer cleanNamespace(t, ns)
	applyYAML(t, domainYAML(ns, "r", "r-channel", 0, "")+
		channelPod(ns, "r-0", "r-channel", clusterNode(0), "")+
		channelPod(ns, "r-1", "r-channel", clusterNode(1), ""))
	kubectl(t, "delete", "pods", "-n", driverNamespace, "-l", "app.kubernetes.io/component=compute-domain-controller", "--wait=false")
	cd := waitDomainStatus(t, ns, "r", cdapi.StatusReady, 2, 240*time.Second)
	for _, p := range []string{"r-0", "r-1"} {
		podChannels(t, ns, p)
	}
	kubectl(t, "delete", "pods", "-n", ns, "--all", "--wait=false")
	kubectl(t, "delete", "computedomain", "-n", ns, "r", "--wait=false")
	kubectl(t, "delete", "pods", "-n", driverNamespace, "-l", "app.kubernetes.io/component=compute-domain-plugin", "--wait=false")
	kubectl(t, "delete", "pods", "-n", driverNamespace, "-l", "app.kubernetes.io/component=compute-domain-controller", "--wait=false")
	var left []string
	eventually(t, 180*time.Second, "nothing of the domain left", func() (bool, error) {
		_, err := computeDomain(t, ns, "r")
		if !apierrors.IsNotFound(err) {
			return false, fmt.Errorf("domain still there: %w", err)
		}
		left = domainLeftovers(t, string(cd.UID))
		return len(left) == 0, fmt.Errorf("left: %v", left)
	})
}

// TestComputeDomainCliqueLabels checks the controller's clique labels
// against the rack: the first two nodes share one, the third has another.
func TestComputeDomainCliqueLabels(t *testing.T) {
	needRack(t)
	got := make([]string, len(clusterModels))
	eventually(t, 60*time.Second, "every node labelled with its clique", func() (bool, error) {
		for i := range clusterModels {
			n, err := client.CoreV1().Nodes().Get(ctx(), clusterNode(i), metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			got[i] = n.Labels[names.GPUCliqueLabel]
			if got[i] == "" {
				return false, fmt.Errorf("node %s has no %s", n.Name, names.GPUCliqueLabel)
			}
		}
		return true, nil
	})
	if got[0] != got[1] || got[0] == got[2] {
		t.Errorf("clique labels %v: want the first two equal and the third different", got)
	}
	t.Logf("clique labels: %v", got)
}

// TestComputeDomainPlacementWithinOneClique runs the documented recipe
// (docs/compute-domains.md): a pod affinity on nvidia.com/gpu.clique among
// the job's pods, and one worker per node. The first worker is put on the
// only node of clique 2; the second, free to go anywhere else, must then
// stay unschedulable rather than land in clique 1.
func TestComputeDomainPlacementWithinOneClique(t *testing.T) {
	needRack(t)
	ns := "cd-clique"
	kubectl(t, "create", "namespace", ns)
	defer cleanNamespace(t, ns)
	applyYAML(t, domainYAML(ns, "solo", "solo-channel", 0, "")+
		channelPod(ns, "worker-0", "solo-channel", clusterNode(2), "solo"))
	podChannels(t, ns, "worker-0")
	applyYAML(t, channelPod(ns, "worker-1", "solo-channel", "", "solo"))
	msg := unschedulable(t, ns, "worker-1")
	t.Logf("worker-1: %s", msg)
	deleteDomain(t, ns, "solo")
}
