#!/usr/bin/env python3
"""Import loops among the top-level modules of each crate.

For every crate (runtime/src, stdlib/src, publish/src), a top-level module is
a file `src/<m>.rs` or a folder `src/<m>/`. Module A depends on B when any
file of A names `crate::B` (in a `use` or a path) or, inside a folder module,
`super::B` from its top file. Prints each loop (a strongly connected
component of more than one module) and exits 1 if there is any; also checks
that nothing outside runtime/src/cli and main.rs names `crate::cli`.

Usage: python3 .ci/module-cycles.py   (from the repository root)
"""
import re
import sys
from pathlib import Path

CRATES = ["runtime/src", "stdlib/src", "publish/src"]


def top_modules(src: Path):
    mods = {}
    for p in src.iterdir():
        if p.suffix == ".rs" and p.stem not in ("lib", "main"):
            mods[p.stem] = [p]
        elif p.is_dir() and p.name != "bin":
            mods[p.name] = sorted(p.rglob("*.rs"))
    return mods


def strip_tests(text: str) -> str:
    # Unit tests may reach anywhere; they are not part of the module graph.
    i = text.find("#[cfg(test)]\nmod tests")
    return text if i < 0 else text[:i]


def deps(mods):
    graph = {m: set() for m in mods}
    for m, files in mods.items():
        for f in files:
            text = strip_tests(f.read_text())
            for other in re.findall(r"crate::(\w+)", text):
                if other in mods and other != m:
                    graph[m].add(other)
            for group in re.findall(r"crate::\{([^}]*)\}", text):
                for other in re.findall(r"(\w+)", group):
                    if other in mods and other != m:
                        graph[m].add(other)
    return graph


def sccs(graph):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
            out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def folder_deps(folder: Path, crate_name: str):
    """Loops among the sibling modules of one folder module (e.g. fetch/git.rs and fetch/http.rs)."""
    mods = {}
    for p in folder.iterdir():
        if p.suffix == ".rs" and p.stem != "mod":
            mods[p.stem] = [p]
        elif p.is_dir():
            mods[p.name] = sorted(p.rglob("*.rs"))
    graph = {m: set() for m in mods}
    for m, files in mods.items():
        for f in files:
            text = strip_tests(f.read_text())
            refs = re.findall(r"super::(\w+)", text)
            refs += re.findall(rf"crate::{crate_name}::(\w+)", text)
            for group in re.findall(r"super::\{([^}]*)\}", text):
                refs += re.findall(r"(\w+)", group)
            for other in refs:
                if other in mods and other != m:
                    graph[m].add(other)
    return graph


def main():
    bad = False
    for crate in CRATES:
        src = Path(crate)
        mods = top_modules(src)
        loops = sccs(deps(mods))
        for folder in sorted(p for p in src.iterdir() if p.is_dir() and p.name != "bin"):
            for loop in sccs(folder_deps(folder, folder.name)):
                loops.append([f"{folder.name}/{m}" for m in loop])
        for loop in loops:
            bad = True
            print(f"{crate}: import loop among {', '.join(loop)}")
        if not loops:
            print(f"{crate}: {len(mods)} top-level modules, no import loop (folders included)")
    for f in Path("runtime/src").rglob("*.rs"):
        if f.parts[2] in ("cli", "main.rs"):
            continue
        if re.search(r"crate::cli\b|pgimg::cli\b", strip_tests(f.read_text())):
            bad = True
            print(f"{f}: imports the CLI module")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
