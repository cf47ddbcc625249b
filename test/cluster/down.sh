#!/usr/bin/env bash
# down.sh — stops the cluster up.sh started and removes every trace of it: container tasks (via
# ctr, so the shims exit), the processes recorded in $RUN/pids, mounts under $RUN (deepest
# first), the paths the kubelet hard-codes outside $RUN, the CNI bridge, the kubepods cgroups,
# etcd's data on /dev/shm and $RUN itself. Idempotent; safe after a failed or interrupted up.sh.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CNI_NETWORK=gpu-dra-cluster

# pid_of NAME: the recorded PID of NAME, if that process still runs the binary up.sh started
# (NAME@NODE: a process of another node; namespace@NODE: the sleep that holds its namespace).
pid_of() {
	local f=$RUN/pids/$1.pid pid exe want=${1%%@*}
	[[ -f $f ]] || return 1
	pid=$(<"$f")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	if [[ $want == namespace ]]; then
		# The holder of a node's namespace: that namespace, as up.sh recorded it.
		[[ -f $RUN/pids/$1.ns && $(readlink "/proc/$pid/ns/mnt" 2>/dev/null) == "$(<"$RUN/pids/$1.ns")" ]] || return 1
		echo "$pid"
		return
	fi
	exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
	[[ ${exe##*/} == "$want" || ${exe##*/} == "$want (deleted)" ]] || return 1
	echo "$pid"
}

# on_nodes NAME: NAME on every node this run recorded: NAME, then NAME@<node> of each other node.
on_nodes() {
	local d
	echo "$1"
	for d in "$RUN"/nodes/*/; do
		[[ -d $d ]] || continue
		d=${d%/}
		echo "$1@${d##*/}"
	done
}

# stop_pids SIGNAL_WAIT PID...: SIGTERM, then SIGKILL after SIGNAL_WAIT seconds.
stop_pids() {
	local wait=$1 pid deadline
	shift
	(($# > 0)) || return 0
	kill -TERM "$@" 2>/dev/null || true
	deadline=$((SECONDS + wait))
	for pid in "$@"; do
		while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
		if kill -0 "$pid" 2>/dev/null; then
			kill -KILL "$pid" 2>/dev/null || true
		fi
	done
	for pid in "$@"; do
		while kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; do
			sleep 0.1
		done
	done
}

# stop NAME...: stops the recorded processes NAME... together.
stop() {
	local name pid pids=()
	for name in "$@"; do
		if pid=$(pid_of "$name"); then
			log "stopping $name (pid $pid)"
			pids+=("$pid")
		fi
	done
	stop_pids 10 "${pids[@]}"
}

# stop_on_nodes NAME: stops NAME on every node together.
stop_on_nodes() {
	local names
	mapfile -t names < <(on_nodes "$1")
	stop "${names[@]}"
}

# Kill every container task of every node through its containerd, so the shims exit by themselves.
kill_tasks() {
	local d
	kill_node_tasks containerd "$RUN"
	for d in "$RUN"/nodes/*/; do
		[[ -d $d ]] || continue
		d=${d%/}
		kill_node_tasks "containerd@${d##*/}" "$d"
	done
}

# ctr_at DIR ARGS...: ctr against the containerd whose directories are in DIR.
ctr_at() {
	local dir=$1
	shift
	"$CONTAINERD_BIN/ctr" --address "$dir/containerd/containerd.sock" --timeout 10s "$@"
}

# kill_node_tasks NAME DIR: the tasks of containerd NAME, whose directories are in DIR.
kill_node_tasks() {
	pid_of "$1" >/dev/null || return 0
	local dir=$2 ns id
	for ns in $(ctr_at "$dir" namespaces ls -q 2>/dev/null); do
		for id in $(ctr_at "$dir" -n "$ns" tasks ls -q 2>/dev/null); do
			ctr_at "$dir" -n "$ns" tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true
		done
		for id in $(ctr_at "$dir" -n "$ns" tasks ls -q 2>/dev/null); do
			ctr_at "$dir" -n "$ns" tasks rm -f "$id" >/dev/null 2>&1 || true
		done
	done
}

# Shims of this cluster that outlived containerd, found by their -address argument.
stop_stray_shims() {
	local d pids=()
	for d in /proc/[0-9]*; do
		[[ $(readlink "$d/exe" 2>/dev/null) == "$CONTAINERD_BIN/containerd-shim-runc-v2" ]] || continue
		tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -qF -- "$RUN/containerd/containerd.sock" || continue
		pids+=("${d#/proc/}")
	done
	if ((${#pids[@]} > 0)); then
		log "stopping stray shims: ${pids[*]}"
		stop_pids 5 "${pids[@]}"
	fi
}

# Processes still in the kubepods cgroups the kubelet created for this cluster (containers whose
# shim is gone), then the cgroups themselves, deepest first.
remove_cgroups() {
	[[ -f $RUN/cgroups-created ]] || return 0
	local cg pids
	while read -r cg; do
		[[ -d $cg ]] || continue
		pids=$(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
		if [[ -n $pids ]]; then
			log "stopping processes left in $cg: $(echo "$pids" | tr '\n' ' ')"
			# shellcheck disable=SC2086 # one PID per word
			stop_pids 2 $pids
		fi
	done <"$RUN/cgroups-created"
	while read -r cg; do
		[[ -d $cg ]] || continue
		find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
		[[ ! -d $cg ]] || log "WARNING: could not remove cgroup $cg"
	done <"$RUN/cgroups-created"
}

# Mount points under $RUN, deepest first.
mounts_under_run() {
	awk -v run="$RUN" '$5 == run || index($5, run "/") == 1 { print $5 }' /proc/self/mountinfo |
		awk '{ print length($0), $0 }' | sort -rn | cut -d' ' -f2-
}

unmount_all() {
	local m tries=0
	while [[ -n $(mounts_under_run) ]]; do
		while read -r m; do
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
		done < <(mounts_under_run)
		((++tries < 10)) || die "mounts remain under $RUN: $(mounts_under_run | tr '\n' ' ')"
	done
}

remove_host_paths() {
	rm -f /var/lib/kubelet/device-plugins/kubelet.sock
	local f target
	for f in /var/log/containers/*; do
		[[ -L $f ]] || continue
		target=$(readlink "$f")
		if [[ $target == "$RUN"/* ]]; then rm -f "$f"; fi
	done
	# CNI results of the sandboxes whose network was never torn down (their tasks were killed).
	rm -f /var/lib/cni/results/"$CNI_NETWORK"-*
	for f in "$RUN"/containerd/root/io.containerd.grpc.v1.cri/sandboxes/* \
		"$RUN"/nodes/*/containerd/root/io.containerd.grpc.v1.cri/sandboxes/*; do
		if [[ -d $f ]]; then rm -f "/var/lib/cni/results/cni-loopback-${f##*/}-lo"; fi
	done
	# The directories up.sh saw missing, if they are empty now, deepest first; /run/mount (made
	# by mount(8) for its utab) whole.
	if [[ -f $RUN/host-paths-created ]]; then
		sort -r "$RUN/host-paths-created" | while read -r f; do
			if [[ $f == /run/mount ]]; then rm -rf "$f"; else rmdir "$f" 2>/dev/null || true; fi
		done
	fi
}

# bridges: the nodes' bridges (gpudra0 is node 0's; gpudraI node I's).
bridges() {
	ip -o link show type bridge 2>/dev/null | awk -F': ' '$2 ~ /^gpudra[0-9]+(@|$)/ { sub(/@.*/, "", $2); print $2 }'
}

main() {
	local start=$SECONDS
	if [[ ! -e $RUN && ! -e $(etcd_data_dir) ]] && [[ -z $(bridges) ]]; then
		log "nothing to do: $RUN does not exist"
		return
	fi
	# Order matters:
	# 1. the kubelet, so it restarts nothing;
	# 2. container tasks (the driver's pods among them) through containerd, so the shims exit;
	#    then containerd;
	# 3. the control plane, etcd last;
	# 4. what survived (shims, container processes), by PID;
	# 5. mounts, host paths, bridge, cgroups, files.
	# A plugin or webhook an older harness ran as a process (nothing when there is no PID file).
	stop gpu-kubelet-plugin gpu-dra-webhook
	# Kueue's manager (kueue.sh), before the API server it watches.
	stop kueue
	stop_on_nodes kubelet
	kill_tasks
	stop_on_nodes containerd
	stop kube-controller-manager kube-scheduler kube-apiserver
	stop etcd
	# The simulated GPUs' kernel side, once nothing uses them.
	stop_on_nodes gpu-sim
	stop_stray_shims
	remove_cgroups
	# The other nodes' mount namespaces, and every mount in them, go with their last process.
	stop_on_nodes namespace
	unmount_all
	remove_host_paths
	local bridge
	for bridge in $(bridges); do ip link delete "$bridge"; done
	if [[ -f $RUN/ip-forward-was ]]; then sysctl -qw "net.ipv4.ip_forward=$(<"$RUN/ip-forward-was")"; fi
	if [[ -f $RUN/forward-rule ]]; then
		local net
		net=$(<"$RUN/forward-rule")
		while iptables -D FORWARD -s "$net" -d "$net" -m comment --comment gpu-dra-cluster-pods -j ACCEPT 2>/dev/null; do :; done
	fi
	rm -rf "$(etcd_data_dir)"
	rm -rf "$RUN"
	log "cluster down in $((SECONDS - start))s"
}

main "$@"
