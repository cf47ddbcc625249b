#!/usr/bin/env bash
# image-check.sh [ARCHIVE] — checks the driver's multi-arch image without an arm64 machine: the
# archive (default: built by image.sh into $WORK/image, not imported anywhere) must be an image
# index with linux/amd64 and linux/arm64, and the arm64 image must run its plugin on an arm64
# node. Its root filesystem is extracted, and its gpu-kubelet-plugin runs the read-only hardware
# check (docs/hardware-check.md) under qemu-user with that root as its only library root
# (qemu-aarch64 -L: its loader, C library and the libraries NVIDIA's NVML needs are the
# image's), against a simulated driver installation laid out as on an arm64 Debian node
# (usr/lib/aarch64-linux-gnu) whose libnvidia-ml.so.1 is the simulated library
# (pkg/simhost/libnvml) cross-built for arm64, answered by `gpu-sim serve` on this machine
# (docs/simulated-driver.md). The check must load that library, find the node's 8 GPUs and fail
# nothing. Before the run, every dynamic binary of the image and the simulated library must find
# their loader and libraries in the image (a missing one fails naming it), and every command of
# the image must start under qemu (--help).
#
# Installs the Debian packages it needs (qemu-user; image.sh: the aarch64 cross compiler and
# C library). Work directory: $GPU_DRA_CACHE/image-check, or GPU_DRA_IMAGE_CHECK_DIR.
# GPU_DRA_IMAGE_CHECK_REMOVE=PATH removes PATH from the extracted arm64 root first, to see the
# check fail (e.g. /lib/aarch64-linux-gnu/libpthread.so.0).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WORK=${GPU_DRA_IMAGE_CHECK_DIR:-$GPU_DRA_CACHE/image-check}
ARCHIVE=${1:-}
MODEL=dgxh100 # 8 GPUs
mkdir -p "$WORK/bin"
PROBLEMS=()
SERVER_PID=

cleanup() {
	[[ -z $SERVER_PID ]] || { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
}
trap cleanup EXIT

step_packages() {
	# jq reads the archive's index (build.sh installs it too, but make test runs this first).
	install_packages qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross jq binutils
}

step_image() {
	[[ -z $ARCHIVE ]] || return 0
	GPU_DRA_IMAGE_DIR=$WORK/image GPU_DRA_IMAGE_IMPORT=0 GPU_DRA_IMAGE_ARCHS="amd64 arm64" \
		"$CLUSTER_DIR/image.sh" >/dev/null
	ARCHIVE=$WORK/image/gpu-dra-driver.tar
}

# blob DIGEST: the path of a blob of the extracted archive.
blob() { printf '%s/oci/blobs/%s\n' "$WORK" "${1/://}"; }

# step_extract: the archive's index must list both platforms; the arm64 image's layer becomes
# $WORK/rootfs.
step_extract() {
	rm -rf "$WORK/oci" "$WORK/rootfs"
	mkdir -p "$WORK/oci" "$WORK/rootfs"
	tar -xf "$ARCHIVE" -C "$WORK/oci"
	[[ -f $WORK/oci/index.json ]] || die "$ARCHIVE is no OCI archive (no index.json): not a multi-arch image"
	local idx platforms manifest layer
	idx=$(jq -r '.manifests[] | select(.mediaType == "application/vnd.oci.image.index.v1+json") | .digest' "$WORK/oci/index.json")
	[[ -n $idx ]] || die "$ARCHIVE: index.json names no image index"
	platforms=$(jq -r '[.manifests[].platform | "\(.os)/\(.architecture)"] | sort | join(" ")' "$(blob "$idx")")
	[[ $platforms == "linux/amd64 linux/arm64" ]] || die "$ARCHIVE: the index lists $platforms, not linux/amd64 linux/arm64"
	manifest=$(jq -r '.manifests[] | select(.platform.architecture == "arm64") | .digest' "$(blob "$idx")")
	[[ $(jq -r .architecture "$(blob "$(jq -r .config.digest "$(blob "$manifest")")")") == arm64 ]] ||
		die "$ARCHIVE: the arm64 manifest's configuration is not arm64"
	for layer in $(jq -r '.layers[].digest' "$(blob "$manifest")"); do
		tar -xzf "$(blob "$layer")" -C "$WORK/rootfs"
	done
	if [[ -n ${GPU_DRA_IMAGE_CHECK_REMOVE:-} ]]; then
		log "removing $GPU_DRA_IMAGE_CHECK_REMOVE from the arm64 root (GPU_DRA_IMAGE_CHECK_REMOVE)"
		rm -f "$WORK/rootfs/${GPU_DRA_IMAGE_CHECK_REMOVE#/}"
	fi
	log "index: $platforms; arm64 root: $(find "$WORK/rootfs" -type f | wc -l) files, $(du -sh "$WORK/rootfs" | cut -f1)"
}

# step_driver builds the simulated installation of an arm64 node: gpu-sim (this machine's) makes
# the trees, the library directory is moved to the arm64 one, and the simulated NVML in it is the
# arm64 build.
step_driver() {
	(cd "$REPO_ROOT" && go build -o "$WORK/bin/" ./cmd/gpu-sim && CGO_ENABLED=0 go build -o "$WORK/bin/" ./cmd/gpu-sim-tools)
	CC=aarch64-linux-gnu-gcc "$REPO_ROOT/pkg/simhost/libnvml/build.sh" "$WORK/arm64/libnvidia-ml.so.1"
	[[ $(readelf -h "$WORK/arm64/libnvidia-ml.so.1" | sed -n 's/^ *Machine: *//p') == AArch64 ]] ||
		die "the simulated libnvidia-ml.so.1 was not built for arm64"
	rm -rf "$WORK/host" "$WORK/state"
	"$WORK/bin/gpu-sim" --model "$MODEL" --state-dir "$WORK/state" host --dir "$WORK/host" \
		--nvml-library "$WORK/arm64/libnvidia-ml.so.1" --tools "$WORK/bin/gpu-sim-tools" >/dev/null
	mv "$WORK/host/driver/usr/lib/x86_64-linux-gnu" "$WORK/host/driver/usr/lib/aarch64-linux-gnu"
}

# needs_in_root FILE: every library FILE needs (and they in turn) must be in the arm64 root, in
# its library directory, as the arm64 loader looks there; a dynamic binary's loader too. The
# loader itself (the C library names it) is the one the plugin names, at its own path.
needs_in_root() {
	local file=$1 interp lib loader
	local -a todo=()
	local -A seen=()
	loader=$(readelf -l "$WORK/rootfs/usr/bin/gpu-kubelet-plugin" | sed -n 's/.*Requesting program interpreter: \(.*\)\]$/\1/p')
	interp=$(readelf -l "$file" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)\]$/\1/p')
	if [[ -n $interp && ! -e $WORK/rootfs$interp ]]; then
		PROBLEMS+=("${file#"$WORK"/}: its loader $interp is not in the arm64 image")
	fi
	[[ -z $loader || ! -e $WORK/rootfs$loader ]] || seen[${loader##*/}]=1
	mapfile -t todo < <(readelf -d "$file" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p')
	while ((${#todo[@]} > 0)); do
		lib=${todo[0]}
		todo=("${todo[@]:1}")
		[[ -z ${seen[$lib]:-} ]] || continue
		seen[$lib]=1
		if [[ ! -e $WORK/rootfs/lib/aarch64-linux-gnu/$lib ]]; then
			PROBLEMS+=("${file#"$WORK"/}: needs $lib, not in the arm64 image (/lib/aarch64-linux-gnu)")
			continue
		fi
		mapfile -t -O "${#todo[@]}" todo < <(readelf -d "$WORK/rootfs/lib/aarch64-linux-gnu/$lib" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p')
	done
}

step_libraries() {
	local f
	for f in "$WORK"/rootfs/usr/bin/* "$WORK/host/driver/usr/lib/aarch64-linux-gnu/libnvidia-ml.so.1"; do
		[[ $(readelf -h "$f" | sed -n 's/^ *Machine: *//p') == AArch64 ]] || PROBLEMS+=("${f#"$WORK"/}: not an arm64 file")
		needs_in_root "$f"
	done
	((${#PROBLEMS[@]} == 0)) && log "every dynamic arm64 binary finds its loader and libraries in the image"
	return 0
}

# step_commands: every command of the arm64 image starts under qemu (--help), the static ones too.
step_commands() {
	local cmd rc
	for cmd in "$WORK"/rootfs/usr/bin/*; do
		rc=0
		qemu-aarch64 -L "$WORK/rootfs" "$cmd" --help >"$WORK/help.txt" 2>&1 || rc=$?
		((rc == 0)) || PROBLEMS+=("${cmd#"$WORK"/rootfs} --help exits $rc: $(head -c 300 "$WORK/help.txt" | tr '\n' ' ')")
	done
	return 0
}

# step_run: the image's arm64 plugin runs the hardware check under qemu, its libraries only
# from the image's root.
step_run() {
	"$WORK/bin/gpu-sim" --model "$MODEL" --state-dir "$WORK/state" serve --driver-root "$WORK/host/driver" \
		>"$WORK/gpu-sim.log" 2>&1 &
	SERVER_PID=$!
	local i
	for ((i = 0; i < 100; i++)); do
		[[ -S $WORK/host/driver/run/gpu-sim/nvml.sock ]] && break
		kill -0 "$SERVER_PID" 2>/dev/null || die "gpu-sim serve exited: $(<"$WORK/gpu-sim.log")"
		sleep 0.1
	done
	local rc=0
	qemu-aarch64 -L "$WORK/rootfs" "$WORK/rootfs/usr/bin/gpu-kubelet-plugin" check \
		--driver-root "$WORK/host/driver" --dev-root "$WORK/host/dev" --proc-root "$WORK/host/proc" \
		>"$WORK/check.txt" 2>&1 || rc=$?
	grep -E '^(NVML|  (PASS|WARN|FAIL)  (library|load and initialise|GPU count) |Result:)' "$WORK/check.txt" >&2 || true
	local lib=$WORK/host/driver/usr/lib/aarch64-linux-gnu/libnvidia-ml.so.1
	((rc == 0)) || PROBLEMS+=("the arm64 plugin's hardware check failed (exit $rc): $({ grep -E '  FAIL  |error' "$WORK/check.txt" || true; } | head -3 | tr -s ' ' | tr '\n' ';')")
	grep -qE "^  PASS  library +$lib " "$WORK/check.txt" || PROBLEMS+=("the check did not load $lib")
	grep -qE '^  PASS  GPU count +8$' "$WORK/check.txt" || PROBLEMS+=("the check did not read the 8 GPUs of $MODEL")
	log "full report: $WORK/check.txt"
}

step "Debian packages" step_packages
step "build the image" step_image
step "extract the arm64 image" step_extract
step "simulated arm64 driver installation" step_driver
step "libraries of the arm64 binaries" step_libraries
step "the arm64 commands start under qemu-aarch64" step_commands
step "the arm64 plugin's hardware check under qemu-aarch64" step_run
if ((${#PROBLEMS[@]} > 0)); then
	printf '  %s\n' "${PROBLEMS[@]}" >&2
	die "the arm64 image of $ARCHIVE does not run its plugin (${#PROBLEMS[@]} problems above)"
fi
log "the arm64 image of $ARCHIVE loads NVML and reads the GPUs under qemu-aarch64"
