#!/usr/bin/env bash
# Creates the Secrets the production overlay expects and does not render, with random passwords:
#   noetl-nats-auth   gateway-password, server-password, worker-password, operator-password,
#                     route-password (the NATS users, and the NATS servers' route password)
#   noetl-shard-K     host, port, user, password, database of shard K's PostgreSQL, for
#                     K = 0 .. SHARDS-1 (the in-cluster database noetl-postgres-K)
# A Secret that already exists is left exactly as it is, so this is safe to run again, and after
# adding a shard it creates only the new shard's Secret. Nothing is printed but the names.
# Passwords are hex: NOETL_SHARDS entries cannot hold ',' or ';', and the route password goes
# into a URL.
#
# For a database outside the cluster, create noetl-shard-K yourself with its host, port, user,
# password and database (wiki/operations.md shows the command).
#
# Usage: deploy/create-secrets.sh [--namespace noetl] [--shards N] [--context CONTEXT]
#   --shards   default: as many as deploy/base has postgres-shard-K.yaml files

set -euo pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly DEPLOY
namespace=noetl
shards=""
kubectl=(kubectl)

die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

while (($#)); do
	case $1 in
	--namespace)
		namespace=${2:?--namespace needs a value}
		shift 2
		;;
	--shards)
		shards=${2:?--shards needs a value}
		shift 2
		;;
	--context)
		kubectl+=(--context "${2:?--context needs a value}")
		shift 2
		;;
	-h | --help)
		sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
done

if [[ -z $shards ]]; then
	shards=0
	while [[ -f $DEPLOY/base/postgres-shard-$shards.yaml ]]; do
		shards=$((shards + 1))
	done
fi
[[ $shards =~ ^[1-9][0-9]*$ ]] || die "--shards must be a number of 1 or more, not \"$shards\""

# 48 hex characters (192 bits).
password() {
	od -An -tx1 -N24 /dev/urandom | tr -d ' \n'
}

exists() {
	"${kubectl[@]}" --namespace "$namespace" get secret "$1" >/dev/null 2>&1
}

# Reads `key value` lines on stdin and creates the Secret from them. The manifest goes through a
# pipe, so no password is ever on a command line; `create` (not apply) fails rather than replace
# a Secret someone created meanwhile.
create() {
	local name=$1 key value
	{
		printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n' "$name"
		printf '  labels:\n    app.kubernetes.io/part-of: noetl-dispatch\n'
		printf 'type: Opaque\nstringData:\n'
		while read -r key value; do
			printf '  %s: "%s"\n' "$key" "$value"
		done
	} | "${kubectl[@]}" --namespace "$namespace" create -f - >/dev/null
	printf 'created secret %s/%s\n' "$namespace" "$name"
}

if ! "${kubectl[@]}" get namespace "$namespace" >/dev/null 2>&1; then
	"${kubectl[@]}" create namespace "$namespace" >/dev/null
	printf 'created namespace %s\n' "$namespace"
fi

if exists noetl-nats-auth; then
	printf 'kept secret %s/noetl-nats-auth (exists)\n' "$namespace"
else
	for role in gateway server worker operator route; do
		printf '%s-password %s\n' "$role" "$(password)"
	done | create noetl-nats-auth
fi

for ((k = 0; k < shards; k++)); do
	if exists "noetl-shard-$k"; then
		printf 'kept secret %s/noetl-shard-%d (exists)\n' "$namespace" "$k"
		continue
	fi
	printf 'host noetl-postgres-%d\nport 5432\nuser noetl\npassword %s\ndatabase noetl\n' "$k" "$(password)" |
		create "noetl-shard-$k"
done
