#!/usr/bin/env python3
"""Fail when two modules of one crate import each other, directly or through others.

Each `.rs` file under a crate's `src/` is a module (`lib.rs`/`main.rs` are the crate root,
`x/mod.rs` is `x`). A module depends on another when its code names a path into it:
`crate::a::b`, `super::x`, `self::x` or a child's name (`child::Item`). A parent declaring
`mod child;` is not a dependency, and neither is the crate root (it only declares and re-exports),
nor test code: `#[cfg(test)] mod x { … }` bodies and `#[cfg(test)] mod x;` files (tests may reach
anywhere). A path is resolved to the longest module prefix it names, so `crate::a::Item` depends on `a`, `crate::a::b::f` on `a::b`.
Dependencies are then lifted to siblings (`a::x -> b::y` is `a -> b`), so a module tree counts as
one unit from outside, and a module using its own parent or child is not a cycle.

Usage: scripts/check-module-cycles.py [CRATE_DIR ...]   (default: every workspace member)
Prints each cycle found and exits 1, or prints a line per crate and exits 0.
"""

from __future__ import annotations

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PATH_RE = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP_RE = re.compile(r"\buse\s+(crate|super|self)::\{([^;]*)\};", re.S)
LINE_COMMENT_RE = re.compile(r"//[^\n]*")
TEST_MOD_RE = re.compile(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{")
TEST_FILE_RE = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;")


def members() -> list[pathlib.Path]:
    text = (ROOT / "Cargo.toml").read_text()
    body = re.search(r"members\s*=\s*\[([^\]]*)\]", text)
    assert body, "no workspace members in Cargo.toml"
    return [ROOT / m for m in re.findall(r'"([^"]+)"', body.group(1))]


def module_of(src: pathlib.Path, file: pathlib.Path) -> tuple[str, ...]:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("lib", "main", "mod"):
        parts.pop()
    return tuple(parts)


def strip_tests(code: str) -> str:
    """Drop line comments and the bodies of `#[cfg(test)] mod x { … }`."""
    code = LINE_COMMENT_RE.sub("", code)
    while m := TEST_MOD_RE.search(code):
        depth, i = 1, m.end()
        while i < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[i], 0)
            i += 1
        code = code[: m.start()] + code[i:]
    return code


def paths_in(code: str):
    """Yield (anchor, [segments]) for every crate/super/self path, expanding `use x::{a, b::c}`."""
    for m in USE_GROUP_RE.finditer(code):
        for item in re.split(r",", re.sub(r"\{[^{}]*\}", "", m.group(2))):
            segs = [s for s in item.strip().split("::") if s and s != "*"]
            if segs:
                yield m.group(1), segs
    for m in PATH_RE.finditer(code):
        yield m.group(1), m.group(2).strip(":").split("::")


def resolve(here: tuple[str, ...], anchor: str, segs: list[str], modules: set) -> tuple | None:
    if anchor == "crate":
        base: tuple[str, ...] = ()
    elif anchor == "super":
        base = here[:-1]
        while segs and segs[0] == "super":
            base, segs = base[:-1], segs[1:]
    else:
        base = here
    best = None
    for n in range(0, len(segs) + 1):
        cand = base + tuple(segs[:n])
        if cand in modules:
            best = cand
    return best


def file_graph(crate: pathlib.Path) -> dict[tuple, set]:
    src = crate / "src"
    files = {module_of(src, f): f for f in src.rglob("*.rs")}
    for here, file in list(files.items()):
        for name in TEST_FILE_RE.findall(file.read_text()):
            files.pop(here + (name,), None)
    modules = set(files)
    graph: dict[tuple, set] = {m: set() for m in modules}
    for here, file in files.items():
        if here == ():
            continue
        code = strip_tests(file.read_text())
        children = {m for m in modules if len(m) == len(here) + 1 and m[: len(here)] == here}
        for child in children:
            if re.search(rf"(?<![:\w]){child[-1]}::", code):
                graph[here].add(child)
        for anchor, segs in paths_in(code):
            target = resolve(here, anchor, segs, modules)
            if target is not None and target != here and target != ():
                graph[here].add(target)
    return graph


def cycles(graph: dict[tuple, set]) -> list[list[tuple]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict = {}
    low: dict = {}
    stack: list = []
    on: set = set()
    out: list = []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def crate_graph(crate: pathlib.Path) -> dict[tuple, set]:
    """Lift file dependencies to siblings: `a::x -> b::y` makes `a -> b`. A module that uses its
    own parent or child is not counted; a module tree is a unit seen from outside it."""
    files = file_graph(crate)
    graph: dict[tuple, set] = {m: set() for m in files if m}
    for here, deps in files.items():
        for there in deps:
            n = 0
            while n < min(len(here), len(there)) and here[n] == there[n]:
                n += 1
            if n == len(here) or n == len(there):
                continue
            graph[here[: n + 1]].add(there[: n + 1])
    return graph


def main() -> int:
    crates = [pathlib.Path(a).resolve() for a in sys.argv[1:]] or members()
    failed = False
    for crate in crates:
        if not (crate / "src").is_dir():
            continue
        graph = crate_graph(crate)
        found = cycles(graph)
        name = crate.relative_to(ROOT) if crate.is_relative_to(ROOT) else crate
        if not found:
            print(f"{name}: {len(graph)} modules, no cycles")
            continue
        failed = True
        for comp in found:
            names = ["::".join(m) for m in comp]
            print(f"{name}: modules that import each other: {', '.join(names)}")
            for m in comp:
                deps = sorted("::".join(d) for d in graph[m] if d in comp)
                print(f"  {'::'.join(m)} -> {', '.join(deps)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
