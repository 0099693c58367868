#!/usr/bin/env bash
# Deletes the kind cluster deploy/kind/up.sh created, with everything in it (the shard databases
# and NATS's store live on the node's volumes, so they go too).
# Settings (environment): CLUSTER_NAME (noetl).
# Needs bash 3.2 or newer (macOS's /bin/bash will do) and kind.

set -euo pipefail

readonly CLUSTER_NAME=${CLUSTER_NAME:-noetl}

command -v kind >/dev/null || {
	printf 'error: kind is not installed\n' >&2
	exit 1
}
clusters=$(kind get clusters 2>/dev/null) || clusters=""
if grep -qx "$CLUSTER_NAME" <<<"$clusters"; then
	kind delete cluster --name "$CLUSTER_NAME"
else
	printf 'no kind cluster named %s; nothing to do\n' "$CLUSTER_NAME"
fi
