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

# The cluster's nodes: GPU_DRA_NODES (default 1) when up.sh starts it, recorded in $RUN/node-count.
# Node 0 is $NODE_NAME and runs in this machine's own mount namespace with its directories in $RUN,
# exactly as a one-node cluster does. Node I (I >= 1) is named 127.0.0.<I+1> (a loopback address,
# so its name resolves and its kubelet listens on its own address with the usual ports), keeps its
# directories in $RUN/nodes/<name>, and runs its containerd, kubelet, simulated GPUs and every
# container in a mount namespace of its own where each of NODE_LOCAL_DIRS, $RUN/<dir>, is its own
# directory bind-mounted over node 0's. So one DaemonSet's host paths mean each node's own files,
# as on separate machines. All nodes share this machine's network and PIDs.
NODES=${GPU_DRA_NODES:-1}
NODE_LOCAL_DIRS=(kubelet cdi sim kubeconfig pki dev containerd cni runc pod-logs)
# The paths outside $RUN the kubelet hard-codes, each node's own: node_dir I/<name> is mounted on it.
NODE_HOST_DIRS=(/var/lib/kubelet:var-lib-kubelet /var/log/containers:var-log-containers)

# node_name I: the name (and address) of node I.
node_name() { printf '127.0.0.%d\n' $(($1 + 1)); }

# node_dir I: where node I's own directories are on this machine.
node_dir() {
	if (($1 == 0)); then echo "$RUN"; else echo "$RUN/nodes/$(node_name "$1")"; fi
}

# node_proc NAME I: the name under which a process of node I is recorded ($RUN/pids/<it>.pid)
# and logs ($RUN/logs/<it>.log): NAME on node 0, NAME@<node name> on the others.
node_proc() {
	if (($2 == 0)); then echo "$1"; else echo "$1@$(node_name "$2")"; fi
}

# node_ns_pid I: the PID of the process holding node I's mount namespace (I >= 1), checked
# against the namespace up.sh recorded beside it, so that a reused PID is never entered.
node_ns_pid() {
	local f pid
	f=$RUN/pids/$(node_proc namespace "$1")
	pid=$(<"$f.pid")
	[[ -f $f.ns && $(readlink "/proc/$pid/ns/mnt" 2>/dev/null) == "$(<"$f.ns")" ]] ||
		die "the mount namespace of node $(node_name "$1") is gone (pid $pid): run down.sh and up.sh"
	echo "$pid"
}

# node_prefix I sets NODE_PREFIX to the command prefix that runs a command in node I's mount
# namespace (none on node 0). nsenter execs the command, so a PID recorded for it is the command's.
node_prefix() {
	NODE_PREFIX=()
	if (($1 > 0)); then
		local pid
		pid=$(node_ns_pid "$1")
		NODE_PREFIX=(nsenter --target "$pid" --mount --)
	fi
}

# node_run I CMD...: runs CMD in node I's mount namespace (node 0: here).
node_run() {
	local i=$1
	shift
	node_prefix "$i"
	"${NODE_PREFIX[@]}" "$@"
}

# start_on I NAME BIN ARGS...: starts BIN on node I (in its mount namespace) in its own session,
# without the caller's descriptors; it logs to $RUN/logs/<name>.log and its PID is recorded in
# $RUN/pids/<name>.pid, <name> being node_proc NAME I. nsenter and setsid exec, so the PID is BIN's
# once it runs (until then, a process that will become it).
start_on() {
	local i=$1 name
	name=$(node_proc "$2" "$1")
	shift 2
	node_prefix "$i"
	(
		close_inherited_fds
		exec setsid "${NODE_PREFIX[@]}" "$@"
	) >>"$RUN/logs/$name.log" 2>&1 </dev/null &
	echo $! >"$RUN/pids/$name.pid"
}

# close_inherited_fds closes every descriptor above stderr of this (sub)shell, before it execs a
# process that outlives the script: a daemon must not hold what the script's caller opened, such
# as the lock a `flock FILE make test` holds (it would be held until the cluster goes down).
close_inherited_fds() {
	local fd
	for fd in /proc/"$BASHPID"/fd/*; do
		fd=${fd##*/}
		((fd > 2)) || continue
		eval "exec $fd>&-" 2>/dev/null || true
	done
}

# cluster_nodes: the number of nodes of the running cluster.
cluster_nodes() {
	if [[ -f $RUN/node-count ]]; then cat "$RUN/node-count"; else echo 1; fi
}

# node_model I: the simulated node (gpu-sim model) of node I: the I-th of the comma-separated
# GPU_DRA_SIMULATE, or its last when the list is shorter. Unset, the list driver.sh started the
# cluster's driver with ($RUN/simulate), else DEFAULT_MODELS: a one-node cluster is a DGX H100
# as always, three nodes are an H100, an A100 and a B200 DGX, more add L40S nodes (no MIG).
DEFAULT_MODELS=dgxh100,dgxa100,dgxb200,l40s
node_model() {
	local models list=${GPU_DRA_SIMULATE:-}
	[[ -n $list || ! -f $RUN/simulate ]] || list=$(<"$RUN/simulate")
	IFS=, read -r -a models <<<"${list:-$DEFAULT_MODELS}"
	if (($1 < ${#models[@]})); then echo "${models[$1]}"; else echo "${models[-1]}"; fi
}
# node_fabric I: the NVLink clique, <cluster UUID>.<clique ID>, that node I's GPUs are registered in
# when its model is fabric attached (gb200; empty for other models): the I-th of the comma-separated
# GPU_DRA_CLIQUES (or its last when the list is shorter), a clique ID in the one cluster
# FABRIC_CLUSTER_UUID or a whole <cluster UUID>.<clique ID>. Unset, the list driver.sh started with
# ($RUN/cliques), else every gb200 node in clique 1 (docs/cluster.md, "Several nodes").
FABRIC_CLUSTER_UUID=8c3b5b52-1f4e-4c1a-9a6e-6d9f3e0f2b10
node_fabric() {
	local cliques list=${GPU_DRA_CLIQUES:-} clique
	[[ $(node_model "$1") == gb200 || $(node_model "$1") == gb200:* ]] || return 0
	[[ -n $list || ! -f $RUN/cliques ]] || list=$(<"$RUN/cliques")
	IFS=, read -r -a cliques <<<"${list:-1}"
	if (($1 < ${#cliques[@]})); then clique=${cliques[$1]}; else clique=${cliques[-1]}; fi
	if [[ $clique == *.* ]]; then echo "$clique"; else echo "$FABRIC_CLUSTER_UUID.$clique"; fi
}
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

# install_packages PKG...: installs the Debian packages not installed yet (apt-get, as root).
install_packages() {
	local p missing=()
	for p in "$@"; do
		[[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
	done
	if ((${#missing[@]} == 0)); then
		log "Debian packages present: $*"
		return
	fi
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_helm builds helm from the Go module proxy into the cache the first time (about a
# minute).
ensure_helm() {
	[[ -x $HELM ]] && return 0
	log "building helm $HELM_VERSION into $(dirname "$HELM")"
	GOBIN=$(dirname "$HELM") GOFLAGS=-mod=mod go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

# IMAGE_CONTENTS names what build.sh puts in the images besides test/images' programs; a change
# of it rebuilds them.
IMAGE_CONTENTS="busybox-static bash-static"

# images_dir prints the cache directory of the image tool and archives, keyed by the hash of
# test/images (sources) and the image references, so an edit rebuilds them.
images_dir() {
	local sum
	sum=$(cd "$REPO_ROOT/test/images" &&
		{ find . -type f \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' \) -print0 | sort -z | xargs -0 sha256sum; echo "$PAUSE_IMAGE $BUSYBOX_IMAGE $IMAGE_CONTENTS"; } |
		sha256sum | cut -c1-12)
	printf '%s/images-%s\n' "$GPU_DRA_CACHE" "$sum"
}

# etcd_data_dir prints etcd's data directory: on tmpfs, named after the run directory so down.sh
# finds it even when the run directory is gone.
etcd_data_dir() {
	printf '/dev/shm/gpu-dra-etcd-%s\n' "$(printf '%s' "$RUN" | sha256sum | cut -c1-12)"
}
