#!/usr/bin/env bash
# The web console's browser tests (wiki/console.md): headless Debian chromium driven by
# playwright-core, with axe-core for accessibility, against a throw-away cluster of its own.
#
#   - chromium, node and npm come from apt (scripts/ensure-deps.sh --console); playwright-core and
#     axe-core from npm, exactly as console-tests/package-lock.json pins them (`npm ci`).
#   - The cluster is scripts/cluster.sh's (NATS, PostgreSQL with 2 shard databases, server, worker,
#     gateway), started with the debug binaries of target/debug (NOETL_BIN_DIR: nothing is built
#     here; `make test` builds them first), its state in .state/console-tests and free ports.
#     The gateway gets two tokens: tenant `dev` (TOKEN_A) and tenant `other` (TOKEN_B), every scope.
#   - The tests (console-tests/*.test.mjs) may reshard it (scripts/cluster.sh reshard, through
#     CLUSTER_ENV) and stop one shard's server; everything is stopped on exit.
# Screenshots go to wiki/img/ when CONSOLE_SCREENSHOTS=1 (they are committed; a normal run leaves
# them alone). Figures (the 1,000-step page's time to first render and weight) are printed.

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
readonly STATE_DIR=$REPO_ROOT/.state/console-tests
readonly TESTS=$REPO_ROOT/console-tests

say() { printf '==> %s\n' "$*"; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

"$REPO_ROOT/scripts/ensure-deps.sh" --console >/dev/null || die "scripts/ensure-deps.sh --console failed"
BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
[[ $BIN == /* ]] || BIN=$REPO_ROOT/$BIN
readonly BIN=$BIN/debug
for program in noetl-server noetl-worker noetl-gateway noetlctl; do
	[[ -x $BIN/$program ]] || die "$BIN/$program is missing: cargo build --workspace --bins first"
done

PORTS=$("$REPO_ROOT/scripts/free-ports.py" 5) || die "could not find free ports"
read -r NATS_PORT PG_PORT GATEWAY_PORT SERVER_PORT WORKER_PORT SHARD_SERVER_PORT <<<"$PORTS"
readonly NATS_PORT PG_PORT GATEWAY_PORT SERVER_PORT WORKER_PORT SHARD_SERVER_PORT

# The settings scripts/cluster.sh runs with, as `env` arguments (the tests reuse them to reshard).
CLUSTER_ENV="STATE_DIR=$STATE_DIR NATS_PORT=$NATS_PORT PG_PORT=$PG_PORT GATEWAY_PORT=$GATEWAY_PORT"
CLUSTER_ENV+=" SERVER_PORT=$SERVER_PORT WORKER_PORT=$WORKER_PORT SHARD_SERVER_PORT=$SHARD_SERVER_PORT"
CLUSTER_ENV+=" NOETL_BIN_DIR=$BIN"
readonly CLUSTER_ENV
cluster() {
	# shellcheck disable=SC2086 # CLUSTER_ENV is a list of NAME=value words without spaces
	env $CLUSTER_ENV "$REPO_ROOT/scripts/cluster.sh" "$@"
}

UP=false
cleanup() {
	local status=$?
	trap - EXIT INT TERM
	if $UP; then
		say "stopping the console-tests cluster"
		cluster down >/dev/null || printf 'warning: scripts/cluster.sh down failed (state %s)\n' "$STATE_DIR" >&2
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

random_token() { printf 'ntl_%s_%s' "$1" "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"; }
digest() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

UP=true
cluster clean-state >/dev/null || die "scripts/cluster.sh clean-state failed for $STATE_DIR"
say "starting NATS and PostgreSQL (scripts/cluster.sh infra, state $STATE_DIR)"
SHARDS=2 cluster infra | sed 's/^/    /' || die "scripts/cluster.sh infra failed (logs in $STATE_DIR/logs)"
TOKEN_A=$(random_token a)
TOKEN_B=$(random_token b)
# cluster.sh keeps a dev-token and tokens.toml it finds: tenant `dev` is A, tenant `other` is B.
(umask 077 && printf '%s\n' "$TOKEN_A" >"$STATE_DIR/dev-token")
printf '[[tokens]]\nname = "%s"\ntenant = "%s"\nscopes = ["submit", "read", "admin"]\nsha256 = "%s"\n\n' \
	console-a dev "$(digest "$TOKEN_A")" console-b other "$(digest "$TOKEN_B")" >"$STATE_DIR/tokens.toml"
say "starting server, worker and gateway (scripts/cluster.sh up)"
SHARDS=2 cluster up | sed 's/^/    /' || die "scripts/cluster.sh up failed (logs in $STATE_DIR/logs)"

say "installing playwright-core and axe-core (npm ci, console-tests/package-lock.json)"
(cd "$TESTS" && npm ci --no-audit --no-fund --silent) || die "npm ci failed in console-tests/"

say "running the console's browser tests"
if [[ -n ${CONSOLE_KEEP:-} ]]; then
	# Development: keep the cluster up and print how to run the tests against it again.
	printf 'cd console-tests && CONSOLE_URL=http://127.0.0.1:%s TOKEN_A=%s TOKEN_B=%s CLUSTER_ENV="%s" REPO_ROOT=%s node --test ./*.test.mjs\n' \
		"$GATEWAY_PORT" "$TOKEN_A" "$TOKEN_B" "$CLUSTER_ENV" "$REPO_ROOT" >"$STATE_DIR/rerun"
	UP=false
	exit 0
fi
(cd "$TESTS" && env CONSOLE_URL="http://127.0.0.1:$GATEWAY_PORT" TOKEN_A="$TOKEN_A" TOKEN_B="$TOKEN_B" \
	CLUSTER_ENV="$CLUSTER_ENV" REPO_ROOT="$REPO_ROOT" \
	node --test --test-concurrency=1 --test-reporter=spec ./*.test.mjs)
