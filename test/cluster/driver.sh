#!/usr/bin/env bash
# driver.sh start|stop|restart — runs the gpu.nvidia.com kubelet plugin on the local cluster's
# node the way an operator runs it: its own ServiceAccount credentials bound by the RBAC in
# deployments/rbac, the DeviceClasses from deployments/deviceclasses, a simulated DGX
# (GPU_DRA_SIMULATE, default dgxh100) with its own driver, /dev and /proc trees, its CDI root
# shared with containerd and its sockets under the kubelet's plugin directories.
# Needs a cluster started by up.sh. The plugin's PID is recorded like the cluster's, so
# down.sh stops it too.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIMULATE=${GPU_DRA_SIMULATE:-dgxh100}
SIM_DIR=$RUN/sim
PLUGIN_LOG=$RUN/logs/gpu-kubelet-plugin.log
PLUGIN_HTTP=${GPU_DRA_PLUGIN_HTTP:-127.0.0.1:8088}

kubectl() { "$K8S_BIN/kubectl" --kubeconfig "$RUN/kubeconfig/admin.kubeconfig" --cache-dir "$RUN/kube-cache" "$@"; }

build() {
	mkdir -p "$RUN/bin"
	(cd "$REPO_ROOT" && CGO_CFLAGS="-O2 -g -Wno-deprecated-declarations" go build -o "$RUN/bin/" ./cmd/gpu-kubelet-plugin ./cmd/gpu-sim ./cmd/gpu-dra-webhook ./cmd/kubectl-gpu)
}

apply_manifests() {
	kubectl apply -f "$REPO_ROOT/deployments/rbac/" -f "$REPO_ROOT/deployments/deviceclasses/" >/dev/null
}

plugin_pid() {
	local f=$RUN/pids/gpu-kubelet-plugin.pid pid
	[[ -f $f ]] || return 1
	pid=$(<"$f")
	kill -0 "$pid" 2>/dev/null || return 1
	echo "$pid"
}

start_plugin() {
	mkdir -p "$SIM_DIR/state"
	"$RUN/bin/gpu-sim" --model "$SIMULATE" --state-dir "$SIM_DIR/state" host --dir "$SIM_DIR/host" >/dev/null
	local started
	started=$(date +%s.%N)
	GPU_DRA_SIM_STATE_DIR=$SIM_DIR/state setsid "$RUN/bin/gpu-kubelet-plugin" \
		--node-name "$NODE_NAME" \
		--kubeconfig "$RUN/kubeconfig/plugin.kubeconfig" \
		--simulate "$SIMULATE" --sim-state-dir "$SIM_DIR/state" \
		--cdi-root "$RUN/cdi" \
		--plugin-dir "$RUN/kubelet/plugins/$DRIVER_NAME" \
		--registrar-dir "$RUN/kubelet/plugins_registry" \
		--driver-root "$SIM_DIR/host/driver" --dev-root "$SIM_DIR/host/dev" --proc-root "$SIM_DIR/host/proc" \
		--http-endpoint "$PLUGIN_HTTP" \
		--inventory-interval "${GPU_DRA_INVENTORY_INTERVAL:-10s}" \
		-v "${GPU_DRA_PLUGIN_VERBOSITY:-2}" "$@" >>"$PLUGIN_LOG" 2>&1 </dev/null &
	echo $! >"$RUN/pids/gpu-kubelet-plugin.pid"
	local deadline=$((SECONDS + 60))
	until curl -fsS --max-time 1 "http://$PLUGIN_HTTP/readyz" >/dev/null 2>&1; do
		if ! plugin_pid >/dev/null; then
			tail -n 30 "$PLUGIN_LOG" >&2
			die "gpu-kubelet-plugin exited during start-up"
		fi
		((SECONDS < deadline)) || die "gpu-kubelet-plugin not ready after 60s (log: $PLUGIN_LOG)"
		sleep 0.1
	done
	local took
	took=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
	log "gpu-kubelet-plugin registered and published its slices in ${took}s (simulated $SIMULATE)"
}

WEBHOOK_ADDR=${GPU_DRA_WEBHOOK_ADDR:-127.0.0.1:8444}

# start_webhook runs the admission webhook on loopback with a self-signed
# certificate and registers it by URL, unless it already runs.
start_webhook() {
	local f=$RUN/pids/gpu-dra-webhook.pid
	if [[ -f $f ]] && kill -0 "$(<"$f")" 2>/dev/null; then
		return 0
	fi
	local dir=$RUN/webhook
	[[ -f $dir/tls.crt ]] || "$RUN/bin/gpu-dra-webhook" certs --dir "$dir" --hosts "${WEBHOOK_ADDR%:*}"
	setsid "$RUN/bin/gpu-dra-webhook" --listen "$WEBHOOK_ADDR" \
		--tls-cert-file "$dir/tls.crt" --tls-key-file "$dir/tls.key" >>"$RUN/logs/gpu-dra-webhook.log" 2>&1 </dev/null &
	echo $! >"$f"
	local deadline=$((SECONDS + 30))
	until curl -fsS --max-time 1 --cacert "$dir/ca.crt" "https://$WEBHOOK_ADDR/healthz" >/dev/null 2>&1; do
		((SECONDS < deadline)) || die "gpu-dra-webhook not serving after 30s (log: $RUN/logs/gpu-dra-webhook.log)"
		sleep 0.1
	done
	kubectl apply -f - >/dev/null <<-EOF
		apiVersion: admissionregistration.k8s.io/v1
		kind: ValidatingWebhookConfiguration
		metadata:
		  name: gpu-dra-webhook
		webhooks:
		- name: config.gpu.nvidia.com
		  admissionReviewVersions: ["v1"]
		  sideEffects: None
		  failurePolicy: Fail
		  timeoutSeconds: 5
		  clientConfig:
		    url: https://$WEBHOOK_ADDR/validate-resource-config
		    caBundle: $(base64 -w0 <"$dir/ca.crt")
		  rules:
		  - apiGroups: ["resource.k8s.io"]
		    apiVersions: ["v1"]
		    operations: ["CREATE", "UPDATE"]
		    resources: ["resourceclaims", "resourceclaimtemplates", "deviceclasses"]
		    scope: "*"
	EOF
	log "gpu-dra-webhook serving on https://$WEBHOOK_ADDR (deployments/webhook, registered by URL)"
}

stop_plugin() {
	local pid
	pid=$(plugin_pid) || return 0
	kill -TERM "$pid"
	local deadline=$((SECONDS + 15))
	while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null || true
	rm -f "$RUN/pids/gpu-kubelet-plugin.pid"
}

main() {
	[[ -f $RUN/env ]] || die "no cluster at $RUN: run test/cluster/up.sh first"
	case ${1:-} in
	start)
		shift
		step "build the driver" build
		step "RBAC and DeviceClasses" apply_manifests
		step "start gpu-dra-webhook" start_webhook
		step "start gpu-kubelet-plugin" start_plugin "$@"
		;;
	stop) stop_plugin ;;
	restart)
		shift
		[[ ${GPU_DRA_SKIP_BUILD:-} == 1 ]] || build
		stop_plugin
		start_plugin "$@"
		;;
	*) die "usage: driver.sh start|stop|restart [plugin flags...]" ;;
	esac
}

main "$@"
