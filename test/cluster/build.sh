#!/usr/bin/env bash
# build.sh — builds and caches everything the local test cluster runs, from the Go module proxy
# and Debian packages only: kube-apiserver, kube-scheduler, kube-controller-manager, kubelet and
# kubectl (one go build of k8s.io/kubernetes), etcd, containerd + ctr + runc shim, and the pause
# and busybox images as archives for `ctr images import`. Installs missing Debian packages.
# A warm run rebuilds nothing. Cache: $GPU_DRA_CACHE (see lib.sh and docs/cluster.md).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export GOWORK=off GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0
export GOCACHE=$GPU_DRA_CACHE/go-build

# Debian packages the cluster uses. busybox-static, not busybox: the image has no libc. bash-static:
# the image's /bin/bash, as NVIDIA's test specs run `bash -c`. jq: kueue.sh rewrites Kueue's webhook
# configurations with it.
APT_PACKAGES=(runc containernetworking-plugins busybox-static bash-static openssl curl iproute2 util-linux jq)

# built DIR FILE...: true when DIR has its stamp and every FILE under DIR/bin.
built() {
	local dir=$1 f
	shift
	[[ -f $dir/.stamp ]] || return 1
	for f in "$@"; do
		[[ -x $dir/bin/$f ]] || return 1
	done
}

K8S_CMDS=(kube-apiserver kube-scheduler kube-controller-manager kubelet kubectl)

build_kubernetes() {
	local dir=$GPU_DRA_CACHE/kubernetes-$K8S_VERSION
	if built "$dir" "${K8S_CMDS[@]}"; then
		log "kubernetes $K8S_VERSION cached"
		return
	fi
	local staging=v0${K8S_VERSION#v1} # v1.37.2 -> v0.37.2
	local tmp moddir src=$dir/src
	tmp=$(mktemp -d)
	# Outside any module, so the repository's go.mod is not involved.
	moddir=$(cd "$tmp" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	rmdir "$tmp"
	[[ -d $moddir ]] || die "k8s.io/kubernetes@$K8S_VERSION not in the module cache"

	rm -rf "$src" "${dir:?}/bin"
	mkdir -p "$dir"
	cp -r "$moddir" "$src"
	chmod -R u+w "$src"
	rm -rf "$src/go.work" "$src/go.work.sum" "$src/vendor"
	# The staging repositories are required as v0.0.0 and replaced by ./staging/..., which the
	# module zip lacks: require the published versions instead.
	local mods m edits=()
	mods=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/.*#\1#p' "$src/go.mod")
	for m in $mods; do
		edits+=("-dropreplace=$m" "-require=$m@$staging")
	done
	(cd "$src" && go mod edit "${edits[@]}")

	local pkg=k8s.io/component-base/version cgo=k8s.io/client-go/pkg/version
	local minor=${K8S_VERSION#v1.}
	minor=${minor%%.*}
	local ldflags="-s -w"
	local v
	for v in $pkg $cgo; do
		ldflags+=" -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor"
		ldflags+=" -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
	done
	local targets=()
	for m in "${K8S_CMDS[@]}"; do targets+=("./cmd/$m"); done
	(cd "$src" && go build -mod=mod -trimpath -ldflags "$ldflags" -o "$dir/bin/" "${targets[@]}")
	rm -rf "$src"
	echo "$K8S_VERSION" >"$dir/.stamp"
}

build_etcd() {
	local dir=$GPU_DRA_CACHE/etcd-$ETCDSERVER_VERSION
	if built "$dir" etcd; then
		log "etcd $ETCDSERVER_VERSION cached"
		return
	fi
	rm -rf "${dir:?}/bin"
	(cd "$CLUSTER_DIR/etcd" && go build -trimpath -ldflags "-s -w" -o "$dir/bin/etcd" .)
	echo "$ETCDSERVER_VERSION" >"$dir/.stamp"
}

build_containerd() {
	local dir=$GPU_DRA_CACHE/containerd-$CONTAINERD_VERSION
	if built "$dir" containerd ctr containerd-shim-runc-v2; then
		log "containerd $CONTAINERD_VERSION cached"
		return
	fi
	rm -rf "${dir:?}/bin"
	local c=github.com/containerd/containerd/v2/cmd
	(cd / && GOBIN=$dir/bin go install -tags no_btrfs -trimpath -ldflags "-s -w" \
		"$c/containerd@$CONTAINERD_VERSION" "$c/ctr@$CONTAINERD_VERSION" \
		"$c/containerd-shim-runc-v2@$CONTAINERD_VERSION")
	echo "$CONTAINERD_VERSION" >"$dir/.stamp"
}

build_images() {
	local dir
	dir=$(images_dir)
	if built "$dir" mkimage pause && [[ -f $dir/pause.tar && -f $dir/busybox.tar ]]; then
		log "images cached in $dir"
		return
	fi
	# Other sources' images a week old: a checkout of other sources (another worktree) may still
	# use newer ones, and up.sh does not build them again.
	find "$GPU_DRA_CACHE" -maxdepth 1 -name 'images-*' -mtime +7 -exec rm -rf {} +
	mkdir -p "$dir/bin"
	(cd "$REPO_ROOT/test/images" && go build -trimpath -ldflags "-s -w" -o "$dir/bin/" ./mkimage ./pause)

	"$dir/bin/mkimage" -ref "$PAUSE_IMAGE" -out "$dir/pause.tar" \
		-add "/pause=$dir/bin/pause" -entrypoint /pause

	# busybox-static's applets, each a link to /bin/busybox, e.g. /bin/sh, /bin/ls, /usr/bin/env;
	# and bash-static's bash as /bin/bash (IMAGE_CONTENTS in lib.sh).
	local args=() applet
	while read -r applet; do
		[[ $applet == /bin/busybox || $applet == /bin/bash ]] && continue
		args+=(-link "$applet=/bin/busybox")
	done < <(/bin/busybox --list-full | sed 's#^#/#')
	"$dir/bin/mkimage" -ref "$BUSYBOX_IMAGE" -out "$dir/busybox.tar" \
		-add /bin/busybox=/bin/busybox -add /bin/bash=/bin/bash-static -dir /tmp -dir /etc -dir /root -dir /var \
		-cmd /bin/sh "${args[@]}"
	echo "$PAUSE_IMAGE $BUSYBOX_IMAGE" >"$dir/.stamp"
}

main() {
	mkdir -p "$GPU_DRA_CACHE"
	log "cache: $GPU_DRA_CACHE"
	step "Debian packages" install_packages "${APT_PACKAGES[@]}"
	step "kubernetes $K8S_VERSION (5 commands)" build_kubernetes
	step "etcd $ETCDSERVER_VERSION" build_etcd
	step "containerd $CONTAINERD_VERSION" build_containerd
	step "images" build_images
	print_times
}

main "$@"
