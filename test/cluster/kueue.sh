#!/usr/bin/env bash
# kueue.sh build|start|stop — Kueue (sigs.k8s.io/kueue, the version test/cluster/kueue/go.mod
# requires) in the running local cluster, with the DRA quota configuration of
# test/cluster/kueue/dra.yaml.
#
#   build                 build the manager into $GPU_DRA_CACHE/kueue-<version> (once; start does it)
#   start [-c DRA.yaml]   install Kueue's CRDs and RBAC, run the manager as a process of the
#                         harness (PID in $RUN/pids/kueue.pid, log in $RUN/logs/kueue.log) and
#                         register its webhooks; -c replaces dra.yaml (featureGates, resources).
#                         A running manager is stopped first, so start also reconfigures.
#   stop                  remove the webhooks, then stop the manager; CRDs and objects stay
#
# The manager runs on the host, as the control plane does: its webhooks are called at
# https://127.0.0.1:9443 with a certificate of the harness CA. Kueue reads its metrics certificate
# from the fixed path /etc/kueue/metrics/certs; the manager runs in a mount namespace of its own
# where /etc is overlaid with that directory from $RUN/kueue, so nothing is written outside $RUN.
# down.sh stops it with the cluster.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export GOWORK=off GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0
export GOCACHE=$GPU_DRA_CACHE/go-build

KDIR=$RUN/kueue
PKI=$RUN/pki
WEBHOOK_PORT=9443
HEALTH_PORT=8081
# The identity the manager authenticates as (a client certificate of the harness CA), bound to
# Kueue's own ClusterRole.
KUEUE_USER=kueue-manager

# --- build -------------------------------------------------------------------------------------

build() {
	local dir=${KUEUE_BIN%/bin}
	if [[ -f $dir/.stamp && -x $KUEUE_BIN/kueue ]]; then
		log "kueue $KUEUE_VERSION cached"
		return
	fi
	log "building kueue $KUEUE_VERSION into $KUEUE_BIN (cold: several minutes)"
	rm -rf "${dir:?}/bin"
	local v=sigs.k8s.io/kueue/pkg/version
	(cd "$CLUSTER_DIR/kueue" && go build -trimpath \
		-ldflags "-s -w -X $v.GitVersion=$KUEUE_VERSION -X $v.BuildDate=1970-01-01" \
		-o "$KUEUE_BIN/kueue" sigs.k8s.io/kueue/cmd/kueue)
	echo "$KUEUE_VERSION" >"$dir/.stamp"
}

# module_dir prints the directory of Kueue's module, whose config/ holds its manifests,
# downloading it if the module cache lacks it (a cached binary needs no download to run).
module_dir() {
	local dir
	dir=$(cd "$CLUSTER_DIR/kueue" && go mod download -json sigs.k8s.io/kueue | jq -r .Dir)
	[[ -d $dir/config ]] || die "sigs.k8s.io/kueue@$KUEUE_VERSION not in the module cache"
	echo "$dir"
}

# --- start -------------------------------------------------------------------------------------

# pid_of_kueue prints the manager's PID if the recorded process still runs the kueue binary.
pid_of_kueue() {
	local f=$RUN/pids/kueue.pid pid exe
	[[ -f $f ]] || return 1
	pid=$(<"$f")
	exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
	[[ ${exe##*/} == kueue || ${exe##*/} == "kueue (deleted)" ]] || return 1
	echo "$pid"
}

# certs writes the webhook server's certificate (for 127.0.0.1), the copy Kueue's metrics
# server insists on reading, and the manager's client certificate and kubeconfig.
certs() {
	mkdir -p "$KDIR/certs" "$KDIR/etc/kueue/metrics/certs"
	local leaf=(-addext 'basicConstraints=critical,CA:FALSE' -addext 'keyUsage=critical,digitalSignature,keyEncipherment')
	openssl req -x509 -new -config "$PKI/openssl.cnf" -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
		-nodes -keyout "$KDIR/certs/tls.key" -out "$KDIR/certs/tls.crt" -days 365 -subj /CN=kueue-webhook \
		-CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" "${leaf[@]}" -addext extendedKeyUsage=serverAuth \
		-addext subjectAltName=IP:127.0.0.1 2>/dev/null
	cp "$KDIR/certs/tls.crt" "$KDIR/certs/tls.key" "$KDIR/etc/kueue/metrics/certs/"
	openssl req -x509 -new -config "$PKI/openssl.cnf" -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
		-nodes -keyout "$KDIR/client.key" -out "$KDIR/client.crt" -days 365 -subj "/CN=$KUEUE_USER" \
		-CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" "${leaf[@]}" -addext extendedKeyUsage=clientAuth 2>/dev/null
	chmod 600 "$KDIR"/certs/tls.key "$KDIR"/etc/kueue/metrics/certs/tls.key "$KDIR/client.key"
	cat >"$KDIR/kubeconfig" <<-EOF
		apiVersion: v1
		kind: Config
		clusters:
		- name: local
		  cluster: {server: https://127.0.0.1:6443, certificate-authority: $PKI/ca.crt}
		users:
		- name: $KUEUE_USER
		  user: {client-certificate: $KDIR/client.crt, client-key: $KDIR/client.key}
		contexts:
		- name: $KUEUE_USER@local
		  context: {cluster: local, user: $KUEUE_USER}
		current-context: $KUEUE_USER@local
	EOF
}

# install_api installs Kueue's CRDs (as published in its module, served without the conversion
# webhook: only v1beta2 is used), its namespace, and its manager's ClusterRole and Role (secrets
# in kueue-system, which its cache watches: without them no controller starts), bound to the
# manager's identity.
install_api() {
	local mod=$1
	kubectl apply --server-side --force-conflicts -f "$mod/config/components/crd/bases/" >/dev/null
	kubectl wait --for condition=Established --timeout=60s -f "$mod/config/components/crd/bases/" >/dev/null
	sed 's/^  name: manager-role$/  name: kueue-manager-role/' "$mod/config/components/rbac/role.yaml" |
		kubectl apply -f - >/dev/null
	kubectl create clusterrolebinding kueue-manager --clusterrole=kueue-manager-role \
		--user="$KUEUE_USER" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
	kubectl create namespace kueue-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
	sed -e 's/^  name: manager-secrets-role$/  name: kueue-manager-secrets-role/' \
		-e 's/^  namespace: system$/  namespace: kueue-system/' \
		"$mod/config/components/rbac/manager_secrets_role.yaml" | kubectl apply -f - >/dev/null
	kubectl create rolebinding kueue-manager-secrets -n kueue-system --role=kueue-manager-secrets-role \
		--user="$KUEUE_USER" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
}

# write_config writes the manager's Configuration: the harness's settings, then the DRA part.
# The feature gates are one map: the harness turns VisibilityOnDemand off (the visibility API's
# server reads its certificate from the fixed path /visibility and is reached only through an
# APIService, which the harness does not register), then come the DRA part's gates, which it
# must write in block style. (Kueue refuses --feature-gates beside a featureGates map.)
write_config() {
	local dra=$1
	cat >"$KDIR/config.yaml" <<-EOF
		apiVersion: config.kueue.x-k8s.io/v1beta2
		kind: Configuration
		health:
		  healthProbeBindAddress: 127.0.0.1:$HEALTH_PORT
		metrics:
		  bindAddress: "0"
		webhook:
		  host: 127.0.0.1
		  port: $WEBHOOK_PORT
		  certDir: $KDIR/certs
		leaderElection:
		  leaderElect: false
		internalCertManagement:
		  enable: false
		integrations:
		  frameworks: ["batch/job"]
	EOF
	awk '
		/^featureGates:/ { gates = 1; next }
		gates && /^[[:space:]]/ { g = g $0 "\n"; next }
		{ gates = 0; rest = rest $0 "\n" }
		END { printf "featureGates:\n  VisibilityOnDemand: false\n%s%s", g, rest }' "$dra" >>"$KDIR/config.yaml"
}

# run_manager starts the manager in a mount namespace whose /etc shows $KDIR/etc over the host's.
run_manager() {
	local port
	for port in $WEBHOOK_PORT $HEALTH_PORT; do
		if (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then die "port 127.0.0.1:$port is in use"; fi
	done
	(
		close_inherited_fds
		# shellcheck disable=SC2016 # expanded by the inner shell
		KUBECONFIG=$KDIR/kubeconfig exec setsid unshare --mount --propagation private -- sh -c \
			'mount -t overlay kueue-etc -o "lowerdir=$1:/etc" /etc && shift && exec "$@"' sh "$KDIR/etc" \
			"$KUEUE_BIN/kueue" --config "$KDIR/config.yaml" --zap-log-level=2
	) >>"$RUN/logs/kueue.log" 2>&1 </dev/null &
	echo $! >"$RUN/pids/kueue.pid"
	local deadline=$((SECONDS + 60))
	until curl -fsS --max-time 2 "http://127.0.0.1:$HEALTH_PORT/readyz" >/dev/null 2>&1; do
		if ! kill -0 "$(cat "$RUN/pids/kueue.pid")" 2>/dev/null; then
			tail -n 20 "$RUN/logs/kueue.log" >&2
			die "kueue exited; see $RUN/logs/kueue.log"
		fi
		((SECONDS < deadline)) || die "timed out waiting for kueue /readyz; see $RUN/logs/kueue.log"
		sleep 0.2
	done
}

# register_webhooks registers the manager's webhooks for what it serves here (Kueue's own
# objects and batch/v1 Jobs; the other integrations are off) at its URL on 127.0.0.1.
register_webhooks() {
	local mod=$1 ca
	ca=$(base64 -w0 "$PKI/ca.crt")
	kubectl create --dry-run=client -o json -f "$mod/config/components/webhook/manifests.yaml" |
		jq -s --arg url "https://127.0.0.1:$WEBHOOK_PORT" --arg ca "$ca" '
			{apiVersion: "v1", kind: "List", items: [.[] | if .kind == "List" then .items[] else . end
				| .metadata = {name: ("kueue-" + .metadata.name)}
				| .webhooks |= map(
					select([.rules[].apiGroups[]] | any(. == "kueue.x-k8s.io" or . == "batch"))
					| .clientConfig = {url: ($url + .clientConfig.service.path), caBundle: $ca})]}' |
		kubectl apply -f - >/dev/null
	# Ready when the API server gets an answer: a server-side dry run goes through the webhooks.
	printf '%s\n' 'apiVersion: kueue.x-k8s.io/v1beta2' 'kind: ResourceFlavor' \
		'metadata: {name: kueue-sh-probe}' >"$KDIR/probe.yaml"
	local deadline=$((SECONDS + 30))
	until kubectl create --dry-run=server -f "$KDIR/probe.yaml" >/dev/null 2>&1; do
		((SECONDS < deadline)) || die "timed out waiting for Kueue's webhooks; see $RUN/logs/kueue.log"
		sleep 0.2
	done
}

start() {
	local dra=$CLUSTER_DIR/kueue/dra.yaml
	if [[ ${1:-} == -c ]]; then
		[[ -f ${2:-} ]] || die "usage: kueue.sh start [-c DRA.yaml]"
		dra=$(realpath "$2")
	fi
	[[ -f $RUN/env ]] || die "no cluster running in $RUN: run test/cluster/up.sh first"
	command -v jq >/dev/null || die "jq is missing: run test/cluster/build.sh first"
	stop
	step "kueue $KUEUE_VERSION build" build
	local mod
	mod=$(module_dir)
	mkdir -p "$KDIR"
	certs
	step "CRDs and RBAC" install_api "$mod"
	write_config "$dra"
	step "manager ready" run_manager
	step "webhooks" register_webhooks "$mod"
	log "kueue $KUEUE_VERSION runs (pid $(cat "$RUN/pids/kueue.pid")); config $KDIR/config.yaml"
}

# --- stop --------------------------------------------------------------------------------------

# stop removes the webhooks first, so nothing waits on a manager that is gone, then the manager.
stop() {
	if [[ -f $RUN/env ]]; then
		kubectl delete mutatingwebhookconfiguration kueue-mutating-webhook-configuration \
			--ignore-not-found >/dev/null
		kubectl delete validatingwebhookconfiguration kueue-validating-webhook-configuration \
			--ignore-not-found >/dev/null
	fi
	local pid
	pid=$(pid_of_kueue) || return 0
	log "stopping kueue (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	local deadline=$((SECONDS + 10))
	while kill -0 "$pid" 2>/dev/null; do
		if ((SECONDS >= deadline)); then kill -KILL "$pid" 2>/dev/null || true; fi
		sleep 0.1
	done
	rm -f "$RUN/pids/kueue.pid"
}

case ${1:-} in
build) step "kueue $KUEUE_VERSION build" build ;;
start)
	shift
	start "$@"
	print_times
	;;
stop) stop ;;
*) die "usage: kueue.sh build | start [-c DRA.yaml] | stop" ;;
esac
