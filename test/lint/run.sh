#!/usr/bin/env bash
# run.sh — the project's Go linters: golangci-lint with the committed .golangci.yml, built from
# the Go module proxy into the cache the first time (a few minutes on 2 cores), and a check that
# no Go file outside pkg/names spells the driver's own name (tests aside).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../cluster/lib.sh"

GOLANGCI_LINT_VERSION=${GOLANGCI_LINT_VERSION:-v2.15.0}
GOLANGCI_LINT=$GPU_DRA_CACHE/golangci-lint-$GOLANGCI_LINT_VERSION/bin/golangci-lint

if [[ ! -x $GOLANGCI_LINT ]]; then
	log "building golangci-lint $GOLANGCI_LINT_VERSION into $(dirname "$GOLANGCI_LINT")"
	GOBIN=$(dirname "$GOLANGCI_LINT") GOFLAGS=-mod=mod GOTOOLCHAIN=local \
		go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_LINT_VERSION"
fi

cd "$REPO_ROOT"
# Names users write belong to pkg/names: a literal elsewhere drifts from it.
if literals=$(grep -rn --include='*.go' '"gpu\.nvidia\.com' cmd pkg api | grep -v '_test\.go:' | grep -v '^pkg/names/' |
	grep -Ev '^[^:]+:[0-9]+:[[:space:]]*//'); then
	echo "the driver's names are spelled outside pkg/names (use its constants):" >&2
	echo "$literals" >&2
	exit 1
fi
"$GOLANGCI_LINT" run --allow-serial-runners ./... ./test/...
