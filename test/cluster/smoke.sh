#!/usr/bin/env bash
# smoke.sh — self-test of the local-cluster harness: build (a no-op when cached), up, a busybox:local
# pod whose logs kubectl reads, the resource.k8s.io API served, the DRA plugin's identity allowed
# to publish a ResourceSlice, containerd configured with $RUN/cdi and a hand-written CDI spec in
# it, then down. Exits non-zero on the first failed check; always tears the cluster down.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PASSED=0

check() {
	log "ok: $*"
	PASSED=$((PASSED + 1))
}


pod_logs() {
	kubectl apply -f - >/dev/null <<-EOF
		apiVersion: v1
		kind: Pod
		metadata:
		  name: smoke-echo
		spec:
		  restartPolicy: Never
		  containers:
		  - name: echo
		    image: busybox:local
		    imagePullPolicy: Never
		    command: ["sh", "-c", "echo smoke-says-hello; test -x /bin/ls && env | grep -q ^HOSTNAME=smoke-echo && echo applets-ok"]
	EOF
	kubectl wait --for=jsonpath='{.status.phase}'=Succeeded pod/smoke-echo --timeout=120s >/dev/null
	local out
	out=$(kubectl logs smoke-echo)
	[[ $out == *smoke-says-hello* && $out == *applets-ok* ]] || die "unexpected pod logs: $out"
	check "busybox:local pod ran, kubectl logs: $(echo "$out" | tr '\n' ' ')"
	kubectl delete pod smoke-echo --wait=false >/dev/null
}

resource_api() {
	kubectl api-resources --api-group=resource.k8s.io | grep -q '^resourceslices ' ||
		die "resourceslices not served"
	kubectl get deviceclasses -o name >/dev/null
	check "resource.k8s.io serves resourceslices, deviceclasses, $(kubectl api-resources --api-group=resource.k8s.io -o name | tr '\n' ' ')"
}

# The DRA kubelet plugin's kubeconfig may publish a ResourceSlice for this node, and the
# controller-manager and scheduler turn a pod's claim template into an allocated claim. (The pod
# itself cannot start: no kubelet plugin serves the driver here.)
dra_allocation() {
	local as_plugin=(--kubeconfig "$GPU_DRA_PLUGIN_KUBECONFIG")
	local who
	who=$(kubectl "${as_plugin[@]}" auth whoami -o jsonpath='{.status.userInfo.username}')
	kubectl "${as_plugin[@]}" create -f - >/dev/null <<-EOF
		apiVersion: resource.k8s.io/v1
		kind: ResourceSlice
		metadata:
		  name: smoke-$NODE_NAME
		spec:
		  driver: $DRIVER_NAME
		  nodeName: "$NODE_NAME"
		  pool:
		    name: "$NODE_NAME"
		    generation: 1
		    resourceSliceCount: 1
		  devices:
		  - name: gpu-0
		    attributes:
		      type:
		        string: gpu
	EOF
	check "plugin identity $who published a ResourceSlice"
	kubectl apply -f - >/dev/null <<-EOF
		apiVersion: resource.k8s.io/v1
		kind: DeviceClass
		metadata:
		  name: smoke-gpu
		spec:
		  selectors:
		  - cel:
		      expression: device.driver == "$DRIVER_NAME"
		---
		apiVersion: resource.k8s.io/v1
		kind: ResourceClaimTemplate
		metadata:
		  name: smoke-gpu
		spec:
		  spec:
		    devices:
		      requests:
		      - name: gpu
		        exactly:
		          deviceClassName: smoke-gpu
		---
		apiVersion: v1
		kind: Pod
		metadata:
		  name: smoke-dra
		spec:
		  restartPolicy: Never
		  resourceClaims:
		  - name: gpu
		    resourceClaimTemplateName: smoke-gpu
		  containers:
		  - name: c
		    image: busybox:local
		    imagePullPolicy: Never
		    command: ["true"]
		    resources:
		      claims:
		      - name: gpu
	EOF
	local jp='{.items[*].status.allocation.devices.results[*].device}' deadline=$((SECONDS + 60))
	until [[ $(kubectl get resourceclaims -o jsonpath="$jp") == gpu-0 ]]; do
		((SECONDS < deadline)) || die "the pod's claim was not allocated gpu-0: $(kubectl get resourceclaims -o yaml)"
		sleep 0.2
	done
	check "claim from template allocated $DRIVER_NAME/$NODE_NAME/gpu-0 by the scheduler"
	kubectl delete pod smoke-dra --grace-period=0 --force --wait=false >/dev/null 2>&1
}

# A pod gets CDI devices only through a DRA driver's prepare result, so without a driver this
# checks what can be checked: containerd's effective config reads $RUN/cdi, and a spec there
# with a /dev/nvidia0 twin of /dev/null is in place for the driver's tests to use.
cdi() {
	local dumped
	dumped=$("$CONTAINERD_BIN/containerd" --config "$RUN/containerd/config.toml" config dump 2>/dev/null)
	grep -qF "cdi_spec_dirs = ['$GPU_DRA_CDI_DIR']" <<<"$dumped" ||
		die "containerd's config does not read CDI specs from $GPU_DRA_CDI_DIR"
	[[ $(stat -c '%F %t:%T' "$GPU_DRA_FAKE_DEVICE") == 'character special file 1:3' ]] ||
		die "$GPU_DRA_FAKE_DEVICE is not a character device 1:3"
	cat >"$GPU_DRA_CDI_DIR/k8s.gpu.nvidia.com-claim_smoke.json" <<-EOF
		{
		  "cdiVersion": "0.6.0",
		  "kind": "k8s.gpu.nvidia.com/claim",
		  "devices": [
		    {
		      "name": "smoke",
		      "containerEdits": {
		        "env": ["GPU_DRA_SMOKE=1"],
		        "deviceNodes": [{"path": "/dev/nvidia0", "hostPath": "$GPU_DRA_FAKE_DEVICE"}]
		      }
		    }
		  ]
		}
	EOF
	check "containerd reads CDI specs from $GPU_DRA_CDI_DIR; spec k8s.gpu.nvidia.com/claim=smoke written"
}

on_exit() {
	local rc=$?
	"$CLUSTER_DIR/down.sh" || rc=1
	if ((rc == 0)); then
		log "smoke test passed"
		echo "$PASSED passed, 0 failed"
	else
		log "smoke test FAILED (exit $rc)"
		echo "$PASSED passed, 1 failed"
	fi
	exit "$rc"
}

main() {
	"$CLUSTER_DIR/build.sh"
	trap on_exit EXIT
	trap 'exit 130' INT TERM
	"$CLUSTER_DIR/up.sh"
	# shellcheck source=/dev/null
	source "$RUN/env"
	step "pod logs" pod_logs
	step "resource.k8s.io API" resource_api
	step "DRA plugin identity, claim allocation" dra_allocation
	step "CDI spec dir" cdi
	print_times
}

main "$@"
