#!/usr/bin/env bash
# Brings noetl-dispatch up on a local kind cluster and runs an example execution through it:
#   1. creates the kind cluster (deploy/kind/cluster.yaml) unless it exists,
#   2. builds the image (Dockerfile) and loads it into the cluster's node,
#   3. applies deploy/overlays/kind with that image and the API token of .state/kind (generated
#      once: .state/kind/api-token holds the token, the gateway's Secret only its digest),
#   4. waits until NATS, the shard databases, the servers, the worker and the gateway are ready,
#   5. port-forwards the gateway, waits until its /readyz says every shard answers, submits
#      examples/diamond.json with that token, follows its event stream and fails unless it succeeded.
# Running it again rebuilds the image and rolls out only what changed.
#
# Needs: docker (a running engine), kind (v0.25.0 or newer), kubectl (1.27 or newer), curl;
# python3 only to print JSON readably.
# Settings (environment): CLUSTER_NAME (noetl), GATEWAY_PORT (28080, the local end of the
# port-forward), READY_TIMEOUT (600 s), EXAMPLE (examples/diamond.json), EXAMPLE_TIMEOUT (120 s).
# deploy/kind/down.sh deletes the cluster.

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly REPO_ROOT
readonly CLUSTER_NAME=${CLUSTER_NAME:-noetl}
readonly GATEWAY_PORT=${GATEWAY_PORT:-28080}
readonly READY_TIMEOUT=${READY_TIMEOUT:-600}
readonly EXAMPLE=${EXAMPLE:-examples/diamond.json}
readonly EXAMPLE_TIMEOUT=${EXAMPLE_TIMEOUT:-120}
readonly NAMESPACE=noetl
readonly IMAGE=noetl-dispatch
readonly GATEWAY_URL=http://127.0.0.1:$GATEWAY_PORT
readonly KUBECTL=(kubectl --context "kind-$CLUSTER_NAME")
readonly KIND_STATE=$REPO_ROOT/.state/kind
readonly API_TOKEN_FILE=$KIND_STATE/api-token
readonly TOKENS_FILE=$KIND_STATE/tokens.toml

say() { printf '==> %s\n' "$*"; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

WORK_DIR=$(mktemp -d)
readonly WORK_DIR
PORT_FORWARD_PID=""
cleanup() {
	if [[ -n $PORT_FORWARD_PID ]]; then
		kill "$PORT_FORWARD_PID" 2>/dev/null || true
	fi
	rm -rf "$WORK_DIR"
}
trap cleanup EXIT

check_tools() {
	local tool missing=()
	for tool in docker kind kubectl curl; do
		command -v "$tool" >/dev/null || missing+=("$tool")
	done
	((${#missing[@]} == 0)) || die "missing: ${missing[*]} (see wiki/operations.md, \"On kind\")"
	docker info >/dev/null 2>&1 || die "docker cannot reach a Docker engine (is it running, may you use it?)"
	[[ $EXAMPLE_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "EXAMPLE_TIMEOUT must be a whole number of seconds"
	[[ $READY_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "READY_TIMEOUT must be a whole number of seconds"
}

create_cluster() {
	if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
		say "kind cluster $CLUSTER_NAME exists; using it"
	else
		say "creating kind cluster $CLUSTER_NAME (deploy/kind/cluster.yaml)"
		kind create cluster --name "$CLUSTER_NAME" --config "$REPO_ROOT/deploy/kind/cluster.yaml" --wait 180s
	fi
}

# Builds the image and tags it after its content, so an unchanged build rolls nothing out and a
# changed one rolls out everything that runs it. Prints the tag.
build_image() {
	local id tag
	say "building the image (docker build -t $IMAGE:build $REPO_ROOT)" >&2
	docker build -t "$IMAGE:build" "$REPO_ROOT" >&2
	id=$(docker image inspect --format '{{.Id}}' "$IMAGE:build")
	tag=dev-${id#sha256:}
	tag=${tag:0:16}
	docker tag "$IMAGE:build" "$IMAGE:$tag"
	say "loading $IMAGE:$tag into the cluster's node" >&2
	kind load docker-image "$IMAGE:$tag" --name "$CLUSTER_NAME" >&2
	printf '%s\n' "$tag"
}

# The gateway's API token for this cluster (tenant `dev`, every scope), made once per state dir,
# as `make up` makes its own: the token goes into api-token (mode 0600), its SHA-256 digest into
# tokens.toml, which becomes the Secret noetl-api-tokens. It is never printed nor put on a command
# line (curl reads it from a header file).
ensure_api_token() {
	mkdir -p "$KIND_STATE"
	if [[ ! -s $API_TOKEN_FILE || ! -s $TOKENS_FILE ]]; then
		local token digest
		token=ntl_kind_$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
		digest=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)
		(umask 077 && printf '%s\n' "$token" >"$API_TOKEN_FILE")
		cat >"$TOKENS_FILE" <<-EOF
			# Written by deploy/kind/up.sh: the kind cluster's API token (its digest only).
			[[tokens]]
			name = "dev"
			tenant = "dev"
			scopes = ["submit", "read", "admin"]
			sha256 = "$digest"
		EOF
		say "generated an API token into ${API_TOKEN_FILE#"$REPO_ROOT"/}"
	fi
	(umask 077 && printf 'authorization: Bearer %s\n' "$(<"$API_TOKEN_FILE")" >"$WORK_DIR/auth-header")
}

# The kind overlay with the image just built and this cluster's token: a kustomization over it in
# .state/kind (kustomize takes only relative paths to other kustomizations), applied with
# `kubectl apply -k`. Its tokens.toml replaces the overlay's placeholder Secret; the gateway reads
# the file once at start-up, so the pod template carries the file's digest and a new token rolls
# the gateway.
apply_manifests() {
	local tag=$1 tokens_digest
	tokens_digest=$(sha256sum "$TOKENS_FILE" | cut -d' ' -f1)
	cat >"$KIND_STATE/kustomization.yaml" <<-EOF
		# Written by deploy/kind/up.sh: deploy/overlays/kind with the image it built and loaded, and
		# the API token digest of tokens.toml (the token is in api-token).
		apiVersion: kustomize.config.k8s.io/v1beta1
		kind: Kustomization
		resources:
		- ../../deploy/overlays/kind
		images:
		- name: $IMAGE
		  newTag: $tag
		secretGenerator:
		- name: noetl-api-tokens
		  behavior: replace
		  files:
		  - tokens.toml
		patches:
		- target:
		    kind: Deployment
		    name: noetl-gateway
		  patch: |-
		    apiVersion: apps/v1
		    kind: Deployment
		    metadata:
		      name: noetl-gateway
		    spec:
		      template:
		        metadata:
		          annotations:
		            noetl.io/api-tokens-sha256: "$tokens_digest"
	EOF
	say "applying deploy/overlays/kind with image $IMAGE:$tag"
	"${KUBECTL[@]}" apply -k "$KIND_STATE"
}

wait_for_rollouts() {
	local deadline=$((SECONDS + READY_TIMEOUT)) workload left
	for workload in statefulset/noetl-nats statefulset/noetl-postgres-0 statefulset/noetl-postgres-1 \
		statefulset/noetl-server deployment/noetl-worker deployment/noetl-gateway deployment/noetl-ctl; do
		left=$((deadline - SECONDS))
		((left > 0)) || left=1
		say "waiting for $workload (up to ${left}s)"
		if ! "${KUBECTL[@]}" --namespace "$NAMESPACE" rollout status "$workload" --timeout "${left}s"; then
			"${KUBECTL[@]}" --namespace "$NAMESPACE" get pods -o wide >&2 || true
			die "$workload did not become ready; kubectl -n $NAMESPACE describe $workload and its pods' logs say why"
		fi
	done
}

port_forward() {
	say "port-forwarding the gateway to $GATEWAY_URL"
	"${KUBECTL[@]}" --namespace "$NAMESPACE" port-forward service/noetl-gateway "$GATEWAY_PORT:8080" \
		>"$WORK_DIR/port-forward.log" 2>&1 &
	PORT_FORWARD_PID=$!
	local deadline=$((SECONDS + 30))
	until curl -fs --max-time 2 -o /dev/null "$GATEWAY_URL/healthz"; do
		if ! kill -0 "$PORT_FORWARD_PID" 2>/dev/null || ((SECONDS >= deadline)); then
			cat "$WORK_DIR/port-forward.log" >&2
			die "the port-forward to the gateway did not work (is port $GATEWAY_PORT free? set GATEWAY_PORT)"
		fi
		sleep 1
	done
}

# The gateway's /readyz is the cluster's readiness: NATS, a fresh topology, a node-id lease, and
# every shard answering with a working database.
wait_for_cluster() {
	local deadline=$((SECONDS + READY_TIMEOUT)) body=""
	say "waiting for $GATEWAY_URL/readyz (every shard answering)"
	until body=$(curl -fsS --max-time 5 "$GATEWAY_URL/readyz" 2>/dev/null); do
		if ((SECONDS >= deadline)); then
			body=$(curl -sS --max-time 5 "$GATEWAY_URL/readyz" 2>&1) || true
			die "the cluster was not ready within ${READY_TIMEOUT}s; the gateway's /readyz said: $body"
		fi
		sleep 2
	done
	say "ready: $body"
}

print_json() {
	if command -v python3 >/dev/null && python3 -m json.tool <<<"$1" 2>/dev/null; then
		return 0
	fi
	printf '%s\n' "$1"
}

# The first string field called $1 in the JSON document $2 (the documents read here have the
# execution's own fields before its steps').
string_field() {
	grep -o "\"$1\"[[:space:]]*:[[:space:]]*\"[^\"]*\"" <<<"$2" | head -n 1 |
		sed 's/^[^:]*:[[:space:]]*"\(.*\)"$/\1/'
}

run_example() {
	local body=$EXAMPLE api=$GATEWAY_URL/api/v1/executions response id status
	[[ $body == /* ]] || body=$REPO_ROOT/$body
	[[ -f $body ]] || die "the example $EXAMPLE does not exist"
	say "submitting $EXAMPLE: POST $api"
	response=$(curl -sS --max-time 30 --fail-with-body -X POST -H "@$WORK_DIR/auth-header" \
		-H 'content-type: application/json' --data-binary "@$body" "$api") || die "submitting the example failed: ${response:-no response}"
	print_json "$response"
	id=$(string_field execution_id "$response")
	[[ $id =~ ^[0-9]+$ ]] || die "the submit response has no execution_id"

	# The stream replays the event log and closes by itself once the execution has ended.
	say "following it: GET $api/$id/stream (up to ${EXAMPLE_TIMEOUT}s)"
	curl -sS -N --max-time "$EXAMPLE_TIMEOUT" --fail-with-body -H "@$WORK_DIR/auth-header" "$api/$id/stream" | sed -un 's/^event: /  /p' ||
		die "execution $id did not end within ${EXAMPLE_TIMEOUT}s, or its event stream broke"

	response=$(curl -sS --max-time 30 --fail-with-body -H "@$WORK_DIR/auth-header" "$api/$id") ||
		die "reading execution $id failed: ${response:-no response}"
	print_json "$response"
	status=$(string_field status "$response")
	[[ $status == succeeded ]] || die "the example execution $id ended ${status:-in an unknown state}, not succeeded"
	say "the example execution $id succeeded"
}

main() {
	cd "$REPO_ROOT"
	check_tools
	create_cluster
	local tag
	tag=$(build_image)
	ensure_api_token
	apply_manifests "$tag"
	wait_for_rollouts
	port_forward
	wait_for_cluster
	run_example
	cat <<-EOF

		noetl-dispatch runs in the kind cluster $CLUSTER_NAME, namespace $NAMESPACE (kubectl context kind-$CLUSTER_NAME).
		  the gateway:  kubectl -n $NAMESPACE port-forward service/noetl-gateway $GATEWAY_PORT:8080
		                then $GATEWAY_URL/api/v1/executions (this script's port-forward ends with it)
		  API token:    in ${API_TOKEN_FILE#"$REPO_ROOT"/} (tenant dev, every scope):
		                -H "authorization: Bearer \$(cat ${API_TOKEN_FILE#"$REPO_ROOT"/})"
		  noetlctl:     kubectl -n $NAMESPACE exec deploy/noetl-ctl -- noetlctl topology show
		  pods:         kubectl -n $NAMESPACE get pods
		  logs:         kubectl -n $NAMESPACE logs statefulset/noetl-server   (or deploy/noetl-gateway, …)
		  remove it:    deploy/kind/down.sh
	EOF
}

main "$@"
