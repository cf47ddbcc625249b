#!/usr/bin/env bash
# check.sh — lints the Helm chart (deployments/helm/gpu-dra-driver) and renders
# it for the value combinations that matter, checking what each must (and must
# not) produce. Helm is built from the Go module proxy into the project's cache
# the first time (about a minute). Prints the helm binary's path last, for the
# e2e tests.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../cluster/lib.sh"

KUBE_VERSION=1.37.2
ensure_helm

render() { "$HELM" template t "$CHART" --namespace gpu-dra-driver --kube-version "$KUBE_VERSION" "$@"; }

# expect WHAT PATTERN OUTPUT: OUTPUT must match the extended regex PATTERN.
expect() {
	grep -Eq -- "$2" <<<"$3" || die "chart: $1: no match for /$2/"
}
# refuse WHAT PATTERN OUTPUT: OUTPUT must not match.
refuse() {
	if grep -Eq -- "$2" <<<"$3"; then die "chart: $1: unexpected match for /$2/"; fi
}

"$HELM" lint "$CHART" --kube-version "$KUBE_VERSION" --strict >/dev/null

out=$(render)
for kind in DaemonSet Deployment Service ValidatingWebhookConfiguration ValidatingAdmissionPolicy ValidatingAdmissionPolicyBinding ClusterRole ClusterRoleBinding Secret; do
	expect "defaults render a $kind" "^kind: $kind\$" "$out"
done
expect "defaults: both DeviceClasses" 'name: mig.nvidia.com' "$out"
expect "defaults: a self-signed caBundle" 'caBundle: [A-Za-z0-9+/=]{100,}' "$out"
expect "defaults: the CA kept in the Secret for upgrades" 'ca.crt: [A-Za-z0-9+/=]{100,}' "$out"
expect "defaults: webhook replicas roll when the certificate changes" 'checksum/tls: [0-9a-f]{64}' "$out"
expect "defaults: the plugin's node name from the downward API" 'fieldPath: spec.nodeName' "$out"
expect "defaults: kubelet paths" '--plugin-dir=/var/lib/kubelet/plugins/gpu.nvidia.com' "$out"
expect "defaults: device metadata in the containers" '--device-metadata=true' "$out"
expect "defaults: the plugin knows its DaemonSet (uninstall removes slices)" '--daemonset=gpu-dra-driver/t-kubelet-plugin' "$out"
expect "defaults: a pre-delete hook deletes the DaemonSet, then the slices" 'uninstall", "--all-nodes", "--daemonset=gpu-dra-driver/t-kubelet-plugin' "$out"
expect "defaults: liveness over the pod's own probe socket, no host port" 'command: \[gpu-kubelet-plugin, probe, --socket=/run/gpu-kubelet-plugin/probe.sock, /healthz\]' "$out"
expect "defaults: readiness over the pod's own probe socket" 'command: \[gpu-kubelet-plugin, probe, --socket=/run/gpu-kubelet-plugin/probe.sock, /readyz\]' "$out"
expect "defaults: the probe socket in a per-pod emptyDir" 'name: probe, emptyDir' "$out"
expect "defaults: the plugin serves its probe socket" '--probe-socket=/run/gpu-kubelet-plugin/probe.sock' "$out"
refuse "defaults: no plugin probe on a host port" 'httpGet: \{path: /(healthz|readyz), port: 8088' "$out"
expect "defaults: sockets named after the pod (rolling updates)" '--pod-uid=\$\(POD_UID\)' "$out"
expect "defaults: the pod's UID from the downward API" 'fieldPath: metadata.uid' "$out"
refuse "defaults: no simulation" '--simulate' "$out"
expect "defaults: topology from the host's /sys" '--sys-root=/$' "$out"
refuse "defaults: /sys not mounted again" 'name: sys-root' "$out"
[[ $(grep -c 'hostNetwork: true' <<<"$out") == 1 ]] || die "chart: defaults: only the plugin is in the host network"
expect "defaults: the plugin in the host's PID namespace (MPS daemons' PIDs)" 'hostPID: true' "$out"
expect "defaults: the host's / mounted as the driver root" 'name: driver-root, hostPath: \{path: /, type: Directory\}' "$out"
expect "defaults: the driver root read-only where the plugin reads it" 'name: driver-root, mountPath: /driver-root, readOnly: true' "$out"
expect "defaults: specs name host paths" '--driver-root=/$' "$out"
expect "defaults: the plugin reads the driver root's mount" '--driver-root-mount=/driver-root' "$out"
expect "defaults: /metrics on every address of the node" '--http-endpoint=:8088$' "$out"
refuse "defaults: no node address needed" 'name: NODE_ADDRESS' "$out"
refuse "defaults: no ComputeDomains" 'compute-domain' "$out"
cd_out=$(render --set computeDomains.enabled=true)
expect "computeDomains: NVIDIA's CRD, kept on uninstall" 'name: computedomains.resource.nvidia.com' "$cd_out"
expect "computeDomains: the CRD is kept on uninstall" 'helm.sh/resource-policy: keep' "$cd_out"
expect "computeDomains: the channel class as NVIDIA names it" 'name: compute-domain-default-channel.nvidia.com' "$cd_out"
expect "computeDomains: the daemon class as NVIDIA names it" 'name: compute-domain-daemon.nvidia.com' "$cd_out"
expect "computeDomains: the controller" 'command: \["compute-domain-controller"\]' "$cd_out"
expect "computeDomains: the controller elects a leader" '--leader-elect=true' "$cd_out"
expect "computeDomains: the node plugin" 'command: \["compute-domain-kubelet-plugin"\]' "$cd_out"
expect "computeDomains: the node plugin knows its DaemonSet (uninstall removes slices)" '--daemonset=gpu-dra-driver/t-compute-domain-plugin' "$cd_out"
expect "computeDomains: each node's plugin writes only its own slices" 'name: t-compute-domain-plugin-node-slices' "$cd_out"
expect "computeDomains: one Lease, by name" 'resourceNames: \["compute-domain-controller"\]' "$cd_out"
[[ $(grep -c 'hostNetwork: true' <<<"$cd_out") == 2 ]] || die "chart: computeDomains: only the two node plugins are in the host network"
expect "computeDomains: a NetworkPolicy per domain by default" '--network-policy=true' "$cd_out"
expect "computeDomains: the controller may make NetworkPolicies" 'resources: \["networkpolicies"\]' "$cd_out"
cd_nonp=$(render --set computeDomains.enabled=true --set computeDomains.controller.networkPolicy=false)
expect "computeDomains.controller.networkPolicy=false: none made" '--network-policy=false' "$cd_nonp"
refuse "computeDomains.controller.networkPolicy=false: no right to NetworkPolicies" 'networkpolicies' "$cd_nonp"
# Values of a release from before these values (helm upgrade --reuse-values): the defaults,
# never an empty boolean flag, which the commands refuse to parse.
cd_old=$(render --set computeDomains.enabled=true --set computeDomains.controller.networkPolicy=null \
	--set kubeletPlugin.deviceMetadata=null)
expect "values without deviceMetadata: the default" '--device-metadata=true$' "$cd_old"
expect "values without networkPolicy: the default" '--network-policy=true$' "$cd_old"
expect "values without networkPolicy: the right to NetworkPolicies with it" 'resources: \["networkpolicies"\]' "$cd_old"
node_out=$(render --set kubeletPlugin.httpOnNodeAddress=true)
expect "httpOnNodeAddress: /metrics on the node's own address" '--http-endpoint=\$\(NODE_ADDRESS\):8088$' "$node_out"
expect "httpOnNodeAddress: the node's address from the downward API" 'fieldPath: status.hostIP' "$node_out"
expect "defaults: the successor starts next to the plugin it replaces" 'maxSurge: 1' "$out"
expect "defaults: the old plugin goes only once the new one is Ready" 'maxUnavailable: 0' "$out"
refuse "defaults: no RBAC beyond what the plugin needs" 'resources: \["\*"\]|verbs: \["\*"\]|"secrets"' "$out"
# MPS daemon pods: the plugin's own, in its namespace, narrowed by a policy.
clusterroles=$(awk '/^kind: /{p=($0 ~ /^kind: ClusterRole$/)} p' <<<"$out")
refuse "defaults: no cluster-wide grant on pods" '"pods"' "$clusterroles"
expect "defaults: MPS daemon pods created, listed and deleted" 'resources: \["pods"\]' "$out"
expect "defaults: the admission policy of the MPS daemon pods" 'name: t-mps-daemon-pods' "$out"
expect "defaults: MPS daemon pods run the chart's image" '--mps-daemon-image=gpu-dra-driver:' "$out"
expect "defaults: MPS daemon pods in the release's namespace" '--mps-daemon-namespace=gpu-dra-driver$' "$out"
# MPS daemon pods: their own priority class, high but not critical (the kubelet evicts other pods
# to admit a critical one), fixed resources (Guaranteed); the plugin keeps its own class.
expect "defaults: the MPS daemon pods' own priority class" '^  name: t-mps-daemon$' "$out"
expect "defaults: the MPS daemon class below the critical ones" '^value: 1000000000$' "$out"
expect "defaults: the MPS daemon class preempts nobody" '^preemptionPolicy: Never$' "$out"
expect "defaults: MPS daemon pods of that class" '--mps-daemon-priority-class=t-mps-daemon$' "$out"
expect "defaults: MPS daemon pods' cpu" '--mps-daemon-cpu=250m$' "$out"
expect "defaults: MPS daemon pods' memory" '--mps-daemon-memory=512Mi$' "$out"
expect "defaults: the policy requires the daemon class" 'object.spec.priorityClassName == "t-mps-daemon"' "$out"
expect "defaults: the policy requires the daemon resources" 'quantity\(c.resources.limits.cpu\).compareTo\(quantity\("250m"\)\) == 0' "$out"
expect "defaults: the plugin keeps its node-critical priority" 'priorityClassName: system-node-critical' "$out"
# The plugin identity's other node-scoped policies, and who may tolerate the driver's taints.
for p in node-claim-status node-events driver-taint-tolerations; do
	expect "defaults: the policy $p" "^  name: t-$p\$" "$out"
	expect "defaults: the binding of $p" "^  policyName: t-$p\$" "$out"
done
label=$(sed -n 's/^const MayTolerateDriverTaintsLabel = keyPrefix + "\(.*\)"$/gpu.nvidia.com\/\1/p' "$REPO_ROOT/pkg/names/names.go")
[[ -n $label ]] || die "chart: no MayTolerateDriverTaintsLabel in pkg/names"
expect "defaults: the namespace label of pkg/names" "namespaceObject.metadata.labels\['$label'\] == 'true'" "$out"
refuse "driverTaintTolerations.restricted=false: no toleration policy" 'driver-taint-tolerations' \
	"$(render --set driverTaintTolerations.restricted=false)"
out=$(render --set kubeletPlugin.mps.priorityClassName=gpu-daemons --set kubeletPlugin.mps.daemonResources.cpu=1 \
	--set kubeletPlugin.mps.daemonResources.memory=2Gi)
refuse "mps.priorityClassName set: no class of the chart's" '^kind: PriorityClass$' "$out"
expect "mps.priorityClassName set: the flag" '--mps-daemon-priority-class=gpu-daemons$' "$out"
expect "mps.priorityClassName set: the policy" 'object.spec.priorityClassName == "gpu-daemons"' "$out"
expect "mps.daemonResources set: the flag" '--mps-daemon-cpu=1$' "$out"
expect "mps.daemonResources set: the policy" 'quantity\(c.resources.limits.memory\).compareTo\(quantity\("2Gi"\)\) == 0' "$out"
refuse "defaults: no node-allocatable overhead" 'node-allocatable-overhead' "$(render)"
expect "defaults: daemon pods request exactly their limits" 'quantity\("250m"\).sub\(quantity\("0"\)\)' "$(render)"
out=$(render --set kubeletPlugin.nodeAllocatableOverhead.enabled=true)
expect "nodeAllocatableOverhead on: share defaults to the daemon's resources" \
	'--node-allocatable-overhead=share:cpu=250m,share:memory=512Mi$' "$out"
expect "nodeAllocatableOverhead on: the daemon policy allows requests lowered by it" \
	'quantity\("512Mi"\).sub\(quantity\("512Mi"\)\)' "$out"
out=$(render --set kubeletPlugin.nodeAllocatableOverhead.enabled=true --set kubeletPlugin.nodeAllocatableOverhead.mig.memory=256Mi \
	--set kubeletPlugin.nodeAllocatableOverhead.share.memory=1Gi)
expect "nodeAllocatableOverhead per kind" '--node-allocatable-overhead=mig:memory=256Mi,share:memory=1Gi$' "$out"
expect "nodeAllocatableOverhead: the policy allows no cpu below the limit without a cpu overhead" \
	'quantity\("250m"\).sub\(quantity\("0"\)\)' "$out"
if bad=$(render --set kubeletPlugin.nodeAllocatableOverhead.enabled=true --set kubeletPlugin.nodeAllocatableOverhead.gpu.disk=1Gi 2>&1); then
	die "chart: nodeAllocatableOverhead with a resource other than cpu or memory rendered"
fi
expect "nodeAllocatableOverhead: a bad resource is named" 'nodeAllocatableOverhead.gpu: "disk" is neither cpu nor memory' "$bad"
for q in 0 0.0Mi -100m '' lots; do
	if bad=$(render --set kubeletPlugin.nodeAllocatableOverhead.enabled=true --set-string "kubeletPlugin.nodeAllocatableOverhead.share.cpu=$q" 2>&1); then
		die "chart: nodeAllocatableOverhead share.cpu=$q rendered"
	fi
	expect "nodeAllocatableOverhead: share.cpu=$q is refused" 'share.cpu: .* is not a positive quantity' "$bad"
done
refuse "nodeAllocatableOverhead.enabled as the string false: off" 'node-allocatable-overhead' \
	"$(render --set-string kubeletPlugin.nodeAllocatableOverhead.enabled=false)"
expect "nodeAllocatableOverhead: a decimal quantity" '--node-allocatable-overhead=share:cpu=0.5,share:memory=512Mi$' \
	"$(render --set kubeletPlugin.nodeAllocatableOverhead.enabled=true --set kubeletPlugin.nodeAllocatableOverhead.share.cpu=0.5 --set kubeletPlugin.nodeAllocatableOverhead.share.memory=512Mi)"
if bad=$(render --set kubeletPlugin.nodeAllocatableOverhead.enabled=true --set kubeletPlugin.mps.daemonPods=false 2>&1); then
	die "chart: nodeAllocatableOverhead on with no kind rendered"
fi
expect "nodeAllocatableOverhead on with nothing to publish is refused" 'no kind has an overhead' "$bad"
# Values of a release from before these values (helm upgrade --reuse-values): the defaults.
out=$(render --set kubeletPlugin.mps.daemonResources=null --set kubeletPlugin.mps.priorityClassName=null \
	--set kubeletPlugin.mps.priority=null --set driverTaintTolerations=null --set kubeletPlugin.nodeAllocatableOverhead=null)
refuse "values without nodeAllocatableOverhead: none" 'node-allocatable-overhead' "$out"
expect "values without mps.daemonResources: the default cpu" '--mps-daemon-cpu=250m$' "$out"
expect "values without mps.priority: the default class" '^value: 1000000000$' "$out"
expect "values without driverTaintTolerations: the toleration policy" '^  name: t-driver-taint-tolerations$' "$out"
out=$(render --set kubeletPlugin.mps.daemonPods=false)
refuse "mps.daemonPods=false: no grant on pods" '"pods"' "$out"
refuse "mps.daemonPods=false: no daemon pods" 'mps-daemon' "$out"
out=$(render)
# The plugin's identity: what its code calls, nothing more (test/e2e/rbac_test.go on the API server).
rbac=$(render --show-only templates/kubelet-plugin.yaml)
refuse "defaults: the plugin reads no DeviceClasses or DeviceTaintRules" 'deviceclasses|devicetaintrules' "$rbac"
refuse "defaults: the plugin never collection-deletes" '"deletecollection"' "$rbac"
# The one patch: its own entries of claims' status.devices (docs/claim-status.md).
[[ $(grep -B1 -- '"patch"' <<<"$rbac" | grep -c -- 'resources:') == 1 ]] &&
	grep -B1 -- 'verbs: \["patch"\]' <<<"$rbac" | grep -q -- 'resources: \["resourceclaims/status"\]' ||
	die "chart: defaults: the plugin patches nothing but claims' status"
grep -A1 -- 'resources: \["resourceclaims"\]' <<<"$rbac" | grep -q -- '^  verbs: \["get"\]$' || die "chart: defaults: the plugin only gets claims, by name"
expect "defaults: the plugin's Events only in default" 'namespace: default' "$rbac"
refuse "defaults: claims read with the plugin's own identity" 'claim-reader' "$rbac"
# Claims read as the node (docs/security.md): the ServiceAccount reads none, the kubelet's
# kubeconfig and the files it names are mounted read-only where they are on the host.
node=$(render --show-only templates/kubelet-plugin.yaml --set kubeletPlugin.claimReads.kubeletKubeconfig=/etc/kubernetes/kubelet.conf \
	--set 'kubeletPlugin.claimReads.hostPaths={/var/lib/kubelet/pki}')
refuse "claims read as the node: the ServiceAccount gets no claim" 'resources: \["resourceclaims"\]' "$node"
expect "claims read as the node: the status patch kept" 'resources: \["resourceclaims/status"\]' "$node"
expect "claims read as the node: the flag" '--claim-reader-kubeconfig=/etc/kubernetes/kubelet.conf$' "$node"
expect "claims read as the node: the kubeconfig mounted read-only" 'name: claim-reader-kubeconfig, mountPath: /etc/kubernetes/kubelet.conf, readOnly: true' "$node"
expect "claims read as the node: the kubeconfig a host file" 'name: claim-reader-kubeconfig, hostPath: \{path: /etc/kubernetes/kubelet.conf, type: File\}' "$node"
expect "claims read as the node: its certificates mounted read-only" 'name: claim-reader-0, mountPath: /var/lib/kubelet/pki, readOnly: true' "$node"
expect "claims read as the node: its certificates from the host" 'name: claim-reader-0, hostPath: \{path: /var/lib/kubelet/pki\}' "$node"
# Values of a release from before claimReads (helm upgrade --reuse-values): the old identity.
old=$(render --show-only templates/kubelet-plugin.yaml --set kubeletPlugin.claimReads=null)
grep -A1 -- 'resources: \["resourceclaims"\]' <<<"$old" | grep -q -- '^  verbs: \["get"\]$' ||
	die "chart: values without claimReads: the plugin no longer gets claims"
policy=$(render --show-only templates/slice-policy.yaml)
expect "defaults: the slice policy checks the pool name" 'variables.slice.spec.pool.name == variables.nodeName' "$policy"
# The webhook is a single point of failure for claims with our configuration, and for nothing else.
expect "defaults: a PodDisruptionBudget for the webhook" '^kind: PodDisruptionBudget$' "$out"
expect "defaults: webhook replicas spread over nodes" 'topologyKey: kubernetes.io/hostname' "$out"
expect "defaults: webhook replicas spread over zones where they can" 'topologyKey: topology.kubernetes.io/zone' "$out"
expect "defaults: the webhook bounds the reviews in flight" '--max-in-flight=8' "$out"
expect "defaults: only objects with gpu.nvidia.com configuration reach the webhook" "c.opaque.driver == 'gpu.nvidia.com'" "$out"
refuse "defaults: claims and templates judged at creation only" 'resources: \["resourceclaims", "resourceclaimtemplates", "deviceclasses"\]' "$out"
webhook_yaml="$REPO_ROOT/deployments/webhook/validating-webhook.yaml"
while read -r expr; do
	expect "webhook matchConditions as in deployments/webhook" "$(printf '%s' "$expr" | sed 's/[][\.*^$(){}+?|]/\\&/g')" "$out"
done < <(sed -n '/matchConditions:/,$p' "$webhook_yaml" | grep -v '^ *#' | grep -v 'matchConditions:' | sed 's/^ *//; s/^- //')
# The DeviceClasses are those of deployments/deviceclasses.
while read -r expr; do
	expect "DeviceClass selector as in deployments/deviceclasses" "$(printf '%s' "$expr" | sed 's/[][\.*^$(){}+?|]/\\&/g')" "$out"
done < <(grep 'expression:' "$REPO_ROOT/deployments/deviceclasses/deviceclasses.yaml")

refuse "defaults: VFIO passthrough off" '--vfio-passthrough' "$out"
out=$(render --set vfioPassthrough.enabled=true --set kubeletPlugin.hostPaths.sysRoot=/sim/sys)
expect "vfioPassthrough.enabled: the plugin passes GPUs through" '- --vfio-passthrough$' "$out"
expect "vfioPassthrough.enabled: the host's /sys writable" 'name: sys-root, mountPath: /sim/sys, readOnly: false' "$out"
expect "vfioPassthrough.enabled: the host's modules read" 'name: vfio-modules, hostPath: \{path: /lib/modules\}' "$out"

out=$(render --set kubeletPlugin.simulate=dgxh100 --set kubeletPlugin.hostPaths.driverRoot=/run/nvidia/driver \
	--set kubeletPlugin.hostPaths.pluginsDir=/tmp/run/kubelet/plugins --set-string kubeletPlugin.healthPolicy='unknownXID: Info' \
	--set kubeletPlugin.hostPaths.sysRoot=/tmp/sim/host/sys)
expect "simulation" '--simulate=dgxh100' "$out"
expect "a simulated sysfs" '--sys-root=/tmp/sim/host/sys' "$out"
expect "a simulated sysfs mounted" 'name: sys-root, hostPath: \{path: /tmp/sim/host/sys, type: Directory\}' "$out"
expect "driver root mounted" 'path: /run/nvidia/driver' "$out"
expect "a simulated driver root writable (its tools record what they did)" 'mountPath: /driver-root, readOnly: false' "$out"
expect "plugin dir from values" '--plugin-dir=/tmp/run/kubelet/plugins/gpu.nvidia.com' "$out"
expect "health policy file" '--health-policy=/etc/gpu-dra-driver/policy.yaml' "$out"
expect "health policy content" 'unknownXID: Info' "$out"

expect "defaults: claim status only for claims of the plugin's node" 'verbs: \["associated-node:patch"\]' "$out"
refuse "defaults: never claim status of other nodes" 'arbitrary-node' "$out"
refuse "defaults: no dashboard" 'name: t-dashboard' "$(render)"
out=$(render --set dashboard.enabled=true --set dashboard.namespace=monitoring)
expect "dashboard ConfigMap" 'name: t-dashboard' "$out"
expect "dashboard in the sidecar's namespace" 'namespace: monitoring' "$out"
expect "dashboard labelled for the sidecar" 'grafana_dashboard: "1"' "$out"
expect "dashboard JSON" '"uid": "gpu-dra-driver"' "$out"
# The ConfigMap's JSON is the file's, byte for byte.
cmp -s <(awk 'body && /^    / { print substr($0, 5); next } body { exit } /^  gpu-dra-driver.json: [|]-$/ { body = 1 }' <<<"$out") \
	"$CHART/dashboards/gpu-dra-driver.json" ||
	die "chart: the dashboard ConfigMap does not hold dashboards/gpu-dra-driver.json"

out=$(render --set webhook.certificates=certManager --set webhook.certManager.issuerRef.name=cluster-ca)
expect "cert-manager certificate" '^kind: Certificate$' "$out"
expect "cert-manager CA injection" 'cert-manager.io/inject-ca-from' "$out"
refuse "no self-signed secret with cert-manager" '^kind: Secret$' "$out"

if out=$(render --set nodeScopedSlicePolicy.enabled=false 2>&1); then
	die "chart: MPS daemon pods without their admission policy render"
fi
expect "MPS daemon pods refused without their policy" 'daemonPods needs nodeScopedSlicePolicy.enabled' "$out"
out=$(render --set webhook.enabled=false --set deviceClasses.create=false --set nodeScopedSlicePolicy.enabled=false \
	--set kubeletPlugin.mps.daemonPods=false --set driverTaintTolerations.restricted=false)
refuse "webhook disabled" 'ValidatingWebhookConfiguration' "$out"
refuse "DeviceClasses not created" 'kind: DeviceClass' "$out"
refuse "node-scoped and toleration policies disabled" 'ValidatingAdmissionPolicy' "$out"

out=$(render --set kubeletPlugin.updateStrategy.type=OnDelete --set kubeletPlugin.updateStrategy.rollingUpdate=null \
	--set kubeletPlugin.terminationGracePeriodSeconds=60)
expect "update strategy from values" 'type: OnDelete' "$out"
refuse "OnDelete without rollingUpdate" 'rollingUpdate' "$out"
expect "grace period from values" 'terminationGracePeriodSeconds: 60' "$out"
out=$(render --set kubeletPlugin.updateStrategy.rollingUpdate.maxSurge=0 --set kubeletPlugin.updateStrategy.rollingUpdate.maxUnavailable=1)
expect "stop-then-start rolls still possible (upgrading from a plugin without handover)" 'maxSurge: 0' "$out"
expect "stop-then-start rolls: maxUnavailable from values" 'maxUnavailable: 1' "$out"

if err=$(render --set webhook.certificates=certManager 2>&1); then die "chart: cert-manager without an issuer rendered"; fi
expect "cert-manager without issuer names the value" 'webhook.certManager.issuerRef.name is required' "$err"
if err=$(render --set webhook.certificates=bogus 2>&1); then die "chart: unknown certificates mode rendered"; fi
expect "unknown certificates mode names the value" 'webhook.certificates' "$err"

out=$(render)
refuse "defaults: no consumable shares" '--consumable-shares' "$out"
for v in memory unlimited 4; do
	out=$(render --set consumableShares=$v)
	expect "consumableShares=$v is the plugin's flag" "^        - --consumable-shares=$v\$" "$out"
done
out=$(render --set consumableShares=disabled)
refuse "consumableShares=disabled passes no flag" '--consumable-shares' "$out"
out=$(render --set consumableShares=null)
refuse "consumableShares unset (an upgrade with --reuse-values) passes no flag" '--consumable-shares' "$out"
for v in 0 half -1; do
	if err=$(render --set-string consumableShares=$v 2>&1); then die "chart: consumableShares=$v rendered"; fi
	expect "consumableShares=$v names the value" "consumableShares: \"$v\" is not disabled, memory, unlimited or a positive number" "$err"
done

out=$(render)
refuse "defaults: dynamic MIG" '--static-mig-only' "$out"
refuse "defaults: shared GPUs" '--shared-gpus' "$out"
for set in kubeletPlugin.staticMIGOnly=true featureGates.DynamicMIG=false; do
	out=$(render --set $set)
	expect "$set: only pre-created MIG devices" '^        - --static-mig-only$' "$out"
done
out=$(render --set featureGates.DynamicMIG=true --set featureGates.MPSSupport=true --set featureGates.TimeSlicingSettings=true)
refuse "NVIDIA's DynamicMIG, MPSSupport, TimeSlicingSettings on: dynamic MIG" '--static-mig-only' "$out"
out=$(render --set kubeletPlugin.sharedGPUs=false)
expect "sharedGPUs=false is the plugin's flag" '^        - --shared-gpus=false$' "$out"
expect "NVIDIA's PassthroughSupport gate turns VFIO passthrough on" '^        - --vfio-passthrough$' "$(render --set featureGates.PassthroughSupport=true)"
refuse "PassthroughSupport false: no VFIO passthrough" '--vfio-passthrough' "$(render --set featureGates.PassthroughSupport=false)"
for gate in FabricManagerPartitioning DeviceMetadata; do
	if err=$(render --set featureGates.$gate=true 2>&1); then die "chart: featureGates.$gate=true rendered"; fi
	expect "featureGates.$gate=true is refused by name" "featureGates.$gate: not supported by this driver" "$err"
	render --set featureGates.$gate=false >/dev/null || die "chart: featureGates.$gate=false did not render"
done
if err=$(render --set featureGates.Bogus=true 2>&1); then die "chart: an unknown feature gate rendered"; fi
expect "an unknown feature gate is refused by name" 'featureGates.Bogus: not one of' "$err"

log "chart lints and renders as expected ($HELM)"
echo "$HELM"
