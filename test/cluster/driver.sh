#!/usr/bin/env bash
# driver.sh start|stop|restart [-f VALUES]... [plugin flags...] — installs the gpu.nvidia.com driver on the
# local cluster the way an operator does: `helm upgrade --install` of deployments/helm with the
# image built by image.sh, as release gpu-dra-driver in namespace gpu-dra-driver. The kubelet
# plugin DaemonSet runs as on a GPU node, without --simulate: it loads libnvidia-ml.so.1 from a
# simulated driver installation of a DGX on each node (GPU_DRA_SIMULATE, one model a node, default
# dgxh100 on one node; lib.sh's node_model; gb200 nodes in the NVLink cliques of GPU_DRA_CLIQUES,
# lib.sh's node_fabric) whose kernel side is a gpu-sim serve process per node
# (see docs/simulated-driver.md); the driver, /dev and /proc trees,
# state, CDI directory and kubelet directories are the run directory's, given as chart values. The cluster has no kube-proxy: the API server calls the webhook at its
# Service's endpoints, the pods' addresses on the node's bridge.
#
#   start    builds the commands and the image, installs or upgrades the release, and starts the
#            plugin; returns once the webhook admits and the plugin is ready.
#   stop     stops the plugin (its node loses the label the harness's DaemonSet selects), which
#            keeps its slices and prepared claims, as in a restart or upgrade.
#   restart  stop, then the release upgraded with the plugin flags given (none: the defaults),
#            then start. Builds nothing.
#   replace-gpus MODEL
#            (one node) the node's GPUs replaced while its plugin is stopped, as an administrator
#            replaces them (an RMA, an upgrade): the plugin stopped, the simulated node served as
#            MODEL (a gpu-sim model), the plugin started again. The node it was is kept in
#            $RUN/sim-replaced/<model> and comes back, state and all, when replaced by that model
#            again. Builds nothing.
#
# The driver is configured as an operator configures it, by chart values: the harness's own
# (local paths, the simulated node, the inventory re-read every 10s) in $RUN/driver-values.yaml,
# then each values file given with -f, which override them. The -f files are remembered in
# $RUN/driver-values-files (new ones added after the others), so a later start or restart of the
# same cluster keeps them. Plugin flags after the -f options become kubeletPlugin.extraArgs.
# The local binaries (gpu-sim, kubectl-gpu, gpu-kubelet-plugin for its CLI) go to $RUN/bin.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Every node's simulated driver installation is at $SIM_DIR as its namespace sees it (node I's in
# $(node_dir I)/sim on this machine); node I simulates node_model I.
SIM_DIR=$RUN/sim
RELEASE=gpu-dra-driver
NAMESPACE=gpu-dra-driver
# The harness's plugin runs while the node has this label (and nvidia.com/gpu.present, which GPU
# feature discovery would set): stop removes it, so the DaemonSet's pod goes and nothing else.
RUN_LABEL=gpu-dra.local/harness-plugin
PLUGIN_HTTP_PORT=8088
VALUES=$RUN/driver-values.yaml
# The values files of the last start, one a line.
VALUES_FILES=$RUN/driver-values-files
PLUGIN_SELECTOR=app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=kubelet-plugin

helm() { "$HELM" --kubeconfig "$RUN/kubeconfig/admin.kubeconfig" --namespace "$NAMESPACE" "$@"; }

build() {
	mkdir -p "$RUN/bin"
	(cd "$REPO_ROOT" && CGO_CFLAGS="-O2 -g -Wno-deprecated-declarations" go build -o "$RUN/bin/" ./cmd/gpu-kubelet-plugin ./cmd/gpu-sim ./cmd/kubectl-gpu)
	# The simulated driver's nvidia-smi and MPS control run in the plugin's image and in pods:
	# static here. NVIDIA's are linked against libnvidia-ml.so.1, which the plugin gives them
	# (driverroot.ToolEnv); the production-path unit tests run such a build (-tags simnvmllink,
	# simhosttest.LinkedTools). The cluster cannot: the previous release's image, which the
	# upgrade tests run against the same driver root, has no C library for them, nor has the
	# tests' static busybox.
	(cd "$REPO_ROOT" && CGO_ENABLED=0 go build -o "$RUN/bin/" ./cmd/gpu-sim-tools)
	# The simulated driver's libnvidia-ml.so.1, which the plugin loads as on a GPU node.
	"$REPO_ROOT/pkg/simhost/libnvml/build.sh" "$RUN/bin/libnvidia-ml.so.1"
	"$CLUSTER_DIR/image.sh" >/dev/null
	ensure_helm
	ln -sf "$HELM" "$RUN/bin/helm"
}

# serve_driver I runs node I's kernel side, gpu-sim serve, which answers the libnvidia-ml.so.1 of
# the driver root (as the kernel driver answers NVIDIA's), unless it runs already for this model,
# state and host trees from the gpu-sim built last. It keeps the MIG instances' capability files in
# the host's proc tree, the plugin's --proc-root. Its PID is in $RUN/pids/gpu-sim.pid
# (gpu-sim@<node>.pid on the other nodes; down.sh stops it).
serve_driver() {
	local i=$1 name model dir pidfile want pid='' exe fabric=()
	name=$(node_proc gpu-sim "$i") model=$(node_model "$i") dir=$(node_dir "$i")/sim
	pidfile=$RUN/pids/$name.pid
	# A fabric attached node (gb200) registers its GPUs in its clique (node_fabric).
	[[ -z $(node_fabric "$i") ]] || fabric=(--fabric "$(node_fabric "$i")")
	want="serve $model $SIM_DIR/state $SIM_DIR/host/proc${fabric:+ ${fabric[*]}}"
	# The recorded process, if it still runs gpu-sim.
	if [[ -f $pidfile ]]; then
		pid=$(<"$pidfile")
		kill -0 "$pid" 2>/dev/null && exe=$(readlink "/proc/$pid/exe") && [[ $exe == *gpu-sim* ]] || pid=
	fi
	# A program rebuilt since it started ("... (deleted)") is restarted.
	if [[ -n $pid && $exe != *" (deleted)" && $(<"$dir/serving") == "$want" && -S $dir/host/driver/run/gpu-sim/nvml.sock ]]; then
		return
	fi
	if [[ -n $pid ]]; then
		kill "$pid"
		while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
	fi
	mkdir -p "$RUN/pids" "$RUN/logs"
	start_on "$i" gpu-sim "$RUN/bin/gpu-sim" --model "$model" --state-dir "$SIM_DIR/state" serve \
		--driver-root "$SIM_DIR/host/driver" --proc-root "$SIM_DIR/host/proc" "${fabric[@]}"
	echo "$want" >"$dir/serving"
	local deadline=$((SECONDS + 30))
	until [[ -S $dir/host/driver/run/gpu-sim/nvml.sock ]]; do
		kill -0 "$(<"$pidfile")" 2>/dev/null || die "gpu-sim serve exited: $(tail -5 "$RUN/logs/$name.log")"
		((SECONDS < deadline)) || die "gpu-sim serve has no socket after 30s"
		sleep 0.1
	done
}

# prepare_nodes creates each node's simulated host trees (a driver installation with the simulated
# libnvidia-ml.so.1), starts its kernel side and labels the node as GPU feature discovery would.
# The identity in deployments/rbac is the one the crash tests' own plugin processes use.
prepare_nodes() {
	local i models=()
	for ((i = 0; i < $(cluster_nodes); i++)); do models+=("$(node_model "$i")"); done
	(IFS=,; echo "${models[*]}") >"$RUN/simulate"
	[[ -z ${GPU_DRA_CLIQUES:-} ]] || echo "$GPU_DRA_CLIQUES" >"$RUN/cliques"
	for ((i = 0; i < $(cluster_nodes); i++)); do
		mkdir -p "$(node_dir "$i")/sim/state"
		node_run "$i" "$RUN/bin/gpu-sim" --model "$(node_model "$i")" --state-dir "$SIM_DIR/state" host --dir "$SIM_DIR/host" >/dev/null
		serve_driver "$i"
		kubectl label node "$(node_name "$i")" nvidia.com/gpu.present=true --overwrite >/dev/null
	done
	kubectl apply -f "$REPO_ROOT/deployments/rbac/" >/dev/null
	# DeviceClasses a harness before this one applied with kubectl: the chart adopts them.
	local class
	for class in gpu.nvidia.com mig.nvidia.com shared.gpu.nvidia.com; do
		if kubectl get deviceclass "$class" >/dev/null 2>&1; then
			kubectl annotate deviceclass "$class" --overwrite >/dev/null \
				meta.helm.sh/release-name="$RELEASE" meta.helm.sh/release-namespace="$NAMESPACE"
			kubectl label deviceclass "$class" --overwrite app.kubernetes.io/managed-by=Helm >/dev/null
		fi
	done
}

# write_values writes the chart values of the local cluster, with the plugin flags given.
write_values() {
	local tag arg
	tag=$(sed -n 's/^appVersion: "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")
	local args=("$@")
	{
		cat <<-EOF
			# Written by test/cluster/driver.sh: the chart on the local cluster.
			image: {repository: gpu-dra-driver, tag: "${GPU_DRA_IMAGE_TAG:-$tag}", pullPolicy: Never}
			kubeletPlugin:
			  nodeSelector: {nvidia.com/gpu.present: "true", $RUN_LABEL: "true"}
			  apiServer: 127.0.0.1:6443
			  httpPort: $PLUGIN_HTTP_PORT
			  # Each node's plugin serves on its node's address: the nodes share this machine's network.
			  httpOnNodeAddress: true
			  logVerbosity: 2
			  inventoryInterval: 10s
			  # The tests stop and start the plugin often: no need to wait long.
			  terminationGracePeriodSeconds: 15
			  hostPaths:
			    pluginsDir: $RUN/kubelet/plugins
			    registryDir: $RUN/kubelet/plugins_registry
			    cdiRoot: $RUN/cdi
			    driverRoot: $SIM_DIR/host/driver
			    devRoot: $SIM_DIR/host/dev
			    procRoot: $SIM_DIR/host/proc
			    sysRoot: $SIM_DIR/host/sys
			  # Claims are read as the node, with the kubelet's kubeconfig (a static token of
			  # system:node:$NODE_NAME) and the CA it names.
			  claimReads:
			    kubeletKubeconfig: $RUN/kubeconfig/kubelet.kubeconfig
			    hostPaths: [$RUN/pki/ca.crt]
			  extraArgs:$( ((${#args[@]})) || echo " []")
		EOF
		for arg in "${args[@]}"; do
			arg=${arg//\\/\\\\}
			printf '  - "%s"\n' "${arg//\"/\\\"}"
		done
	} >"$VALUES"
}

# upgrade installs or upgrades the release with the values of write_values and waits for the
# webhook (the plugin's pods, if any are due, are waited for by start_plugin).
upgrade() {
	write_values "$@"
	local files=(-f "$VALUES") f
	while IFS= read -r f; do
		[[ -z $f ]] || files+=(-f "$f")
	done <"$VALUES_FILES"
	helm upgrade --install "$RELEASE" "$CHART" --create-namespace "${files[@]}" >/dev/null
	kubectl rollout status -n "$NAMESPACE" "deployment/$RELEASE-webhook" --timeout=120s >/dev/null
	# The DaemonSet controller has seen the new template, so the plugin's next pod runs it.
	local ds=daemonset/$RELEASE-kubelet-plugin deadline=$((SECONDS + 30)) gen=
	until gen=$(kubectl get -n "$NAMESPACE" "$ds" -o jsonpath='{.metadata.generation}={.status.observedGeneration}' 2>/dev/null) &&
		[[ -n ${gen%=*} && ${gen%=*} == "${gen#*=}" ]]; do
		((SECONDS < deadline)) || die "$ds has not observed its new template after 30s"
		sleep 0.1
	done
}

# wait_webhook waits until the API server reaches the webhook: a server-side dry run of an invalid
# claim is refused by it.
wait_webhook() {
	local out deadline=$((SECONDS + 60))
	until out=$(kubectl create --dry-run=server -f - 2>&1 <<-EOF
		apiVersion: resource.k8s.io/v1
		kind: ResourceClaim
		metadata: {name: webhook-probe, namespace: default}
		spec:
		  devices:
		    requests: [{name: gpu, exactly: {deviceClassName: gpu.nvidia.com}}]
		    config:
		    - opaque:
		        driver: gpu.nvidia.com
		        parameters: {apiVersion: resource.nvidia.com/v1beta1, kind: TpuConfig}
	EOF
	); [[ $out == *"admission webhook"*"denied"* ]]; do
		((SECONDS < deadline)) || die "the webhook does not answer the API server after 60s: $out"
		sleep 0.2
	done
}

plugin_pods() {
	kubectl get pods -n "$NAMESPACE" -l "$PLUGIN_SELECTOR" -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'
}

# all_ready: one plugin pod per node, each Ready, each node's /readyz answering.
all_ready() {
	local nodes=$1 i
	ready=$(kubectl get pods -n "$NAMESPACE" -l "$PLUGIN_SELECTOR" \
		-o jsonpath='{range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}') || return 1
	[[ $(grep -c ' True$' <<<"$ready") == "$nodes" && $(wc -l <<<"$ready") == "$nodes" ]] || return 1
	for ((i = 0; i < nodes; i++)); do
		curl -fsS --max-time 1 "http://$(node_name "$i"):$PLUGIN_HTTP_PORT/readyz" >/dev/null 2>&1 || return 1
	done
}

start_plugin() {
	local started nodes i
	started=$(date +%s.%N)
	nodes=$(cluster_nodes)
	for ((i = 0; i < nodes; i++)); do
		kubectl label node "$(node_name "$i")" "$RUN_LABEL=true" --overwrite >/dev/null
	done
	local deadline=$((SECONDS + 120)) ready=
	until all_ready "$nodes"; do
		if ((SECONDS >= deadline)); then
			kubectl logs -n "$NAMESPACE" -l "$PLUGIN_SELECTOR" --tail=30 >&2 || true
			die "gpu-kubelet-plugin not ready on $nodes nodes after 120s: ${ready:-no pod}"
		fi
		sleep 0.2
	done
	local took models=()
	took=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
	for ((i = 0; i < nodes; i++)); do models+=("$(node_name "$i")=$(node_model "$i")"); done
	log "gpu-kubelet-plugin ($(tr '\n' ' ' <<<"${ready// True/}")) registered and published its slices ${took}s after its nodes were labelled (simulated ${models[*]})"
}

stop_plugin() {
	local i
	for ((i = 0; i < $(cluster_nodes); i++)); do
		kubectl label node "$(node_name "$i")" "$RUN_LABEL-" >/dev/null 2>&1 || true
	done
	local deadline=$((SECONDS + 60)) pods
	until pods=$(plugin_pods) && [[ -z $pods ]]; do
		((SECONDS < deadline)) || die "gpu-kubelet-plugin pod still there 60s after its node lost $RUN_LABEL: ${pods:-kubectl failed}"
		sleep 0.2
	done
}

# replace_gpus MODEL: replace-gpus above. Run with GPU_DRA_SIMULATE=MODEL or unset (node_model).
replace_gpus() {
	local new=$1 old pid pidfile=$RUN/pids/gpu-sim.pid tmp
	(($(cluster_nodes) == 1)) || die "replace-gpus: a one-node cluster only (this one has $(cluster_nodes))"
	[[ -z ${GPU_DRA_SIMULATE:-} || $GPU_DRA_SIMULATE == "$new" ]] || die "replace-gpus $new: GPU_DRA_SIMULATE is $GPU_DRA_SIMULATE"
	tmp=$(mktemp -d)
	"$RUN/bin/gpu-sim" --model "$new" --state-dir "$tmp" show >/dev/null || { rm -rf "$tmp"; die "replace-gpus: no simulated node $new"; }
	rm -rf "$tmp"
	old=$(<"$RUN/simulate")
	stop_plugin
	if [[ $old != "$new" ]]; then
		if [[ -f $pidfile ]] && pid=$(<"$pidfile") && kill "$pid" 2>/dev/null; then
			while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
		fi
		mkdir -p "$RUN/sim-replaced"
		rm -rf "${RUN:?}/sim-replaced/$old"
		mv "$SIM_DIR" "$RUN/sim-replaced/$old"
		[[ ! -d $RUN/sim-replaced/$new ]] || mv "$RUN/sim-replaced/$new" "$SIM_DIR"
	fi
	GPU_DRA_SIMULATE=$new prepare_nodes
	start_plugin
	log "node's GPUs replaced: $old, now $new"
}

# values_files ARGS...: adds the leading "-f FILE" options (absolute paths) to $VALUES_FILES,
# each once, and leaves the other arguments in REST.
values_files() {
	local f
	touch "$VALUES_FILES"
	while [[ ${1:-} == -f || ${1:-} == --values ]]; do
		[[ -f ${2:-} ]] || die "values file ${2:-(none)} not found"
		f=$(realpath "$2")
		grep -qxF "$f" "$VALUES_FILES" || echo "$f" >>"$VALUES_FILES"
		shift 2
	done
	REST=("$@")
}

main() {
	[[ -f $RUN/env ]] || die "no cluster at $RUN: run test/cluster/up.sh first"
	local REST=()
	case ${1:-} in
	start)
		shift
		values_files "$@"
		set -- "${REST[@]}"
		step "build the driver and its image" build
		step "prepare the simulated nodes" prepare_nodes
		stop_plugin
		step "helm upgrade --install $RELEASE" upgrade "$@"
		step "the webhook admits" wait_webhook
		step "start gpu-kubelet-plugin" start_plugin
		;;
	stop) stop_plugin ;;
	restart)
		shift
		values_files "$@"
		set -- "${REST[@]}"
		stop_plugin
		upgrade "$@"
		start_plugin
		;;
	replace-gpus)
		[[ $# == 2 ]] || die "usage: driver.sh replace-gpus MODEL"
		replace_gpus "$2"
		;;
	*) die "usage: driver.sh start|stop|restart [-f VALUES]... [plugin flags...] | replace-gpus MODEL" ;;
	esac
}

main "$@"
