#!/usr/bin/env bash
# image.sh — builds the driver's container image without a registry or a Docker daemon: the
# commands gpu-kubelet-plugin, gpu-dra-webhook, kubectl-gpu and the ComputeDomain commands
# (compute-domain-kubelet-plugin, -controller, -daemon) on an otherwise empty image (the C
# library, its loader and the libraries NVIDIA's NVML needs, as the plugin needs cgo for NVML),
# for linux/amd64 and linux/arm64 (GB200/GB300 nodes have Grace CPUs). The amd64 commands are
# built here with the build host's C library, the arm64 ones cross-compiled with Debian's
# aarch64 gcc against Debian's arm64 C library (/usr/aarch64-linux-gnu), which is copied to the
# paths an arm64 Debian has it; the Debian packages are installed when missing. Written by
# test/images/mkimage (go-containerregistry) as an OCI archive with an image index, fixed times
# and owners, so equal inputs give an equal image. Tagged gpu-dra-driver:$GPU_DRA_IMAGE_TAG
# (default: the appVersion of the Helm chart), or the whole reference $GPU_DRA_IMAGE. The tag is
# written into the image as /etc/gpu-dra-driver/version, so two tags of the same sources are two
# different images (the upgrade test installs one and upgrades to the other). Writes
# $GPU_DRA_IMAGE_DIR/gpu-dra-driver.tar (default $GPU_DRA_CACHE/image), and imports it into the
# local cluster's containerd when one runs, unless GPU_DRA_IMAGE_IMPORT=0. Prints the archive's
# path and size. test/cluster/image-check.sh runs the arm64 half under qemu.
#
# GPU_DRA_IMAGE_ARCHS="amd64" builds one platform only (still an index), for a quicker edit loop.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERSION=$(sed -n 's/^appVersion: "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$REPO_ROOT/deployments/helm/gpu-dra-driver/Chart.yaml")
TAG=${GPU_DRA_IMAGE_TAG:-$VERSION}
IMAGE=${GPU_DRA_IMAGE:-docker.io/library/gpu-dra-driver:$TAG}
OUT=${GPU_DRA_IMAGE_DIR:-$GPU_DRA_CACHE/image}
read -r -a ARCHS <<<"${GPU_DRA_IMAGE_ARCHS:-amd64 arm64}"
mkdir -p "$OUT/bin"

# Per architecture: the C compiler, the directory of the C library to copy, and the Debian
# multiarch directory it goes to in the image (the loader goes to the path the binaries name).
declare -A CC_OF=([amd64]=gcc [arm64]=aarch64-linux-gnu-gcc)
declare -A LIBDIR_OF=([amd64]=/lib/x86_64-linux-gnu [arm64]=/usr/aarch64-linux-gnu/lib)
declare -A TRIPLET_OF=([amd64]=x86_64-linux-gnu [arm64]=aarch64-linux-gnu)
# The cgo commands (go-nvml), whose libraries the image carries; the others are static.
CGO_CMDS=(gpu-kubelet-plugin gpu-dra-webhook compute-domain-kubelet-plugin)
STATIC_CMDS=(kubectl-gpu compute-domain-controller compute-domain-daemon)

step_packages() {
	local arch pkgs=(binutils) # readelf
	for arch in "${ARCHS[@]}"; do
		[[ -n ${CC_OF[$arch]:-} ]] || die "GPU_DRA_IMAGE_ARCHS: no $arch (amd64, arm64)"
		[[ $arch == amd64 ]] || pkgs+=("gcc-${TRIPLET_OF[$arch]}" "libc6-dev-$arch-cross")
	done
	((${#pkgs[@]} == 0)) || install_packages "${pkgs[@]}"
}

step_build() {
	local arch cmd
	(cd "$REPO_ROOT/test/images" && go build -trimpath -ldflags "-s -w" -o "$OUT/bin/" ./mkimage)
	for arch in "${ARCHS[@]}"; do
		mkdir -p "$OUT/$arch/bin"
		(cd "$REPO_ROOT" && GOARCH=$arch CGO_ENABLED=1 CC=${CC_OF[$arch]} CGO_CFLAGS="-O2 -Wno-deprecated-declarations" \
			go build -trimpath -buildvcs=false -ldflags "-s -w -X github.com/gpu-dra/gpu-dra-driver/pkg/version.Version=${IMAGE##*:}" \
			-o "$OUT/$arch/bin/" "${CGO_CMDS[@]/#/./cmd/}")
		(cd "$REPO_ROOT" && GOARCH=$arch CGO_ENABLED=0 \
			go build -trimpath -buildvcs=false -ldflags "-s -w -X github.com/gpu-dra/gpu-dra-driver/pkg/version.Version=${IMAGE##*:}" \
			-o "$OUT/$arch/bin/" "${STATIC_CMDS[@]/#/./cmd/}")
		for cmd in "${CGO_CMDS[@]}" "${STATIC_CMDS[@]}"; do
			[[ $(elf_machine "$OUT/$arch/bin/$cmd") == "${ELF_MACHINE_OF[$arch]}" ]] ||
				die "$OUT/$arch/bin/$cmd is not an $arch binary: $(elf_machine "$OUT/$arch/bin/$cmd")"
		done
	done
}

declare -A ELF_MACHINE_OF=([amd64]="Advanced Micro Devices X86-64" [arm64]=AArch64)
elf_machine() { readelf -h "$1" | sed -n 's/^ *Machine: *//p'; }
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'; }

# image_libs ARCH: prints DST=SRC for the loader and every shared library the cgo commands need,
# and their libraries in turn, from ARCH's C library, at /lib/<triplet>/ as on Debian. Fails
# naming a library it cannot find there.
image_libs() {
	local arch=$1 libdir=${LIBDIR_OF[$1]} triplet=${TRIPLET_OF[$1]} interp lib cmd
	interp=$(readelf -l "$OUT/$arch/bin/gpu-kubelet-plugin" | sed -n 's/.*Requesting program interpreter: \(.*\)\]$/\1/p')
	[[ -n $interp && -e $libdir/${interp##*/} ]] || die "$arch: the loader ${interp:-?} is not in $libdir"
	printf '%s=%s\n' "$interp" "$(readlink -f "$libdir/${interp##*/}")"
	# What the driver's own libraries and tools, loaded or run from the driver root, need of the
	# C library beyond libc: NVIDIA's libnvidia-ml.so.1 needs libpthread.so.0 and libdl.so.2
	# (without them dlopen fails and NVML reads as "not found"), its tools libm and librt too.
	local -a todo=(libpthread.so.0 libdl.so.2 libm.so.6 librt.so.1)
	local -A seen=()
	for cmd in "${CGO_CMDS[@]}"; do
		mapfile -t -O "${#todo[@]}" todo < <(needed "$OUT/$arch/bin/$cmd")
	done
	while ((${#todo[@]} > 0)); do
		lib=${todo[0]}
		todo=("${todo[@]:1}")
		[[ -z ${seen[$lib]:-} && $lib != "${interp##*/}" ]] || continue
		seen[$lib]=1
		[[ -e $libdir/$lib ]] || die "$arch: $lib not found in $libdir: the image would not load the commands or NVIDIA's libraries"
		printf '/lib/%s/%s=%s\n' "$triplet" "$lib" "$(readlink -f "$libdir/$lib")"
		mapfile -t -O "${#todo[@]}" todo < <(needed "$libdir/$lib")
	done
}

step_image() {
	local args=() arch cmd add libs
	# The image's version: its tag (the part after the last ':' of the reference).
	printf '%s\n' "${IMAGE##*:}" >"$OUT/version"
	args+=(-dir /tmp -dir /etc -add "/etc/gpu-dra-driver/version=$OUT/version")
	for arch in "${ARCHS[@]}"; do
		args+=(-platform "linux/$arch")
		for cmd in "${CGO_CMDS[@]}" "${STATIC_CMDS[@]}"; do
			args+=(-add "/usr/bin/$cmd=$OUT/$arch/bin/$cmd")
		done
		libs=$(image_libs "$arch") # not in a process substitution: its failure stops the script
		while read -r add; do
			args+=(-add "$add")
		done <<<"$libs"
		log "linux/$arch: ${#CGO_CMDS[@]} cgo and ${#STATIC_CMDS[@]} static commands, $(cut -d= -f1 <<<"$libs" | tr '\n' ' ')"
	done
	"$OUT/bin/mkimage" -ref "$IMAGE" -out "$OUT/gpu-dra-driver.tar" "${args[@]}"
}

step_import() {
	[[ ${GPU_DRA_IMAGE_IMPORT:-1} != 0 ]] || { log "GPU_DRA_IMAGE_IMPORT=0: not imported"; return 0; }
	[[ -S $RUN/containerd/containerd.sock ]] || { log "no local cluster running: not imported"; return 0; }
	local i nodes
	nodes=$(cluster_nodes)
	for ((i = 0; i < nodes; i++)); do
		"$CONTAINERD_BIN/ctr" --address "$(node_dir "$i")/containerd/containerd.sock" -n k8s.io images import \
			"$OUT/gpu-dra-driver.tar" >/dev/null 2> >(grep -v 'support for cgroup v1 is deprecated' >&2)
	done
	log "imported $IMAGE into the local cluster ($nodes nodes)"
}

step "Debian packages" step_packages
step "build the commands (${ARCHS[*]})" step_build
step "image $IMAGE" step_image
step "import" step_import
log "image $IMAGE: $OUT/gpu-dra-driver.tar, $(du -h "$OUT/gpu-dra-driver.tar" | cut -f1)"
echo "$OUT/gpu-dra-driver.tar"
