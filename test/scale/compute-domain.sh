#!/usr/bin/env bash
# compute-domain.sh — make scale-compute-domain: one ComputeDomain over a fleet of simulated GB200
# nodes (issue 26; docs/benchmarks.md "A ComputeDomain of 256 pods on 64 GB200 nodes"). On a fresh
# control plane of test/cluster (no kubelet) it applies the chart's ComputeDomain CRD, then runs the
# scale harness (cmd/gpu-fleet --compute-domain-pods): the ComputeDomain controller in the harness's
# process, every node publishing its GPUs and its ComputeDomain pool, one domain and 4 workload pods
# per node created at once (each: the domain's channel and one whole GPU), the harness playing the
# kubelet for the workload pods and for the daemon pods. It prints the time from the domain's
# creation to the domain Ready with every pod bound, the controller's status writes and label
# patches, and the control plane's memory.
#
#   test/scale/compute-domain.sh [NODES]      default 64 (256 pods)
#   FLEET_CD_PODS_PER_NODE=4                  workload pods per node (a gb200 node has 4 GPUs)
#   FLEET_CD_ARGS='--compute-domain-clique-size=18'  more gpu-fleet flags (gpu-fleet -h)
#   GPU_DRA_SCALE_OUT=/tmp/gpu-dra-scale      where the report goes (compute-domain-NODES.{txt,json})
#
# The control plane uses the e2e cluster's ports: on a shared machine run it under
# flock /tmp/gpu-dra-e2e.lock.
set -euo pipefail
SCALE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# A run directory of its own: up.sh removes a stale one first, and must never take the e2e one.
export GPU_DRA_RUN_DIR=${GPU_DRA_RUN_DIR:-/tmp/gpu-dra-scale-cluster}
# shellcheck source-path=SCRIPTDIR source=../cluster/lib.sh
source "$SCALE_DIR/../cluster/lib.sh"

OUT=${GPU_DRA_SCALE_OUT:-/tmp/gpu-dra-scale}
NODES=${1:-64}
PODS=$((NODES * ${FLEET_CD_PODS_PER_NODE:-4}))
read -r -a EXTRA <<<"${FLEET_CD_ARGS:-}"
mkdir -p "$OUT" "$REPO_ROOT/bin"
cd "$REPO_ROOT"
go build -o "$REPO_ROOT/bin/" ./cmd/gpu-fleet
FLEET=$REPO_ROOT/bin/gpu-fleet
ensure_helm

trap '"$CLUSTER_DIR/down.sh" >/dev/null 2>&1 || true' EXIT
GPU_DRA_CONTROL_PLANE_ONLY=1 "$CLUSTER_DIR/up.sh" >/dev/null
# The CRD exactly as the chart installs it.
"$HELM" template gpu-dra-driver "$CHART" --kube-version "$K8S_VERSION" --set computeDomains.enabled=true \
	--show-only templates/compute-domain-crd.yaml >"$OUT/compute-domain-crd.yaml"
kubectl apply -f "$OUT/compute-domain-crd.yaml" >/dev/null
kubectl wait --for condition=established --timeout=60s crd/computedomains.resource.nvidia.com >/dev/null
log "ComputeDomain of $PODS pods on $NODES gb200 nodes: gpu-fleet --nodes $NODES --models gb200 --compute-domain-pods $PODS --bursts '' ${EXTRA[*]}"
KUBECONFIG=$RUN/kubeconfig/admin.kubeconfig "$FLEET" --run-dir "$RUN" --nodes "$NODES" --models gb200 \
	--compute-domain-pods "$PODS" --bursts '' --out "$OUT/compute-domain-$NODES.json" "${EXTRA[@]}" |
	tee "$OUT/compute-domain-$NODES.txt"
