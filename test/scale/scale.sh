#!/usr/bin/env bash
# scale.sh — make scale: for each fleet size, runs the scale harness (cmd/gpu-fleet) twice on a
# fresh control plane of test/cluster (no kubelet): the fleet publishing everything the driver
# offers, then the same fleet publishing whole GPUs only (label gpu.nvidia.com/device-kinds=whole),
# and prints both side by side with their ratio. Each side gets its own control plane, so that
# neither inherits the other's memory. With FLEET_PEER, a third side publishes, for the same
# fleet, the pool NVIDIA's driver publishes (gpu-fleet --peer, package pkg/fleet/peer) and runs
# the same bursts and churn; compare-peer-N.md sets ours against it.
#
#   test/scale/scale.sh [NODES...]            default: 100 500 (1000: about 23 GiB, FLEET_HARNESS_GOGC=50; with FLEET_PEER also GPU_DRA_APISERVER_GOGC=50; docs/benchmarks.md)
#   FLEET_MODELS=dgxa100,dgxh100,dgxh200,dgxb200  the nodes' models, round robin (default dgxh100)
#   FLEET_BURSTS=whole=3,mig-1g=3             the full side's workloads, pods per node
#   FLEET_CHURN='whole=1;whole=2,mig-1g=2,mig-3g=1,share=1'  steady traffic after the bursts, one mix
#                                             after the other (';'); the baseline runs whole=1 for each
#   FLEET_CHURN_RATE=5 FLEET_CHURN_LIFETIME=30s FLEET_CHURN_DURATION=2m  pods/s, mean run time, length
#   FLEET_KINDS=whole_mig_shared FLEET_MIG_PROFILES=  the full side's labels (default: none)
#   FLEET_MIG_NODES=10%                       only this share (N% or a count) of the full side's nodes
#                                             offer MIG (FLEET_MIG_NODE_KINDS, default mig;
#                                             FLEET_MIG_NODE_PROFILES), the others FLEET_KINDS (default
#                                             whole); pods are steered by docs/fleet.md's recipe unless
#                                             FLEET_STEER=0. Give a FLEET_CHURN without share.
#   FLEET_PEER=1                              also the peer side; FLEET_PEER=only: ours and the peer,
#                                             no whole-GPU baseline; FLEET_PEER=first: the same, the
#                                             peer first. Both then run the bursts and churn without
#                                             share (NVIDIA's driver has no class for it)
#   FLEET_GATES='DRANodeAllocatableResources=true;none'  instead of the sides above: the full side
#                                             once per feature-gate set (';' between sets, 'none' for
#                                             v1.37's defaults alone; GPU_DRA_FEATURE_GATES of up.sh),
#                                             each compared with the first (compare-gates-N-K.md)
#   GPU_DRA_SCALE_OUT=/tmp/gpu-dra-scale      where the reports go
#   FLEET_HARNESS_GOGC=100                    GOGC of the harness alone (it stands in for every node's
#                                             plugin; lower it to fit a large fleet on a small machine)
#   FLEET_TIMEOUT=10m                         gpu-fleet's --timeout: the limit of each wait, a burst's
#                                             included (a burst not bound by then fails its side)
#   GPU_DRA_APISERVER_GOGC=100                GOGC of the API server alone, the same for every side
#                                             (test/cluster/up.sh; lower it to fit a large fleet)
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
MODELS=${FLEET_MODELS:-dgxh100}
BURSTS=${FLEET_BURSTS:-whole=3,mig-1g=3}
CHURN=${FLEET_CHURN-whole=1;whole=2,mig-1g=2,mig-3g=1,share=1}
PEER=${FLEET_PEER:-}
if [[ -n $PEER ]]; then
	# The workloads NVIDIA's driver serves: everything but share, for both sides.
	no_share() { tr , '\n' <<<"$1" | grep -v '^share=' | paste -sd,; }
	BURSTS=$(no_share "$BURSTS")
	mixes=()
	if [[ -n $CHURN ]]; then
		IFS=';' read -ra all <<<"$CHURN"
		for m in "${all[@]}"; do mixes+=("$(no_share "$m")"); done
	fi
	CHURN=$(IFS=';' && echo "${mixes[*]}")
fi
CHURN_ARGS=(--churn-rate "${FLEET_CHURN_RATE:-5}" --churn-lifetime "${FLEET_CHURN_LIFETIME:-30s}" --churn-duration "${FLEET_CHURN_DURATION:-2m}")
# The baseline serves whole GPUs only: the same rate of whole-GPU pods for each of the full side's mixes.
BASELINE_CHURN=
[[ -z $CHURN ]] || BASELINE_CHURN=$(tr ';' '\n' <<<"$CHURN" | sed 's/.*/whole=1/' | paste -sd';')
NODES=("$@")
((${#NODES[@]} > 0)) || NODES=(100 500)
# The baseline runs the full side's whole-GPU burst, the one workload it can serve.
BASELINE_BURSTS=$(tr , '\n' <<<"$BURSTS" | grep '^whole=' || echo whole=3)
mkdir -p "$OUT" "$REPO_ROOT/bin"
cd "$REPO_ROOT"
go build -o "$REPO_ROOT/bin/" ./cmd/gpu-fleet
FLEET=$REPO_ROOT/bin/gpu-fleet

trap '"$CLUSTER_DIR/down.sh" >/dev/null 2>&1 || true' EXIT

# side NAME NODES ARGS...: a fresh control plane, one harness run, the control plane stopped.
# A side whose harness fails (a burst not bound within its wait, an over-commitment) still wrote
# the figures it took: the other sides run and the comparisons are printed, and the script fails
# at the end, naming it.
FAILED=()
side() {
	local name=$1 n=$2
	shift 2
	GPU_DRA_CONTROL_PLANE_ONLY=1 "$CLUSTER_DIR/up.sh" >/dev/null
	log "fleet of $n ($MODELS), $name: gpu-fleet --nodes $n --models $MODELS $*"
	if ! GOGC=${FLEET_HARNESS_GOGC:-100} KUBECONFIG=$RUN/kubeconfig/admin.kubeconfig "$FLEET" --run-dir "$RUN" --nodes "$n" --models "$MODELS" \
		${FLEET_TIMEOUT:+--timeout "$FLEET_TIMEOUT"} --out "$OUT/$name-$n.json" "$@" | tee "$OUT/$name-$n.txt"; then
		FAILED+=("$name-$n")
		log "side $name of $n failed (its figures so far: $OUT/$name-$n.txt); going on with the other sides"
	fi
	"$CLUSTER_DIR/down.sh" >/dev/null
}

# mig_args N: the full side's MIG-node arguments for a fleet of N.
mig_args() {
	local n=$1 count=${FLEET_MIG_NODES:-}
	[[ -n $count ]] || return 0
	[[ $count != *% ]] || count=$((n * ${count%\%} / 100))
	echo --mig-nodes "$count" --mig-node-kinds "${FLEET_MIG_NODE_KINDS:-mig}" ${FLEET_MIG_NODE_PROFILES:+--mig-node-profiles "$FLEET_MIG_NODE_PROFILES"}
	[[ ${FLEET_STEER:-1} == 0 ]] || echo --steer
}
[[ -z ${FLEET_MIG_NODES:-} ]] || FLEET_KINDS=${FLEET_KINDS:-whole}

# full_side NAME NODES: side NAME running the full side's workloads and offer.
full_side() {
	# shellcheck disable=SC2046 # mig_args prints separate words
	side "$1" "$2" --bursts "$BURSTS" --churn "$CHURN" "${CHURN_ARGS[@]}" ${FLEET_KINDS:+--kinds "$FLEET_KINDS"} ${FLEET_MIG_PROFILES:+--mig-profiles "$FLEET_MIG_PROFILES"} $(mig_args "$2")
}

# peer_side NODES: the peer side, NVIDIA's pool running the full side's bursts and churn.
peer_side() {
	side peer "$1" --peer --bursts "$BURSTS" --churn "$CHURN" "${CHURN_ARGS[@]}"
}

for n in "${NODES[@]}"; do
	if [[ -n ${FLEET_GATES:-} ]]; then
		IFS=';' read -ra gate_sets <<<"$FLEET_GATES"
		for k in "${!gate_sets[@]}"; do
			gates=${gate_sets[$k]}
			[[ $gates != none ]] || gates=
			log "feature gates of side gates$k: ${gates:-none beyond the defaults of v1.37}"
			GPU_DRA_FEATURE_GATES=$gates full_side "gates$k" "$n"
			((k == 0)) || "$FLEET" compare "$OUT/gates$k-$n.json" "$OUT/gates0-$n.json" | tee "$OUT/compare-gates-$n-$k.md"
		done
		continue
	fi
	[[ $PEER != first ]] || peer_side "$n"
	full_side full "$n"
	if [[ -n $PEER ]]; then
		[[ $PEER == first ]] || peer_side "$n"
		"$FLEET" compare "$OUT/full-$n.json" "$OUT/peer-$n.json" | tee "$OUT/compare-peer-$n.md"
	fi
	[[ $PEER == only || $PEER == first ]] && continue
	side whole "$n" --kinds whole --bursts "$BASELINE_BURSTS" --churn "$BASELINE_CHURN" "${CHURN_ARGS[@]}"
	"$FLEET" compare "$OUT/full-$n.json" "$OUT/whole-$n.json" | tee "$OUT/compare-$n.md"
done
((${#FAILED[@]} == 0)) || die "sides that failed: ${FAILED[*]} (their reports are in $OUT)"
