#!/usr/bin/env python3
"""Checks an `strace -f -y` log of `outpost serve` receiving one message: after the 354 reply to
DATA and before the `250 2.0.0 queued as` reply is written, an fdatasync/fsync of the body
file (`.../bodies/<16 hex digits>`) must complete, and after it one of sled's log file
(`.../db`), which holds the record pointing at the body (250 only once the message is
durable; the body before the record that points at it).

usage: strace_fsync_order.py STRACE_LOG   (exit 0: order proven; 1: not)
"""

import re
import sys

WRITE = re.compile(r"^(\d+) +(?:sendto|sendmsg|write|writev)\(")
SYNC_FULL = re.compile(r"^(\d+) +(fdatasync|fsync)\(\d+<([^>]*)>\) += 0")
SYNC_START = re.compile(r"^(\d+) +(fdatasync|fsync)\(\d+<([^>]*)> <unfinished \.\.\.>")
BODY_FILE = re.compile(r"/bodies/[0-9A-F]{16}$")
SYNC_END = re.compile(r"^(\d+) +<\.\.\. (fdatasync|fsync) resumed>\) += 0")


def main(path):
    lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    i354 = next((i for i, l in enumerate(lines) if WRITE.match(l) and '"354 ' in l), None)
    i250 = next((i for i, l in enumerate(lines) if WRITE.match(l) and "250 2.0.0 queued as" in l), None)
    if i354 is None or i250 is None or i250 < i354:
        print("strace check: could not find the 354 and 250 replies in order")
        return 1
    pending = {}  # pid -> file of an unfinished sync started after the 354
    completed = []  # (file, line) of each sync completed between the 354 and the 250, in order
    for line in lines[i354 + 1 : i250]:
        m = SYNC_FULL.match(line)
        if m:
            completed.append((m.group(3), line))
            continue
        m = SYNC_START.match(line)
        if m:
            pending[m.group(1)] = m.group(3)
            continue
        m = SYNC_END.match(line)
        if m and m.group(1) in pending:
            completed.append((pending.pop(m.group(1)), line))
    print("strace check: 354 at line %d, 250 at line %d" % (i354 + 1, i250 + 1))
    body = next((i for i, (f, _) in enumerate(completed) if BODY_FILE.search(f)), None)
    db = None
    if body is not None:
        db = next((i for i, (f, _) in enumerate(completed) if i > body and f.endswith("/db")), None)
    if body is None or db is None:
        print("strace check: FAILED: no completed fdatasync/fsync of a body file followed by "
              "one of the store's db file between them")
        for line in lines[i354 : i250 + 1]:
            print("  " + line)
        return 1
    print("strace check: ok: %s" % completed[body][1])
    print("strace check: ok: %s" % completed[db][1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
