#!/usr/bin/env bash
# Checks the commands of wiki/operations.md (deploy/tools/operations_doc.py says how):
#   1. every shell block is marked kubernetes-only (or not-local) or local;
#   2. the local blocks run, in the page's order, against a throw-away local cluster:
#      scripts/cluster.sh up in a temporary state directory, on free ports, with 2 shards, and
#      the environment `scripts/cluster.sh env` prints (plus NOETL_TOKEN_FILE, its token's file);
#   3. every `noetlctl …` the page names is a subcommand with the flags it names.
# Steps 2 and 3 need the binaries built: NOETL_BIN_DIR (default target/debug, or CARGO_TARGET_DIR's
# debug/, which `make test` builds before it runs this); without them this says so and exits 77
# after step 1.
# scripts/cluster.sh is given the binaries at hand through NOETL_BIN_DIR, so it builds nothing.
# Run by scripts/validate-deploy.sh. Needs bash 4 (it is a test of this repository, run on Linux).

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly REPO_ROOT
# shellcheck source=../lib.sh source-path=SCRIPTDIR
source "$REPO_ROOT/deploy/lib.sh"
require_bash 4
readonly TOOL=$REPO_ROOT/deploy/tools/operations_doc.py
BIN_DIR=${NOETL_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug}
[[ $BIN_DIR == /* ]] || BIN_DIR=$REPO_ROOT/$BIN_DIR
readonly BIN_DIR
readonly BINARIES=(noetl-server noetl-worker noetl-gateway noetlctl)

python3 "$TOOL" check

for binary in "${BINARIES[@]}"; do
	if [[ ! -x $BIN_DIR/$binary ]]; then
		printf 'skip: %s/%s is not built (cargo build --workspace --bins, or NOETL_BIN_DIR): the local blocks were not run\n' \
			"$BIN_DIR" "$binary"
		exit 77
	fi
done

TMP=$(mktemp -d)
readonly TMP
# PostgreSQL runs as the postgres user when this runs as root: it must reach the state dir.
chmod 0755 "$TMP"
CLUSTER_ENV=()
cleanup() {
	if ((${#CLUSTER_ENV[@]})); then
		env "${CLUSTER_ENV[@]}" "$REPO_ROOT/scripts/cluster.sh" down >"$TMP/down.log" 2>&1 ||
			cat "$TMP/down.log" >&2
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT

mkdir -p "$TMP/work"

# Five free ports, and a base for the per-shard servers with its 256 ports clear of them.
read -r nats pg gateway server worker shard_servers < <("$REPO_ROOT/scripts/free-ports.py" 5)
CLUSTER_ENV=(STATE_DIR="$TMP/state" NOETL_BIN_DIR="$BIN_DIR" SHARDS=2
	NATS_PORT="$nats" PG_PORT="$pg" GATEWAY_PORT="$gateway" SERVER_PORT="$server" WORKER_PORT="$worker"
	SHARD_SERVER_PORT="$shard_servers")
printf '==> a local cluster for the page (scripts/cluster.sh up, state in %s, gateway on %s)\n' "$TMP/state" "$gateway"
if ! env "${CLUSTER_ENV[@]}" "$REPO_ROOT/scripts/cluster.sh" up >"$TMP/up.log" 2>&1; then
	tail -n 40 "$TMP/up.log"
	printf 'FAIL the local cluster did not come up (scripts/cluster.sh up)\n'
	exit 1
fi
eval "$(env "${CLUSTER_ENV[@]}" "$REPO_ROOT/scripts/cluster.sh" env)"
export NOETL_TOKEN_FILE=$TMP/state/dev-token

python3 "$TOOL" run --workdir "$TMP/work"
python3 "$TOOL" noetlctl --noetlctl "$BIN_DIR/noetlctl"
