# Developer entry points for noetl-dispatch. `make` alone lists them.
# The local cluster lives in scripts/cluster.sh; this file only names the commands.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Debian puts nats-server in /usr/sbin, which is not on a non-root user's PATH; the test harness
# starts it by name.
export PATH := $(PATH):/usr/local/sbin:/usr/sbin:/sbin

# Cluster settings (SHARDS, NATS_PORT, PG_PORT, GATEWAY_PORT, SERVER_PORT, WORKER_PORT,
# SHARD_SERVER_PORT, STATE_DIR, READY_TIMEOUT, EXAMPLE, EXAMPLE_TIMEOUT, RUST_LOG) are read by
# scripts/cluster.sh from the environment; make passes command-line ones on. Left unset, the shard
# count and ports keep what .state was last started with, else their defaults (see `make help`).

# Passed to the benchmark binary as is, e.g. make bench BENCH_ARGS="--shards 1,2 --concurrency 16,64 --seconds 5"
BENCH_ARGS ?=
# Passed to the chaos runner as is, e.g. make chaos CHAOS_ARGS="--only kill-server,restart-nats --rounds 5"
CHAOS_ARGS ?=
# Passed to the hostile-input suite as is, e.g. make hostile HOSTILE_ARGS="--only egress --rate 30"
HOSTILE_ARGS ?=

CLUSTER := scripts/cluster.sh

.PHONY: help up infra reshard down status env logs clean-state deps build lint check-docs test schemathesis console-tests validate-deploy bench chaos chaos-short hostile bench-quick

help: ## list the targets and settings
	@echo "usage: make <target> [SETTING=value ...]"
	@echo
	@echo "targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-16s %s\n", $$1, $$2}'
	@echo
	@echo "settings (up, infra, reshard):"
	@echo "  SHARDS=2            up: shard databases noetl_shard_0 … of a new .state; reshard: the new shard count"
	@echo "  NATS_PORT=14222     PG_PORT=15432     GATEWAY_PORT=18080     SERVER_PORT=19090     WORKER_PORT=19091"
	@echo "  SHARD_SERVER_PORT=19100             reshard's server for shard K listens on SHARD_SERVER_PORT + K"
	@echo "  STATE_DIR=.state    READY_TIMEOUT=60  EXAMPLE_TIMEOUT=60     RUST_LOG=info"
	@echo "  EXAMPLE=examples/diamond.json       the submit body up runs and follows to its end"
	@echo "  BENCH_ARGS=         passed to the benchmark (--shards, --concurrency, --seconds, --skip-peers, …;"
	@echo "                      target/release/noetl-bench --help lists them)"
	@echo "  CHAOS_ARGS=         passed to the chaos runner (--only, --rounds, --rate, --shards, --seed;"
	@echo "                      target/debug/noetl-chaos --help lists them)"
	@echo "  HOSTILE_ARGS=       passed to the hostile-input suite (--only, --rate, --window-secs,"
	@echo "                      --rss-bound-mib, …; target/debug/noetl-hostile --help lists them)"

up: ## install deps, build, start NATS, PostgreSQL, server, worker, gateway; run examples/diamond.json
	@$(CLUSTER) up

infra: ## start only NATS and PostgreSQL with the shard databases
	@$(CLUSTER) infra

reshard: ## change the running cluster's shard count: make reshard SHARDS=N (topology epochs; nothing moves)
	@$(CLUSTER) reshard

down: ## stop everything `up` and `reshard` started (data stays in .state)
	@$(CLUSTER) down

status: ## show what runs (and whether gateway, worker and servers are ready), and the topology
	@$(CLUSTER) status

env: ## print export lines for the running cluster (and noetlctl on PATH): eval "$(make -s env)"
	@$(CLUSTER) env

logs: ## show the tail of every log in .state/logs
	@$(CLUSTER) logs

clean-state: ## stop the cluster and delete .state (all local data)
	@$(CLUSTER) clean-state

deps: ## install nats-server, PostgreSQL and curl if missing
	@scripts/ensure-deps.sh

build: ## build every binary (debug)
	cargo build --workspace --bins

lint: ## rustfmt check, clippy with warnings as errors, no modules that import each other in a circle
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	scripts/check-module-cycles.py

check-docs: ## every relative link and repository path in README, ARCHITECTURE, wiki/, deploy/README resolves
	scripts/check-docs.py

# The end-to-end tests spawn the server binary, so the binaries are built before the tests run.
# schemathesis also runs the README's curl session against its cluster (scripts/check-docs.py --session).
test: lint check-docs deps build ## lint, docs, then the whole test suite (nextest when installed), then schemathesis
	@if cargo nextest --version >/dev/null 2>&1; then \
		echo "cargo nextest run --workspace"; cargo nextest run --workspace; \
	else \
		echo "cargo-nextest not installed; cargo test --workspace"; cargo test --workspace; \
	fi
	@$(MAKE) --no-print-directory schemathesis
	@$(MAKE) --no-print-directory console-tests
	@$(MAKE) --no-print-directory validate-deploy
	@$(MAKE) --no-print-directory bench-quick
	@$(MAKE) --no-print-directory hostile
	@$(MAKE) --no-print-directory chaos-short

schemathesis: deps ## fuzz the HTTP API against its OpenAPI document, then run the README's curl session (own cluster, free ports)
	scripts/schemathesis.sh

# Installs chromium, node and npm with apt when missing, and playwright-core and axe-core with npm ci
# (console-tests/package-lock.json); uses the debug binaries `make build` made.
console-tests: deps ## the web console in headless chromium (playwright-core, axe-core) against its own cluster (free ports)
	scripts/console-tests.sh

# Offline: no Docker engine or Kubernetes cluster needed (installs kubectl, shellcheck, python3-venv if
# missing). wiki/operations.md's local commands run against a throw-away local cluster (scripts/cluster.sh,
# free ports) with the binaries of target/debug (NOETL_BIN_DIR), skipped when they are not built.
validate-deploy: ## check deploy/ and the Dockerfile: renders, schemas, kind fit, nats.conf, scripts, operations.md's commands
	scripts/validate-deploy.sh

# The benchmark starts the release noetl-server, noetl-gateway and noetl-worker binaries as
# processes, installs Celery and graphile-worker under .state/bench/peers, and writes
# .state/bench/results/<timestamp>/ (results.json, results.md, PNG charts).
bench: ## the full benchmark (release build, about 13 min): scenarios × shards × concurrency, baselines, peers, growth
	scripts/ensure-deps.sh --bench
	cargo build --release --bins
	target/release/noetl-bench $(BENCH_ARGS)

# A check that the harness works end to end (tiny counts, debug build), not a speed: under 3 min.
bench-quick: ## the benchmark in quick mode (debug build), as make test runs it
	scripts/ensure-deps.sh --bench
	cargo build --workspace --bins
	target/debug/noetl-bench --quick $(BENCH_ARGS)

# The chaos runner starts its own NATS, PostgreSQL and the debug binaries; the partition faults
# need root (network namespaces) and are skipped, with a message, without it.
chaos: ## fault injection under load, full: every fault 3 times, >= 10,000 executions (~15 min)
	scripts/ensure-deps.sh --chaos
	cargo build --workspace --bins
	target/debug/noetl-chaos --mode full $(CHAOS_ARGS)

chaos-short: ## fault injection under load, short (< 5 min, CI): every fault once, short holds
	scripts/ensure-deps.sh --chaos
	cargo build --workspace --bins
	target/debug/noetl-chaos --mode short $(CHAOS_ARGS)

# One cluster of real processes (debug binaries, free ports); tenant A attacks while tenant B runs
# a steady load. wiki/limits.md, "The hostile-input suite".
hostile: ## hostile input under another tenant's load (about 3 min, CI): a row per attack, outcome, B's errors and p99, restarts, RSS
	scripts/ensure-deps.sh
	cargo build --workspace --bins
	target/debug/noetl-hostile $(HOSTILE_ARGS)
