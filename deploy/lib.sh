# shellcheck shell=bash
# Shell functions shared by the scripts under deploy/ and by scripts/cluster.sh: sourced, never run.
# Written for bash 3.2 (macOS's /bin/bash) and for BSD as well as GNU tools, like the scripts that
# source it (scripts/validate-deploy.sh checks both with deploy/tools/check_portable_shell.py).

# Stops with a message unless this bash's major version is $1 or more (a script that needs bash 4
# calls it first thing; macOS's /bin/bash is 3.2).
require_bash() {
	if ((BASH_VERSINFO[0] < $1)); then
		printf 'error: %s needs bash %s or newer (this is %s)\n' "$0" "$1" "$BASH_VERSION" >&2
		exit 1
	fi
}

say() { printf '==> %s\n' "$*"; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# The SHA-256 digest of stdin, as 64 hex digits: sha256sum (GNU), shasum (macOS) or openssl.
sha256_hex() {
	local sum
	if command -v sha256sum >/dev/null 2>&1; then # portable: GNU first, then macOS's shasum
		sum=$(sha256sum)                          # portable: only where it exists
	elif command -v shasum >/dev/null 2>&1; then
		sum=$(shasum -a 256)
	elif command -v openssl >/dev/null 2>&1; then
		sum=$(openssl dgst -sha256 -r)
	else
		die "no sha256sum, shasum or openssl to compute a SHA-256 digest with" # portable: a message
	fi
	printf '%s\n' "${sum%% *}"
}

# $1 random bytes as hex digits (2 per byte).
random_hex() {
	od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'
}

# A password made from the hex digits $1: the letter `p` before them.
# nats-server reads the NATS passwords ($NATS_*_PASSWORD in deploy/base/nats.conf) through its
# configuration grammar, where a value that starts with a digit may be a number (`97969e7…` does
# not parse, `12345` becomes an integer and is refused as a password) and quoting "$VAR" would
# make the password the literal text `$VAR`. A value that starts with a letter and holds only
# letters and digits is always a string. The same passwords go into NOETL_SHARDS (no `,` or `;`)
# and into the NATS route URL, which letters and digits suit too.
password_from_hex() {
	printf 'p%s\n' "$1"
}

# A new random password (192 bits): what deploy/create-secrets.sh puts into every Secret.
new_password() {
	password_from_hex "$(random_hex 24)"
}

# Writes a new API token with every scope for the tenant `dev` to $2 (mode 0600) and its digest
# to the tokens file $3 the gateway reads; the token is `$1_` and 48 random hex digits, $4 says
# who wrote the file. With $5 (a name) and $6 (a file), a second token, `$5` with the scope read,
# goes to $6 (without a newline after it: the file becomes a Secret's value, and that an
# environment variable) and its digest into the same tokens file. The tokens are never printed
# nor put on a command line (printf is a shell builtin).
write_dev_tokens() {
	local prefix=$1 token_file=$2 tokens_file=$3 writer=$4 second_name=${5:-} second_file=${6:-}
	local token
	token=${prefix}_$(random_hex 24)
	(umask 077 && printf '%s\n' "$token" >"$token_file")
	{
		printf '# Written by %s (digests only; the tokens are in files of mode 0600).\n' "$writer"
		printf '[[tokens]]\nname = "dev"\ntenant = "dev"\nscopes = ["submit", "read", "admin"]\n'
		printf 'sha256 = "%s"\n' "$(printf '%s' "$token" | sha256_hex)"
		if [[ -n $second_name ]]; then
			token=${prefix}_$(random_hex 24)
			(umask 077 && printf '%s' "$token" >"$second_file")
			printf '\n[[tokens]]\nname = "%s"\ntenant = "dev"\nscopes = ["read"]\n' "$second_name"
			printf 'sha256 = "%s"\n' "$(printf '%s' "$token" | sha256_hex)"
		fi
	} >"$tokens_file"
}
