# Makefile of the gpu.nvidia.com DRA driver. `make help` lists the targets.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c

GO ?= go
# go-nvml's cgo prologue warns about every deprecated NVML call; the warnings
# say nothing about our code.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations
export GOFLAGS ?= -buildvcs=false

BIN := bin
COMMANDS := gpu-kubelet-plugin gpu-sim

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: build
build: ## build the commands into bin/
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ $(addprefix ./cmd/,$(COMMANDS))

.PHONY: test
test: lint unit ## run every test: lint, unit and integration tests

.PHONY: unit
unit: ## run the Go tests with the race detector
	$(GO) test -race -count=1 ./...

.PHONY: lint
lint: ## gofmt and go vet
	@unformatted=$$(gofmt -l cmd pkg api test 2>/dev/null); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted"; exit 1; fi
	$(GO) vet ./...

.PHONY: bench
bench: ## run the benchmarks (figures go to docs/benchmarks.md by hand)
	$(GO) test -run XXX -bench . -benchtime 20x ./pkg/...
