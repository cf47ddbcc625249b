#!/usr/bin/env bash
# lib.sh — shared settings and helpers for the local-cluster scripts (build.sh, up.sh,
# down.sh, smoke.sh). Sourced, never run. Every value can be overridden from the environment.
# Note: nothing here is named ETCD_*: etcd reads such environment variables as flags.

# shellcheck disable=SC2034 # variables are used by the scripts that source this file

CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$CLUSTER_DIR/../.." && pwd)

# Versions of what build.sh builds.
K8S_VERSION=${K8S_VERSION:-v1.37.2}
# etcd's version is the one test/cluster/etcd/go.mod requires.
ETCDSERVER_VERSION=$(sed -n 's#^require go.etcd.io/etcd/server/v3 \(v[^ ]*\)$#\1#p' "$CLUSTER_DIR/etcd/go.mod")
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
# Kueue's version is the one test/cluster/kueue/go.mod requires (kueue.sh builds it when first
# needed, not build.sh).
KUEUE_VERSION=$(sed -n 's#^[[:space:]]*sigs.k8s.io/kueue \(v[^ ]*\).*$#\1#p' "$CLUSTER_DIR/kueue/go.mod")
HELM_VERSION=${HELM_VERSION:-v3.22.0}

# The references of the two local images. The pause reference is also pinned as containerd's
# sandbox image in up.sh, so both always agree.
PAUSE_IMAGE=${PAUSE_IMAGE:-registry.k8s.io/pause:3.10.2}
BUSYBOX_IMAGE=${BUSYBOX_IMAGE:-docker.io/library/busybox:local}

GPU_DRA_CACHE=${GPU_DRA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpu-dra-driver}
RUN=${GPU_DRA_RUN_DIR:-/tmp/gpu-dra-cluster}

K8S_BIN=$GPU_DRA_CACHE/kubernetes-$K8S_VERSION/bin
ETCDSERVER_BIN=$GPU_DRA_CACHE/etcd-$ETCDSERVER_VERSION/bin
CONTAINERD_BIN=$GPU_DRA_CACHE/containerd-$CONTAINERD_VERSION/bin
KUEUE_BIN=$GPU_DRA_CACHE/kueue-$KUEUE_VERSION/bin
HELM=$GPU_DRA_CACHE/helm-$HELM_VERSION/bin/helm
# The driver's chart, installed by driver.sh and checked by test/helm/check.sh.
CHART=$REPO_ROOT/deployments/helm/gpu-dra-driver
# The image tool and archives are keyed by a hash of their sources (computed by images_dir).

# The Kubernetes node name; it must resolve to the loopback address.
NODE_NAME=127.0.0.1
# The DRA driver served on this node.
DRIVER_NAME=gpu.nvidia.com

export PATH=/usr/local/go/bin:$PATH

# kubectl is the one way the scripts reach the local cluster: the cached kubectl as the
# cluster's admin. A later --kubeconfig (e.g. the plugin's identity) overrides the admin's.
kubectl() { "$K8S_BIN/kubectl" --kubeconfig "$RUN/kubeconfig/admin.kubeconfig" --cache-dir "$RUN/kube-cache" "$@"; }

log() { printf '%s [%s] %s\n' "$(date +%H:%M:%S)" "${0##*/}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# step NAME CMD...: runs CMD and prints how long it took; records "NAME SECONDS" in STEP_TIMES.
STEP_TIMES=()
step() {
	local name=$1 start end
	shift
	start=$(date +%s.%N)
	log "step: $name"
	"$@"
	end=$(date +%s.%N)
	local took
	took=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
	log "step: $name done in ${took}s"
	STEP_TIMES+=("$name ${took}s")
}

print_times() {
	local t
	log "timings:"
	for t in "${STEP_TIMES[@]}"; do
		printf '  %s\n' "$t" >&2
	done
}

# ensure_helm builds helm from the Go module proxy into the cache the first time (about a
# minute).
ensure_helm() {
	[[ -x $HELM ]] && return 0
	log "building helm $HELM_VERSION into $(dirname "$HELM")"
	GOBIN=$(dirname "$HELM") GOFLAGS=-mod=mod go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

# images_dir prints the cache directory of the image tool and archives, keyed by the hash of
# test/images (sources) and the image references, so an edit rebuilds them.
images_dir() {
	local sum
	sum=$(cd "$REPO_ROOT/test/images" &&
		{ find . -type f \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' \) -print0 | sort -z | xargs -0 sha256sum; echo "$PAUSE_IMAGE $BUSYBOX_IMAGE"; } |
		sha256sum | cut -c1-12)
	printf '%s/images-%s\n' "$GPU_DRA_CACHE" "$sum"
}

# etcd_data_dir prints etcd's data directory: on tmpfs, named after the run directory so down.sh
# finds it even when the run directory is gone.
etcd_data_dir() {
	printf '/dev/shm/gpu-dra-etcd-%s\n' "$(printf '%s' "$RUN" | sha256sum | cut -c1-12)"
}
