"""Checks the shell scripts against the bash version their header claims.

    python3 check_portable_shell.py SCRIPT...
    python3 check_portable_shell.py --self-test

A bash script's first comment block either says it needs "bash 3.2 or newer" (it runs with
macOS's /bin/bash and BSD tools: what an operator runs) or "bash 4" (and then checks
BASH_VERSINFO, or calls require_bash 4 of deploy/lib.sh, before anything else runs, with a
message saying so). A script that claims bash 3.2
must not use what bash 3.2 lacks or what only GNU tools do, as far as a line-by-line reading can
tell (listed in RULES). There is no bash 3.2 on the Linux machines this runs on, so this reading
is the check. A line may carry the comment `# portable: <why>` to pass anyway (a GNU tool tried
first, with a fallback). Scripts of another shell (`#!/bin/sh`) are not checked.
Python 3 standard library only. Run by scripts/validate-deploy.sh; exits 1 if a check failed.
"""

import argparse
import re
import sys

from report import Report

# (pattern, what is wrong), matched against each line with its comments and quoted text kept:
# a pattern inside a string is as much a problem when that string is run.
RULES = [
    (r"\b(declare|local|typeset)\s+-[a-zA-Z]*A", "associative arrays (bash 4)"),
    (r"\b(declare|local|typeset)\s+-[a-zA-Z]*n\b", "namerefs (bash 4.3)"),
    (r"\b(mapfile|readarray|coproc)\b", "mapfile, readarray, coproc (bash 4)"),
    (r"\$\{[#!]?[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?(\^|,)", "${var^^}, ${var,,} case changes (bash 4)"),
    (r"\$\{[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?@[QEPAKa]\}", "${var@Q} transformations (bash 4.4)"),
    (r"\[\[\s+-v\s", "[[ -v name ]] (bash 4.2)"),
    (r"&>>|\|&", "&>> and |& (bash 4)"),
    (r";;&|;&\s*$", "case fall-through ;& and ;;& (bash 4)"),
    (r"\bshopt\s+-s\s+(globstar|autocd|lastpipe|direxpand)\b", "shopt options of bash 4"),
    (r"\$\{[A-Za-z_][A-Za-z0-9_]*\[\s*-[0-9]", "negative array indices (bash 4.3)"),
    (r"\$\{?(EPOCHSECONDS|EPOCHREALTIME|BASHPID)\b", "$EPOCHSECONDS, $EPOCHREALTIME, $BASHPID (bash 4, 5)"),
    (r"\bwait\s+-n\b", "wait -n (bash 4.3)"),
    (r"\{[A-Za-z_][A-Za-z0-9_]*\}[<>]", "{fd}> redirections (bash 4.1)"),
    (r"printf\s+[^|;]*%\([^)]*\)T", "printf %(…)T (bash 4.2)"),
    (r"\bsed\b[^|;]*\s-[a-zA-Z]*[iur][a-zA-Z]*\b", "sed -i, -u, -r (GNU sed; BSD sed differs)"),
    (r"\b(sha256sum|sha1sum|md5sum)\b", "sha256sum and its kin (GNU coreutils; macOS has shasum)"),
    (r"\breadlink\s+-[a-z]*[fem]\b|\brealpath\b", "readlink -f, realpath (GNU, or macOS 13 and newer)"),
    (r"\bstat\s+(-c|--)", "stat -c (GNU; BSD stat takes -f)"),
    (r"\bdate\s+[^|;]*(-d\b|--date)", "date -d (GNU)"),
    (r"\bgrep\s+[^|;]*-[a-zA-Z]*P", "grep -P (GNU)"),
    (r"-printf\b", "find -printf (GNU)"),
    (r"\bxargs\s+[^|;]*-[a-zA-Z]*r\b", "xargs -r (GNU)"),
    (r"\bmktemp\s+[^|;]*(-p\b|--tmpdir)", "mktemp -p, --tmpdir (GNU)"),
    (r"(^|[;&|(]\s*|\$\()\s*(timeout|tac|nproc|numfmt)\b", "timeout, tac, nproc, numfmt (GNU coreutils, not macOS)"),
    (r"\becho\s+-e\b", "echo -e (printf is portable)"),
    (r"\bbase64\s+[^|;]*-w\b", "base64 -w (GNU)"),
]
EMPTY_ARRAY = re.compile(r"(?:^|[\s;(])(?:local\s+(?:-a\s+)?|declare\s+-a\s+)?([A-Za-z_][A-Za-z0-9_]*)=\(\s*\)")
EXEMPT = re.compile(r"#\s*portable:")
NEEDS_32 = re.compile(r"^#.*\bbash 3\.2\b")
NEEDS_4 = re.compile(r"^#.*\bbash 4\b")
VERSION_CHECK = re.compile(r"BASH_VERSINFO\[0\]\s*<\s*4|^\s*require_bash\s+4\b")


def header(lines):
    """The first comment block, after the shebang."""
    block = []
    for line in lines[1:]:
        if not line.startswith("#"):
            if block:
                break
            continue
        block.append(line)
    return block


def bash_3_2_problems(lines):
    """(line number, what) for every line a bash 3.2 script must not have."""
    problems = []
    empty_arrays = {m.group(1) for line in lines for m in EMPTY_ARRAY.finditer(line)}
    for number, line in enumerate(lines, 1):
        if EXEMPT.search(line) or line.lstrip().startswith("#"):
            continue
        for pattern, what in RULES:
            if re.search(pattern, line):
                problems.append((number, what))
        # "${a[@]}" of an empty array is an unbound variable under set -u before bash 4.4.
        for name in empty_arrays:
            if re.search(r'(?<!\+)"\$\{%s\[[@*]\]\}"' % re.escape(name), line) and \
                    not re.search(r"\$\{%s\[[@*]\]\+" % re.escape(name), line):
                problems.append((number, "\"${%s[@]}\" of an array that can be empty (unbound under set -u "
                                         "before bash 4.4; write ${%s[@]+\"${%s[@]}\"})" % (name, name, name)))
    return problems


def check_script(report, path, text):
    lines = text.splitlines()
    if not lines or not re.match(r"#!.*\bbash\b", lines[0]) and not re.match(r"#\s*shellcheck\s+shell=bash", lines[0]):
        print("  %s: not a bash script, not checked" % path)
        return
    claims = header(lines)
    if any(NEEDS_32.search(line) for line in claims):
        problems = bash_3_2_problems(lines)
        for number, what in problems:
            report.check(False, "%s:%d: %s, in a script for bash 3.2: %s" % (path, number, what, lines[number - 1].strip()))
        if not problems:
            report.check(True, "")
            print("  ok  %s: bash 3.2 and BSD tools" % path)
    elif any(NEEDS_4.search(line) for line in claims):
        # The check must come before the first function runs: within the first lines of code.
        code = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if report.check(any(VERSION_CHECK.search(line) for line in code[:12]),
                        "%s: says it needs bash 4 but does not check BASH_VERSINFO (or call require_bash 4) near its start" % path):
            print("  ok  %s: needs bash 4, and checks it first" % path)
    else:
        report.check(False, "%s: its header says neither \"bash 3.2 or newer\" nor \"bash 4\"" % path)


SELF_TEST = {
    "good 3.2": ("#!/usr/bin/env bash\n# Needs bash 3.2 or newer.\nset -u\na=()\nx=${a[@]+\"${a[@]}\"}\n"
                 "printf '%s' \"$x\" | tr '[:lower:]' '[:upper:]'\nsha256sum f  # portable: tried first\n", 0),
    "bad 3.2": ("#!/usr/bin/env bash\n# Needs bash 3.2 or newer.\ndeclare -A m=()\nmapfile -t l <f\n"
                "echo \"${x^^}\"\nsed -i s/a/b/ f\nsha256sum f\nfind . -printf '%h'\nb=()\nfor i in \"${b[@]}\"; do :; done\n"
                "timeout 5 true\n", 8),
    "good 4": ("#!/usr/bin/env bash\n# Needs bash 4.\nset -eu\nif ((BASH_VERSINFO[0] < 4)); then exit 1; fi\n"
               "declare -A m=()\n", 0),
    "4 without its check": ("#!/usr/bin/env bash\n# Needs bash 4.\ndeclare -A m=()\n", 1),
    "no claim": ("#!/usr/bin/env bash\n# Does things.\n", 1),
}


def self_test():
    failed = False
    for name, (text, expected) in SELF_TEST.items():
        report = Report()
        check_script(report, name, text)
        if len(report.failures) != expected:
            failed = True
            print("FAIL self-test %r: %d problems, expected %d: %s" % (name, len(report.failures), expected,
                                                                        report.failures))
    print("self-test: %s" % ("FAILED" if failed else "every sample judged as expected"))
    return not failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--self-test", action="store_true", help="judge samples with known problems first")
    parser.add_argument("scripts", nargs="*")
    args = parser.parse_args()
    if args.self_test and not self_test():
        sys.exit(1)
    report = Report()
    for path in args.scripts:
        with open(path, encoding="utf-8") as f:
            check_script(report, path, f.read())
    report.finish("portable shell")


if __name__ == "__main__":
    main()
