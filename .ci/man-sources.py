#!/usr/bin/env python3
"""The man pages cannot drift from the code: fails when a config key or a command is undocumented.

    python3 .ci/man-sources.py    (from the repository root)

outpost.toml(5) is docs/configuration.md and outpost(8) is docs/operating.md (.ci/md2man.py
converts them). Checked:
- every field of the config file's structs (src/config/file.rs, serde names) appears in
  docs/configuration.md as `key`, `[table] key`, `key = …` (a TOML example) or `[key]`/`[[key]]`;
- every command and queue verb src/cli.rs matches (`Some("serve")`, `"flush" =>`) appears in
  docs/operating.md after `outpost ` or `queue `, and every long flag (`Long("json")`) as
  `--json`.
"""
import re
import sys

fields = []
text = open("src/config/file.rs", encoding="utf-8").read()
for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
    if m.group(1) == "Problem":
        continue
    body = m.group(2)
    for f in re.finditer(r"((?:#\[serde\([^\n]*\)\]\s*)*)pub (\w+):", body):
        rename = re.search(r'rename\s*=\s*"([^"]+)"', f.group(1))
        fields.append(rename.group(1) if rename else f.group(2))

conf = open("docs/configuration.md", encoding="utf-8").read()
missing = []
for key in dict.fromkeys(fields):
    k = re.escape(key)
    if not re.search(rf"`{k}`|`\[\[?\w+\]\]? {k}`|^\s*#?\s*{k}\s*=|`{k} =|\[\[?{k}\]\]?", conf, re.M):
        missing.append(f"config key `{key}` (src/config/file.rs) is not in docs/configuration.md")

cli = open("src/cli.rs", encoding="utf-8").read()
cli = cli.split("#[cfg(test)]")[0]
ops = open("docs/operating.md", encoding="utf-8").read()
commands = re.findall(r'Some\("([a-z][a-z-]*)"\) =>', cli)
verbs = re.findall(r'^\s*"([a-z][a-z-]*)"(?: \| "[a-z-]+")* (?:if [^=]*)?=>', cli, re.M)
verbs += re.findall(r'^\s*"[a-z-]+" \| "([a-z][a-z-]*)"', cli, re.M)
flags = re.findall(r'Long\("([a-z][a-z-]*)"\)', cli)
for word in dict.fromkeys(commands + verbs):
    if word in ("help",):
        continue
    if not re.search(rf"(outpost|queue|\||`) ?{re.escape(word)}\b", ops):
        missing.append(f"command `{word}` (src/cli.rs) is not in docs/operating.md")
for flag in dict.fromkeys(flags):
    if f"--{flag}" not in ops:
        missing.append(f"flag `--{flag}` (src/cli.rs) is not in docs/operating.md")

for line in missing:
    print("man-sources: " + line, file=sys.stderr)
if missing:
    sys.exit(1)
print(f"man-sources: {len(set(fields))} config keys in docs/configuration.md, "
      f"{len(set(commands + verbs))} commands and {len(set(flags))} flags in docs/operating.md")
