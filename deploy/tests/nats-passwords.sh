#!/usr/bin/env bash
# Checks that every password deploy/create-secrets.sh can make is one nats-server accepts in
# deploy/base/nats.conf, where it is read as $NATS_<ROLE>_PASSWORD through the configuration
# grammar (a value that starts with a digit may be a number there: `1e1abc…` does not parse).
#
#   deploy/tests/nats-passwords.sh NATS_SERVER [COUNT]
#
# Makes COUNT (1000) passwords with new_password of deploy/lib.sh, the generator create-secrets.sh
# calls, plus password_from_hex of the worst hex it could draw (`1e1abc…`), and runs
# `nats-server -t -c deploy/base/nats.conf` with them, five at a time (one in each of the five
# password variables). Each must be accepted, and be `p` and 48 hex digits. The raw hex `1e1abc…`
# (what the generator made before) must be refused, or the check proves nothing.
# Run by scripts/validate-deploy.sh; exits 1 if any check failed. Needs bash 4 (it is a test of
# this repository, run on Linux).

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly REPO_ROOT
# shellcheck source=../lib.sh source-path=SCRIPTDIR
source "$REPO_ROOT/deploy/lib.sh"
require_bash 4
readonly CONF=$REPO_ROOT/deploy/base/nats.conf
readonly VARIABLES=(NATS_ROUTE_PASSWORD NATS_GATEWAY_PASSWORD NATS_SERVER_PASSWORD NATS_WORKER_PASSWORD NATS_OPERATOR_PASSWORD)
readonly SERVER=${1:?usage: $0 NATS_SERVER [COUNT]}
readonly COUNT=${2:-1000}
readonly WORST_HEX=1e1abcdef0123456789abcdef0123456789abcdef0123456

# nats-server -t with the five passwords given; prints its complaint when it refuses.
accepts() {
	local -a env=(POD_NAME=noetl-nats-0)
	local i
	for i in "${!VARIABLES[@]}"; do
		env+=("${VARIABLES[i]}=$1")
		shift
	done
	env "${env[@]}" "$SERVER" -t -c "$CONF" >/dev/null 2>"$TMP/err" || {
		cat "$TMP/err"
		return 1
	}
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# The generator, as create-secrets.sh sources it.
(
	# shellcheck source=../lib.sh source-path=SCRIPTDIR
	source "$REPO_ROOT/deploy/lib.sh"
	for ((i = 0; i < COUNT; i++)); do
		new_password
	done
	password_from_hex "$WORST_HEX"
) >"$TMP/passwords"
mapfile -t passwords <"$TMP/passwords"

failed=0
malformed=$(grep -cvE '^p[0-9a-f]{48}$' "$TMP/passwords") || true
if ((malformed)); then
	printf 'FAIL %d of the passwords are not p and 48 hex digits\n' "$malformed"
	failed=1
fi
# Five to a run; the last run is topped up with the first passwords.
refused=0
for ((i = 0; i < ${#passwords[@]}; i += 5)); do
	batch=("${passwords[@]:i:5}")
	while ((${#batch[@]} < 5)); do
		batch+=("${passwords[0]}")
	done
	if ! accepts "${batch[@]}" >"$TMP/refusal"; then
		refused=$((refused + 1))
		# The first few say enough.
		if ((refused <= 3)); then
			printf 'FAIL nats-server refused one of: %s\n' "${batch[*]}"
			cat "$TMP/refusal"
		fi
	fi
done
if ((refused)); then
	printf 'FAIL nats-server refused %d of %d runs of five passwords\n' "$refused" "$(((${#passwords[@]} + 4) / 5))"
	failed=1
else
	printf '  ok  %d generated passwords and p%s: nats-server accepts each in nats.conf\n' "$COUNT" "$WORST_HEX"
fi
if accepts "$WORST_HEX" x x x x 2>/dev/null >"$TMP/worst"; then
	printf 'FAIL the raw hex %s was accepted: this check cannot tell a bad password\n' "$WORST_HEX"
	failed=1
else
	printf '  ok  the raw hex %s is refused, as it should be: %s\n' "$WORST_HEX" "$(tail -n 1 "$TMP/worst")"
fi
exit "$failed"
