#!/usr/bin/env python3
"""Import graph of a Rust crate from its `crate::`, `super::` and `self::` paths; fails on a cycle.

Usage: import-cycles.py [SRC_DIR] [--graph]

Each file is a module (`src/store/record.rs` is `store::record`, `src/store/mod.rs` and
`src/store.rs` are `store`). A path in a file names the deepest module it reaches. An edge from
module A to module B is drawn between the two children of their closest common ancestor that
contain them: `store::record -> store::body_file` is an edge between siblings in `store`,
`control::render -> cli` one between `control` and `cli` in the crate. A module that uses its own
ancestor or descendant draws no edge (Rust's usual mod.rs <-> child pattern). Test code (files
named `tests.rs`, anything under a `tests/` folder, and what follows `#[cfg(test)]` at the start
of a line) is left out. Prints every cycle among siblings and exits 1 if there is one; `--graph`
prints the edges of each scope too.
"""

import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_of(src, path):
    rel = os.path.relpath(path, src)[: -len(".rs")]
    parts = rel.split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_tests(text):
    text = re.sub(r"//[^\n]*", "", text)
    m = re.search(r"^\s*#\[cfg\(test\)\]", text, re.M)
    return text[: m.start()] if m else text


def expand_use(body):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e'] (braces flattened)."""
    body = re.sub(r"\s+", "", body)
    out = []

    def walk(prefix, s):
        depth, start, items = 0, 0, []
        for i, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                items.append(s[start:i])
                start = i + 1
        items.append(s[start:])
        for item in items:
            if not item:
                continue
            if "{" in item:
                head, rest = item.split("{", 1)
                walk(prefix + head, rest[: rest.rfind("}")])
            else:
                out.append(prefix + item.split(" as ")[0])

    walk("", body)
    return out


def paths_in(text):
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        paths.extend(expand_use(m.group(1)))
    text = re.sub(r"\buse\s+[^;]+;", "", text)
    for m in re.finditer(r"\b((?:crate|super|self)(?:::" + IDENT + r")+)", text):
        paths.append(m.group(1))
    return paths


def resolve(module, path, modules, is_dir_module):
    parts = path.split("::")
    if parts[0] == "crate":
        base, rest = (), parts[1:]
    else:
        # `self` in a mod.rs (or lib.rs) is the folder's module; `super` climbs from there.
        base = module
        rest = parts
        while rest and rest[0] in ("self", "super"):
            if rest[0] == "super":
                base = base[:-1]
            rest = rest[1:]
    target = base
    for part in rest:
        if target + (part,) in modules:
            target = target + (part,)
        else:
            break
    return target


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    show = "--graph" in sys.argv
    src = args[0] if args else "src"
    files = {}
    for root, dirs, names in os.walk(src):
        dirs[:] = [d for d in dirs if d != "tests"]
        for name in names:
            if name.endswith(".rs") and name != "tests.rs":
                path = os.path.join(root, name)
                files[module_of(src, path)] = path
    modules = set(files)
    for m in list(modules):
        for i in range(len(m)):
            modules.add(m[:i])
    scopes = {}
    for module, path in files.items():
        with open(path, encoding="utf-8") as f:
            text = strip_tests(f.read())
        for p in paths_in(text):
            target = resolve(module, p, modules, None)
            common = 0
            while common < min(len(module), len(target)) and module[common] == target[common]:
                common += 1
            if common == len(module) or common == len(target):
                continue  # ancestor or descendant
            scope = module[:common]
            a, b = module[common], target[common]
            scopes.setdefault(scope, {}).setdefault(a, {}).setdefault(b, set()).add(
                "::".join(module) + " -> " + p
            )
    cycles = 0
    for scope in sorted(scopes):
        graph = scopes[scope]
        name = "::".join(scope) or "crate"
        if show:
            for a in sorted(graph):
                print(f"{name}: {a} -> {', '.join(sorted(graph[a]))}")
        for component in strongly_connected(graph):
            if len(component) < 2:
                continue
            cycles += 1
            print(f"cycle in {name}: {' <-> '.join(sorted(component))}")
            for a in sorted(component):
                for b in sorted(graph.get(a, {})):
                    if b in component:
                        for why in sorted(graph[a][b])[:3]:
                            print(f"    {a} -> {b}: {why}")
    if cycles:
        print(f"{cycles} import cycle(s)")
        return 1
    print("no import cycles")
    return 0


def strongly_connected(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    nodes = set(graph) | {b for a in graph for b in graph[a]}

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            out.append(comp)

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    sys.exit(main())
