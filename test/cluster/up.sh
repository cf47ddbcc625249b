#!/usr/bin/env bash
# up.sh — starts a Kubernetes cluster on 127.0.0.1 from the binaries build.sh cached, of one node
# or of GPU_DRA_NODES nodes (each in a mount namespace of its own; lib.sh and docs/cluster.md):
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
# Every node's pod subnet (node I's is 10.244.I.0/24): pods route it through their node's bridge.
CLUSTER_POD_NET=10.244.0.0/16
# The comment of the FORWARD rule of a cluster of several nodes (down.sh removes it).
FORWARD_RULE=gpu-dra-cluster-pods
# Feature gates of the API server, the scheduler and every kubelet, beyond v1.37's defaults:
# DRANodeAllocatableResources (alpha, KEP-5517) lets the driver publish node-allocatable overhead
# (kubeletPlugin.nodeAllocatableOverhead). GPU_DRA_FEATURE_GATES replaces the list ("" for none).
FEATURE_GATES=${GPU_DRA_FEATURE_GATES-DRANodeAllocatableResources=true}
GATES=()
[[ -z $FEATURE_GATES ]] || GATES=(--feature-gates="$FEATURE_GATES")
# The API server's GOGC alone (Go's default, 100, unless set): a lower value trades its CPU for
# memory, which lets the scale harness fit a fleet of 1000 nodes on a 24 GiB machine
# (docs/benchmarks.md). Every other process keeps Go's default.
APISERVER_GOGC=${GPU_DRA_APISERVER_GOGC:-100}
[[ $APISERVER_GOGC =~ ^[0-9]+$ ]] || die "GPU_DRA_APISERVER_GOGC=$APISERVER_GOGC: want a whole number (Go's GOGC)"

# --- helpers -----------------------------------------------------------------------------------

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
	[[ $NODES =~ ^[1-9][0-9]*$ && $NODES -le 16 ]] || die "GPU_DRA_NODES=$NODES: want 1 to 16 nodes"
	if [[ ${GPU_DRA_CONTROL_PLANE_ONLY:-0} == 1 ]] && ((NODES > 1)); then
		die "GPU_DRA_CONTROL_PLANE_ONLY=1 starts no node: GPU_DRA_NODES=$NODES makes no sense with it"
	fi
	local port i address
	for port in 2379 2380 6443 10257 10259; do
		if (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			die "port 127.0.0.1:$port is in use (another cluster running? try down.sh)"
		fi
	done
	for ((i = 0; i < NODES; i++)); do
		address=$(node_name "$i")
		for port in 10248 10250; do
			if (: <"/dev/tcp/$address/$port") 2>/dev/null; then
				die "port $address:$port is in use (another cluster running? try down.sh)"
			fi
		done
	done
	if ((NODES > 1)); then
		[[ -x /usr/bin/nsenter && -x /usr/bin/unshare ]] || die "nsenter and unshare (util-linux) are missing: run build.sh"
	fi
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
	echo "$NODES" >"$RUN/node-count"
	local i dir host d
	# Node 0's own, which the other nodes' are mounted on.
	for d in "${NODE_LOCAL_DIRS[@]}"; do mkdir -p "$RUN/$d"; done
	for ((i = 1; i < NODES; i++)); do
		dir=$(node_dir "$i")
		for d in "${NODE_LOCAL_DIRS[@]}" "${NODE_HOST_DIRS[@]#*:}"; do mkdir -p "$dir/$d"; done
		mkdir -p "$dir/containerd"/{root,state} "$dir"/cni/{net.d,ipam}
		mknod "$dir/dev/nvidia0" c 1 3
	done
	if ((NODES > 1)); then
		for host in "${NODE_HOST_DIRS[@]%%:*}"; do mkdir -p "$host"; done
		# Pods of one node reach those of another through this machine, which routes between the
		# nodes' bridges. down.sh puts the setting back, and removes the rule that lets that traffic
		# through a FORWARD chain whose policy drops (as Docker sets it).
		sysctl -n net.ipv4.ip_forward >"$RUN/ip-forward-was"
		sysctl -qw net.ipv4.ip_forward=1
		if command -v iptables >/dev/null; then
			iptables -I FORWARD -s "$CLUSTER_POD_NET" -d "$CLUSTER_POD_NET" -m comment --comment "$FORWARD_RULE" -j ACCEPT
			echo "$CLUSTER_POD_NET" >"$RUN/forward-rule"
		fi
	fi
}

# make_node_namespaces gives each node but the first a mount namespace of its own, held by a
# sleeping process (down.sh stops it; the namespace and every mount in it go with the last of its
# processes): a private copy of this machine's mounts with the node's own directories mounted on
# NODE_LOCAL_DIRS and NODE_HOST_DIRS, and its kubelet directory a shared mount, so that a pod's
# Bidirectional volume propagates as on a systemd host.
make_node_namespaces() {
	local i pid dir d deadline ns mine
	mine=$(readlink /proc/self/ns/mnt)
	for ((i = 1; i < NODES; i++)); do
		(
			close_inherited_fds
			exec setsid unshare --mount --propagation private sleep infinity
		) </dev/null >/dev/null 2>&1 &
		pid=$!
		echo "$pid" >"$RUN/pids/$(node_proc namespace "$i").pid"
		# Its namespace, recorded: down.sh, node_run and node.sh enter or stop only that one.
		deadline=$((SECONDS + 10))
		until ns=$(readlink "/proc/$pid/ns/mnt" 2>/dev/null) && [[ $ns != "$mine" ]]; do
			((SECONDS < deadline)) || die "the mount namespace of node $(node_name "$i") did not start"
			sleep 0.05
		done
		echo "$ns" >"$RUN/pids/$(node_proc namespace "$i").ns"
		dir=$(node_dir "$i")
		for d in "${NODE_LOCAL_DIRS[@]}"; do
			# Node 0's own mount there (its kubelet directory) first goes from this namespace's
			# copy: a mount stacked on it would not be the one containerd finds for the path.
			if node_run "$i" mountpoint -q "$RUN/$d"; then node_run "$i" umount "$RUN/$d"; fi
			node_run "$i" mount --bind "$dir/$d" "$RUN/$d" || die "node $(node_name "$i"): cannot mount $dir/$d on $RUN/$d"
		done
		for d in "${NODE_HOST_DIRS[@]}"; do
			node_run "$i" mount --bind "$dir/${d#*:}" "${d%%:*}"
		done
		node_run "$i" mount --make-rshared "$RUN/kubelet"
		# The other nodes' directories (their credentials among them) are not the node's to see:
		# an empty read-only tmpfs hides them from it and its pods' host paths.
		node_run "$i" mount -t tmpfs -o ro,size=4k,mode=0555 gpu-dra-other-nodes "$RUN/nodes"
	done
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

# kubeconfig NAME TOKEN [DIR]: DIR/NAME.kubeconfig (DIR: $KCFG) for a static token.
kubeconfig() {
	cat >"${3:-$KCFG}/$1.kubeconfig" <<-EOF
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
	node_credentials
}

# node_credentials gives each node but the first its own kubelet certificate (for its address)
# and token (system:node:<name>), in its own pki and kubeconfig directories, beside the CA.
node_credentials() {
	local i name dir token
	for ((i = 1; i < NODES; i++)); do
		name=$(node_name "$i") dir=$(node_dir "$i")
		cert "kubelet-$name" "/CN=system:node:$name/O=system:nodes" 'basicConstraints=critical,CA:FALSE' \
			'keyUsage=critical,digitalSignature,keyEncipherment' extendedKeyUsage=serverAuth "subjectAltName=IP:$name"
		mv "$PKI/kubelet-$name.crt" "$dir/pki/kubelet.crt"
		mv "$PKI/kubelet-$name.key" "$dir/pki/kubelet.key"
		cp "$PKI/ca.crt" "$dir/pki/ca.crt"
		token=$(openssl rand -hex 16)
		printf '%s,system:node:%s,system:node:%s,"system:nodes"\n' "$token" "$name" "$name" >>"$PKI/tokens.csv"
		kubeconfig kubelet "$token" "$dir/kubeconfig"
		chmod 600 "$dir/pki/kubelet.key"
	done
}

start_etcd() {
	local data
	data=$(etcd_data_dir)
	rm -rf "$data"
	mkdir -p "$data"
	chmod 700 "$data"
	ln -sfn "$data" "$RUN/etcd-data"
	start_on 0 etcd "$ETCDSERVER_BIN/etcd" --name local --data-dir "$data" --unsafe-no-fsync \
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
	local qps=() nodes=()
	[[ ${GPU_DRA_CONTROL_PLANE_ONLY:-0} == 1 ]] && qps=(--kube-api-qps=500 --kube-api-burst=1000)
	# A lost node of a cluster (node.sh stop) is NotReady after 30s rather than 50s. One node keeps
	# the default: its lease renewals may lag on a loaded machine.
	((NODES == 1)) || nodes=(--node-monitor-grace-period=30s)
	start_on 0 kube-apiserver env GOGC="$APISERVER_GOGC" "$K8S_BIN/kube-apiserver" \
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
		--enable-aggregator-routing=true "${GATES[@]}"
	wait_for "kube-apiserver /readyz" 90 kube-apiserver curl_ok "$SERVER/readyz"

	# GPU_DRA_NODES_TO_SCORE sets the scheduler's percentageOfNodesToScore (docs/fleet.md) through a
	# configuration file, which then also holds what the flags would say of its client.
	local client=(--kubeconfig="$KCFG/scheduler.kubeconfig" "${qps[@]}")
	if [[ -n ${GPU_DRA_NODES_TO_SCORE:-} ]]; then
		local api_qps=50 api_burst=100
		((${#qps[@]} == 0)) || api_qps=500 api_burst=1000
		mkdir -p "$RUN/scheduler"
		cat >"$RUN/scheduler/config.yaml" <<-EOF
			apiVersion: kubescheduler.config.k8s.io/v1
			kind: KubeSchedulerConfiguration
			clientConnection: {kubeconfig: "$KCFG/scheduler.kubeconfig", qps: $api_qps, burst: $api_burst}
			leaderElection: {leaderElect: false}
			percentageOfNodesToScore: $GPU_DRA_NODES_TO_SCORE
		EOF
		client=(--config="$RUN/scheduler/config.yaml")
	fi
	start_on 0 kube-scheduler "$K8S_BIN/kube-scheduler" "${client[@]}" \
		--authentication-kubeconfig="$KCFG/scheduler.kubeconfig" \
		--authorization-kubeconfig="$KCFG/scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port=10259 --cert-dir="$RUN/scheduler" --leader-elect=false "${GATES[@]}"
	start_on 0 kube-controller-manager "$K8S_BIN/kube-controller-manager" \
		--kubeconfig="$KCFG/controller-manager.kubeconfig" \
		--authentication-kubeconfig="$KCFG/controller-manager.kubeconfig" \
		--authorization-kubeconfig="$KCFG/controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port=10257 --cert-dir="$RUN/controller-manager" --leader-elect=false \
		--use-service-account-credentials=true --service-account-private-key-file="$PKI/sa.key" \
		--root-ca-file="$PKI/ca.crt" --cluster-signing-cert-file="$PKI/ca.crt" \
		--cluster-signing-key-file="$PKI/ca.key" --service-cluster-ip-range=10.96.0.0/16 \
		--flex-volume-plugin-dir="$RUN/controller-manager/volume-plugins" "${qps[@]}" "${nodes[@]}"
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

# node_network I: node I's bridge, CNI network and pod subnet (node 0's are those of a one-node
# cluster).
node_network() {
	if (($1 == 0)); then
		echo "$BRIDGE $CNI_NETWORK $POD_SUBNET"
	else
		echo "gpudra$1 $CNI_NETWORK-$1 10.244.$1.0/24"
	fi
}

# start_containerd starts every node's containerd.
start_containerd() {
	local i
	for ((i = 0; i < NODES; i++)); do start_node_containerd "$i"; done
	for ((i = 0; i < NODES; i++)); do
		wait_for "containerd of node $(node_name "$i")" 30 "$(node_proc containerd "$i")" ctr_on "$i" version
	done
}

# start_node_containerd I: node I's containerd, its configuration written with the paths its
# namespace sees (those of node 0, which are its own there).
start_node_containerd() {
	local i=$1 dir bridge network subnet
	dir=$(node_dir "$i")
	read -r bridge network subnet < <(node_network "$i")
	cat >"$dir/containerd/config.toml" <<-EOF
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
		  stream_server_address = "$(node_name "$i")"
	EOF
	# Pods reach each other on the bridge, which is also their gateway: this machine reaches them
	# (the API server calls the driver's webhook at its pod's address), and routes between the
	# nodes' bridges, for pods of other nodes. No masquerading: nothing leaves the machine.
	cat >"$dir/cni/net.d/10-$network.conflist" <<-EOF
		{
		  "cniVersion": "1.0.0",
		  "name": "$network",
		  "plugins": [
		    {
		      "type": "bridge",
		      "bridge": "$bridge",
		      "isGateway": true,
		      "ipMasq": false,
		      "hairpinMode": true,
		      "ipam": {
		        "type": "host-local",
		        "dataDir": "$RUN/cni/ipam",
		        "ranges": [[{"subnet": "$subnet"}]],
		        "routes": [{"dst": "$CLUSTER_POD_NET"}]
		      }
		    }
		  ]
		}
	EOF
	# containerd finds containerd-shim-runc-v2 on PATH.
	PATH=$CONTAINERD_BIN:/usr/sbin:/usr/bin:/sbin:/bin \
		start_on "$i" containerd "$CONTAINERD_BIN/containerd" --config "$RUN/containerd/config.toml"
}

# ctr_on I ARGS...: ctr against node I's containerd.
ctr_on() {
	local i=$1
	shift
	"$CONTAINERD_BIN/ctr" --address "$(node_dir "$i")/containerd/containerd.sock" "$@"
}

import_images() {
	local dir i
	dir=$(images_dir)
	for ((i = 0; i < NODES; i++)); do
		ctr_on "$i" -n k8s.io images import "$dir/pause.tar" >/dev/null 2> >(grep -v 'support for cgroup v1 is deprecated' >&2)
		ctr_on "$i" -n k8s.io images import "$dir/busybox.tar" >/dev/null 2> >(grep -v 'support for cgroup v1 is deprecated' >&2)
		local have ref
		have=$(ctr_on "$i" -n k8s.io images ls -q 2>/dev/null)
		for ref in "$PAUSE_IMAGE" "$BUSYBOX_IMAGE"; do
			grep -qxF "$ref" <<<"$have" || die "$ref not imported on node $(node_name "$i") (have: $have)"
		done
	done
}

# start_kubelet starts every node's kubelet and waits until each node is Ready.
start_kubelet() {
	local i name
	for ((i = 0; i < NODES; i++)); do start_node_kubelet "$i"; done
	for ((i = 0; i < NODES; i++)); do
		name=$(node_name "$i")
		wait_for "kubelet /healthz of node $name" 60 "$(node_proc kubelet "$i")" \
			curl -fsS --max-time 2 "http://$name:10248/healthz"
		wait_for "node $name registered" 60 "$(node_proc kubelet "$i")" kubectl get node "$name"
	done
	for ((i = 0; i < NODES; i++)); do
		name=$(node_name "$i")
		wait_for "node $name Ready" 120 "$(node_proc kubelet "$i")" \
			kubectl wait --for=condition=Ready "node/$name" --timeout=2s
	done
	# Pods can be created once the default service account exists.
	wait_for "service account default/default" 60 - kubectl get serviceaccount default
}

# make_node_cgroup I sets CGROUP_ROOT to the cgroup under which node I's kubelet puts its pods:
# the root (empty) on node 0; gpu-dra-node-I on the others, made in every cgroup v1 hierarchy
# (or once in a cgroup v2 tree) and recorded for down.sh, even when a failed run left it.
make_node_cgroup() {
	CGROUP_ROOT=
	(($1 > 0)) || return 0
	local c cg=gpu-dra-node-$1 parents=(/sys/fs/cgroup/)
	# cgroup v1: one hierarchy per directory; v2 (cgroup.controllers at the top): one tree.
	[[ -f /sys/fs/cgroup/cgroup.controllers ]] || parents=(/sys/fs/cgroup/*/)
	for c in "${parents[@]}"; do
		echo "$c$cg" >>"$RUN/cgroups-created"
		[[ -d $c$cg ]] || mkdir "$c$cg"
		# A v1 cpuset cgroup takes no task before it has CPUs and memory nodes.
		if [[ -f ${c}cpuset.cpus && -f $c${cg}/cpuset.cpus && ! -f /sys/fs/cgroup/cgroup.controllers ]]; then
			cat "${c}cpuset.cpus" >"$c$cg/cpuset.cpus"
			cat "${c}cpuset.mems" >"$c$cg/cpuset.mems"
		fi
	done
	CGROUP_ROOT=/$cg
}

# start_node_kubelet I: node I's kubelet, on its own address, with its own credentials, kubelet
# directory, containerd and cgroup root.
start_node_kubelet() {
	local i=$1 name
	name=$(node_name "$i")
	make_node_cgroup "$i"
	cat >"$(node_dir "$i")/kubelet/config.yaml" <<-EOF
		apiVersion: kubelet.config.k8s.io/v1beta1
		kind: KubeletConfiguration
		address: $name
		port: 10250
		healthzBindAddress: $name
		healthzPort: 10248
		cgroupRoot: "$CGROUP_ROOT"
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
	local args=("$K8S_BIN/kubelet" --config="$RUN/kubelet/config.yaml" --kubeconfig="$KCFG/kubelet.kubeconfig"
		--root-dir="$RUN/kubelet" --hostname-override="$name" --v=2 "${GATES[@]}")
	# node.sh starts it again with the same command line.
	printf '%s\n' "${args[@]}" >"$(node_dir "$i")/kubelet/cmdline"
	start_on "$i" kubelet "${args[@]}"
}

write_env() {
	cat >"$RUN/env" <<-EOF
		# Written by test/cluster/up.sh; source it to use the local cluster.
		export GPU_DRA_RUN_DIR=$RUN
		export KUBECONFIG=$KCFG/admin.kubeconfig
		export KUBECACHEDIR=$RUN/kube-cache
		export GPU_DRA_NODE_NAME=$NODE_NAME
		export GPU_DRA_NODES=$NODES
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
	if ((NODES > 1)); then step "mount namespaces of $((NODES - 1)) more nodes" make_node_namespaces; fi
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
