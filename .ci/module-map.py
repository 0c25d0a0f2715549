#!/usr/bin/env python3
"""The module map of a Rust crate, from its source: one row per module with its layer, its lines
without tests, the first sentence of its `//!` doc and the sibling modules it imports.

Usage: module-map.py [SRC_DIR] [--all]

By default the rows are the crate's top-level modules (`store` counts every file under
`src/store/`); `--all` adds a row for every module below them, whose imports are its siblings.
Imports are the edges `import-cycles.py --graph` draws (same parsing, same scopes), so the
table and the graph agree. A module's layer is 0 if it imports no sibling, else one more than
the highest layer it imports; rows go from the top layer down (a module in a cycle is marked
`cycle`). Lines without tests leave out files named `tests.rs`, anything under
a `tests/` folder, and a file's `#[cfg(test)] mod …` block to its end. The table is Markdown,
for checking `docs/design.md` against it; this script only prints and always exits 0.
"""

import importlib.util
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "import_cycles", os.path.join(HERE, "import-cycles.py")
)
cycles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cycles)

TEST_MOD = re.compile(
    r"^#\[cfg\(test\)\]\s*\n(?:\s*#\[[^\n]*\]\s*\n)*\s*(?:pub(?:\([^)]*\))?\s+)?mod\s", re.M
)


def source_files(src):
    files = {}
    for root, dirs, names in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d != "tests")
        for name in sorted(names):
            if name.endswith(".rs") and name != "tests.rs":
                path = os.path.join(root, name)
                module = cycles.module_of(src, path)
                if module:  # lib.rs and main.rs are the crate root, not a module
                    files[module] = path
    return files


def lines_without_tests(text):
    m = TEST_MOD.search(text)
    if m:
        text = text[: m.start()]
    return text.rstrip("\n").count("\n") + 1 if text.strip() else 0


def first_sentence(text):
    doc = []
    for line in text.splitlines():
        if not line.startswith("//!"):
            break
        line = line[3:].strip()
        if not line:
            if doc:
                break
            continue
        doc.append(line)
    para = " ".join(doc)
    m = re.search(r"^(.*?[.!?])(\s|$)", para)
    return (m.group(1) if m else para).replace("|", "\\|")


def edges(src, files):
    """{scope: {a: set(b)}}: what the children of each scope import among their siblings."""
    modules = set(files)
    for m in list(modules):
        for i in range(len(m)):
            modules.add(m[:i])
    out = {}
    for module, path in files.items():
        with open(path, encoding="utf-8") as f:
            text = cycles.strip_tests(f.read())
        for p in cycles.paths_in(text):
            target = cycles.resolve(module, p, modules, None)
            common = 0
            while common < min(len(module), len(target)) and module[common] == target[common]:
                common += 1
            if common == len(module) or common == len(target):
                continue
            scope = module[:common]
            out.setdefault(scope, {}).setdefault(module[common], set()).add(target[common])
    return out


def layers(graph):
    """{module: layer} for the children of one scope; None for a module on a cycle."""
    out = {}

    def visit(m, path):
        if m in out:
            return out[m]
        if m in path:
            return None
        below = [visit(b, path | {m}) for b in graph.get(m, ())]
        out[m] = None if None in below else max(below, default=-1) + 1
        return out[m]

    for m in graph:
        visit(m, frozenset())
    return out


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    show_all = "--all" in sys.argv
    src = args[0] if args else "src"
    files = source_files(src)
    graph = edges(src, files)
    texts = {}
    for module, path in files.items():
        with open(path, encoding="utf-8") as f:
            texts[module] = f.read()
    groups = {m[:i] for m in files for i in range(1, len(m) + 1 if show_all else 2)}
    layer = {}
    for scope in {g[:-1] for g in groups}:
        known = layers(graph.get(scope, {}))
        for g in groups:
            if g[:-1] == scope:
                layer[g] = known.get(g[-1], 0)

    def order(g):
        # Parents before their children; among siblings, the top layer first.
        return tuple(x for i in range(1, len(g) + 1) for x in (-(layer[g[:i]] or 0), g[i - 1]))

    print("| module | layer | lines | purpose (first sentence of its `//!`) | imports |")
    print("|---|---:|---:|---|---|")
    total = 0
    for group in sorted(groups, key=order):
        lines = sum(lines_without_tests(texts[m]) for m in files if m[: len(group)] == group)
        if len(group) == 1:
            total += lines
        imports = sorted(graph.get(group[:-1], {}).get(group[-1], ()))
        purpose = first_sentence(texts[group]) if group in texts else ""
        name = "::".join(group)
        level = "cycle" if layer[group] is None else layer[group]
        print(f"| `{name}` | {level} | {lines} | {purpose} | {', '.join(imports) or '—'} |")
    print(f"\n{total} lines without tests in {len(files)} module files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
