#!/usr/bin/env bash
# demo.sh — the README's first command: builds what is missing, starts the local cluster,
# installs the driver with its Helm chart on a simulated DGX H100, applies the examples under
# demo/, waits for its pods and prints what each pod got. The cluster stays up; `make demo-down` stops it.
# GPU_DRA_NODES=3 (make demo NODES=3) starts three nodes, an H100, an A100 and a B200 DGX
# (GPU_DRA_SIMULATE chooses others), and the report shows where each pod ran. GPU_DRA_DEMO_RACK=1
# (make demo RACK=1) starts three GB200 nodes of an NVLink rack (two cliques) with ComputeDomains on
# (test/cluster/rack-values.yaml) and applies demo/compute-domain only.
#
# demo/sharing (time-slicing, MPS, quarter GPUs) would take three more of the eight GPUs and leave
# none for the user's own claims, so it is applied only with GPU_DRA_DEMO_ALL=1; its README shows
# the commands.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"


# has_models MODEL...: the cluster has a node of each MODEL (with any number of GPUs).
has_models() {
	local want i found
	for want in "$@"; do
		found=
		for ((i = 0; i < $(cluster_nodes); i++)); do
			[[ $(node_model "$i") == "$want" || $(node_model "$i") == "$want:"* ]] && found=1
		done
		[[ -n $found ]] || return 1
	done
}

apply_examples() {
	local dir
	for dir in "$REPO_ROOT"/demo/*/; do
		local rack_dir=0
		[[ $dir != */demo/compute-domain/ ]] || rack_dir=1
		# A rack runs the ComputeDomain example only; other clusters everything else.
		[[ ${GPU_DRA_DEMO_RACK:-0} == "$rack_dir" ]] || continue
		if [[ $dir == */demo/sharing/ && ${GPU_DRA_DEMO_ALL:-} != 1 ]]; then
			log "skipped ${dir#"$REPO_ROOT"/} (GPU_DRA_DEMO_ALL=1 applies it; or kubectl apply -f it)"
			continue
		fi
		if [[ $dir == */demo/models/ ]] && ! has_models dgxh100 dgxa100 dgxb200; then
			log "skipped ${dir#"$REPO_ROOT"/} (a pod for each of an H100, an A100 and a B200 node: make demo NODES=3)"
			continue
		fi
		kubectl apply -f "$dir" >/dev/null
		log "applied ${dir#"$REPO_ROOT"/}"
	done
	# The rack demo's pods are Ready in 7-8 s (nine runs, docs/compute-domains.md); the wait
	# is the same for every demo.
	local wait=180s
	kubectl wait --for=condition=Ready pod -l app=gpu-demo -A --timeout="$wait" >/dev/null
}

report() {
	local slices devices
	slices=$(kubectl get resourceslices -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | grep -c gpu.nvidia.com)
	devices=$(kubectl get resourceslices -o jsonpath='{range .items[*]}{range .spec.devices[*]}{.name}{"\n"}{end}{end}' | grep -c .)
	echo
	local i nodes models=()
	nodes=$(cluster_nodes)
	for ((i = 0; i < nodes; i++)); do models+=("$(node_model "$i")"); done
	echo "=== gpu.nvidia.com on $nodes simulated node(s): ${models[*]} ==="
	kubectl get nodes -o wide | awk '{print "  " $1, $2, $5, $6}'
	echo "  installed: helm release gpu-dra-driver in namespace gpu-dra-driver ($(kubectl get ds -n gpu-dra-driver gpu-dra-driver-kubelet-plugin -o jsonpath='{.spec.template.spec.containers[0].image}'))"
	echo "  published: $slices ResourceSlices, $devices devices (whole GPUs, every MIG placement, shared GPUs)"
	echo
	printf '  %-22s %-10s %-24s %-10s %s\n' POD NODE DEVICE REQUEST "CONTAINER SAW"
	local ns pod claim dev req saw node
	while read -r ns pod node; do
		claim=$(kubectl get pod -n "$ns" "$pod" -o jsonpath='{.status.resourceClaimStatuses[0].resourceClaimName}')
		[[ -n $claim ]] || claim=$(kubectl get pod -n "$ns" "$pod" -o jsonpath='{.spec.resourceClaims[0].resourceClaimName}')
		dev=$(kubectl get resourceclaim -n "$ns" "$claim" -o jsonpath='{.status.allocation.devices.results[0].device}')
		req=$(kubectl get resourceclaim -n "$ns" "$claim" -o jsonpath='{.status.allocation.devices.results[0].request}')
		saw=$(kubectl logs -n "$ns" "$pod" | grep -m1 GPU_DRA_DEVICE_UUIDS || true)
		printf '  %-22s %-10s %-24s %-10s %s\n' "$ns/$pod" "$node" "$dev" "$req" "$saw"
	done < <(kubectl get pods -A -l app=gpu-demo -o jsonpath='{range .items[*]}{.metadata.namespace}{" "}{.metadata.name}{" "}{.spec.nodeName}{"\n"}{end}')
	for ((i = 0; i < nodes; i++)); do
		echo
		echo "  simulated hardware of node $(node_name "$i"), ${models[$i]} (MIG devices created on demand):"
		"$RUN/bin/gpu-sim" --model "${models[$i]}" --state-dir "$(node_dir "$i")/sim/state" show | sed 's/^/    /'
	done
	cat <<-EOF

		The cluster is up. To use it:
		  export KUBECONFIG=$RUN/kubeconfig/admin.kubeconfig
		  export PATH=$RUN/bin:\$PATH      # kubectl, helm, gpu-sim, kubectl-gpu
		  kubectl get resourceslices; kubectl get pods -A
		  kubectl logs -n gpu-dra-driver ds/gpu-dra-driver-kubelet-plugin
		  helm list -n gpu-dra-driver
		  gpu-sim --model ${models[0]} --state-dir $RUN/sim/state show   # node $(node_name 0); others: $RUN/nodes/<node>/sim/state
		  kubectl apply -f demo/sharing/       # time-slicing, MPS and four pods on quarter GPUs
		Stop it with: make demo-down
	EOF
}

main() {
	local start=$SECONDS values=()
	if [[ ${GPU_DRA_DEMO_RACK:-} == 1 ]]; then
		export GPU_DRA_NODES=3 GPU_DRA_SIMULATE=${GPU_DRA_SIMULATE:-gb200:2,gb200:2,gb200:2} GPU_DRA_CLIQUES=${GPU_DRA_CLIQUES:-1,1,2}
		values=(-f "$CLUSTER_DIR/rack-values.yaml")
	fi
	step "build Kubernetes, etcd, containerd (cached)" "$CLUSTER_DIR/build.sh"
	step "start the cluster" "$CLUSTER_DIR/up.sh"
	step "install the driver (helm)" "$CLUSTER_DIR/driver.sh" start "${values[@]}"
	step "apply demo/ and wait for the pods" apply_examples
	report
	log "demo ready in $((SECONDS - start))s"
}

main "$@"
