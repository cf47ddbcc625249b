#!/usr/bin/env bash
# node.sh stop|start NODE — takes one node of the local cluster down and back, as a kubelet that
# crashes or a machine that drops off the network does: stop kills its kubelet with SIGKILL (its
# containers, the driver's plugin among them, keep running, as they do when a kubelet dies);
# start runs the kubelet again with the command line up.sh gave it, in the node's namespace, and
# waits for its /healthz. The node goes NotReady after the controller manager's grace period and
# Ready again after start, as on a real cluster. NODE is a node name (127.0.0.1, 127.0.0.2, ...).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# node_index NAME: the index of the node called NAME.
node_index() {
	local i
	for ((i = 0; i < $(cluster_nodes); i++)); do
		if [[ $(node_name "$i") == "$1" ]]; then
			echo "$i"
			return
		fi
	done
	die "no node $1 in the cluster at $RUN (nodes: $(for ((i = 0; i < $(cluster_nodes); i++)); do printf '%s ' "$(node_name "$i")"; done))"
}

# kubelet_pid I: the PID of node I's kubelet, if it runs.
kubelet_pid() {
	local f pid
	f=$RUN/pids/$(node_proc kubelet "$1").pid
	[[ -f $f ]] || return 1
	pid=$(<"$f")
	[[ $(readlink "/proc/$pid/exe" 2>/dev/null) == */kubelet ]] || return 1
	echo "$pid"
}

stop_kubelet() {
	local i=$1 pid deadline=$((SECONDS + 30))
	pid=$(kubelet_pid "$i") || { log "the kubelet of node $(node_name "$i") does not run"; return 0; }
	kill -KILL "$pid"
	# Gone, or a zombie of a parent that has not reaped it.
	while kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; do
		((SECONDS < deadline)) || die "the kubelet of node $(node_name "$i") (pid $pid) still runs 30s after SIGKILL"
		sleep 0.1
	done
	log "killed the kubelet of node $(node_name "$i") (pid $pid)"
}

start_kubelet() {
	local i=$1 name args=()
	name=$(node_name "$i")
	if kubelet_pid "$i" >/dev/null; then
		log "the kubelet of node $name runs already"
		return 0
	fi
	mapfile -t args <"$(node_dir "$i")/kubelet/cmdline"
	start_on "$i" kubelet "${args[@]}"
	local pid
	pid=$(<"$RUN/pids/$(node_proc kubelet "$i").pid")
	local deadline=$((SECONDS + 60))
	until curl -fsS --max-time 2 "http://$name:10248/healthz" >/dev/null 2>&1; do
		# Alive (it may not have reached the kubelet's exec yet on a loaded machine).
		kill -0 "$pid" 2>/dev/null || die "the kubelet of node $name exited; see $RUN/logs/$(node_proc kubelet "$i").log"
		((SECONDS < deadline)) || die "the kubelet of node $name has no /healthz after 60s"
		sleep 0.2
	done
	log "started the kubelet of node $name"
}

main() {
	[[ -f $RUN/env ]] || die "no cluster at $RUN: run test/cluster/up.sh first"
	[[ $# == 2 ]] || die "usage: node.sh stop|start NODE"
	local i
	i=$(node_index "$2")
	case $1 in
	stop) stop_kubelet "$i" ;;
	start) start_kubelet "$i" ;;
	*) die "usage: node.sh stop|start NODE" ;;
	esac
}

main "$@"
