#!/usr/bin/env bash
# Creates the Secrets the production overlay expects and does not render, with random passwords:
#   noetl-nats-auth   gateway-password, server-password, worker-password, operator-password,
#                     route-password (the NATS users, and the NATS servers' route password)
#   noetl-shard-K     host, port, user, password, database of shard K's PostgreSQL, for
#                     K = 0 .. SHARDS-1 (the in-cluster database noetl-postgres-K)
#   noetl-api-tokens  tokens.toml: the gateway's bearer tokens, as SHA-256 digests; created with
#                     one token `admin` (scopes submit, read, admin) of the tenant --tenant, and
#                     one token `ctl` (scope read, the same tenant) for the noetl-ctl pod
#   noetl-ctl-token   token: that `ctl` token, which noetlctl in the noetl-ctl pod sends (created
#                     only together with noetl-api-tokens)
# A Secret that already exists is left exactly as it is, so this is safe to run again, and after
# adding a shard it creates only the new shard's Secret; the one exception is a noetl-ctl-token
# without noetl-api-tokens, replaced when noetl-api-tokens is created, since its token would be
# unknown to the gateway. Nothing is printed but the names.
# The admin token itself is written only to the file --admin-token-file names (created with mode
# 0600; an existing file is never overwritten), never printed nor put on a command line; that
# flag is needed while noetl-api-tokens does not exist. More tokens: wiki/operations.md,
# "API tokens".
# Passwords are the letter `p` and 48 random hex digits (deploy/lib.sh, new_password): NOETL_SHARDS
# entries cannot hold ',' or ';', the route password goes into a URL, and nats-server reads a
# NATS password that starts with a digit as a number and fails to start.
#
# For a database outside the cluster, create noetl-shard-K yourself with its host, port, user,
# password and database (wiki/operations.md shows the command).
#
# Usage: deploy/create-secrets.sh [--namespace noetl] [--shards N] [--context CONTEXT]
#                                  [--admin-token-file PATH] [--tenant TENANT]
#   --shards            default: as many as deploy/base has postgres-shard-K.yaml files
#   --admin-token-file  where to write the admin token of a new noetl-api-tokens (a new file)
#   --tenant            the admin token's tenant; default: default
#
# Needs bash 3.2 or newer (macOS's /bin/bash will do), kubectl, and sha256sum, shasum or openssl.

set -euo pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly DEPLOY
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$DEPLOY/lib.sh"
namespace=noetl
shards=""
admin_token_file=""
tenant=default
kubectl=(kubectl)

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
	--admin-token-file)
		admin_token_file=${2:?--admin-token-file needs a value}
		shift 2
		;;
	--tenant)
		tenant=${2:?--tenant needs a value}
		shift 2
		;;
	-h | --help)
		# The comment block at the top of this file.
		sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed -n 's/^# \{0,1\}//p'
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
# Stricter than the gateway (1 to 128 characters), so the name needs no quoting in TOML or YAML.
[[ $tenant =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ ]] ||
	die "--tenant must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
if [[ -n $admin_token_file && -e $admin_token_file ]]; then
	die "$admin_token_file exists; give --admin-token-file a path that does not"
fi

exists() {
	"${kubectl[@]}" --namespace "$namespace" get secret "$1" >/dev/null 2>&1
}

# Creates noetl-api-tokens with an admin token and the noetl-ctl pod's read-only token, and
# noetl-ctl-token with the latter: the admin token goes to $admin_token_file only (mode 0600,
# created here: noclobber refuses a file that appeared meanwhile), the Secret gets the digests.
# printf is a shell builtin, so no token is ever a process argument.
create_api_tokens() {
	local token ctl_token
	token=ntl_$(random_hex 32)
	ctl_token=ntl_$(random_hex 32)
	(umask 077 && set -o noclobber && printf '%s\n' "$token" >"$admin_token_file") ||
		die "cannot create $admin_token_file"
	if ! {
		printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: noetl-api-tokens\n'
		printf '  labels:\n    app.kubernetes.io/part-of: noetl-dispatch\n'
		printf 'type: Opaque\nstringData:\n  tokens.toml: |\n'
		printf '    [[tokens]]\n    name = "admin"\n    tenant = "%s"\n' "$tenant"
		printf '    scopes = ["submit", "read", "admin"]\n    sha256 = "%s"\n' "$(printf '%s' "$token" | sha256_hex)"
		printf '\n    [[tokens]]\n    name = "ctl"\n    tenant = "%s"\n' "$tenant"
		printf '    scopes = ["read"]\n    sha256 = "%s"\n' "$(printf '%s' "$ctl_token" | sha256_hex)"
	} | "${kubectl[@]}" --namespace "$namespace" create -f - >/dev/null; then
		# A token without its Secret opens nothing; remove it so that a second run can write the file.
		rm -f "$admin_token_file"
		die "creating secret $namespace/noetl-api-tokens failed"
	fi
	printf 'created secret %s/noetl-api-tokens (token "admin", tenant %s; the token is in %s)\n' \
		"$namespace" "$tenant" "$admin_token_file"
	if exists noetl-ctl-token; then
		# Its token is not the one just listed: it is replaced, never kept beside a digest it lacks.
		"${kubectl[@]}" --namespace "$namespace" delete secret noetl-ctl-token >/dev/null
	fi
	printf 'token %s\n' "$ctl_token" | create noetl-ctl-token
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

# Asked before anything is created, so a missing flag leaves the cluster as it was.
if ! exists noetl-api-tokens && [[ -z $admin_token_file ]]; then
	die "the Secret noetl-api-tokens does not exist: give --admin-token-file PATH to receive its admin token"
fi

if ! "${kubectl[@]}" get namespace "$namespace" >/dev/null 2>&1; then
	"${kubectl[@]}" create namespace "$namespace" >/dev/null
	printf 'created namespace %s\n' "$namespace"
fi

if exists noetl-nats-auth; then
	printf 'kept secret %s/noetl-nats-auth (exists)\n' "$namespace"
else
	for role in gateway server worker operator route; do
		printf '%s-password %s\n' "$role" "$(new_password)"
	done | create noetl-nats-auth
fi

for ((k = 0; k < shards; k++)); do
	if exists "noetl-shard-$k"; then
		printf 'kept secret %s/noetl-shard-%d (exists)\n' "$namespace" "$k"
		continue
	fi
	printf 'host noetl-postgres-%d\nport 5432\nuser noetl\npassword %s\ndatabase noetl\n' "$k" "$(new_password)" |
		create "noetl-shard-$k"
done

if exists noetl-api-tokens; then
	printf 'kept secret %s/noetl-api-tokens (exists)\n' "$namespace"
	if ! exists noetl-ctl-token; then
		printf 'no secret %s/noetl-ctl-token: noetlctl in the noetl-ctl pod sends no API token (wiki/operations.md, "API tokens", says how to add one)\n' \
			"$namespace"
	fi
	if [[ -n $admin_token_file ]]; then
		printf 'wrote no token to %s: add tokens to the existing Secret (wiki/operations.md, "API tokens")\n' \
			"$admin_token_file"
	fi
else
	create_api_tokens
fi
