#!/bin/sh
# Copies the workspace's manifests (every Cargo.toml, and Cargo.lock) from SOURCE to DEST and gives
# every crate an empty src/lib.rs and src/main.rs, so `cargo build` in DEST compiles every
# dependency and nothing of ours.
#
# The Dockerfile builds DEST first: that layer is reused for as long as no manifest changes,
# so a change to our code rebuilds only our crates. (This is what cargo-chef does; doing it
# with a shell script means the image build fetches nothing but crates.)
# scripts/validate-deploy.sh runs it too, and checks that cargo accepts the result.
#
# Usage: stub-workspace.sh SOURCE DEST   (DEST must not exist yet, or be empty)
set -eu

source_dir=$1
dest_dir=$2

mkdir -p "$dest_dir"
cp "$source_dir/Cargo.lock" "$dest_dir/Cargo.lock"
cd "$source_dir"
find . -name Cargo.toml -not -path './target/*' -not -path './.state/*' | sort | while read -r manifest; do
	crate=$(dirname "$manifest")
	mkdir -p "$dest_dir/$crate"
	cp "$manifest" "$dest_dir/$crate/Cargo.toml"
	# The root manifest is the (virtual) workspace: it has no sources.
	[ "$crate" = . ] && continue
	mkdir -p "$dest_dir/$crate/src"
	: >"$dest_dir/$crate/src/lib.rs"
	printf 'fn main() {}\n' >"$dest_dir/$crate/src/main.rs"
done
