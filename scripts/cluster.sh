#!/usr/bin/env bash
# A local noetl-dispatch cluster on loopback, for one developer machine.
#
# It runs its own nats-server (JetStream) and its own PostgreSQL (one database per shard) on
# non-default ports, with all data, logs and pid files in a state directory (.state/ at the repo
# root), then noetl-server, noetl-worker and noetl-gateway built from this workspace.
# Services already running on the standard ports (4222, 5432) are never touched: everything this
# script stops, it finds through its own pid files.
#
# Usage: scripts/cluster.sh up|infra|reshard|down|status|env|logs|clean-state   (normally through make)
#   up           deps, build, NATS, PostgreSQL, server, worker, gateway; runs examples/diamond.json
#                to its end and fails unless it succeeded
#   infra        only NATS and PostgreSQL with the shard databases (to run the binaries yourself)
#   reshard      changes the shard count of the running cluster to SHARDS (topology epochs):
#                growing creates the missing databases, starts a server per new shard and applies
#                the new epoch; shrinking applies it and says how to drain and retire the rest
#   down         stops what up and reshard started; data stays
#   status       what runs, and the topology
#   env          export lines for the running cluster: eval "$(scripts/cluster.sh env)"
#   logs         the tail of every log
#   clean-state  down, then deletes the state directory
#
# Settings (environment): SHARDS (2), NATS_PORT (14222), PG_PORT (15432), GATEWAY_PORT (18080),
# SERVER_PORT (19090), WORKER_PORT (19091), SHARD_SERVER_PORT (19100: the server reshard starts
# for shard K listens on SHARD_SERVER_PORT + K), STATE_DIR (<repo>/.state), READY_TIMEOUT (60 s),
# STOP_TIMEOUT (30 s), EXAMPLE (examples/diamond.json: the submit body `up` runs, relative to the
# repo root or absolute), EXAMPLE_TIMEOUT (60 s), RUST_LOG (info), NOETL_BIN_DIR (unset: `up` and
# `reshard` build the release binaries into CARGO_TARGET_DIR's release/; set: the binaries
# already built there are run and nothing is built). An unset shard count or port keeps what the
# state directory was last started with.
# For `up`, SHARDS is the number of shard databases (the file `shards` in the state directory
# records it): a new state directory gets that many, and the first server bootstraps the topology
# from it. Afterwards the shard count changes only through `reshard`, which adds databases but
# never drops one, and the server `up` starts serves every database there is (draining and
# retired shards keep their executions).

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
# shellcheck source=ensure-deps.sh source-path=SCRIPTDIR
source "$REPO_ROOT/scripts/ensure-deps.sh"
# write_dev_tokens, shared with deploy/kind/up.sh
# shellcheck source=../deploy/lib.sh source-path=SCRIPTDIR
source "$REPO_ROOT/deploy/lib.sh"

STATE_DIR=$(realpath -m "${STATE_DIR:-$REPO_ROOT/.state}")
readonly STATE_DIR
readonly STATE_MARKER=$STATE_DIR/.noetl-cluster-state
readonly SHARDS_FILE=$STATE_DIR/shards
readonly CONFIG_FILE=$STATE_DIR/cluster.env
# How many shard databases the running main server was started with (it serves shards 0 .. n-1).
readonly SERVES_FILE=$STATE_DIR/server.serves
readonly LOG_DIR=$STATE_DIR/logs
readonly NATS_STORE=$STATE_DIR/nats
readonly PG_DIR=$STATE_DIR/pg
readonly PG_DATA=$PG_DIR/data
readonly PG_SOCKET_DIR=$PG_DIR/run
readonly EXAMPLE=${EXAMPLE:-examples/diamond.json}
readonly READY_TIMEOUT=${READY_TIMEOUT:-60}
readonly STOP_TIMEOUT=${STOP_TIMEOUT:-30}
readonly EXAMPLE_TIMEOUT=${EXAMPLE_TIMEOUT:-60}
export RUST_LOG=${RUST_LOG:-info}

readonly PORT_SETTINGS=(NATS_PORT PG_PORT GATEWAY_PORT SERVER_PORT WORKER_PORT SHARD_SERVER_PORT)
readonly SETTINGS=(SHARDS "${PORT_SETTINGS[@]}")
declare -A DEFAULT=([SHARDS]=2 [NATS_PORT]=14222 [PG_PORT]=15432 [GATEWAY_PORT]=18080 [SERVER_PORT]=19090
	[WORKER_PORT]=19091 [SHARD_SERVER_PORT]=19100)
# The most shards a local cluster may have; SHARD_SERVER_PORT .. + MAX_SHARDS - 1 are reserved.
readonly MAX_SHARDS=256
declare -A REQUESTED=()
for setting in "${SETTINGS[@]}"; do
	REQUESTED[$setting]=${!setting:-}
done
declare -A RECORDED=()
# The shard count `reshard` changes the running cluster to.
TARGET=""

# Components started in the background, with the process name their pid must belong to. The
# servers `reshard` starts for single shards (server-K) are added as they are started or found.
declare -A PROGRAM=([nats]=nats-server [server]=noetl-server [worker]=noetl-worker [gateway]=noetl-gateway)

say() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

is_root() { [[ $(id -u) -eq 0 ]]; }

# PostgreSQL refuses to run as root, so as root its programs run as the `postgres` OS user.
as_pg_owner() {
	if is_root; then
		(cd / && runuser -u postgres -- "$@")
	else
		"$@"
	fi
}

# --- settings ---------------------------------------------------------------------------------

load_recorded_settings() {
	local key value
	if [[ -f $CONFIG_FILE ]]; then
		while IFS='=' read -r key value; do
			[[ $key =~ ^[A-Z_]+$ && -v DEFAULT[$key] && $value =~ ^[0-9]+$ ]] && RECORDED[$key]=$value
		done <"$CONFIG_FILE"
	fi
	if [[ -f $SHARDS_FILE ]]; then
		value=$(<"$SHARDS_FILE")
		[[ $value =~ ^[0-9]+$ ]] || die "$SHARDS_FILE is damaged (\"$value\"); make clean-state starts over"
		RECORDED[SHARDS]=$value
	fi
}

# Each setting for `up`: what was asked for, else what the state dir was last started with, else
# the default. The commands that look at a cluster (`recorded-first`) prefer what it was started with.
resolve_settings() {
	load_recorded_settings
	local setting value
	for setting in "${SETTINGS[@]}"; do
		if [[ ${1:-} == recorded-first ]]; then
			value=${RECORDED[$setting]:-${REQUESTED[$setting]:-${DEFAULT[$setting]}}}
		else
			value=${REQUESTED[$setting]:-${RECORDED[$setting]:-${DEFAULT[$setting]}}}
		fi
		[[ $value =~ ^[0-9]+$ ]] || die "$setting must be a number, not \"$value\""
		printf -v "$setting" '%d' "$((10#$value))"
	done
	((SHARDS >= 1 && SHARDS <= MAX_SHARDS)) || die "SHARDS must be between 1 and $MAX_SHARDS, not $SHARDS"
	for setting in "${PORT_SETTINGS[@]}"; do
		((${!setting} >= 1024 && ${!setting} <= 65535)) || die "$setting must be between 1024 and 65535"
	done
	((SHARD_SERVER_PORT + MAX_SHARDS - 1 <= 65535)) ||
		die "SHARD_SERVER_PORT must leave room for $MAX_SHARDS ports (one per shard) up to 65535"
	local seen=" " port
	for setting in "${PORT_SETTINGS[@]}"; do
		port=${!setting}
		[[ $seen != *" $port "* ]] || die "$setting=$port is the port of another component; give each its own"
		seen+="$port "
		if [[ $setting != SHARD_SERVER_PORT ]] && ((port >= SHARD_SERVER_PORT && port < SHARD_SERVER_PORT + MAX_SHARDS)); then
			die "$setting=$port is among the ports of the per-shard servers" \
				"(SHARD_SERVER_PORT=$SHARD_SERVER_PORT … $((SHARD_SERVER_PORT + MAX_SHARDS - 1))); move one of them"
		fi
	done
	NATS_URL=nats://127.0.0.1:$NATS_PORT
	GATEWAY_URL=http://127.0.0.1:$GATEWAY_PORT
	SERVER_URL=http://127.0.0.1:$SERVER_PORT
	WORKER_URL=http://127.0.0.1:$WORKER_PORT
}

# `up` with settings different from what is running would leave a cluster half one, half the other.
# SHARDS counts the shard databases; once they exist, only `reshard` changes the shard count.
refuse_conflicting_settings() {
	local recorded=${RECORDED[SHARDS]:-}
	if [[ -n $recorded && $recorded -ne $SHARDS ]]; then
		local routed=""
		if anything_running; then
			printf 'error: the local cluster is already up with %s shard databases, and you asked for SHARDS=%s.\n' "$recorded" "$SHARDS" >&2
			if live_pid nats >/dev/null && [[ -x $(bin_dir)/noetlctl ]]; then
				routed=$(topology_shard_count 2>/dev/null) || routed=""
			fi
			if [[ $routed == "$SHARDS" ]]; then
				cat >&2 <<-EOF
					Its topology already has $SHARDS shards; the other databases belong to draining or retired shards,
					which keep their executions. make up without SHARDS keeps it as it is (make status shows the topology).
				EOF
			else
				cat >&2 <<-EOF
					To change the shard count of the running cluster (a new topology epoch; no execution moves):
					    make reshard SHARDS=$SHARDS
				EOF
			fi
		else
			printf 'error: the state in %s has %s shard databases, and you asked for SHARDS=%s.\n' "$STATE_DIR" "$recorded" "$SHARDS" >&2
			cat >&2 <<-EOF
				SHARDS only sets the number of shard databases of a new state directory. make up without SHARDS
				starts this one as it was (every shard database, the topology kept in NATS), and make reshard then
				changes its shard count (a new topology epoch; no execution moves):
				    make up && make reshard SHARDS=$SHARDS
				or start over with $SHARDS shards (all local executions are lost):
				    make clean-state && make up SHARDS=$SHARDS
			EOF
		fi
		exit 1
	fi
	anything_running || return 0
	local setting conflicts=()
	for setting in "${PORT_SETTINGS[@]}"; do
		if [[ -n ${RECORDED[$setting]:-} && ${RECORDED[$setting]} -ne ${!setting} ]]; then
			conflicts+=("$setting=${RECORDED[$setting]} (asked for ${!setting})")
		fi
	done
	if ((${#conflicts[@]})); then
		die "the local cluster is already up with ${conflicts[*]}; run make down first to change ports"
	fi
}

record_settings() {
	[[ -f $SHARDS_FILE ]] || printf '%s\n' "$SHARDS" >"$SHARDS_FILE"
	local setting
	{
		echo "# Written by scripts/cluster.sh: the settings this state dir was last started with."
		for setting in "${PORT_SETTINGS[@]}"; do
			printf '%s=%s\n' "$setting" "${!setting}"
		done
	} >"$CONFIG_FILE"
}

# --- state directory --------------------------------------------------------------------------

# What the project's other tools keep in the same state dir (make test's schemathesis and deploy
# checks, make bench, make chaos, deploy/kind): not a sign of someone else's directory.
readonly TOOL_DIRS=" bench chaos kind schemathesis venv venv-deploy deploy-render "

# Entries of the state dir that neither this script nor the project's tools made.
foreign_entries() {
	local entry name
	for entry in "$STATE_DIR"/* "$STATE_DIR"/.[!.]*; do
		[[ -e $entry ]] || continue
		name=${entry##*/}
		[[ $TOOL_DIRS == *" $name "* ]] || printf '%s\n' "$name"
	done
}

prepare_state_dir() {
	[[ $STATE_DIR != *[\',\\]* ]] || die "STATE_DIR must not contain quotes, commas or backslashes: $STATE_DIR"
	if [[ -d $STATE_DIR && ! -f $STATE_MARKER && -n $(foreign_entries) ]]; then
		die "$STATE_DIR exists but was not made by this script; move it away or pick another STATE_DIR"
	fi
	mkdir -p "$STATE_DIR" "$LOG_DIR" "$NATS_STORE" "$PG_DIR"
	touch "$STATE_MARKER"
	# Nothing secret lives here; the postgres user must be able to reach pg/ through it.
	chmod 0755 "$STATE_DIR" "$LOG_DIR"
	if is_root; then
		id -u postgres >/dev/null 2>&1 ||
			die "running as root needs the postgres OS user (the postgresql package creates it)"
		runuser -u postgres -- test -x "$STATE_DIR" 2>/dev/null ||
			die "PostgreSQL runs as the postgres OS user, which cannot reach $STATE_DIR" \
				"(a parent directory is not searchable by others, as /root usually is)." \
				"Make the parents searchable (chmod o+x) or use another state dir, e.g. make up STATE_DIR=/var/tmp/noetl-state"
	fi
}

# --- processes --------------------------------------------------------------------------------

pid_file() { printf '%s/%s.pid' "$STATE_DIR" "$1"; }

# The servers `reshard` starts serve one shard each: component server-K, pid file server-K.pid,
# log logs/server-K.log.
is_shard_server() { [[ $1 =~ ^server-[0-9]+$ ]]; }

# How messages name a component.
component_name() {
	if is_shard_server "$1"; then
		printf 'noetl-server for shard %s\n' "${1#server-}"
	else
		printf '%s\n' "${PROGRAM[$1]}"
	fi
}

# Registers the per-shard servers that have a pid file, so down, status and up know them.
find_shard_servers() {
	local file component
	for file in "$STATE_DIR"/server-*.pid; do
		component=${file##*/}
		component=${component%.pid}
		if [[ -f $file ]] && is_shard_server "$component"; then
			PROGRAM[$component]=noetl-server
		fi
	done
}

# The known per-shard server components, by shard number.
shard_servers() {
	local component
	for component in "${!PROGRAM[@]}"; do
		if is_shard_server "$component"; then
			printf '%s\n' "$component"
		fi
	done | sort -t- -k2,2n
}

# Whether a process runs a program: its argv[0] is that program, or argv[1] is (a script run by
# an interpreter). A zombie has no argv, so it does not count as running anything.
runs_program() {
	local pid=$1 program=$2 arg position=0
	[[ -r /proc/$pid/cmdline ]] || return 1
	while ((position++ < 2)) && IFS= read -r -d '' arg; do
		[[ ${arg##*/} == "$program" ]] && return 0
	done 2>/dev/null <"/proc/$pid/cmdline"
	return 1
}

# Gone, or a zombie nobody has reaped yet. (An empty argv does not mean exited: it is also what
# a process shows in the middle of an exec.)
process_exited() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
	stat=${stat##*) }
	[[ ${stat:0:1} == Z ]]
}

# Prints the pid of a component if its pid file names a live process running the expected program
# (so a recycled pid is never mistaken for ours, let alone signalled).
live_pid() {
	local component=$1 file pid
	file=$(pid_file "$component")
	[[ -f $file ]] || return 1
	pid=$(<"$file")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	runs_program "$pid" "${PROGRAM[$component]}" || return 1
	printf '%s\n' "$pid"
}

# Starts a long-running program detached from this shell and its terminal (so a Ctrl-C here does
# not reach it), logging to logs/<component>.log and recording its pid.
start_detached() {
	local component=$1
	shift
	local log=$LOG_DIR/$component.log
	printf -- '--- %s: %s starting\n' "$(date -Iseconds)" "$component" >>"$log"
	# Without job control a background child never leads a process group, so setsid does not fork
	# and $! is the program's own pid (setsid, nohup and env each exec the next).
	setsid nohup "$@" >>"$log" 2>&1 </dev/null &
	local pid=$! deadline=$((SECONDS + 10))
	printf '%s\n' "$pid" >"$(pid_file "$component")"
	# Until its last exec the child is still a copy of this shell; wait for it to become the program.
	until runs_program "$pid" "${PROGRAM[$component]}"; do
		if process_exited "$pid" || ((SECONDS >= deadline)); then
			show_log_tail "$log"
			die "$(component_name "$component") did not start (log: $log)"
		fi
		sleep 0.05
	done
}

stop_component() {
	local component=$1 pid
	local file
	file=$(pid_file "$component")
	if ! pid=$(live_pid "$component"); then
		if [[ -f $file ]]; then
			rm -f "$file"
			say "$(component_name "$component") was not running (removed its stale pid file)"
		else
			say "$(component_name "$component") is not running"
		fi
		return 0
	fi
	say "stopping $(component_name "$component") (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	local deadline=$((SECONDS + STOP_TIMEOUT))
	while live_pid "$component" >/dev/null && ((SECONDS < deadline)); do
		sleep 0.2
	done
	if live_pid "$component" >/dev/null; then
		warn "$(component_name "$component") (pid $pid) did not exit within ${STOP_TIMEOUT}s of SIGTERM; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
		deadline=$((SECONDS + 10))
		while live_pid "$component" >/dev/null && ((SECONDS < deadline)); do
			sleep 0.2
		done
		live_pid "$component" >/dev/null && die "$(component_name "$component") (pid $pid) survived SIGKILL"
	fi
	rm -f "$file"
}

# Exit status 0 when something accepts TCP connections on the loopback port.
port_in_use() {
	# shellcheck disable=SC2016 # $0 is expanded by the inner bash
	timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null
}

refuse_busy_port() {
	local setting=$1 port=${!1}
	if port_in_use "$port"; then
		die "127.0.0.1:$port is already in use by another program; choose another port, e.g. make up $setting=$((port + 1))"
	fi
}

show_log_tail() {
	local log
	for log in "$@"; do
		[[ -s $log ]] || continue
		printf -- '--- last lines of %s ---\n' "$log" >&2
		tail -n 30 "$log" >&2
	done
}

# Polls a check until it succeeds; fails early, with the logs, if a component it waits on exits.
wait_until() {
	local what=$1 seconds=$2 component=$3
	shift 3
	local deadline=$((SECONDS + seconds))
	until "$@" >/dev/null 2>&1; do
		if [[ -n $component ]] && ! live_pid "$component" >/dev/null; then
			show_log_tail "$LOG_DIR/$component.log"
			die "$(component_name "$component") exited while waiting for $what (log: $LOG_DIR/$component.log);" \
				"make down stops whatever else was started"
		fi
		if ((SECONDS >= deadline)); then
			[[ -n $component ]] && show_log_tail "$LOG_DIR/$component.log"
			die "gave up after ${seconds}s waiting for $what; make logs shows more, make down stops what was started"
		fi
		sleep 0.25
	done
}

http_ok() { curl -fs --max-time 2 -o /dev/null "$1"; }

# --- NATS -------------------------------------------------------------------------------------

# A NATS server greets every client with an INFO line; ours must have JetStream on.
nats_ready() {
	# shellcheck disable=SC2016 # $0 and $line are expanded by the inner bash
	timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" && IFS= read -r line <&3 &&
		[[ $line == INFO* && $line == *"\"jetstream\":true"* ]]' "$NATS_PORT" 2>/dev/null
}

start_nats() {
	local pid nats_bin
	if pid=$(live_pid nats); then
		say "nats-server already running (pid $pid) on $NATS_URL"
		return 0
	fi
	refuse_busy_port NATS_PORT
	nats_bin=$(find_nats_server) || die "nats-server not found (scripts/ensure-deps.sh installs it)"
	say "starting nats-server with JetStream on $NATS_URL"
	start_detached nats "$nats_bin" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$NATS_STORE"
	wait_until "nats-server on $NATS_URL" 30 nats nats_ready
}

# --- PostgreSQL -------------------------------------------------------------------------------

# The bin directory matching an existing data dir's major version, else the newest installed.
resolve_pg_bindir() {
	local version
	if [[ -f $PG_DATA/PG_VERSION ]]; then
		version=$(<"$PG_DATA/PG_VERSION")
		if [[ -z ${NOETL_PG_BIN:-} && -x /usr/lib/postgresql/$version/bin/pg_ctl ]]; then
			PG_BINDIR=/usr/lib/postgresql/$version/bin
			return 0
		fi
	fi
	PG_BINDIR=$(find_pg_bindir) || return 1
}

run_pg_ctl() { as_pg_owner "$PG_BINDIR/pg_ctl" -D "$PG_DATA" "$@"; }

pg_running() {
	[[ -f $PG_DATA/PG_VERSION ]] || return 1
	run_pg_ctl status >/dev/null 2>&1
}

# Files PostgreSQL writes itself must belong to the user it runs as.
give_to_pg_owner() {
	if is_root; then
		chown -R postgres:postgres "$@"
	fi
}

init_postgres() {
	[[ -f $PG_DATA/PG_VERSION ]] && return 0
	say "initialising PostgreSQL ($PG_BINDIR) in $PG_DATA"
	give_to_pg_owner "$PG_DIR"
	if ! as_pg_owner "$PG_BINDIR/initdb" -D "$PG_DATA" --auth=trust -U postgres -E UTF8 --locale=C \
		>"$LOG_DIR/initdb.log" 2>&1; then
		show_log_tail "$LOG_DIR/initdb.log"
		die "initdb failed (log: $LOG_DIR/initdb.log)"
	fi
	printf "\n# Loopback-only settings written by scripts/cluster.sh on every start.\ninclude_if_exists = 'noetl.conf'\n" \
		>>"$PG_DATA/postgresql.conf"
}

write_pg_settings() {
	local socket=$PG_SOCKET_DIR/.s.PGSQL.$PG_PORT
	((${#socket} < 100)) || die "the PostgreSQL socket path $socket is too long for a unix socket; use a shorter STATE_DIR"
	mkdir -p "$PG_SOCKET_DIR"
	cat >"$PG_DATA/noetl.conf" <<-EOF
		# Written by scripts/cluster.sh on every start; edit the script, not this file.
		listen_addresses = '127.0.0.1'
		port = $PG_PORT
		unix_socket_directories = '$PG_SOCKET_DIR'
		max_connections = 300
		logging_collector = off
	EOF
	touch "$LOG_DIR/postgres.log"
	give_to_pg_owner "$PG_DATA/noetl.conf" "$PG_SOCKET_DIR" "$LOG_DIR/postgres.log"
}

start_postgres() {
	init_postgres
	if pg_running; then
		say "PostgreSQL already running on 127.0.0.1:$PG_PORT"
		return 0
	fi
	refuse_busy_port PG_PORT
	write_pg_settings
	say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
	if ! run_pg_ctl -l "$LOG_DIR/postgres.log" -w -t 60 start >/dev/null; then
		show_log_tail "$LOG_DIR/postgres.log"
		die "PostgreSQL did not start (log: $LOG_DIR/postgres.log)"
	fi
}

stop_postgres() {
	if [[ ! -f $PG_DATA/PG_VERSION ]] || ! resolve_pg_bindir 2>/dev/null || ! pg_running; then
		say "PostgreSQL is not running"
		return 0
	fi
	say "stopping PostgreSQL"
	run_pg_ctl -m fast -w -t 60 stop >/dev/null || die "pg_ctl stop failed (log: $LOG_DIR/postgres.log)"
}

psql_admin() {
	PGCONNECT_TIMEOUT=5 "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 \
		-h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"
}

ensure_shard_databases() {
	local i db created=() exists
	for ((i = 0; i < SHARDS; i++)); do
		db=noetl_shard_$i
		exists=$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'") ||
			die "cannot query PostgreSQL on 127.0.0.1:$PG_PORT (log: $LOG_DIR/postgres.log)"
		if [[ $exists != 1 ]]; then
			psql_admin -c "CREATE DATABASE $db" || die "creating database $db failed"
			created+=("$db")
		fi
	done
	if ((${#created[@]})); then
		say "created databases: ${created[*]}"
	else
		say "shard $(shard_databases) already there"
	fi
}

shard_databases() {
	if ((SHARDS == 1)); then
		echo "database noetl_shard_0"
	else
		echo "databases noetl_shard_0 … noetl_shard_$((SHARDS - 1))"
	fi
}

# NOETL_SHARDS: entry i is shard i's database, in the key/value form.
shards_value() {
	local i entries=()
	for ((i = 0; i < SHARDS; i++)); do
		entries+=("host=127.0.0.1;port=$PG_PORT;user=postgres;database=noetl_shard_$i")
	done
	local IFS=,
	printf '%s\n' "${entries[*]}"
}

# --- noetl binaries ---------------------------------------------------------------------------

bin_dir() {
	if [[ -n ${NOETL_BIN_DIR:-} ]]; then
		[[ $NOETL_BIN_DIR == /* ]] && printf '%s\n' "$NOETL_BIN_DIR" || printf '%s/%s\n' "$REPO_ROOT" "$NOETL_BIN_DIR"
		return
	fi
	local target=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
	[[ $target == /* ]] || target=$REPO_ROOT/$target
	printf '%s/release\n' "$target"
}

readonly BINARIES=(noetl-server noetl-worker noetl-gateway noetlctl)

build_binaries() {
	local bin
	if [[ -n ${NOETL_BIN_DIR:-} ]]; then
		for bin in "${BINARIES[@]}"; do
			[[ -x $(bin_dir)/$bin ]] || die "NOETL_BIN_DIR is set but $(bin_dir)/$bin is missing"
		done
		say "using the binaries in $(bin_dir) (NOETL_BIN_DIR; nothing is built)"
		return
	fi
	command -v cargo >/dev/null || die "cargo not found; install Rust (https://rustup.rs)"
	say "building ${BINARIES[*]} (cargo build --release)"
	local args=()
	for bin in "${BINARIES[@]}"; do
		args+=(--bin "$bin")
	done
	(cd "$REPO_ROOT" && cargo build --release "${args[@]}") ||
		die "cargo build failed (compiler output above); nothing new was started"
	for bin in "${BINARIES[@]}"; do
		[[ -x $(bin_dir)/$bin ]] || die "cargo build succeeded but $(bin_dir)/$bin is missing"
	done
}

# noetlctl against this cluster's NATS.
ctl() { "$(bin_dir)/noetlctl" --nats-url "$NATS_URL" "$@"; }

start_server() {
	local pid
	if pid=$(live_pid server); then
		say "noetl-server already running (pid $pid); make down && make up restarts it on a new build"
		return 0
	fi
	refuse_busy_port SERVER_PORT
	say "starting noetl-server ($(shard_databases), health on $SERVER_URL)"
	printf '%s\n' "$SHARDS" >"$SERVES_FILE"
	start_detached server env \
		NOETL_NATS_URL="$NATS_URL" \
		NOETL_SHARDS="$(shards_value)" \
		NOETL_LISTEN="127.0.0.1:$SERVER_PORT" \
		"$(bin_dir)/noetl-server"
}

# One worker serving the `default` pool; the shell action stays off (it would need --allow-shell).
start_worker() {
	local pid
	if pid=$(live_pid worker); then
		say "noetl-worker already running (pid $pid); make down && make up restarts it on a new build"
		return 0
	fi
	refuse_busy_port WORKER_PORT
	say "starting noetl-worker (pool default, health on $WORKER_URL)"
	start_detached worker env \
		NOETL_NATS_URL="$NATS_URL" \
		NOETL_LISTEN="127.0.0.1:$WORKER_PORT" \
		"$(bin_dir)/noetl-worker"
}

readonly DEV_TOKEN_FILE=$STATE_DIR/dev-token
readonly TOKENS_FILE=$STATE_DIR/tokens.toml

# A development token for the local gateway (tenant `dev`, every scope), made once per state
# dir: the gateway keeps only its SHA-256 digest (tokens.toml), the token itself is in dev-token.
ensure_dev_token() {
	[[ -s $DEV_TOKEN_FILE && -s $TOKENS_FILE ]] && return 0
	write_dev_tokens ntl_dev "$DEV_TOKEN_FILE" "$TOKENS_FILE" scripts/cluster.sh
}

dev_token() { cat "$DEV_TOKEN_FILE" 2>/dev/null; }

start_gateway() {
	local pid
	if pid=$(live_pid gateway); then
		say "noetl-gateway already running (pid $pid); make down && make up restarts it on a new build"
		return 0
	fi
	refuse_busy_port GATEWAY_PORT
	say "starting noetl-gateway on $GATEWAY_URL"
	# No NOETL_NODE_ID: the gateway leases any free node id, so a gateway that was killed
	# without giving its lease back does not keep the next one from minting until the lease expires.
	ensure_dev_token
	start_detached gateway env \
		NOETL_NATS_URL="$NATS_URL" \
		NOETL_LISTEN="127.0.0.1:$GATEWAY_PORT" \
		NOETL_AUTH_TOKENS_FILE="$TOKENS_FILE" \
		"$(bin_dir)/noetl-gateway"
}

shard_server_port() { printf '%d\n' "$((SHARD_SERVER_PORT + $1))"; }

# A server for shard $1 alone (`reshard`): given every shard database, as every server is, but
# migrating and serving only its own.
start_shard_server() {
	local shard=$1 component=server-$1 pid port
	PROGRAM[$component]=noetl-server
	if pid=$(live_pid "$component"); then
		say "noetl-server for shard $shard already running (pid $pid)"
		return 0
	fi
	port=$(shard_server_port "$shard")
	if port_in_use "$port"; then
		die "127.0.0.1:$port (SHARD_SERVER_PORT + $shard, for the server of shard $shard) is already in use by another program." \
			"Free it, or restart the cluster (make down && make up: its server then serves every shard database," \
			"this one included) and run make reshard SHARDS=$TARGET again"
	fi
	say "starting noetl-server for shard $shard (health on http://127.0.0.1:$port)"
	start_detached "$component" env \
		NOETL_NATS_URL="$NATS_URL" \
		NOETL_SHARDS="$(shards_value)" \
		NOETL_LISTEN="127.0.0.1:$port" \
		"$(bin_dir)/noetl-server" --shards "$shard"
}

# Seconds left until a deadline, at least 5, so a slow first component leaves the others a chance.
seconds_left() {
	local left=$(($1 - SECONDS))
	((left > 5)) || left=5
	printf '%d\n' "$left"
}

wait_for_readiness() {
	local deadline=$((SECONDS + READY_TIMEOUT))
	wait_until "noetl-server to be ready ($SERVER_URL/readyz)" "$READY_TIMEOUT" server http_ok "$SERVER_URL/readyz"
	wait_until "noetl-worker to be ready ($WORKER_URL/readyz)" "$(seconds_left "$deadline")" worker \
		http_ok "$WORKER_URL/readyz"
	wait_until "noetl-gateway to be ready ($GATEWAY_URL/readyz)" "$(seconds_left "$deadline")" gateway \
		http_ok "$GATEWAY_URL/readyz"
	say "server, worker and gateway are ready"
}

# --- the example ------------------------------------------------------------------------------

have_python() { command -v python3 >/dev/null; }

print_json() {
	if have_python && python3 -m json.tool <<<"$1" 2>/dev/null; then
		return 0
	fi
	printf '%s\n' "$1"
}

# The first string field called $1 in the JSON document $2 (at the top level for the documents
# this script reads: the execution's own fields come before its steps').
string_field() {
	if have_python; then
		python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1" <<<"$2" 2>/dev/null
	else
		grep -o "\"$1\"[[:space:]]*:[[:space:]]*\"[^\"]*\"" <<<"$2" | head -n 1 |
			sed 's/^[^:]*:[[:space:]]*"\(.*\)"$/\1/'
	fi
}

# Reads a Server-Sent Events stream of execution events and prints one line per event as it
# arrives: sequence number, kind, payload.
readonly EVENT_PRINTER='
import json, sys
for line in sys.stdin:
    if not line.startswith("data:"):
        continue
    data = line[5:].strip()
    try:
        event = json.loads(data)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        print("  end  (the execution ended %s; the stream closes)" % data)
        continue
    payload = event.get("payload") or {}
    text = json.dumps(payload, separators=(", ", ": ")) if payload else ""
    print(("  %3s  %-20s %s" % (event.get("seq"), event.get("kind"), text)).rstrip())
'

print_events() {
	if have_python; then
		python3 -u -c "$EVENT_PRINTER"
	else
		sed -un 's/^data: /  /p'
	fi
}

# An execution as a table of its steps: status, attempt, and result or error.
readonly EXECUTION_PRINTER='
import json, sys
execution = json.load(sys.stdin)
print("  execution %s (shard %s, playbook %s): %s" % (
    execution["execution_id"], execution["shard"], execution["playbook_name"], execution["status"]))
steps = execution.get("steps", [])
width = max([len(step["name"]) for step in steps] + [4])
print("    %-*s  %-10s  %-7s  %s" % (width, "step", "status", "attempt", "result / error"))
for step in steps:
    if step.get("error"):
        outcome = "error: " + step["error"]
    elif "result" in step:
        outcome = json.dumps(step["result"], separators=(", ", ": "))
    else:
        outcome = ""
    print(("    %-*s  %-10s  %-7s  %s" % (width, step["name"], step["status"], step["attempt"], outcome)).rstrip())
'

print_execution() {
	if have_python && python3 -c "$EXECUTION_PRINTER" <<<"$1" 2>/dev/null; then
		return 0
	fi
	print_json "$1"
}

# Submits the example, follows its event stream to the end, prints the result; fails unless
# the execution succeeded.
run_example() {
	local response id status api=$GATEWAY_URL/api/v1/executions body=$EXAMPLE
	[[ $body == /* ]] || body=$REPO_ROOT/$body
	[[ -f $body ]] || die "the example $EXAMPLE does not exist"
	[[ $EXAMPLE_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "EXAMPLE_TIMEOUT must be a whole number of seconds, not \"$EXAMPLE_TIMEOUT\""
	say "submitting $EXAMPLE: POST $api"
	response=$(curl -sS --max-time 30 --fail-with-body -X POST -H 'content-type: application/json' \
		-H "authorization: Bearer $(dev_token)" \
		--data-binary "@$body" "$api") ||
		die "submitting the example failed: ${response:-no response} (log: $LOG_DIR/gateway.log)"
	print_json "$response"
	id=$(string_field execution_id "$response") || true
	[[ $id =~ ^[0-9]+$ ]] || die "the submit response has no usable execution_id"

	# The stream replays the log from the start and closes by itself once the execution ended.
	say "following it: GET $api/$id/stream (Server-Sent Events, up to ${EXAMPLE_TIMEOUT}s)"
	if ! curl -sS -N --max-time "$EXAMPLE_TIMEOUT" --fail-with-body -H "authorization: Bearer $(dev_token)" \
		"$api/$id/stream" | print_events; then
		die "execution $id did not end within ${EXAMPLE_TIMEOUT}s, or its event stream broke;" \
			"make logs shows the worker's, server's and gateway's logs"
	fi

	say "the execution as it ended: GET $api/$id"
	response=$(curl -sS --max-time 30 --fail-with-body -H "authorization: Bearer $(dev_token)" "$api/$id") ||
		die "reading execution $id failed: ${response:-no response} (log: $LOG_DIR/gateway.log)"
	print_execution "$response"
	status=$(string_field status "$response") || true
	[[ $status == succeeded ]] ||
		die "the example execution $id ended ${status:-in an unknown state}, not succeeded; make logs shows why"
	say "the example execution $id succeeded"
}

# --- commands ---------------------------------------------------------------------------------

anything_running() {
	local component
	for component in "${!PROGRAM[@]}"; do
		live_pid "$component" >/dev/null && return 0
	done
	[[ -f $PG_DATA/PG_VERSION ]] && resolve_pg_bindir 2>/dev/null && pg_running
}

bring_up_infra() {
	ensure_deps
	resolve_settings
	refuse_conflicting_settings
	if [[ ${1:-} == with-binaries ]]; then
		build_binaries
	fi
	prepare_state_dir
	record_settings
	resolve_pg_bindir || die "PostgreSQL server binaries not found (scripts/ensure-deps.sh installs them)"
	start_nats
	start_postgres
	ensure_shard_databases
}

print_infra_summary() {
	cat <<-EOF
		  NATS          $NATS_URL  (JetStream store $NATS_STORE)
		  PostgreSQL    127.0.0.1:$PG_PORT, user postgres (trust), $(shard_databases)
		  NOETL_SHARDS  $(shards_value)
		  logs          $LOG_DIR  (make logs)
		  environment   eval "\$(make -s env)"  (also puts noetlctl on PATH)
		  stop          make down  (data stays in $STATE_DIR; make clean-state deletes it)
	EOF
}

# The shard count of the latest topology epoch (in force or pending), from
# `noetlctl topology show --json`.
topology_shard_count() {
	local json count=""
	json=$(ctl topology show --json) || return 1
	if have_python; then
		count=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["epochs"][-1]["shard_count"])' \
			<<<"$json" 2>/dev/null) || count=""
	fi
	if [[ ! $count =~ ^[0-9]+$ ]]; then
		# The epochs are listed in order, and only epochs have a shard_count.
		count=$(grep -o '"shard_count"[[:space:]]*:[[:space:]]*[0-9]*' <<<"$json" | tail -n 1 | grep -o '[0-9]*$') ||
			count=""
	fi
	[[ $count =~ ^[0-9]+$ ]] || return 1
	printf '%d\n' "$count"
}

print_topology() {
	say "topology (noetlctl topology show):"
	ctl topology show 2>&1 | sed 's/^/  /' || warn "noetlctl topology show failed"
}

cmd_up() {
	bring_up_infra with-binaries
	start_server
	start_worker
	start_gateway
	wait_for_readiness
	run_example
	echo
	local shards
	shards=$(topology_shard_count) || shards=$SHARDS
	say "local cluster is up with $shards shard(s)"
	cat <<-EOF
		  gateway       $GATEWAY_URL  (API under /api/v1; /healthz, /readyz, /metrics)
		  dev token     $(dev_token)  (tenant dev, every scope: -H "authorization: Bearer \$NOETL_TOKEN" after eval "\$(make -s env)")
		  console       $GATEWAY_URL/ui  (log in with the dev token; wiki/console.md)
		  server        $SERVER_URL  (/healthz, /readyz, /metrics), serving every shard database
		  worker        $WORKER_URL  (/healthz, /readyz, /metrics), pool default, no shell
		  topology      $(bin_dir)/noetlctl topology show  (make reshard SHARDS=N changes the shard count)
	EOF
	print_infra_summary
	if ((shards != SHARDS)); then
		print_topology
	fi
}

cmd_infra() {
	bring_up_infra
	echo
	say "NATS and PostgreSQL are up for $SHARDS shard(s) (no server, worker or gateway)"
	print_infra_summary
}

# How many shard databases the running main server serves (shards 0 .. n-1).
main_server_serves() {
	local value=""
	[[ -f $SERVES_FILE ]] && value=$(<"$SERVES_FILE")
	# A server started by an older version of this script served what .state/shards said then.
	[[ $value =~ ^[0-9]+$ ]] || value=${RECORDED[SHARDS]:-0}
	printf '%d\n' "$value"
}

# Whether noetlctl's plan finds a ready server for every shard the change to TARGET adds.
# (A server's /readyz can say ready a moment before its shards' subscriptions exist.)
added_shards_ready() {
	local plan
	plan=$(ctl topology plan --shards "$TARGET" 2>/dev/null) || return 1
	[[ $plan != *"apply would refuse"* ]]
}

apply_topology() {
	say "noetlctl topology apply --shards $TARGET --wait  (the new epoch activates a grace from now)"
	local status=0
	ctl topology apply --shards "$TARGET" --wait || status=$?
	case $status in
	0) ;;
	3) die "noetlctl refused the change (its reason is above)" ;;
	4) die "the topology changed while it was being applied; run make reshard SHARDS=$TARGET again" ;;
	*) die "noetlctl topology apply failed (exit $status; its message is above)" ;;
	esac
}

# Growing: every shard the new count adds gets a database and a ready server before the epoch
# that routes to it is written.
reshard_grow() {
	local current=$1 shard served started=() deadline=$((SECONDS + READY_TIMEOUT))
	# Refused changes (growing back over a retired shard) stop here, before anything is started.
	ctl topology plan --shards "$TARGET" >/dev/null ||
		die "the topology does not allow $TARGET shards (noetlctl's reason is above)"
	if ((TARGET > SHARDS)); then
		SHARDS=$TARGET
	fi
	ensure_shard_databases
	printf '%s\n' "$SHARDS" >"$SHARDS_FILE"
	served=$(main_server_serves)
	for ((shard = current; shard < TARGET; shard++)); do
		if ((shard < served)); then
			say "shard $shard is served by noetl-server (pid $(live_pid server)), which has its database"
		else
			start_shard_server "$shard"
			started+=("$shard")
		fi
	done
	for shard in "${started[@]}"; do
		wait_until "noetl-server for shard $shard to be ready (http://127.0.0.1:$(shard_server_port "$shard")/readyz)" \
			"$(seconds_left "$deadline")" "server-$shard" http_ok "http://127.0.0.1:$(shard_server_port "$shard")/readyz"
	done
	wait_until "a ready server for every shard added (noetlctl topology plan --shards $TARGET)" \
		"$(seconds_left "$deadline")" "" added_shards_ready
	apply_topology
	print_topology
}

# Shrinking: the new epoch is written at once; the shards it leaves out keep their executions
# and their servers until an operator retires them.
reshard_shrink() {
	local first=$TARGET last=$(($1 - 1)) shards
	apply_topology
	print_topology
	if ((first == last)); then shards="shard $first is"; else shards="shards $first … $last are"; fi
	cat <<-EOF

		  $shards draining: no new execution goes there, and the ones there run to their end, served as before.
		  Once a draining shard has no unfinished execution (and a grace after the shrink activated),
		  retire it, saying what happens to its database (eval "\$(make -s env)" puts noetlctl on PATH):
		      noetlctl topology drain $first --wait             # waits until shard $first has no unfinished execution
		      noetlctl topology retire $first --data keep       # its executions stay readable
		      noetlctl topology retire $first --data discard    # or: they answer 410 Gone; its database may be dropped
		  Until then nothing needs doing: make down && make up keeps serving every shard database.
	EOF
}

cmd_reshard() {
	TARGET=${REQUESTED[SHARDS]}
	[[ -n $TARGET ]] || die "say how many shards the running cluster should have: make reshard SHARDS=N"
	[[ $TARGET =~ ^[0-9]+$ ]] || die "SHARDS must be a number, not \"$TARGET\""
	TARGET=$((10#$TARGET))
	((TARGET >= 1 && TARGET <= MAX_SHARDS)) || die "SHARDS must be between 1 and $MAX_SHARDS, not $TARGET"
	# SHARDS becomes the number of shard databases there are; ports are the running cluster's.
	resolve_settings recorded-first
	[[ -f $STATE_MARKER && -f $SHARDS_FILE ]] || die "no local cluster in $STATE_DIR; make up first"
	if ! live_pid nats >/dev/null || ! resolve_pg_bindir 2>/dev/null || ! pg_running ||
		! live_pid server >/dev/null; then
		die "the local cluster in $STATE_DIR is not running (make status shows what is); make up first"
	fi
	local bin
	for bin in noetlctl noetl-server; do
		if [[ ! -x $(bin_dir)/$bin ]]; then
			build_binaries
			break
		fi
	done
	local current
	current=$(topology_shard_count) || die "cannot read the topology (noetlctl's message is above)"
	if ((TARGET == current)); then
		ctl topology apply --shards "$TARGET"
	elif ((TARGET > current)); then
		say "growing from $current to $TARGET shards"
		reshard_grow "$current"
	else
		say "shrinking from $current to $TARGET shards"
		reshard_shrink "$current"
	fi
}

cmd_down() {
	resolve_settings recorded-first
	if [[ ! -d $STATE_DIR ]]; then
		say "nothing to stop: $STATE_DIR does not exist"
		return 0
	fi
	# Front to back, so nothing is left talking to a component that is already gone (the worker
	# goes before the servers, so the steps it has in hand can still report).
	stop_component gateway
	stop_component worker
	local component servers
	mapfile -t servers < <(shard_servers)
	for component in "${servers[@]}"; do
		stop_component "$component"
	done
	stop_component server
	stop_component nats
	stop_postgres
}

describe_component() {
	local component=$1 health_url=${2:-} pid health=""
	if pid=$(live_pid "$component"); then
		if [[ -n $health_url ]]; then
			if http_ok "$health_url"; then health=", ready"; else health=", NOT ready ($health_url)"; fi
		fi
		printf '  %-24s running (pid %s%s)\n' "$(component_name "$component")" "$pid" "$health"
	else
		printf '  %-24s stopped\n' "$(component_name "$component")"
	fi
}

cmd_status() {
	resolve_settings recorded-first
	if [[ ! -f $STATE_MARKER ]]; then
		say "no local cluster: $STATE_DIR does not exist (make up creates it)"
		return 0
	fi
	say "local cluster in $STATE_DIR, ${RECORDED[SHARDS]:-?} shard database(s)"
	describe_component gateway "$GATEWAY_URL/readyz"
	describe_component worker "$WORKER_URL/readyz"
	describe_component server "$SERVER_URL/readyz"
	local component servers
	mapfile -t servers < <(shard_servers)
	for component in "${servers[@]}"; do
		describe_component "$component" "http://127.0.0.1:$(shard_server_port "${component#server-}")/readyz"
	done
	describe_component nats
	if [[ -f $PG_DATA/PG_VERSION ]] && resolve_pg_bindir 2>/dev/null && pg_running; then
		printf '  %-24s running (127.0.0.1:%s, pid %s)\n' postgres "$PG_PORT" "$(head -n 1 "$PG_DATA/postmaster.pid")"
	else
		printf '  %-24s stopped\n' postgres
	fi
	if live_pid nats >/dev/null && [[ -x $(bin_dir)/noetlctl ]]; then
		print_topology
	fi
}

cmd_env() {
	resolve_settings recorded-first
	[[ -f $SHARDS_FILE ]] || die "no local cluster in $STATE_DIR; make up first"
	anything_running || warn "the local cluster is not running (make up)"
	printf "export NOETL_GATEWAY_URL='%s'\n" "$GATEWAY_URL"
	[[ -s $DEV_TOKEN_FILE ]] && printf "export NOETL_TOKEN='%s'\n" "$(dev_token)"
	printf "export NOETL_NATS_URL='%s'\n" "$NATS_URL"
	printf "export NOETL_SHARDS='%s'\n" "$(shards_value)"
	# noetlctl (and the other binaries) of this build, for the commands make reshard prints.
	# shellcheck disable=SC2016 # $PATH is expanded by the shell that evaluates these lines
	printf 'export PATH=%q:"$PATH"\n' "$(bin_dir)"
}

cmd_logs() {
	[[ -d $LOG_DIR ]] || die "no logs: $LOG_DIR does not exist"
	local log
	for log in "$LOG_DIR"/*.log; do
		[[ -f $log ]] || continue
		printf -- '--- %s ---\n' "$log"
		tail -n "${LOG_LINES:-20}" "$log"
	done
}

cmd_clean_state() {
	if [[ ! -e $STATE_DIR ]]; then
		say "nothing to delete: $STATE_DIR does not exist"
		return 0
	fi
	[[ -f $STATE_MARKER ]] || die "$STATE_DIR was not made by this script; not deleting it"
	cmd_down
	say "deleting $STATE_DIR"
	rm -rf -- "$STATE_DIR"
}

usage() {
	sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

main() {
	find_shard_servers
	case ${1:-} in
	up) cmd_up ;;
	infra) cmd_infra ;;
	reshard) cmd_reshard ;;
	down) cmd_down ;;
	status) cmd_status ;;
	env) cmd_env ;;
	logs) cmd_logs ;;
	clean-state) cmd_clean_state ;;
	-h | --help | help) usage ;;
	*)
		usage >&2
		exit 2
		;;
	esac
}

main "$@"
