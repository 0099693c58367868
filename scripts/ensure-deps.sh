#!/usr/bin/env bash
# Makes sure the programs the local cluster and the test suite start are installed:
# nats-server, the PostgreSQL server binaries and curl; with --bench also what the benchmark's
# peers need (redis-server, node and npm, python3 with venv); with --chaos also iproute2 (`ip netns`,
# for the chaos runner's partitions); with --console also chromium, node and npm (the console's browser
# tests, scripts/console-tests.sh).
# Whatever is missing is installed with apt-get (through sudo when not root); when everything is
# present apt is not touched at all.
#
# Run it (`scripts/ensure-deps.sh`) or source it for its functions (scripts/cluster.sh does).
# NOETL_PG_BIN, when set, names the PostgreSQL bin directory to use, as in the Rust test harness.

set -euo pipefail

# Debian puts nats-server in /usr/sbin, which is not on a non-root user's PATH.
case ":$PATH:" in
*:/usr/sbin:*) ;;
*) PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin ;;
esac
export PATH

# Prints the newest PostgreSQL bin directory: NOETL_PG_BIN, else /usr/lib/postgresql/<newest>/bin
# (Debian keeps them off PATH), else the directory of whatever `initdb` is on PATH.
find_pg_bindir() {
	if [[ -n ${NOETL_PG_BIN:-} ]]; then
		[[ -x $NOETL_PG_BIN/initdb && -x $NOETL_PG_BIN/pg_ctl ]] || {
			printf 'error: NOETL_PG_BIN=%s has no initdb/pg_ctl\n' "$NOETL_PG_BIN" >&2
			return 1
		}
		printf '%s\n' "$NOETL_PG_BIN"
		return 0
	fi
	local newest
	newest=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' -printf '%h\n' 2>/dev/null |
		sort -V | tail -n 1)
	if [[ -n $newest ]]; then
		printf '%s\n' "$newest"
		return 0
	fi
	local initdb
	initdb=$(command -v initdb) || return 1
	dirname "$(readlink -f "$initdb")"
}

find_nats_server() {
	command -v nats-server
}

# Prints the Debian packages providing whatever is missing, one per line.
missing_packages() {
	find_nats_server >/dev/null || echo nats-server
	find_pg_bindir >/dev/null 2>&1 || echo postgresql
	command -v curl >/dev/null || echo curl
	# The C compiler: Rust links with it, and mimalloc (the services' allocator) is built with it.
	command -v cc >/dev/null || echo gcc
	if [[ ${ENSURE_BENCH_DEPS:-} == 1 ]]; then
		command -v redis-server >/dev/null || echo redis-server
		command -v node >/dev/null || echo nodejs
		command -v npm >/dev/null || echo npm
		python3 -c 'import ensurepip, venv' 2>/dev/null || echo python3-venv
	fi
	if [[ ${ENSURE_CHAOS_DEPS:-} == 1 ]]; then
		command -v ip >/dev/null || echo iproute2
	fi
	if [[ ${ENSURE_CONSOLE_DEPS:-} == 1 ]]; then
		[[ -x /usr/bin/chromium ]] || echo chromium
		command -v node >/dev/null || echo nodejs
		command -v npm >/dev/null || echo npm
	fi
}

install_packages() {
	local -a as_root=()
	if [[ $(id -u) -ne 0 ]]; then
		command -v sudo >/dev/null || {
			printf 'error: need root or sudo to install: %s\n' "$*" >&2
			return 1
		}
		as_root=(sudo)
	fi
	command -v apt-get >/dev/null || {
		printf 'error: apt-get not found; install these yourself: %s\n' "$*" >&2
		return 1
	}
	printf '==> installing with apt-get: %s\n' "$*"
	"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
	"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# Installs what is missing, then checks that it really is there now.
ensure_deps() {
	if [[ -n ${NOETL_PG_BIN:-} ]]; then
		find_pg_bindir >/dev/null || return 1
	fi
	local -a missing
	mapfile -t missing < <(missing_packages)
	[[ ${#missing[@]} -eq 0 ]] && return 0
	install_packages "${missing[@]}"
	mapfile -t missing < <(missing_packages)
	if [[ ${#missing[@]} -ne 0 ]]; then
		printf 'error: still missing after installing: %s\n' "${missing[*]}" >&2
		return 1
	fi
}

main() {
	if [[ ${1:-} == --bench ]]; then
		ENSURE_BENCH_DEPS=1
	fi
	if [[ ${1:-} == --chaos ]]; then
		ENSURE_CHAOS_DEPS=1
	fi
	if [[ ${1:-} == --console ]]; then
		ENSURE_CONSOLE_DEPS=1
	fi
	ensure_deps
	printf 'nats-server: %s (%s)\n' "$(find_nats_server)" "$(nats-server --version 2>&1)"
	printf 'postgresql:  %s\n' "$(find_pg_bindir)"
	printf 'curl:        %s\n' "$(command -v curl)"
	if [[ ${ENSURE_CONSOLE_DEPS:-} == 1 ]]; then
		printf 'chromium:    %s\n' "$(/usr/bin/chromium --version 2>/dev/null)"
	fi
	if [[ ${ENSURE_BENCH_DEPS:-} == 1 ]]; then
		printf 'redis:       %s\n' "$(command -v redis-server)"
		printf 'node:        %s (%s)\n' "$(command -v node)" "$(node --version)"
	fi
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	main "$@"
fi
