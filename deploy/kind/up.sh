#!/usr/bin/env bash
# Brings noetl-dispatch up on a local kind cluster and runs an example execution through it:
#   1. creates the kind cluster (deploy/kind/cluster.yaml) unless it exists,
#   2. builds the image (Dockerfile), saves it for the node's platform and loads that archive into
#      the cluster's node (`kind load image-archive`: `kind load docker-image` fails with "content
#      digest … not found" on Docker's containerd image store),
#   3. applies deploy/overlays/kind with that image and the API tokens of $STATE_DIR/kind (made
#      once: api-token holds the token for you, ctl-token the noetl-ctl pod's read-only one, and
#      the gateway's Secret only their digests),
#   4. waits until every StatefulSet and Deployment the apply names has rolled out,
#   5. port-forwards the gateway, waits until its /readyz says every shard answers, submits
#      examples/diamond.json with that token, follows its event stream and fails unless it succeeded.
# Any step that fails stops the script at once with that step's message.
# Running it again rebuilds the image and rolls out only what changed.
#
# Needs: bash 3.2 or newer (macOS's /bin/bash will do), docker (a running engine), kind (v0.25.0
# or newer), kubectl (1.27 or newer), curl; python3 only to print JSON readably.
# Settings (environment): CLUSTER_NAME (noetl), GATEWAY_PORT (28080, the local end of the
# port-forward), READY_TIMEOUT (600 s), EXAMPLE (examples/diamond.json), EXAMPLE_TIMEOUT (120 s),
# STATE_DIR (<repo>/.state; this script keeps its files in STATE_DIR/kind).
# deploy/kind/down.sh deletes the cluster.

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly REPO_ROOT
# shellcheck source=../lib.sh source-path=SCRIPTDIR
source "$REPO_ROOT/deploy/lib.sh"

readonly CLUSTER_NAME=${CLUSTER_NAME:-noetl}
readonly GATEWAY_PORT=${GATEWAY_PORT:-28080}
readonly READY_TIMEOUT=${READY_TIMEOUT:-600}
readonly EXAMPLE=${EXAMPLE:-examples/diamond.json}
readonly EXAMPLE_TIMEOUT=${EXAMPLE_TIMEOUT:-120}
readonly NAMESPACE=noetl
readonly IMAGE=noetl-dispatch
readonly GATEWAY_URL=http://127.0.0.1:$GATEWAY_PORT
KUBECTL=(kubectl --context "kind-$CLUSTER_NAME")
readonly KIND_STATE=${STATE_DIR:-$REPO_ROOT/.state}/kind
readonly API_TOKEN_FILE=$KIND_STATE/api-token
readonly CTL_TOKEN_FILE=$KIND_STATE/ctl-token
readonly TOKENS_FILE=$KIND_STATE/tokens.toml
# The image tag build_image makes (a global, not printed: a function run in $(…) would run
# without `set -e`, and a failed build would go unnoticed).
IMAGE_TAG=""

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
	local tool missing=""
	for tool in docker kind kubectl curl; do
		command -v "$tool" >/dev/null || missing="$missing $tool"
	done
	[[ -z $missing ]] || die "missing:$missing (see wiki/operations.md, \"On kind\")"
	docker info >/dev/null 2>&1 || die "docker cannot reach a Docker engine (is it running, may you use it?)"
	[[ $EXAMPLE_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "EXAMPLE_TIMEOUT must be a whole number of seconds"
	[[ $READY_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "READY_TIMEOUT must be a whole number of seconds"
}

create_cluster() {
	local clusters
	clusters=$(kind get clusters 2>/dev/null) || clusters=""
	if grep -qx "$CLUSTER_NAME" <<<"$clusters"; then
		say "kind cluster $CLUSTER_NAME exists; using it"
	else
		say "creating kind cluster $CLUSTER_NAME (deploy/kind/cluster.yaml)"
		kind create cluster --name "$CLUSTER_NAME" --config "$REPO_ROOT/deploy/kind/cluster.yaml" --wait 180s ||
			die "kind create cluster failed (its output is above)"
	fi
}

# Builds the image and tags it after its content, so an unchanged build rolls nothing out and a
# changed one rolls out everything that runs it. Sets IMAGE_TAG.
build_image() {
	local id
	say "building the image (docker build -t $IMAGE:build $REPO_ROOT)"
	docker build -t "$IMAGE:build" "$REPO_ROOT" || die "docker build failed (its output is above)"
	id=$(docker image inspect --format '{{.Id}}' "$IMAGE:build") ||
		die "docker image inspect $IMAGE:build failed after the build"
	[[ $id == sha256:* ]] || die "docker image inspect gave \"$id\" as the id of $IMAGE:build, not sha256:…"
	IMAGE_TAG=dev-${id#sha256:}
	IMAGE_TAG=${IMAGE_TAG:0:16}
	docker tag "$IMAGE:build" "$IMAGE:$IMAGE_TAG" || die "docker tag $IMAGE:$IMAGE_TAG failed"
}

# The node's platform (os/arch): the engine's, on which kind runs its node containers.
node_platform() {
	local platform
	platform=$(docker version --format '{{.Server.Os}}/{{.Server.Arch}}') ||
		die "docker version cannot tell the engine's platform"
	[[ $platform =~ ^[a-z0-9]+/[a-z0-9]+$ ]] || die "docker version gave \"$platform\" as the engine's platform"
	printf '%s\n' "$platform"
}

# Saves the image for the node's platform only and loads that archive into the node. Saving
# every platform of an image (as `kind load docker-image` does) fails on Docker's containerd
# image store whenever the content of another platform is missing (kind issue 3795).
load_image() {
	local platform archive=$WORK_DIR/image.tar
	platform=$(node_platform)
	say "saving $IMAGE:$IMAGE_TAG for $platform and loading it into the cluster's node"
	if docker image save --help 2>/dev/null | grep -q -- '--platform'; then
		docker image save --platform "$platform" -o "$archive" "$IMAGE:$IMAGE_TAG" ||
			die "docker image save of $IMAGE:$IMAGE_TAG for $platform failed"
	else
		# Docker before 28 saves one platform anyway: it has no containerd image store by default.
		docker image save -o "$archive" "$IMAGE:$IMAGE_TAG" || die "docker image save of $IMAGE:$IMAGE_TAG failed"
	fi
	kind load image-archive "$archive" --name "$CLUSTER_NAME" ||
		die "kind load image-archive failed (its output is above)"
}

# The API tokens for this cluster, made once per state dir, as `make up` makes its own: api-token
# (tenant `dev`, every scope) for you, ctl-token (tenant `dev`, read) for the noetl-ctl pod's
# noetlctl, both mode 0600; tokens.toml holds their SHA-256 digests and becomes the Secret
# noetl-api-tokens, ctl-token the Secret noetl-ctl-token. They are never printed nor put on a
# command line (curl reads the token from a header file).
ensure_api_token() {
	mkdir -p "$KIND_STATE"
	if [[ ! -s $API_TOKEN_FILE || ! -s $CTL_TOKEN_FILE || ! -s $TOKENS_FILE ]]; then
		write_dev_tokens ntl_kind "$API_TOKEN_FILE" "$TOKENS_FILE" deploy/kind/up.sh ctl "$CTL_TOKEN_FILE"
		say "generated API tokens into ${KIND_STATE#"$REPO_ROOT"/}/api-token (yours) and ctl-token (the noetl-ctl pod's)"
	fi
	(umask 077 && printf 'authorization: Bearer %s\n' "$(<"$API_TOKEN_FILE")" >"$WORK_DIR/auth-header")
}

# The kind overlay with the image just built and this cluster's tokens: a kustomization over it
# in $STATE_DIR/kind (kustomize takes only relative paths to other kustomizations), applied with
# `kubectl apply -k`. Its tokens.toml and ctl-token replace the overlay's placeholder Secrets;
# the gateway reads the file, and noetl-ctl its token, once at start-up, so their pod templates
# carry the file's digest and new tokens roll them. The names of what was applied go to
# $WORK_DIR/applied.
apply_manifests() {
	local tokens_digest resources workload
	tokens_digest=$(sha256_hex <"$TOKENS_FILE")
	resources=$(cd "$KIND_STATE" && relative_path "$REPO_ROOT/deploy/overlays/kind")
	{
		cat <<-EOF
			# Written by deploy/kind/up.sh: deploy/overlays/kind with the image it built and loaded, and
			# the API tokens of tokens.toml (digests) and ctl-token.
			apiVersion: kustomize.config.k8s.io/v1beta1
			kind: Kustomization
			resources:
			- $resources
			images:
			- name: $IMAGE
			  newTag: $IMAGE_TAG
			secretGenerator:
			- name: noetl-api-tokens
			  behavior: replace
			  files:
			  - tokens.toml
			- name: noetl-ctl-token
			  behavior: replace
			  files:
			  - token=ctl-token
			patches:
		EOF
		for workload in noetl-gateway noetl-ctl; do
			cat <<-EOF
				- target:
				    kind: Deployment
				    name: $workload
				  patch: |-
				    apiVersion: apps/v1
				    kind: Deployment
				    metadata:
				      name: $workload
				    spec:
				      template:
				        metadata:
				          annotations:
				            noetl.io/api-tokens-sha256: "$tokens_digest"
			EOF
		done
	} >"$KIND_STATE/kustomization.yaml"
	say "applying deploy/overlays/kind with image $IMAGE:$IMAGE_TAG"
	"${KUBECTL[@]}" apply -k "$KIND_STATE" -o name >"$WORK_DIR/applied" ||
		die "kubectl apply -k ${KIND_STATE#"$REPO_ROOT"/} failed (its output is above)"
	sed 's/^/  /' "$WORK_DIR/applied"
}

# The path of the directory $1 relative to the working directory, for the kustomization's
# `resources` (kustomize wants a relative path to another kustomization).
relative_path() {
	local target here up=""
	here=$(pwd -P)
	target=$(cd "$1" && pwd -P)
	while [[ $here != / && $target != "$here" && $target != "$here"/* ]]; do
		here=$(dirname "$here")
		up="../$up"
	done
	if [[ $target == "$here" ]]; then
		up=${up%/}
		printf '%s\n' "${up:-.}"
	elif [[ $here == / ]]; then
		printf '%s%s\n' "$up" "${target#/}"
	else
		printf '%s%s\n' "$up" "${target#"$here"/}"
	fi
}

# Waits for every StatefulSet and Deployment the apply named, within READY_TIMEOUT in all.
wait_for_rollouts() {
	local deadline=$((SECONDS + READY_TIMEOUT)) workload left count=0
	while read -r workload; do
		case $workload in
		statefulset.apps/* | deployment.apps/*) ;;
		*) continue ;;
		esac
		count=$((count + 1))
		left=$((deadline - SECONDS))
		((left > 0)) || left=1
		say "waiting for $workload (up to ${left}s)"
		if ! "${KUBECTL[@]}" --namespace "$NAMESPACE" rollout status "$workload" --timeout "${left}s"; then
			"${KUBECTL[@]}" --namespace "$NAMESPACE" get pods -o wide >&2 || true
			die "$workload did not become ready; kubectl -n $NAMESPACE describe $workload and its pods' logs say why"
		fi
	done <"$WORK_DIR/applied"
	((count > 0)) || die "kubectl apply named no StatefulSet or Deployment to wait for"
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

# The event names of a server-sent event stream on stdin, one per line as they arrive.
print_event_names() {
	local line
	while IFS= read -r line; do
		case $line in
		'event: '*) printf '  %s\n' "${line#event: }" ;;
		esac
	done
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
	curl -sS -N --max-time "$EXAMPLE_TIMEOUT" --fail-with-body -H "@$WORK_DIR/auth-header" "$api/$id/stream" | print_event_names ||
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
	build_image
	load_image
	ensure_api_token
	apply_manifests
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
		  noetlctl:     kubectl -n $NAMESPACE exec deploy/noetl-ctl -- noetlctl topology show   (or list, get ID, …)
		  pods:         kubectl -n $NAMESPACE get pods
		  logs:         kubectl -n $NAMESPACE logs statefulset/noetl-server   (or deploy/noetl-gateway, …)
		  remove it:    deploy/kind/down.sh
	EOF
}

main "$@"
