#!/usr/bin/env python3
"""Markdown page of docs/ -> man page (roff), so the manual and the man pages are one text.

    python3 .ci/md2man.py NAME SECTION "SUMMARY" VERSION DATE PAGE.md > NAME.SECTION

The page's `# Title` becomes NAME (`NAME \\- SUMMARY`), the text up to the first `##` the
DESCRIPTION, each `##` a section (.SH, upper case), each `###` a subsection (.SS). Handled: the
Markdown docs/ uses: paragraphs, fenced code (.nf), `-`/`1.` lists with indented continuation
lines, tables (one .TP entry per row: the first cell is the tag, the others follow with their
column names), `code` (bold), **bold**, *italic*, [links](target) (the text). Nothing else.
"""
import re
import sys


def escape(text):
    """Roff-escape plain text (no inline markup)."""
    return text.replace("\\", "\\e")


def inline(text):
    """Markdown inline markup -> roff."""
    out = []
    pos = 0
    for m in re.finditer(r"(`+)(.+?)\1", text):
        out.append(prose(text[pos:m.start()]))
        code = escape(m.group(2).strip()).replace("-", "\\-")
        out.append("\\fB" + code + "\\fR")
        pos = m.end()
    out.append(prose(text[pos:]))
    line = "".join(out)
    return line


def prose(text):
    text = escape(text)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"\*\*(.+?)\*\*", r"\\fB\1\\fR", text)
    text = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"\\fI\1\\fR", text)
    text = re.sub(r"<(https?://[^>]+)>", r"\1", text)
    return text


def roff_line(line):
    """One output line of text: protect a leading control character."""
    if line.startswith((".", "'")):
        return "\\&" + line
    return line


def cells(row):
    row = row.strip()
    if row.startswith("|"):
        row = row[1:]
    if row.endswith("|"):
        row = row[:-1]
    # `|` inside code spans stays in its cell, and so does an escaped `\|`.
    row = row.replace("\\|", "\0")
    parts, cur, code = [], "", False
    for ch in row:
        if ch == "`":
            code = not code
        if ch == "|" and not code:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return [p.replace("\0", "|") for p in parts]


def convert(name, section, summary, version, date, text):
    out = [
        f'.TH {name.upper()} {section} "{date}" "outpost {version}"',
        ".SH NAME",
        f"{escape(name)} \\- {escape(summary)}",
        ".SH DESCRIPTION",
    ]
    lines = text.split("\n")
    i = 0
    para = []

    def flush():
        if para:
            out.append(".PP")
            out.extend(roff_line(inline(p)) for p in para)
            para.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            out.extend([".PP", ".RS 4", ".nf"])
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                out.append(roff_line(escape(lines[i])))
                i += 1
            out.extend([".fi", ".RE"])
            i += 1
            continue
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        if heading:
            flush()
            level, title = len(heading.group(1)), heading.group(2).strip()
            if level == 1:
                pass  # the page title: NAME and DESCRIPTION stand for it
            elif level == 2:
                out.append(".SH " + inline(title.upper() if "`" not in title else title))
            else:
                out.append(".SS " + inline(title))
            i += 1
            continue
        if not stripped:
            flush()
            i += 1
            continue
        if stripped.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(cells(lines[i]))
                i += 1
            header = rows[0]
            body = [r for r in rows[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)]
            for row in body:
                out.append(".TP")
                out.append(roff_line(inline(row[0])))
                rest = []
                for col, cell in zip(header[1:], row[1:]):
                    if cell and len(header) > 2 and col:
                        rest.append(inline(col) + ": " + inline(cell))
                    elif cell:
                        rest.append(inline(cell))
                out.append(roff_line("; ".join(rest)) if rest else "\\&")
            continue
        item = re.match(r"^(\s*)([-*+]|\d+\.)\s+(.*)$", line)
        if item:
            flush()
            indent = len(item.group(1))
            mark = "\\(bu" if item.group(2) in "-*+" else item.group(2)
            body = [item.group(3)]
            i += 1
            while i < len(lines):
                nxt = lines[i]
                if not nxt.strip() or re.match(r"^\s*([-*+]|\d+\.)\s+", nxt) \
                        or nxt.strip().startswith(("```", "|", "#")):
                    break
                if len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                body.append(nxt.strip())
                i += 1
            out.append(f".IP {mark} {4 + indent}")
            out.extend(roff_line(inline(b)) for b in body)
            continue
        if stripped.startswith(">"):
            stripped = stripped.lstrip(">").strip()
        para.append(stripped)
        i += 1
    flush()
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 7:
        sys.exit(__doc__)
    name, section, summary, version, date, page = sys.argv[1:]
    with open(page, encoding="utf-8") as f:
        text = f.read()
    sys.stdout.write(convert(name, section, summary, version, date, text))


if __name__ == "__main__":
    main()
