#!/usr/bin/env bash
# up.sh — starts a one-node Kubernetes cluster on 127.0.0.1 from the binaries build.sh cached:
# etcd, kube-apiserver, kube-scheduler, kube-controller-manager, containerd (CDI specs read from
# $RUN/cdi) and a real kubelet, with the pause and busybox:local images imported. All state lives
# in $GPU_DRA_RUN_DIR (default /tmp/gpu-dra-cluster); etcd's data lives on /dev/shm.
# Prints the KUBECONFIG to use and writes $RUN/env for other scripts. Stop it with down.sh.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PKI=$RUN/pki
KCFG=$RUN/kubeconfig
SERVER=https://127.0.0.1:6443
BRIDGE=gpudra0
CNI_NETWORK=gpu-dra-cluster
POD_SUBNET=10.244.0.0/24

# --- helpers -----------------------------------------------------------------------------------

# start NAME BIN ARGS...: starts BIN in its own session, logs to $RUN/logs/NAME.log, records
# its PID in $RUN/pids/NAME.pid.
start() {
	local name=$1 bin=$2
	shift 2
	setsid "$bin" "$@" >"$RUN/logs/$name.log" 2>&1 </dev/null &
	echo $! >"$RUN/pids/$name.pid"
}

# alive NAME: the process recorded for NAME still runs.
alive() {
	kill -0 "$(cat "$RUN/pids/$1.pid")" 2>/dev/null
}

# wait_for WHAT SECONDS NAME CMD...: polls CMD every 0.2 s until it succeeds; fails early when
# the process NAME died (NAME may be "-").
wait_for() {
	local what=$1 timeout=$2 name=$3 deadline
	shift 3
	deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		if [[ $name != - ]] && ! alive "$name"; then
			die "$name exited while waiting for $what; see $RUN/logs/$name.log"
		fi
		((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what"
		sleep 0.2
	done
}


curl_ok() { curl -fsS --max-time 2 --cacert "$PKI/ca.crt" "$@"; }

# --- steps -------------------------------------------------------------------------------------

check_prerequisites() {
	local f
	for f in "$K8S_BIN/kube-apiserver" "$K8S_BIN/kubelet" "$K8S_BIN/kubectl" "$ETCDSERVER_BIN/etcd" \
		"$CONTAINERD_BIN/containerd" "$CONTAINERD_BIN/ctr" "$(images_dir)/busybox.tar" \
		/usr/sbin/runc /usr/lib/cni/bridge /usr/bin/openssl /usr/bin/curl; do
		[[ -e $f ]] || die "$f is missing: run test/cluster/build.sh first"
	done
	local port
	for port in 2379 2380 6443 10248 10250 10257 10259; do
		if (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			die "port 127.0.0.1:$port is in use (another cluster running? try down.sh)"
		fi
	done
}

make_dirs() {
	mkdir -p "$RUN"/{pids,logs,pki,kubeconfig,bin,cdi,dev,cni/net.d,cni/ipam,runc,kubelet,pod-logs}
	mkdir -p "$RUN/containerd"/{root,state}
	# The kubelet's root is a shared mount, as / is on a systemd host (here it may be private), so
	# that a pod's Bidirectional or HostToContainer volume under it propagates: the plugin mounts
	# each MPS daemon's tmpfs in its container (docs/security.md). down.sh unmounts it.
	if [[ $(findmnt -n -o TARGET,PROPAGATION --target "$RUN/kubelet" | awk '{ print $1 " " $2 }') != "$RUN/kubelet shared" ]]; then
		mount --bind "$RUN/kubelet" "$RUN/kubelet"
		mount --make-rshared "$RUN/kubelet"
	fi
	# The host paths the kubelet and the shim hard-code: down.sh removes those we created.
	local p
	for p in /var/lib/kubelet /var/lib/kubelet/device-plugins /var/log/containers /var/lib/cni \
		/var/lib/cni/results /run/containerd /run/containerd/s /run/mount; do
		[[ -e $p ]] || echo "$p" >>"$RUN/host-paths-created"
	done
	local c
	for c in /sys/fs/cgroup/*/; do
		[[ -e ${c}kubepods ]] || echo "${c}kubepods" >>"$RUN/cgroups-created"
	done
	# One place with every cached binary, for PATH.
	local b
	for b in "$K8S_BIN"/* "$ETCDSERVER_BIN"/* "$CONTAINERD_BIN"/*; do
		ln -sf "$b" "$RUN/bin/"
	done
	# A twin of /dev/null that CDI specs can use as the host side of /dev/nvidia0.
	mknod "$RUN/dev/nvidia0" c 1 3
}

# cert NAME SUBJECT EXTENSIONS...: a key and a certificate signed by the CA.
cert() {
	local name=$1 subj=$2 ext
	shift 2
	local args=()
	for ext in "$@"; do args+=(-addext "$ext"); done
	openssl req -x509 -new -config "$PKI/openssl.cnf" -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
		-nodes -keyout "$PKI/$name.key" -out "$PKI/$name.crt" -days 365 -subj "$subj" \
		-CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" "${args[@]}" 2>/dev/null
}

# kubeconfig NAME TOKEN: $KCFG/NAME.kubeconfig for a static token.
kubeconfig() {
	cat >"$KCFG/$1.kubeconfig" <<-EOF
		apiVersion: v1
		kind: Config
		clusters:
		- name: local
		  cluster:
		    server: $SERVER
		    certificate-authority: $PKI/ca.crt
		users:
		- name: $1
		  user:
		    token: $2
		contexts:
		- name: $1@local
		  context:
		    cluster: local
		    user: $1
		current-context: $1@local
	EOF
}

make_pki() {
	printf '[req]\ndistinguished_name = dn\n[dn]\n' >"$PKI/openssl.cnf"
	openssl req -x509 -new -config "$PKI/openssl.cnf" -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
		-nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 365 -subj /CN=gpu-dra-local-ca \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
	local leaf=('basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment')
	cert apiserver /CN=kube-apiserver "${leaf[@]}" extendedKeyUsage=serverAuth \
		subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
	cert kubelet "/CN=system:node:$NODE_NAME/O=system:nodes" "${leaf[@]}" extendedKeyUsage=serverAuth \
		"subjectAltName=IP:127.0.0.1,DNS:localhost"
	# The apiserver's identity towards the kubelet (logs, exec): group system:masters.
	cert apiserver-kubelet-client /CN=kube-apiserver-kubelet-client/O=system:masters "${leaf[@]}" \
		extendedKeyUsage=clientAuth
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
	openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
	chmod 600 "$PKI"/*.key

	# Static tokens: token,user,uid,"groups".
	local admin sched cm node plugin
	admin=$(openssl rand -hex 16) sched=$(openssl rand -hex 16) cm=$(openssl rand -hex 16)
	node=$(openssl rand -hex 16) plugin=$(openssl rand -hex 16)
	cat >"$PKI/tokens.csv" <<-EOF
		$admin,admin,admin,"system:masters"
		$sched,system:kube-scheduler,system:kube-scheduler
		$cm,system:kube-controller-manager,system:kube-controller-manager
		$node,system:node:$NODE_NAME,system:node:$NODE_NAME,"system:nodes"
		$plugin,system:serviceaccount:gpu-dra-driver:gpu-kubelet-plugin,gpu-kubelet-plugin,"system:serviceaccounts,system:serviceaccounts:gpu-dra-driver"
	EOF
	chmod 600 "$PKI/tokens.csv"
	kubeconfig admin "$admin"
	kubeconfig scheduler "$sched"
	kubeconfig controller-manager "$cm"
	kubeconfig kubelet "$node"
	kubeconfig plugin "$plugin"
}

start_etcd() {
	local data
	data=$(etcd_data_dir)
	rm -rf "$data"
	mkdir -p "$data"
	chmod 700 "$data"
	ln -sfn "$data" "$RUN/etcd-data"
	start etcd "$ETCDSERVER_BIN/etcd" --name local --data-dir "$data" --unsafe-no-fsync \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster local=http://127.0.0.1:2380 --log-level warn
	wait_for "etcd /health" 30 etcd curl -fsS --max-time 2 http://127.0.0.1:2379/health
}

# The API server calls webhooks at their Services' endpoints (--enable-aggregator-routing), as
# the node runs no kube-proxy.
start_control_plane() {
	# Without kubelet (GPU_DRA_CONTROL_PLANE_ONLY=1, test/scale) the scheduler and the resource claim
	# controller serve a fleet: their client rate limits (50 and 20 requests/s) would be what is measured.
	local qps=()
	[[ ${GPU_DRA_CONTROL_PLANE_ONLY:-0} == 1 ]] && qps=(--kube-api-qps=500 --kube-api-burst=1000)
	start kube-apiserver "$K8S_BIN/kube-apiserver" \
		--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port=6443 \
		--etcd-servers=http://127.0.0.1:2379 --endpoint-reconciler-type=none \
		--cert-dir="$RUN/apiserver" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
		--client-ca-file="$PKI/ca.crt" --token-auth-file="$PKI/tokens.csv" \
		--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --allow-privileged=true \
		--service-cluster-ip-range=10.96.0.0/16 \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
		--kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
		--kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types=Hostname,InternalIP --profiling=false \
		--runtime-config=resource.k8s.io/v1beta1=true,resource.k8s.io/v1beta2=true \
		--enable-aggregator-routing=true
	wait_for "kube-apiserver /readyz" 90 kube-apiserver curl_ok "$SERVER/readyz"

	start kube-scheduler "$K8S_BIN/kube-scheduler" \
		--kubeconfig="$KCFG/scheduler.kubeconfig" \
		--authentication-kubeconfig="$KCFG/scheduler.kubeconfig" \
		--authorization-kubeconfig="$KCFG/scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port=10259 --cert-dir="$RUN/scheduler" --leader-elect=false "${qps[@]}"
	start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
		--kubeconfig="$KCFG/controller-manager.kubeconfig" \
		--authentication-kubeconfig="$KCFG/controller-manager.kubeconfig" \
		--authorization-kubeconfig="$KCFG/controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port=10257 --cert-dir="$RUN/controller-manager" --leader-elect=false \
		--use-service-account-credentials=true --service-account-private-key-file="$PKI/sa.key" \
		--root-ca-file="$PKI/ca.crt" --cluster-signing-cert-file="$PKI/ca.crt" \
		--cluster-signing-key-file="$PKI/ca.key" --service-cluster-ip-range=10.96.0.0/16 \
		--flex-volume-plugin-dir="$RUN/controller-manager/volume-plugins" "${qps[@]}"
	wait_for "kube-scheduler /readyz" 60 kube-scheduler curl -kfsS --max-time 2 https://127.0.0.1:10259/readyz
	wait_for "kube-controller-manager /healthz" 60 kube-controller-manager \
		curl -kfsS --max-time 2 https://127.0.0.1:10257/healthz
}

# The DRA kubelet plugin's identity (a static token named like its service account) may publish
# ResourceSlices and read what it needs to prepare claims.
grant_plugin() {
	# The driver's own manifests: the identity the plugin kubeconfig authenticates as
	# (system:serviceaccount:gpu-dra-driver:gpu-kubelet-plugin) and its permissions.
	kubectl apply -f "$REPO_ROOT/deployments/rbac/" >/dev/null
}

start_containerd() {
	cat >"$RUN/containerd/config.toml" <<-EOF
		version = 3
		root = "$RUN/containerd/root"
		state = "$RUN/containerd/state"
		disabled_plugins = [
		  "io.containerd.internal.v1.opt",
		  "io.containerd.nri.v1.nri",
		  "io.containerd.snapshotter.v1.blockfile",
		  "io.containerd.snapshotter.v1.btrfs",
		  "io.containerd.snapshotter.v1.devmapper",
		  "io.containerd.snapshotter.v1.erofs",
		  "io.containerd.snapshotter.v1.zfs",
		  "io.containerd.tracing.processor.v1.otlp",
		  "io.containerd.internal.v1.tracing",
		]

		[grpc]
		  address = "$RUN/containerd/containerd.sock"
		[ttrpc]
		  address = "$RUN/containerd/containerd.sock.ttrpc"
		[debug]
		  address = "$RUN/containerd/debug.sock"

		[plugins.'io.containerd.cri.v1.images']
		  snapshotter = "overlayfs"
		  [plugins.'io.containerd.cri.v1.images'.pinned_images]
		    sandbox = "$PAUSE_IMAGE"

		[plugins.'io.containerd.cri.v1.runtime']
		  cdi_spec_dirs = ["$RUN/cdi"]
		  # runc may not lower oom_score_adj here (no CAP_SYS_RESOURCE).
		  restrict_oom_score_adj = true
		  netns_mounts_under_state_dir = true
		  [plugins.'io.containerd.cri.v1.runtime'.containerd]
		    default_runtime_name = "runc"
		    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
		      runtime_type = "io.containerd.runc.v2"
		      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
		        BinaryName = "/usr/sbin/runc"
		        Root = "$RUN/runc"
		        SystemdCgroup = false
		  [plugins.'io.containerd.cri.v1.runtime'.cni]
		    bin_dirs = ["/usr/lib/cni"]
		    conf_dir = "$RUN/cni/net.d"

		[plugins.'io.containerd.grpc.v1.cri']
		  stream_server_address = "127.0.0.1"
	EOF
	# Pods reach each other on the bridge, which is also their gateway: this machine reaches them
	# (the API server calls the driver's webhook at its pod's address). No masquerading: nothing
	# leaves the node.
	cat >"$RUN/cni/net.d/10-$CNI_NETWORK.conflist" <<-EOF
		{
		  "cniVersion": "1.0.0",
		  "name": "$CNI_NETWORK",
		  "plugins": [
		    {
		      "type": "bridge",
		      "bridge": "$BRIDGE",
		      "isGateway": true,
		      "ipMasq": false,
		      "hairpinMode": true,
		      "ipam": {
		        "type": "host-local",
		        "dataDir": "$RUN/cni/ipam",
		        "ranges": [[{"subnet": "$POD_SUBNET"}]]
		      }
		    }
		  ]
		}
	EOF
	# containerd finds containerd-shim-runc-v2 on PATH.
	PATH=$CONTAINERD_BIN:/usr/sbin:/usr/bin:/sbin:/bin \
		start containerd "$CONTAINERD_BIN/containerd" --config "$RUN/containerd/config.toml"
	wait_for "containerd" 30 containerd ctr version
}

ctr() { "$CONTAINERD_BIN/ctr" --address "$RUN/containerd/containerd.sock" "$@"; }

import_images() {
	local dir
	dir=$(images_dir)
	ctr -n k8s.io images import "$dir/pause.tar" >/dev/null 2> >(grep -v 'support for cgroup v1 is deprecated' >&2)
	ctr -n k8s.io images import "$dir/busybox.tar" >/dev/null 2> >(grep -v 'support for cgroup v1 is deprecated' >&2)
	local have ref
	have=$(ctr -n k8s.io images ls -q 2>/dev/null)
	for ref in "$PAUSE_IMAGE" "$BUSYBOX_IMAGE"; do
		grep -qxF "$ref" <<<"$have" || die "$ref not imported (have: $have)"
	done
}

start_kubelet() {
	cat >"$RUN/kubelet/config.yaml" <<-EOF
		apiVersion: kubelet.config.k8s.io/v1beta1
		kind: KubeletConfiguration
		address: 127.0.0.1
		port: 10250
		healthzBindAddress: 127.0.0.1
		healthzPort: 10248
		readOnlyPort: 0
		containerRuntimeEndpoint: unix://$RUN/containerd/containerd.sock
		cgroupDriver: cgroupfs
		failCgroupV1: false
		failSwapOn: false
		resolvConf: ""
		tlsCertFile: $PKI/kubelet.crt
		tlsPrivateKeyFile: $PKI/kubelet.key
		authentication:
		  anonymous:
		    enabled: false
		  webhook:
		    enabled: true
		  x509:
		    clientCAFile: $PKI/ca.crt
		authorization:
		  mode: Webhook
		podLogsDir: $RUN/pod-logs
		volumePluginDir: $RUN/kubelet/volume-plugins
		serializeImagePulls: false
		imageGCHighThresholdPercent: 100
		imageGCLowThresholdPercent: 99
		evictionHard:
		  memory.available: 1Mi
		  nodefs.available: 1%
		  nodefs.inodesFree: 1%
		  imagefs.available: 1%
		  imagefs.inodesFree: 1%
	EOF
	start kubelet "$K8S_BIN/kubelet" --config="$RUN/kubelet/config.yaml" \
		--kubeconfig="$KCFG/kubelet.kubeconfig" --root-dir="$RUN/kubelet" \
		--hostname-override="$NODE_NAME" --v=2
	wait_for "kubelet /healthz" 60 kubelet curl -fsS --max-time 2 http://127.0.0.1:10248/healthz
	wait_for "node $NODE_NAME registered" 60 kubelet kubectl get node "$NODE_NAME"
	wait_for "node $NODE_NAME Ready" 120 kubelet \
		kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
	# Pods can be created once the default service account exists.
	wait_for "service account default/default" 60 - kubectl get serviceaccount default
}

write_env() {
	cat >"$RUN/env" <<-EOF
		# Written by test/cluster/up.sh; source it to use the local cluster.
		export GPU_DRA_RUN_DIR=$RUN
		export KUBECONFIG=$KCFG/admin.kubeconfig
		export KUBECACHEDIR=$RUN/kube-cache
		export GPU_DRA_NODE_NAME=$NODE_NAME
		export GPU_DRA_PLUGIN_KUBECONFIG=$KCFG/plugin.kubeconfig
		export GPU_DRA_KUBELET_REGISTRAR_DIR=$RUN/kubelet/plugins_registry
		export GPU_DRA_KUBELET_PLUGIN_DIR=$RUN/kubelet/plugins/$DRIVER_NAME
		export GPU_DRA_CDI_DIR=$RUN/cdi
		export GPU_DRA_FAKE_DEVICE=$RUN/dev/nvidia0
		export GPU_DRA_CONTAINERD_ADDRESS=$RUN/containerd/containerd.sock
		export GPU_DRA_BIN_DIR=$RUN/bin
		export PATH=$RUN/bin:\$PATH
	EOF
	mkdir -p "$RUN/kubelet/plugins_registry" "$RUN/kubelet/plugins/$DRIVER_NAME"
}

# --- main --------------------------------------------------------------------------------------

on_exit() {
	local rc=$?
	if [[ ${UP_OK:-0} != 1 ]]; then
		log "up.sh failed (exit $rc); last log lines:"
		local f
		for f in "$RUN"/logs/*.log; do
			[[ -f $f ]] || continue
			printf -- '--- %s\n' "$f" >&2
			tail -n 15 "$f" >&2
		done
		if [[ ${GPU_DRA_KEEP_ON_FAILURE:-0} == 1 ]]; then
			log "GPU_DRA_KEEP_ON_FAILURE=1: leaving $RUN as it is"
		else
			"$CLUSTER_DIR/down.sh" || true
		fi
	fi
}

main() {
	if [[ -e $RUN ]]; then
		log "stale $RUN found: running down.sh first"
		"$CLUSTER_DIR/down.sh"
	fi
	trap on_exit EXIT
	trap 'exit 130' INT TERM
	step "check prerequisites" check_prerequisites
	step "directories" make_dirs
	step "PKI and kubeconfigs" make_pki
	step "etcd" start_etcd
	step "kube-apiserver, scheduler, controller-manager" start_control_plane
	step "RBAC for the DRA kubelet plugin" grant_plugin
	# GPU_DRA_CONTROL_PLANE_ONLY=1: no containerd and no kubelet, for test/scale's simulated nodes.
	if [[ ${GPU_DRA_CONTROL_PLANE_ONLY:-0} == 1 ]]; then
		wait_for "service account default/default" 60 - kubectl get serviceaccount default
	else
		step "containerd" start_containerd
		step "import images" import_images
		step "kubelet, node Ready" start_kubelet
	fi
	write_env
	UP_OK=1
	print_times
	log "cluster is up; state in $RUN (source $RUN/env for every variable)"
	echo "export KUBECONFIG=$KCFG/admin.kubeconfig"
}

main "$@"
