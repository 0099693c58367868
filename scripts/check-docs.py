#!/usr/bin/env python3
"""Checks that the documentation matches the repository.

Without options it checks README.md, ARCHITECTURE.md, wiki/*.md and deploy/README.md (or the
markdown files given as arguments) for two things:

links   Every relative link, `[text](target)`, `![alt](target)` or `[label]: target`, names a
        file or directory tracked in the repository (relative to the document), and its
        `#anchor`, when it has one and points into a markdown file, is a heading of that file
        (GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, `-1`, `-2`
        for repeats) or an explicit `<a id|name="…">`. Links with a scheme (https:, mailto:)
        are not followed.

paths   Every inline code span that names a repository path, whole (`server/src/relay.rs`) or
        as its first word (`scripts/cluster.sh up`: the program of a command; later words,
        such as kubectl's `deploy/noetl-ctl`, are not paths), names a tracked file or
        directory. A word names a repository path when it consists only of letters, digits and
        `_ . - /` (so placeholders and globs such as `{id}`, `<shard>`, `…` and `*` never
        count, nor a single capital letter standing for a number, `postgres-shard-N.yaml`), and
        starts with a tracked top-level directory of the repository followed by `/` (as in
        `server/src/relay.rs` or `wiki/`); top-level files exist by definition. A `:LINE`,
        `:FROM-TO` or `::item` suffix (`server/src/relay.rs::Relay`) is allowed and ignored.
        Words in fenced code blocks are not checked, and neither are paths relative to anything
        but the repository root (`.state/` and `target/` are not tracked, so they never count).

With `--session FILE` it instead runs the shell session FILE holds between a line
`<!-- docs-check: session -->` and a line `<!-- /docs-check -->`: the ```sh fenced blocks there,
in order, as one `bash -euo pipefail` script from the repository root. The line
`eval "$(make -s env)"` is left out; NOETL_GATEWAY_URL and NOETL_TOKEN must be in the
environment instead (scripts/schemathesis.sh sets them for its cluster).

Exit status: 0 when everything checked holds, 1 otherwise (each failure is printed as
`FILE:LINE: what`), 2 on bad usage.
"""

import argparse
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DOCS = ["README.md", "ARCHITECTURE.md", "wiki/*.md", "deploy/README.md"]

SESSION_START = "<!-- docs-check: session -->"
SESSION_END = "<!-- /docs-check -->"
ENV_LINE = 'eval "$(make -s env)"'
SESSION_ENV = ("NOETL_GATEWAY_URL", "NOETL_TOKEN")
SESSION_TIMEOUT_S = 120

FENCE = re.compile(r"^\s{0,3}(```+|~~~+)\s*([\w+-]*)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def tracked():
    """The files git tracks, and every directory that holds one."""
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True
    ).stdout.decode()
    files = {f for f in out.split("\0") if f}
    dirs = set()
    for f in files:
        parts = f.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return files, dirs


def prose_lines(text):
    """(line number, line) for every line outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                continue
            yield number, line
        elif match and match.group(1).startswith(fence[0]) and len(match.group(1)) >= len(fence):
            fence = None


def without_code_spans(line):
    return CODE_SPAN.sub("", line)


def slug(heading):
    """GitHub's id for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


@functools.cache
def anchors(path):
    """The ids of a markdown file's headings and explicit anchors."""
    found, seen = set(), {}
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        found.update(EXPLICIT_ANCHOR.findall(line))
    return found


INLINE_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def check_links(doc, text, files, dirs):
    """(links checked, failures)."""
    checked, failures = 0, []
    for number, line in prose_lines(text):
        visible = without_code_spans(line)
        targets = INLINE_LINK.findall(visible)
        reference = REFERENCE_LINK.match(visible)
        if reference:
            targets.append(reference.group(1))
        for target in targets:
            if SCHEME.match(target):
                continue
            checked += 1
            where, _, anchor = target.partition("#")
            if where:
                resolved = os.path.normpath(os.path.join(os.path.dirname(doc), where))
                if resolved not in files and resolved not in dirs:
                    failures.append(f"{doc}:{number}: link to {target}: {resolved} does not exist")
                    continue
            else:
                resolved = doc
            if anchor and resolved.endswith(".md") and (REPO / resolved).is_file():
                if anchor not in anchors(REPO / resolved):
                    failures.append(
                        f"{doc}:{number}: link to {target}: {resolved} has no heading #{anchor}"
                    )
    return checked, failures


# A single capital letter between separators stands for a number: `postgres-shard-N.yaml`.
PLACEHOLDER = re.compile(r"(?:^|[-_./])[A-Z](?:[-_./]|$)")
PATH_WORD = re.compile(r"^([A-Za-z0-9_.][A-Za-z0-9_./-]*?)(?::\d+(?:-\d+)?|(?:::\w+)+)?$")


def path_word(span):
    """The repository path a code span may name: the span when it is one word, else its first
    word (the program of a command), without a `:LINE` suffix and unless it is a placeholder."""
    words = span.split()
    match = PATH_WORD.match(words[0].strip("\"'(),;")) if words else None
    if match and not PLACEHOLDER.search(match.group(1)):
        return match.group(1)
    return None


def check_paths(doc, text, files, dirs):
    """(paths checked, failures)."""
    top_dirs = {d for d in dirs if "/" not in d}
    checked, failures = 0, []
    for number, line in prose_lines(text):
        for _, span in CODE_SPAN.findall(line):
            word = path_word(span)
            if word is None:
                continue
            first, slash, _ = word.partition("/")
            if not slash or first not in top_dirs:
                continue
            checked += 1
            path = word.rstrip("/")
            if path not in files and path not in dirs:
                failures.append(f"{doc}:{number}: `{word}` does not exist")
    return checked, failures


def documents(patterns):
    docs = []
    for pattern in patterns:
        matched = sorted(str(p.relative_to(REPO)) for p in REPO.glob(pattern))
        if not matched:
            docs.append(pattern)  # reported as missing below
        docs.extend(matched)
    return docs


def check_docs(patterns):
    files, dirs = tracked()
    links = paths = 0
    failures = []
    docs = documents(patterns)
    for doc in docs:
        path = REPO / doc
        if not path.is_file():
            failures.append(f"{doc}: no such document")
            continue
        text = path.read_text(encoding="utf-8")
        checked, found = check_links(doc, text, files, dirs)
        links, failures = links + checked, failures + found
        checked, found = check_paths(doc, text, files, dirs)
        paths, failures = paths + checked, failures + found
    for failure in failures:
        print(failure)
    print(
        f"check-docs: {len(docs)} documents, {links} relative links and {paths} repository paths: "
        + (f"{len(failures)} failure(s)" if failures else "all resolve")
    )
    return 1 if failures else 0


def session_script(doc, text):
    """The session's shell blocks as one script, or an error message."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == SESSION_START]
    ends = [i for i, line in enumerate(lines) if line.strip() == SESSION_END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        return None, (
            f"{doc}: expected one line `{SESSION_START}` and, after it, one line "
            f"`{SESSION_END}` around the curl session (found {len(starts)} and {len(ends)})"
        )
    script, blocks, block = [], 0, None
    for number in range(starts[0] + 1, ends[0]):
        line = lines[number]
        fence = FENCE.match(line)
        if block is None:
            if fence and fence.group(2) in ("sh", "bash", "shell"):
                block, blocks = number + 1, blocks + 1
                script.append(f"# {doc}:{number + 2}")
        elif fence and not fence.group(2):
            block = None
        elif line.strip() == ENV_LINE:
            script.append(f"# skipped (the environment is set): {line.strip()}")
        else:
            script.append(line)
    if block is not None:
        return None, f"{doc}:{block}: the session's last ```sh block is not closed"
    if blocks == 0:
        return None, f"{doc}:{starts[0] + 1}: no ```sh block between the session markers"
    return "\n".join(script) + "\n", None


def run_session(path):
    doc = os.path.relpath(path, REPO) if path.is_relative_to(REPO) else str(path)
    missing = [name for name in SESSION_ENV if not os.environ.get(name)]
    if missing:
        print(f"check-docs: set {' and '.join(missing)} to run the session of {doc}")
        return 2
    text = path.read_text(encoding="utf-8")
    script, error = session_script(doc, text)
    if error:
        print(f"check-docs: {error}")
        return 1
    print(f"check-docs: running the session of {doc} against {os.environ['NOETL_GATEWAY_URL']}")
    try:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-x", "-c", script],
            cwd=REPO,
            timeout=SESSION_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
    except subprocess.TimeoutExpired:
        print(f"check-docs: the session of {doc} did not end within {SESSION_TIMEOUT_S} s")
        return 1
    if result.returncode != 0:
        print(f"check-docs: the session of {doc} failed (exit {result.returncode}); the script:")
        print(script, end="")
        return 1
    print(f"check-docs: the session of {doc} ran as written")
    return 0


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("docs", nargs="*", help="markdown files, relative to the repository root")
    parser.add_argument("--session", metavar="FILE", help="run FILE's curl session instead")
    args = parser.parse_args()
    if args.session:
        if args.docs:
            parser.error("--session takes one file and no other documents")
        return run_session(Path(args.session).resolve())
    return check_docs(args.docs or DEFAULT_DOCS)


if __name__ == "__main__":
    sys.exit(main())
