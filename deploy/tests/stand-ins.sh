#!/usr/bin/env bash
# Runs deploy/kind/up.sh and deploy/create-secrets.sh with stand-ins for docker, kind and kubectl
# (scripts on PATH in a temporary directory that record every call), where no Docker engine or
# cluster is at hand:
#   up.sh, docker build failing     stops at once with docker's message; nothing is loaded or applied
#   up.sh, docker image save failing, kind load failing (kind issue 3795's "content digest … not
#                                   found")    the same, each with the failing command's message
#   up.sh, the port-forward failing build, save (for the node's platform), load image-archive,
#                                   tokens and apply all happened as they should: the tag is the
#                                   image's, the kustomization it wrote renders (the real kubectl)
#                                   with the generated tokens' digests, and it waited for exactly
#                                   the StatefulSets and Deployments of that render
#   create-secrets.sh               the Secrets it creates: passwords from deploy/lib.sh's generator,
#                                   the admin token only in its file (mode 0600), the ctl token's
#                                   Secret, both digests in tokens.toml; a second run keeps them all
# Run by scripts/validate-deploy.sh; prints one line per check, exits 1 if any failed.
# Needs bash 4 (it is a test of this repository, run on Linux), a real kubectl (kustomize) and
# python3.

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly REPO_ROOT
# shellcheck source=../lib.sh source-path=SCRIPTDIR
source "$REPO_ROOT/deploy/lib.sh"
require_bash 4
REAL_KUBECTL=$(command -v kubectl) || {
	printf 'error: kubectl is needed (its kustomize renders what up.sh writes)\n' >&2
	exit 1
}
readonly REAL_KUBECTL
# The id the stand-in docker gives the built image, and the tag up.sh must make of it.
readonly IMAGE_ID=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
readonly IMAGE_TAG=dev-0123456789ab

TMP=$(mktemp -d)
readonly TMP
trap 'rm -rf "$TMP"' EXIT
FAILED=0
ok() { printf '  ok  %s\n' "$*"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
not_ok() {
	printf 'FAIL  %s\n' "$*"
	FAILED=1
}
# check WHAT COMMAND...: ok if the command succeeds.
check() {
	local what=$1
	shift
	if "$@"; then ok "$what"; else not_ok "$what"; fi
}

# --- the stand-ins --------------------------------------------------------------------------------
# Each appends its command line to $CALLS; $FAIL names the step that fails.

make_stand_ins() {
	mkdir -p "$TMP/bin"
	cat >"$TMP/bin/docker" <<-'EOF'
		#!/usr/bin/env bash
		printf 'docker %s\n' "$*" >>"$CALLS"
		case $1 in
		info | tag) exit 0 ;;
		build)
			if [[ $FAIL == build ]]; then
				echo 'ERROR: failed to solve: process "/bin/sh -c cargo build --release" did not complete successfully: exit code: 101' >&2
				exit 1
			fi
			;;
		version) echo linux/arm64 ;;
		image)
			case $2 in
			inspect) echo "$IMAGE_ID" ;;
			save)
				if [[ $3 == --help ]]; then
					printf 'Options:\n  -o, --output string\n      --platform string   Save only the given platform variant\n'
					exit 0
				fi
				if [[ $FAIL == save ]]; then
					echo 'Error response from daemon: unable to create manifests file: NotFound: content digest sha256:9f1e…: not found' >&2
					exit 1
				fi
				while (($#)); do
					if [[ $1 == -o ]]; then echo archive >"$2"; fi
					shift
				done
				;;
			esac
			;;
		*) echo "stand-in docker: unexpected: $*" >&2; exit 2 ;;
		esac
	EOF
	cat >"$TMP/bin/kind" <<-'EOF'
		#!/usr/bin/env bash
		printf 'kind %s\n' "$*" >>"$CALLS"
		case "$1 $2" in
		"get clusters") echo noetl ;;
		"load image-archive")
			[[ -s $3 ]] || { echo "stand-in kind: no archive $3" >&2; exit 2; }
			if [[ $FAIL == load ]]; then
				echo 'ERROR: failed to load image: command "docker exec --privileged -i noetl-control-plane ctr --namespace=k8s.io images import --all-platforms --digests --snapshotter=overlayfs -" failed with error: exit status 1' >&2
				echo 'Command Output: ctr: content digest sha256:82014a3cbf22d2e03382cd9b123f4151d956986e727340a466406a206408b7a2: not found' >&2
				exit 1
			fi
			;;
		*) echo "stand-in kind: unexpected: $*" >&2; exit 2 ;;
		esac
	EOF
	# apply -k renders with the real kubectl and prints what it would have applied, as
	# `kubectl apply -o name` does; a create -f - (create-secrets.sh) keeps the Secret in $SECRETS.
	cat >"$TMP/bin/kubectl" <<-'EOF'
		#!/usr/bin/env bash
		printf 'kubectl %s\n' "$*" >>"$CALLS"
		args=()
		while (($#)); do
			case $1 in
			--context | --namespace) shift 2 ;;
			*) args+=("$1"); shift ;;
			esac
		done
		case "${args[0]} ${args[1]:-}" in
		"apply -k")
			"$REAL_KUBECTL" kustomize "${args[2]}" 2>/dev/null | awk '
				/^kind: / { kind = tolower($2) }
				/^metadata:/ { meta = 1; next }
				meta && /^  name: / { group = (kind == "deployment" || kind == "statefulset") ? ".apps" : ""; print kind group "/" $2; meta = 0 }
				/^[^ ]/ { meta = 0 }'
			;;
		"rollout status") ;;
		"port-forward service/noetl-gateway")
			echo 'error: unable to listen on any of the requested ports' >&2
			exit 1
			;;
		"get pods") echo 'stand-in pods' ;;
		"get namespace") exit 0 ;;
		"get secret") [[ -f $SECRETS/${args[2]} ]] ;;
		"create -f")
			doc=$(cat)
			name=$(sed -n 's/^  name: //p' <<<"$doc" | head -n 1)
			printf '%s\n' "$doc" >"$SECRETS/$name"
			;;
		"delete secret") rm -f "$SECRETS/${args[2]}" ;;
		*) echo "stand-in kubectl: unexpected: ${args[*]}" >&2; exit 2 ;;
		esac
	EOF
	chmod +x "$TMP/bin/docker" "$TMP/bin/kind" "$TMP/bin/kubectl"
}

# run_up CASE: up.sh with the stand-ins, the step CASE failing; its state in $TMP/CASE.
run_up() {
	local case=$1 start=$SECONDS
	ELAPSED=-1
	mkdir -p "$TMP/$case"
	: >"$TMP/$case/calls"
	if env PATH="$TMP/bin:$PATH" CALLS="$TMP/$case/calls" FAIL="$case" IMAGE_ID="$IMAGE_ID" \
		REAL_KUBECTL="$REAL_KUBECTL" STATE_DIR="$TMP/$case/state" READY_TIMEOUT=30 GATEWAY_PORT="$(free_port)" \
		"$REPO_ROOT/deploy/kind/up.sh" >"$TMP/$case/out" 2>"$TMP/$case/err"; then
		not_ok "up.sh ($case failing) exited 0"
		return
	fi
	ELAPSED=$((SECONDS - start))
}

called() { grep -q -- "$2" "$TMP/$1/calls"; }
not_called() { ! called "$@"; }
said() { grep -qF -- "$2" "$TMP/$1/err"; }

test_up_failures() {
	local case
	for case in build save load; do
		run_up "$case"
		check "up.sh, $case failing: stopped at once (${ELAPSED}s)" test "$ELAPSED" -lt 20
		check "up.sh, $case failing: applied nothing, made no token" \
			eval "not_called $case '^kubectl .*apply -k' && [[ ! -e $TMP/$case/state/kind/api-token ]]"
	done
	check "up.sh, docker build failing: docker's message, then up.sh's" \
		eval "said build 'ERROR: failed to solve' && said build 'error: docker build failed'"
	check "up.sh, docker build failing: no tag, save or load after it" \
		eval "not_called build 'docker tag' && not_called build 'image save -' && not_called build 'kind load'"
	check "up.sh, docker image save failing: its message, and no kind load" \
		eval "said save 'content digest sha256:9f1e' && said save 'error: docker image save' && not_called save 'kind load'"
	check "up.sh, kind load failing: kind's message (content digest … not found), then up.sh's" \
		eval "said load 'ctr: content digest sha256:82014a3c' && said load 'error: kind load image-archive failed'"
}

# Python checks of a render on stdin. The rendered Secrets are generated ones: base64 in `data`.
read -r -d '' TOKENS_TOML_HOLDS <<'EOF' || true
import base64, re, sys
text = sys.stdin.read()
files = [base64.b64decode(m).decode() for m in re.findall(r"\n  tokens.toml: \|\n((?:    \S+\n)+)", text)]
assert len(files) == 1, files
assert 'sha256 = "%s"' % sys.argv[1] in files[0] and 'sha256 = "%s"' % sys.argv[2] in files[0], files[0]
assert 'scopes = ["read"]' in files[0], files[0]
EOF
read -r -d '' CTL_TOKEN_READ <<'EOF' || true
import base64, re, sys
text = sys.stdin.read()
values = [base64.b64decode(m).decode() for m in re.findall(r"\n  token: \|?\n?((?:    \S+\n)+|\S+)", text)]
assert values == [sys.argv[1]], values
assert re.search(r"name: NOETL_TOKEN\n\s+valueFrom:\n\s+secretKeyRef:\n\s+key: token\n\s+name: noetl-ctl-token", text)
EOF
readonly TOKENS_TOML_HOLDS CTL_TOKEN_READ

# Names of the StatefulSets and Deployments a kustomization renders, as apply -o name prints them.
workloads_of() {
	"$REAL_KUBECTL" kustomize "$1" 2>/dev/null | awk '
		/^kind: / { kind = $2 }
		/^metadata:/ { meta = 1; next }
		meta && /^  name: / { if (kind == "StatefulSet" || kind == "Deployment") print tolower(kind) ".apps/" $2; meta = 0 }
		/^[^ ]/ { meta = 0 }'
}

test_up_through_apply() {
	run_up port-forward
	local dir=$TMP/port-forward state=$TMP/port-forward/state/kind render
	check "up.sh, the port-forward failing: kubectl's message, then up.sh's" \
		eval "said port-forward 'unable to listen' && said port-forward 'error: the port-forward to the gateway did not work'"
	check "up.sh: built, tagged $IMAGE_TAG, saved for the node's platform (linux/arm64), loaded that archive" \
		eval "called port-forward 'docker build -t noetl-dispatch:build' &&
			called port-forward 'docker tag noetl-dispatch:build noetl-dispatch:$IMAGE_TAG' &&
			called port-forward 'docker image save --platform linux/arm64 -o .*/image.tar noetl-dispatch:$IMAGE_TAG' &&
			called port-forward 'kind load image-archive .*/image.tar --name noetl' &&
			not_called port-forward 'load docker-image'"
	check "up.sh: the tokens are files of mode 0600 only" \
		eval "[[ \$(stat -c %a $state/api-token $state/ctl-token | sort -u) == 600 ]]"
	render=$("$REAL_KUBECTL" kustomize "$state" 2>/dev/null) || render=""
	check "up.sh: its kustomization renders" test -n "$render"
	check "up.sh: the render runs image noetl-dispatch:$IMAGE_TAG" grep -q "image: noetl-dispatch:$IMAGE_TAG" <<<"$render"
	local api ctl
	api=$(printf '%s' "$(<"$state/api-token")" | sha256sum | cut -d' ' -f1)
	ctl=$(printf '%s' "$(<"$state/ctl-token")" | sha256sum | cut -d' ' -f1)
	check "up.sh: Secret noetl-api-tokens holds both tokens' digests (dev every scope, ctl read)" \
		python3 -c "$TOKENS_TOML_HOLDS" "$api" "$ctl" <<<"$render"
	check "up.sh: Secret noetl-ctl-token holds the ctl token, and noetl-ctl reads it" \
		python3 -c "$CTL_TOKEN_READ" "$(<"$state/ctl-token")" <<<"$render"
	check "up.sh: the gateway's and noetl-ctl's pod templates carry the tokens' digest" \
		test "$(grep -c "noetl.io/api-tokens-sha256: $(sha256sum "$state/tokens.toml" | cut -d' ' -f1)" <<<"$render")" -eq 2
	local expected waited
	expected=$(workloads_of "$REPO_ROOT/deploy/overlays/kind" | sort)
	waited=$(sed -n 's/^kubectl --context kind-noetl --namespace noetl rollout status \([^ ]*\) .*/\1/p' "$dir/calls" | sort)
	check "up.sh: waited for the render's $(wc -l <<<"$expected") StatefulSets and Deployments ($(grep -c postgres <<<"$expected") databases), no other" \
		test "$waited" == "$expected"
}

test_create_secrets() {
	local dir=$TMP/secrets
	mkdir -p "$dir/store"
	run_secrets() {
		env PATH="$TMP/bin:$PATH" CALLS="$dir/calls" SECRETS="$dir/store" \
			"$REPO_ROOT/deploy/create-secrets.sh" --admin-token-file "$dir/$1" >"$dir/out" 2>&1
	}
	if ! run_secrets admin-token; then
		cat "$dir/out"
		not_ok "create-secrets.sh failed"
		return
	fi
	check "create-secrets.sh: created noetl-nats-auth, noetl-shard-0, noetl-shard-1, noetl-api-tokens, noetl-ctl-token" \
		test "$(cd "$dir/store" && echo *)" == "noetl-api-tokens noetl-ctl-token noetl-nats-auth noetl-shard-0 noetl-shard-1"
	check "create-secrets.sh: every password is the generator's (p and 48 hex digits)" \
		test "$(cat "$dir/store/noetl-nats-auth" "$dir/store/noetl-shard-0" | grep -cE '^  [a-z-]*password: "p[0-9a-f]{48}"$')" -eq 6
	check "create-secrets.sh: the admin token is only in its file, of mode 0600" \
		eval "[[ \$(stat -c %a $dir/admin-token) == 600 ]] && ! grep -rqF \"\$(<$dir/admin-token)\" $dir/store $dir/calls $dir/out"
	local admin ctl
	admin=$(printf '%s' "$(<"$dir/admin-token")" | sha256sum | cut -d' ' -f1)
	ctl=$(sed -n 's/^  token: "\(.*\)"$/\1/p' "$dir/store/noetl-ctl-token")
	ctl=$(printf '%s' "$ctl" | sha256sum | cut -d' ' -f1)
	check "create-secrets.sh: tokens.toml holds the admin token's and the ctl token's digests" \
		eval "grep -q 'sha256 = \"$admin\"' $dir/store/noetl-api-tokens && grep -q 'sha256 = \"$ctl\"' $dir/store/noetl-api-tokens"
	local before
	before=$(cat "$dir/store/"*)
	run_secrets second-token || true
	kept_all() { [[ $(cat "$dir/store/"*) == "$before" && ! -e $dir/second-token ]]; }
	check "create-secrets.sh, run again: kept every Secret as it was, wrote no token" kept_all
}

main() {
	make_stand_ins
	test_up_failures
	test_up_through_apply
	test_create_secrets
	if ((FAILED)); then
		printf 'stand-ins: FAILED\n'
		exit 1
	fi
	printf 'stand-ins: every check passed\n'
}

main "$@"
