"""The command blocks of wiki/operations.md: each is marked as run here or not, and the ones run
here run.

    python3 operations_doc.py check [--doc FILE]
    python3 operations_doc.py run [--doc FILE] --workdir DIR
    python3 operations_doc.py noetlctl [--doc FILE] --noetlctl PATH

Every fenced block of shell (```sh, ```bash, ```shell, ```console or no language) must have, on
the line before its fence, one of these markers (HTML comments, which Markdown does not show):
    <!-- kubernetes-only -->        needs a Kubernetes cluster (or Docker and kind): not run here
    <!-- not-local: REASON -->      needs something else this machine lacks (Grafana, …): not run
    <!-- local -->                  run as it is, against the local cluster (scripts/cluster.sh)
    <!-- local: OPTION; OPTION -->  the same, changed by each OPTION:
        kubectl-exec   every command is `kubectl -n noetl exec deploy/noetl-ctl -- COMMAND` and
                       COMMAND is run here, as the noetl-ctl pod would run it
        FROM=TO        the text FROM is replaced by TO first (TO may name environment variables:
                       the block is run by bash), e.g. N+1=2 for a placeholder
        retry-for=S    a block that fails is run again (every 2 s) until it succeeds or S
                       seconds have passed: for a command the page says to repeat after a wait

check   fails if a shell block has no marker, or a marker is unknown.
run     runs the local blocks, one `bash -euo pipefail` each, in --workdir with the environment
        it is given (NOETL_GATEWAY_URL, NOETL_TOKEN, NOETL_NATS_URL, noetlctl on PATH: what
        `scripts/cluster.sh env` prints), in the order of the page; fails on the first that fails.
noetlctl  every `noetlctl …` the page names, in any block or inline code, is a subcommand that
        `noetlctl SUBCOMMAND --help` knows, with every --flag it names in that help.
Python 3 standard library only. Run by deploy/tests/operations-doc.sh (scripts/validate-deploy.sh).
"""

import argparse
import os
import re
import subprocess
import time

from report import Report

SHELL_LANGUAGES = {"", "sh", "bash", "shell", "console"}
FENCE = re.compile(r"^(\s*)```([A-Za-z0-9_-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(kubernetes-only|not-local:\s*\S.*?|local(?::\s*(.*?))?)\s*-->\s*$")
KUBECTL_EXEC = re.compile(r"^kubectl -n noetl exec deploy/noetl-ctl -- (.+)$")
NOETLCTL = re.compile(r"\bnoetlctl((?:\s+[^\s`|;&<>()]+)+)")


class Block:
    def __init__(self, line, language, marker, text):
        self.line = line
        self.language = language
        self.marker = marker
        self.text = text

    @property
    def local(self):
        return self.marker is not None and self.marker.group(1).startswith("local")

    def options(self):
        return [o.strip() for o in (self.marker.group(2) or "").split(";") if o.strip()]


def blocks(path):
    """Every fenced block of the page, with the marker on the line before it (or None)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    found = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, language = m.group(1), m.group(2)
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        text = "\n".join(line[len(indent):] if line.startswith(indent) else line.lstrip()
                         for line in lines[i + 1:end])
        found.append(Block(i + 1, language, MARKER.match(before), text))
        i = end + 1
    return found


def commands(text):
    """The commands of a block: lines joined across a trailing backslash or pipe, comments out."""
    joined, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.strip() if current else line.rstrip()
        if current.endswith("\\"):
            current = current[:-1].rstrip() + " "
        elif current.endswith("|"):
            current += " "
        else:
            joined.append(current)
            current = ""
    if current:
        joined.append(current)
    return joined


def retry_for(block):
    """The seconds a local block may be retried for (0: run once)."""
    for option in block.options():
        if option.startswith("retry-for="):
            return int(option.split("=", 1)[1])
    return 0


def script_of(block):
    """The shell script a local block runs, or raises ValueError."""
    text = block.text
    exec_in_pod = False
    for option in block.options():
        if option == "kubectl-exec":
            exec_in_pod = True
        elif re.fullmatch(r"retry-for=[1-9][0-9]*", option):
            continue
        elif "=" in option:
            old, new = option.split("=", 1)
            if old not in text:
                raise ValueError("the option %r: %r is not in the block" % (option, old))
            text = text.replace(old, new)
        else:
            raise ValueError("unknown option %r" % option)
    if not exec_in_pod:
        return text
    lines = []
    for command in commands(text):
        m = KUBECTL_EXEC.match(command)
        if not m:
            raise ValueError("kubectl-exec, but this is not `kubectl -n noetl exec deploy/noetl-ctl -- …`: %s" % command)
        lines.append(m.group(1))
    return "\n".join(lines)


def check(report, doc):
    counts = {}
    for block in blocks(doc):
        if block.language not in SHELL_LANGUAGES:
            continue
        where = "%s:%d" % (doc, block.line)
        if not report.check(block.marker is not None,
                            "%s: a shell block without a marker (<!-- kubernetes-only -->, <!-- local -->, …) "
                            "on the line before it" % where):
            continue
        kind = block.marker.group(1).split(":")[0]
        counts[kind] = counts.get(kind, 0) + 1
        if block.local:
            try:
                script_of(block)
                report.check(True, "")
            except ValueError as e:
                report.check(False, "%s: %s" % (where, e))
    print("  %s: shell blocks: %s" % (doc, ", ".join("%d %s" % (n, k) for k, n in sorted(counts.items())) or "none"))


def run(report, doc, workdir):
    for block in blocks(doc):
        if block.language not in SHELL_LANGUAGES or block.marker is None or not block.local:
            continue
        where = "%s:%d" % (doc, block.line)
        script = script_of(block)
        print("==> %s (%s)" % (where, block.marker.group(0).strip()))
        for line in script.splitlines():
            print("  $ " + line)
        deadline = time.monotonic() + retry_for(block)
        attempt = 0
        while True:
            attempt += 1
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=workdir,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
            last = result.returncode == 0 or time.monotonic() >= deadline
            if attempt == 1 or last:
                for line in result.stdout.splitlines():
                    print("    " + line)
            if last:
                break
            if attempt == 1:
                print("    (exited %d: run again every 2 s for up to %d s)" % (result.returncode, retry_for(block)))
            time.sleep(2)
        if attempt > 1:
            print("    (attempt %d)" % attempt)
        if not report.check(result.returncode == 0, "%s: exited %d" % (where, result.returncode)):
            return


def mentions(doc):
    """Every `noetlctl …` of the page, in code blocks and inline code: (line, the words after it)."""
    found = []
    in_block = False
    with open(doc, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if FENCE.match(line) or (in_block and line.strip() == "```"):
                in_block = not in_block
                continue
            texts = [line] if in_block else re.findall(r"`([^`]+)`", line)
            for text in texts:
                for m in NOETLCTL.finditer(text):
                    found.append((number, m.group(1).split()))
    return found


def check_noetlctl(report, doc, noetlctl):
    helps = {}

    def help_of(path):
        key = tuple(path)
        if key not in helps:
            result = subprocess.run([noetlctl] + path + ["--help"], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
            helps[key] = result.stdout if result.returncode == 0 else None
        return helps[key]

    seen = set()
    for number, words in mentions(doc):
        path = []
        for word in words:
            if not re.fullmatch(r"[a-z][a-z-]*", word) or help_of(path + [word]) is None:
                break
            path.append(word)
        flags = [w.split("=")[0] for w in words if w.startswith("--")]
        key = (tuple(path), tuple(flags))
        if key in seen:
            continue
        seen.add(key)
        where = "%s:%d: noetlctl %s" % (doc, number, " ".join(words))
        if not report.check(bool(path) or words[0].startswith("-"), where + ": no such subcommand"):
            continue
        text = help_of(path)
        for flag in flags:
            report.check(re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(flag), text) is not None,
                         "%s: `noetlctl %s --help` has no %s" % (where, " ".join(path), flag))
    print("  %s: %d distinct noetlctl commands, each known to %s" % (doc, len(seen), noetlctl))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("check", "run", "noetlctl"))
    parser.add_argument("--doc", default=os.path.normpath(os.path.join(here, "..", "..", "wiki", "operations.md")))
    parser.add_argument("--workdir", help="run: where the blocks run")
    parser.add_argument("--noetlctl", help="noetlctl: the binary to ask")
    args = parser.parse_args()
    doc = os.path.relpath(args.doc)
    report = Report()
    if args.mode == "check":
        check(report, doc)
    elif args.mode == "run":
        if not args.workdir:
            parser.error("run needs --workdir")
        run(report, doc, args.workdir)
    else:
        if not args.noetlctl:
            parser.error("noetlctl needs --noetlctl")
        check_noetlctl(report, doc, args.noetlctl)
    report.finish("operations.md " + args.mode)


if __name__ == "__main__":
    main()
