#!/usr/bin/env bash
# image.sh — builds the driver's container image without a registry or a Docker daemon: the
# commands gpu-kubelet-plugin, gpu-dra-webhook, kubectl-gpu and the ComputeDomain commands
# (compute-domain-kubelet-plugin, -controller, -daemon) on an otherwise empty image (the
# plugin's C library and loader copied from the build host, as it needs cgo for NVML), written by
# test/images/mkimage (go-containerregistry) as an archive with fixed times and owners, so equal
# inputs give an equal image. Tagged gpu-dra-driver:$GPU_DRA_IMAGE_TAG (default: the appVersion
# of the Helm chart), or the whole reference $GPU_DRA_IMAGE. The tag is written into the image as
# /etc/gpu-dra-driver/version, so two tags of the same sources are two different images (the
# upgrade test installs one and upgrades to the other). Writes
# $GPU_DRA_CACHE/image/gpu-dra-driver.tar, and imports it into the local cluster's containerd
# when one runs. Prints the archive's path and size.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERSION=$(sed -n 's/^appVersion: "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$REPO_ROOT/deployments/helm/gpu-dra-driver/Chart.yaml")
TAG=${GPU_DRA_IMAGE_TAG:-$VERSION}
IMAGE=${GPU_DRA_IMAGE:-docker.io/library/gpu-dra-driver:$TAG}
OUT=$GPU_DRA_CACHE/image
mkdir -p "$OUT/bin"

step_build() {
	(cd "$REPO_ROOT/test/images" && go build -trimpath -ldflags "-s -w" -o "$OUT/bin/" ./mkimage)
	# The plugin and the webhook link go-nvml (cgo); kubectl-gpu is static.
	(cd "$REPO_ROOT" && CGO_ENABLED=1 CGO_CFLAGS="-O2 -Wno-deprecated-declarations" \
		go build -trimpath -buildvcs=false -ldflags "-s -w -X github.com/gpu-dra/gpu-dra-driver/pkg/version.Version=${IMAGE##*:}" \
		-o "$OUT/bin/" ./cmd/gpu-kubelet-plugin ./cmd/gpu-dra-webhook ./cmd/compute-domain-kubelet-plugin)
	(cd "$REPO_ROOT" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w -X github.com/gpu-dra/gpu-dra-driver/pkg/version.Version=${IMAGE##*:}" \
		-o "$OUT/bin/" ./cmd/kubectl-gpu ./cmd/compute-domain-controller ./cmd/compute-domain-daemon)
}

step_image() {
	local args=() lib
	# The image's version: its tag (the part after the last ':' of the reference).
	printf '%s\n' "${IMAGE##*:}" >"$OUT/version"
	args+=(-add "/etc/gpu-dra-driver/version=$OUT/version")
	for cmd in gpu-kubelet-plugin gpu-dra-webhook kubectl-gpu compute-domain-kubelet-plugin compute-domain-controller compute-domain-daemon; do
		args+=(-add "/usr/bin/$cmd=$OUT/bin/$cmd")
	done
	# The shared libraries the commands link (the C library and its loader), at their paths.
	while read -r lib; do
		args+=(-add "$lib=$(readlink -f "$lib")")
	done < <(ldd "$OUT/bin/gpu-kubelet-plugin" "$OUT/bin/gpu-dra-webhook" "$OUT/bin/compute-domain-kubelet-plugin" | grep -o '/[^ ]*' | grep -v ':$' | sort -u)
	# What the driver's own libraries and tools, loaded or run from the driver root, need of the
	# C library beyond libc: NVIDIA's libnvidia-ml.so.1 needs libpthread.so.0 and libdl.so.2
	# (without them dlopen fails and NVML reads as "not found"), its tools libm and librt too.
	local dir
	dir=$(dirname "$(ldd "$OUT/bin/gpu-kubelet-plugin" | awk '/libc.so.6/ { print $3 }')")
	for lib in libpthread.so.0 libdl.so.2 libm.so.6 librt.so.1; do
		[[ -e $dir/$lib ]] || die "$dir/$lib not found: the image would not load NVIDIA's libraries"
		args+=(-add "$dir/$lib=$(readlink -f "$dir/$lib")")
	done
	"$OUT/bin/mkimage" -ref "$IMAGE" -out "$OUT/gpu-dra-driver.tar" -dir /tmp -dir /etc "${args[@]}"
}

step_import() {
	[[ -S $RUN/containerd/containerd.sock ]] || { log "no local cluster running: not imported"; return 0; }
	local i nodes
	nodes=$(cluster_nodes)
	for ((i = 0; i < nodes; i++)); do
		"$CONTAINERD_BIN/ctr" --address "$(node_dir "$i")/containerd/containerd.sock" -n k8s.io images import \
			"$OUT/gpu-dra-driver.tar" >/dev/null 2> >(grep -v 'support for cgroup v1 is deprecated' >&2)
	done
	log "imported $IMAGE into the local cluster ($nodes nodes)"
}

step "build the commands" step_build
step "image $IMAGE" step_image
step "import" step_import
log "image $IMAGE: $OUT/gpu-dra-driver.tar, $(du -h "$OUT/gpu-dra-driver.tar" | cut -f1)"
echo "$OUT/gpu-dra-driver.tar"
