#!/usr/bin/env bash
# Adds shard K to the manifests (K = the current number of shards: shards are numbered 0..N-1
# and only ever added at the end):
#   deploy/base/postgres-shard-K.yaml     a copy of postgres-shard-0.yaml with K in place of 0
#   deploy/base/kustomization.yaml        lists it
#   deploy/base/server.yaml               SHARD_K_* from the Secret noetl-shard-K, entry K of
#                                         NOETL_SHARDS, replicas K+1
#   deploy/overlays/kind/secrets.yaml     a placeholder Secret noetl-shard-K
#   deploy/overlays/kind/laptop.yaml      the kind requests of noetl-postgres-K
# It changes files only; wiki/operations.md ("Growing the shard count") says how to roll it out
# (the Secret in production, holding back the running servers, noetlctl topology apply).
#
# Usage: deploy/add-shard.sh K
#        deploy/add-shard.sh --check     checks that every postgres-shard-K.yaml is the copy of
#                                        postgres-shard-0.yaml this script would write, and
#                                        that the kind overlay patches each one's requests (run
#                                        by scripts/validate-deploy.sh)
#
# Needs bash 3.2 or newer (macOS's /bin/bash will do), and BSD or GNU sed, awk and find.

set -euo pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly DEPLOY
readonly BASE=$DEPLOY/base
readonly KIND_SECRETS=$DEPLOY/overlays/kind/secrets.yaml
readonly KIND_PATCHES=$DEPLOY/overlays/kind/laptop.yaml
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$DEPLOY/lib.sh"

# postgres-shard-0.yaml with shard K in place of shard 0.
postgres_manifest() {
	local k=$1
	sed -e "s/noetl-postgres-0/noetl-postgres-$k/g" \
		-e "s/noetl-shard-0/noetl-shard-$k/g" \
		-e "s/noetl\\.io\\/shard: \"0\"/noetl.io\\/shard: \"$k\"/g" \
		-e "s/database of shard 0:/database of shard $k:/" \
		"$BASE/postgres-shard-0.yaml"
}

shard_count() {
	local n=0
	while [[ -f $BASE/postgres-shard-$n.yaml ]]; do
		n=$((n + 1))
	done
	printf '%d\n' "$n"
}

check() {
	local n k status=0
	n=$(shard_count)
	for ((k = 1; k < n; k++)); do
		if postgres_manifest "$k" | diff -u - "$BASE/postgres-shard-$k.yaml" >/dev/null; then
			printf '  ok  postgres-shard-%d.yaml is postgres-shard-0.yaml for shard %d\n' "$k" "$k"
		else
			printf 'FAIL postgres-shard-%d.yaml differs from postgres-shard-0.yaml with %d for 0:\n' "$k" "$k"
			postgres_manifest "$k" | diff -u - "$BASE/postgres-shard-$k.yaml" || true
			status=1
		fi
	done
	for ((k = 0; k < n; k++)); do
		if [[ -n $(kind_postgres_patch 0) && $(<"$KIND_PATCHES") == *"$(kind_postgres_patch "$k")"* ]]; then
			printf '  ok  deploy/overlays/kind/laptop.yaml patches the requests of noetl-postgres-%d\n' "$k"
		else
			printf 'FAIL deploy/overlays/kind/laptop.yaml has no patch for noetl-postgres-%d like that of noetl-postgres-0\n' "$k"
			status=1
		fi
	done
	if [[ -n $(find "$BASE" -maxdepth 1 -name 'postgres-shard-*.yaml' ! -name 'postgres-shard-[0-9]*.yaml') ]] ||
		[[ $(find "$BASE" -maxdepth 1 -name 'postgres-shard-*.yaml' | wc -l) -ne $n ]]; then
		printf 'FAIL deploy/base has postgres-shard files that are not numbered 0..%d\n' "$((n - 1))"
		status=1
	fi
	return "$status"
}

# The kind overlay's patch of noetl-postgres-0 (its requests) with shard K in place of shard 0,
# after a `---` line; nothing when laptop.yaml has no such patch.
kind_postgres_patch() {
	awk -v k="$1" '
		function take() { if (doc ~ /\n  name: noetl-postgres-0\n/) found = doc; doc = "" }
		/^---$/ { take(); next }
		{ doc = doc $0 "\n" }
		END {
			take()
			if (found == "") exit
			gsub(/noetl-postgres-0\n/, "noetl-postgres-" k "\n", found)
			printf "---\n%s", found
		}
	' "$KIND_PATCHES"
}

server_env_block() {
	local k=$1 key
	printf '        # Shard %d\n' "$k"
	for key in host port user password database; do
		printf '        - name: SHARD_%d_%s\n' "$k" "$(printf '%s' "$key" | tr '[:lower:]' '[:upper:]')"
		printf '          valueFrom:\n'
		printf '            secretKeyRef:\n'
		printf '              name: noetl-shard-%d\n' "$k"
		printf '              key: %s\n' "$key"
	done
}

kind_secret() {
	local k=$1
	cat <<-EOF
		---
		apiVersion: v1
		kind: Secret
		metadata:
		  name: noetl-shard-$k
		  labels:
		    app.kubernetes.io/part-of: noetl-dispatch
		    noetl.io/shard: "$k"
		type: Opaque
		stringData:
		  host: noetl-postgres-$k
		  port: "5432"
		  user: noetl
		  password: kind-shard-$k-not-a-secret
		  database: noetl
	EOF
}

add() {
	local k=$1 n
	[[ $k =~ ^[1-9][0-9]*$ ]] || die "K must be a shard number of 1 or more, not \"$k\""
	n=$(shard_count)
	[[ $k -eq $n ]] || die "the manifests have shards 0..$((n - 1)); the next one to add is $n, not $k"
	grep -q "^- postgres-shard-$((k - 1))\\.yaml$" "$BASE/kustomization.yaml" ||
		die "deploy/base/kustomization.yaml does not list postgres-shard-$((k - 1)).yaml"
	grep -q '^        # Entry K is shard K' "$BASE/server.yaml" ||
		die "deploy/base/server.yaml has lost the line '# Entry K is shard K' this script inserts before"
	# shellcheck disable=SC2016 # a literal $( in the pattern
	grep -q '^            host=\$(SHARD_0_HOST);' "$BASE/server.yaml" ||
		die "deploy/base/server.yaml has lost the NOETL_SHARDS value line"

	postgres_manifest "$k" >"$BASE/postgres-shard-$k.yaml"

	LAST="- postgres-shard-$((k - 1)).yaml" NEXT="- postgres-shard-$k.yaml" awk '
		{ print }
		$0 == ENVIRON["LAST"] { print ENVIRON["NEXT"] }
	' "$BASE/kustomization.yaml" >"$BASE/kustomization.yaml.new"
	mv "$BASE/kustomization.yaml.new" "$BASE/kustomization.yaml"

	local block entry
	block=$(server_env_block "$k")
	entry="host=\$(SHARD_${k}_HOST);port=\$(SHARD_${k}_PORT);user=\$(SHARD_${k}_USER);password=\$(SHARD_${k}_PASSWORD);database=\$(SHARD_${k}_DATABASE)"
	BLOCK=$block ENTRY=$entry REPLICAS=$((k + 1)) awk '
		/^        # Entry K is shard K/ { print ENVIRON["BLOCK"] }
		/^            host=\$\(SHARD_0_HOST\);/ { $0 = $0 "," ENVIRON["ENTRY"] }
		/^  replicas: [0-9]+$/ && !replicas_done { $0 = "  replicas: " ENVIRON["REPLICAS"]; replicas_done = 1 }
		{ print }
	' "$BASE/server.yaml" >"$BASE/server.yaml.new"
	mv "$BASE/server.yaml.new" "$BASE/server.yaml"

	kind_secret "$k" >>"$KIND_SECRETS"
	kind_postgres_patch "$k" >>"$KIND_PATCHES"

	cat <<-EOF
		Added shard $k to the manifests:
		  deploy/base/postgres-shard-$k.yaml (new), deploy/base/kustomization.yaml,
		  deploy/base/server.yaml (SHARD_${k}_*, NOETL_SHARDS entry $k, replicas $((k + 1))),
		  deploy/overlays/kind/secrets.yaml (placeholder Secret noetl-shard-$k),
		  deploy/overlays/kind/laptop.yaml (the kind requests of noetl-postgres-$k)
		Check them with scripts/validate-deploy.sh, then roll out as wiki/operations.md says
		("Growing the shard count"): create the Secret noetl-shard-$k (production), hold back the
		running servers (partition $k), kubectl apply -k, wait for noetl-server-$k, then
		noetlctl topology apply --shards $((k + 1)) --wait.
	EOF
}

case ${1:-} in
--check) check ;;
'' | -h | --help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
*) add "$1" ;;
esac
