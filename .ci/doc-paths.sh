#!/usr/bin/env bash
# Fails when README.md or a page of docs/ names a file of the repository that does not exist:
# `bash .ci/doc-paths.sh` from the repository root. Checked, outside fenced code blocks:
# - every repository path in inline code (`src/…`, `tests/…`, `benches/…`, `boards/…`,
#   `.ci/…`, `fuzz/…`, `scripts/…`, `docs/…`, `.cargo/…`), relative to the repository root;
#   a glob (`boards/*.toml`) must match something, and a path with a `<placeholder>` is
#   checked up to the folder before it;
# - every relative Markdown link target, relative to the page, and its `#anchor` when the target
#   is a Markdown page (GitHub's heading slugs);
# - every Rust path in inline code whose first name is a module of the crate (`store::due`,
#   `smtp::server::tests::bare_lf_dot_does_not_end_data`) or, after `--test it`, a file of
#   tests/it/ (`cargo test --test it flaps::tls_handshake`): its modules must exist, and the name
#   after them must be declared there (a test name may be cut short, as cargo's filter is).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 - README.md docs/*.md <<'EOF'
import glob, os, re, sys

PATH = re.compile(
    r"(?<![\w./-])((?:src|tests|benches|boards|\.ci|fuzz|scripts|docs|\.cargo)/[^\s`'\"(),;]*)"
)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def prose(text):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for n, line in enumerate(text.split("\n"), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield n, line


def anchors(page):
    seen, out = {}, set()
    with open(page, encoding="utf-8") as f:
        for _, line in prose(f.read()):
            m = re.match(r"#+\s+(.*?)\s*#*\s*$", line)
            if not m:
                continue
            title = re.sub(r"\[([^]]*)\]\([^)]*\)", r"\1", m.group(1)).replace("`", "")
            slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
            k = seen.get(slug, 0)
            seen[slug] = k + 1
            out.add(slug if k == 0 else f"{slug}-{k}")
    return out


def repo_path_exists(path):
    path = re.sub(r"(::.*|:\d+(-\d+)?)$", "", path.rstrip(".:"))
    if "<" in path:
        path = path[: path.index("<")]
        path = path[: path.rfind("/") + 1] or "."
    if any(c in path for c in "*?["):
        return bool(glob.glob(path))
    return os.path.exists(path)


RUST = re.compile(r"(?<![\w:])([a-z_][a-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def module_file(base):
    for f in (base + ".rs", os.path.join(base, "mod.rs")):
        if os.path.isfile(f):
            return f
    return None


def rust_path_exists(path, root):
    """`a::b::name` under `root` (src or tests/it): modules as files, then a declared name."""
    parts = path.split("::")
    if not module_file(os.path.join(root, parts[0])):
        return False if root != "src" else None  # under src: not ours (`std::fs`, a crate)
    base, files = root, []
    while parts:
        f = module_file(os.path.join(base, parts[0]))
        if f is None and parts[0] == "tests" and files:
            tests = glob.glob(os.path.join(base, "tests.rs"))
            tests += glob.glob(os.path.join(base, "tests", "*.rs"))
            files = tests or files  # an inline `mod tests` stays in the same file
        elif f is None:
            break
        else:
            files = [f]
        base = os.path.join(base, parts.pop(0))
    if not parts:
        return True
    text = "".join(open(f, encoding="utf-8").read() for f in files)
    if len(parts) == 1 and re.search(r"\bfn\s+" + re.escape(parts[0]), text):
        return True  # a test name, maybe cut short as a cargo filter
    return all(re.search(r"\b" + re.escape(p) + r"\b", text) for p in parts)


bad = 0
for page in sys.argv[1:]:
    with open(page, encoding="utf-8") as f:
        text = f.read()
    for n, line in prose(text):
        for span in re.findall(r"`([^`]+)`", line):
            for path in PATH.findall(span):
                if not repo_path_exists(path):
                    print(f"{page}:{n}: `{path}` does not exist")
                    bad += 1
            root = "tests/it" if "--test it" in span else "src"
            for path in RUST.findall(span):
                if rust_path_exists(path, root) is False:
                    print(f"{page}:{n}: `{path}` names nothing in {root}/")
                    bad += 1
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # https:, mailto: …
            file, _, anchor = target.partition("#")
            path = os.path.normpath(os.path.join(os.path.dirname(page), file)) if file else page
            if not os.path.exists(path):
                print(f"{page}:{n}: link to {target}: {path} does not exist")
                bad += 1
            elif anchor and path.endswith(".md") and anchor not in anchors(path):
                print(f"{page}:{n}: link to {target}: no heading #{anchor} in {path}")
                bad += 1
if bad:
    print(f"{bad} path(s) in the docs name nothing in the repository")
    sys.exit(1)
print("every path, link and Rust path in README.md and docs/ exists")
EOF
