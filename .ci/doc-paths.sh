#!/usr/bin/env bash
# Fails when README.md or a page of docs/ names a file of the repository that does not exist:
# `bash .ci/doc-paths.sh` from the repository root. Checked, outside fenced code blocks:
# - every repository path in inline code (`src/…`, `tests/…`, `benches/…`, `boards/…`, `.ci/…`,
#   `fuzz/…`, `scripts/…`, `docs/…`, `.cargo/…`), relative to the repository root; a glob
#   (`boards/*.toml`) must match something, and a path with a `<placeholder>` is checked up to
#   the folder before it;
# - every relative Markdown link target, relative to the page, and its `#anchor` when the target
#   is a Markdown page (GitHub's heading slugs).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 - README.md docs/*.md <<'EOF'
import glob, os, re, sys

PATH = re.compile(r"(?<![\w./-])((?:src|tests|benches|boards|\.ci|fuzz|scripts|docs|\.cargo)/[^\s`'\"(),;]*)")
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
print("every path and link in README.md and docs/ exists")
EOF
