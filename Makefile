# Makefile of the gpu.nvidia.com DRA driver. `make help` lists the targets.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c

GO ?= go
# go-nvml's cgo prologue warns about every deprecated NVML call; the warnings
# say nothing about our code.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations
export GOFLAGS ?= -buildvcs=false

BIN := bin
COMMANDS := gpu-kubelet-plugin gpu-sim gpu-dra-webhook kubectl-gpu

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# gpu-sim-tools (the simulated driver's nvidia-smi and MPS control) runs in the driver's image
# and in pods: it is static. libnvidia-ml.so.1 is the simulated driver's NVML (C).
.PHONY: build
build: ## build the commands into bin/
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ $(addprefix ./cmd/,$(COMMANDS))
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/gpu-sim-tools
	pkg/simhost/libnvml/build.sh $(BIN)/libnvidia-ml.so.1

.PHONY: test
test: lint chart image-check unit fuzz e2e scale-check ## run every test: lint, chart, the arm64 image, unit, fuzz, end-to-end, then a small fleet, each on a local cluster

# Each fuzz target for FUZZTIME, from its committed corpus (testdata/fuzz).
FUZZTIME ?= 20s
.PHONY: fuzz
fuzz: ## run the fuzz targets (opaque config decoding, webhook requests) for FUZZTIME each
	$(GO) test -run XXX -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./api/v1beta1/
	$(GO) test -run XXX -fuzz '^FuzzServeHTTP$$' -fuzztime $(FUZZTIME) ./pkg/webhook/

# Kueue (for TestKueueTeamQuotas) is built before the tests, so that a cold build (minutes) is
# outside the tests' timeout.
.PHONY: e2e
e2e: ## end-to-end tests: build and start a local cluster, run the driver, test, stop; then the cluster tests on three nodes, then the ComputeDomain tests on three GB200 nodes
	test/cluster/build.sh
	test/cluster/kueue.sh build
	$(GO) test -tags e2e -count=1 -timeout 50m -v ./test/e2e/
	GPU_DRA_E2E_NODES=3 $(GO) test -tags e2e -count=1 -timeout 20m -v -run '^TestCluster' ./test/e2e/
	GPU_DRA_E2E_NODES=3 GPU_DRA_E2E_RACK=1 $(GO) test -tags e2e -count=1 -timeout 20m -v -run '^TestComputeDomain' ./test/e2e/

.PHONY: soak
soak: ## outside make test: 100 upgrade/downgrade cycles between the previous release and this one, live claims held
	test/cluster/build.sh
	GPU_DRA_E2E_CYCLES=100 $(GO) test -tags e2e -count=1 -timeout 120m -v -run TestUpgradeDowngradeCyclesWithThePreviousRelease ./test/e2e/

.PHONY: demo
demo: ## local Kubernetes v1.37 + the driver on a simulated DGX H100, with the examples running (NODES=3: an H100, an A100 and a B200 node; RACK=1: three GB200 nodes with a ComputeDomain; docs/cluster.md)
	GPU_DRA_NODES=$(or $(NODES),$(GPU_DRA_NODES),1) GPU_DRA_DEMO_RACK=$(RACK) test/cluster/demo.sh

.PHONY: demo-down
demo-down: ## stop the demo cluster and remove every trace of it
	test/cluster/down.sh

.PHONY: cluster-up
cluster-up: ## start the local cluster and the driver, without the examples
	test/cluster/build.sh
	GPU_DRA_NODES=$(or $(NODES),$(GPU_DRA_NODES),1) test/cluster/up.sh
	test/cluster/driver.sh start

.PHONY: cluster-down
cluster-down: demo-down ## same as demo-down

.PHONY: image
image: ## the driver's container image, linux/amd64 and linux/arm64, no registry or Docker (imported into a running local cluster)
	test/cluster/image.sh

# The arm64 half is cross-compiled: its plugin is run here under qemu-aarch64, with only the
# image's own C library, against a simulated arm64 driver installation (docs/cluster.md).
.PHONY: image-check
image-check: ## build the image apart (not imported) and run its arm64 plugin's hardware check under qemu: NVML loaded, 8 GPUs read
	test/cluster/image-check.sh

.PHONY: chart
chart: ## lint the Helm chart and check what it renders (builds helm into the cache once)
	test/helm/check.sh >/dev/null

.PHONY: unit
unit: ## run the Go tests with the race detector
	$(GO) test -race -count=1 -timeout 30m ./...

.PHONY: lint
lint: ## gofmt, go vet, and golangci-lint with .golangci.yml (built into the cache the first time)
	@unformatted=$$(gofmt -l cmd pkg api test 2>/dev/null); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./test/e2e/
	$(GO) vet -tags scale ./test/scale/
	test/lint/run.sh

.PHONY: bench
bench: ## Go benchmarks, then figures of the driver on a local cluster (docs/benchmarks.md)
	$(GO) test -run XXX -bench BenchmarkAllocator -benchtime 20x ./pkg/devicemodel/
	$(GO) test -run XXX -bench BenchmarkPacking -benchtime 1x -timeout 30m ./pkg/devicemodel/
	$(GO) test -run XXX -bench . -skip BenchmarkBurst -benchtime 400x ./pkg/prepare/ ./pkg/checkpoint/
	$(GO) test -run XXX -bench BenchmarkBurst -benchtime 3x ./pkg/prepare/
	test/cluster/build.sh
	GPU_DRA_MEASURE=1 $(GO) test -tags e2e -count=1 -timeout 20m -run TestMeasure -v ./test/e2e/ | grep -E '^MEASURE|^ok|FAIL|cluster and driver'

.PHONY: scale
scale: ## fleets of 100 and 500 simulated GPU nodes, full against whole-GPU-only (NODES="100 1000" to choose; FLEET_PEER=1 adds NVIDIA's pool; docs/benchmarks.md)
	test/cluster/build.sh
	test/scale/scale.sh $(NODES)

.PHONY: scale-compute-domain
scale-compute-domain: ## one ComputeDomain of 4 pods per node on 64 simulated GB200 nodes (NODES=64), the controller in process: time to Ready, status writes (docs/benchmarks.md)
	test/cluster/build.sh
	test/scale/compute-domain.sh $(or $(NODES),64)

.PHONY: scale-check
scale-check: ## a fleet of 50 simulated GPU nodes on the real scheduler: every pod bound, nothing over-committed, claims released
	test/cluster/build.sh
	$(GO) test -tags scale -count=1 -timeout 20m -v ./test/scale/
