#!/usr/bin/env python3
"""Damage campaign: what one kind of storage damage costs the queue.

usage: damage.py [--outpost BIN] [--messages N] [--seed S] [--drain-secs T]
                 [--expect CRITERIA] [--work DIR]

Queues N messages (each with its own Message-ID) with the smarthost down, stops the relay
cleanly, then for each kind of damage, on a fresh copy of the data directory: damages it (a
seeded RNG per row: the same seed gives the same damage), starts `outpost serve` with the sink
(tests/data/smtp_sink.py) as smarthost, waits until the queue is empty, the relay exits, or
nothing has moved for a while (bounded by T), and reports per row:

  delivered    messages the sink got (by Message-ID, each counted once)
  altered      of those, delivered with content other than what was sent (or no Message-ID)
  dsn          bounces (null sender) the sink got, e.g. for a quarantined message
  duplicates   extra copies at the sink
  listed       still in `outpost queue list` (matched by Message-ID through `queue show`)
  recovered    the sum of the `recovered=N` counts in the relay's log, or of the numbers under
               keys containing "recover" in `outpost status --json`, whichever is larger
  quarantined  the same for `quarantined=N` and "quarantin" (outpost's own count, which may
               count records rather than messages)
  lost         N - delivered - listed - quarantined, at least 0; "-" (with listed) when the
               relay exited without serving: the queue could be neither listed nor sent
  warn, error  lines at WARN and ERROR in the relay's log (the first of each are listed below
               the table)
  exit         the relay's exit code if it exited by itself, else "ran"

Prints a Markdown table, the log lines, and a summary line per row
(`damage: row="db: 1 bit" delivered=… altered=… … exit=…`).

--expect "db:lost=0,body:altered=0,conf:error>=1": criteria, each GROUP:FIELD OP VALUE with OP
one of = <= >=, GROUP the first word of a row's name (none, db, body, conf) or `*`;
every row of the group must meet it ("-" meets none), else the exit status is 1. Without --expect the campaign
only reports (exit 0 unless it could not run).
"""

import argparse
import collections
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in .ci/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import relaykit  # noqa: E402

FIELDS = ["delivered", "altered", "dsn", "duplicates", "listed", "recovered", "quarantined", "lost",
          "warn", "error", "exit"]


def flip_bits(path, count, rng, within=None):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        span = min(len(data), within or len(data)) * 8
        for bit in rng.sample(range(span), min(count, span)):
            data[bit // 8] ^= 1 << (bit % 8)
        f.seek(0)
        f.write(data)


def truncate_half(path, rng):
    os.truncate(path, os.path.getsize(path) // 2)


def zero_4k(path, rng):
    size = os.path.getsize(path)
    offset = rng.randrange(0, max(1, size - 4096 + 1)) // 4096 * 4096
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(min(4096, size - offset)))


def a_body_file(data, rng):
    bodies = os.path.join(data, "bodies")
    names = sorted(n for n in os.listdir(bodies) if os.path.isfile(os.path.join(bodies, n)))
    return os.path.join(bodies, rng.choice(names))


# (row name, what to damage, how)
ROWS = [
    ("none", None, None),
    ("db: 1 bit", "db", lambda p, r: flip_bits(p, 1, r)),
    ("db: 4 bits", "db", lambda p, r: flip_bits(p, 4, r)),
    ("db: 16 bits", "db", lambda p, r: flip_bits(p, 16, r)),
    ("db: 64 bits", "db", lambda p, r: flip_bits(p, 64, r)),
    ("db: 8 bits in its first 512 bytes", "db", lambda p, r: flip_bits(p, 8, r, within=512)),
    ("db: truncated to half", "db", truncate_half),
    ("db: 4 KiB zeroed", "db", zero_4k),
    ("body file: 16 bits", "body", lambda p, r: flip_bits(p, 16, r)),
    ("body file: 256 bits", "body", lambda p, r: flip_bits(p, 256, r)),
    ("body file: truncated to half", "body", truncate_half),
    ("conf: 4 bits", "conf", lambda p, r: flip_bits(p, 4, r)),
]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--outpost", default=os.path.join(relaykit.ROOT, "target/release/outpost"))
    p.add_argument("--messages", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--drain-secs", type=float, default=60.0)
    p.add_argument("--settle-secs", type=float, default=8.0)
    p.add_argument("--expect", default="")
    p.add_argument("--work", help="keep the run's files in this directory")
    return p.parse_args()


def queue_base(args, work):
    """Queues the messages with the smarthost down; returns the data directory and
    {Message-ID: raw message sent}."""
    rng = random.Random("%d:messages" % args.seed)
    data = os.path.join(work, "base", "data")
    config = os.path.join(work, "base.toml")
    down = relaykit.ClosedPort()
    relaykit.write_config(config, data, down.port)
    relay = relaykit.Relay(args.outpost, config, os.path.join(work, "base.log"))
    port = relay.wait_listening(30)
    if port is None:
        raise RuntimeError("the relay did not start:\n" + relay.output().decode(errors="replace"))
    sent = {}
    for i in range(args.messages):
        msg_id = "<m%d.%d@damage.test>" % (args.seed, i)
        raw = relaykit.make_message(msg_id, rng.choice([400, 1500, 6000, 20000]), rng)
        if not relaykit.send(port, raw, timeout=30):
            raise RuntimeError("message %d was not accepted" % i)
        sent[msg_id] = raw
    status = relay.terminate()
    if status != 0:
        raise RuntimeError("the relay exited with %s after SIGTERM" % status)
    return data, sent


def listed_ids(relay, queue):
    ids = set()
    for entry in queue or []:
        run = subprocess.run([relay.outpost, "queue", "show", entry["id"], "--config",
                              relay.config], capture_output=True, timeout=30)
        found = re.search(rb"(?im)^\s*Message-ID:\s*(<[^>\r\n]*>)", run.stdout)
        ids.add(found.group(1).decode() if found else "?" + entry["id"])
    return ids


def counted(log, name):
    """The sum of the `name=N` counts in the log lines."""
    return sum(int(n) for line in log for n in re.findall(r"\b%s=(\d+)" % name, line))


def reported(status, stem):
    """The sum of the numbers under keys containing `stem` in `outpost status --json`."""
    if isinstance(status, dict):
        return sum(value if stem in key and isinstance(value, int) else reported(value, stem)
                   for key, value in status.items())
    if isinstance(status, list):
        return sum(reported(value, stem) for value in status)
    return 0


def run_row(args, work, base, sent, index, name, target, damage):
    row_dir = os.path.join(work, "row%02d" % index)
    data = os.path.join(row_dir, "data")
    shutil.copytree(base, data, symlinks=True)
    rng = random.Random("%d:%s" % (args.seed, name))
    if target == "body":
        damage(a_body_file(data, rng), rng)
    elif target:
        damage(os.path.join(data, target), rng)

    sink = relaykit.Sink(row_dir)
    config = os.path.join(row_dir, "outpost.toml")
    relaykit.write_config(config, data, sink.port)
    relay = relaykit.Relay(args.outpost, config, os.path.join(row_dir, "outpost.log"))
    exit_code, queue, status = "ran", None, None
    try:
        if relay.wait_listening(30) is None and relay.proc.poll() is not None:
            exit_code = str(relay.proc.returncode)
        else:
            deadline = time.monotonic() + args.drain_secs
            last, still_since = None, time.monotonic()
            while time.monotonic() < deadline:
                if relay.proc.poll() is not None:
                    exit_code = str(relay.proc.returncode)
                    break
                queue = relay.queue()
                progress = (len(os.listdir(sink.outdir)), len(queue or []))
                if queue is not None and not queue and relay.recovered():
                    break
                if progress != last:
                    last, still_since = progress, time.monotonic()
                elif time.monotonic() - still_since > args.settle_secs:
                    break
                time.sleep(0.5)
        listed = listed_ids(relay, queue) if exit_code == "ran" else set()
        status = relay.status() if exit_code == "ran" else None
    finally:
        if exit_code == "ran":
            relay.terminate()
        sink.stop()

    log = relay.output().decode(errors="replace").splitlines()
    got = collections.Counter()
    altered = 0
    dsn = 0
    for msg_id, body, sender in sink.messages():
        if not sender:
            dsn += 1
            continue
        got[msg_id] += 1
        if got[msg_id] == 1 and (msg_id not in sent or not body.endswith(sent[msg_id])):
            altered += 1
    delivered = sum(1 for m in got if m in sent) + sum(n for m, n in got.items() if m not in sent)
    listed_known = len(listed & set(sent)) + sum(1 for m in listed if m not in sent)
    quarantined = max(counted(log, "quarantined"), reported(status, "quarantin"))
    recovered = max(counted(log, "recovered"), reported(status, "recover"))
    row = {
        "delivered": delivered,
        "altered": altered,
        "dsn": dsn,
        "duplicates": sum(n - 1 for m, n in got.items() if n > 1 and m in sent),
        "listed": listed_known,
        "recovered": recovered,
        "quarantined": quarantined,
        "lost": max(0, len(sent) - delivered - listed_known - quarantined),
        "warn": sum(1 for line in log if " WARN " in line),
        "error": sum(1 for line in log if " ERROR " in line),
        "exit": exit_code,
        "lines": [line for line in log if " WARN " in line or " ERROR " in line],
    }
    if exit_code != "ran" and not got:
        # The relay stopped before it served: the queue was neither listed nor sent.
        row["listed"] = row["lost"] = "-"
    return row


def check(rows, expect):
    failures = []
    for criterion in filter(None, (c.strip() for c in expect.split(","))):
        found = re.fullmatch(r"([\w*]+):(\w+)\s*(<=|>=|=)\s*(\S+)", criterion)
        if not found or found.group(2) not in FIELDS:
            sys.exit("damage: bad criterion %r (GROUP:FIELD OP VALUE)" % criterion)
        group, field, op, want = found.groups()
        for name, row in rows:
            if group != "*" and name.split(":")[0].split()[0] != group:
                continue
            have = row[field]
            if field == "exit":
                ok = (str(have) == want) if op == "=" else False
            elif have == "-":
                ok = False
            else:
                have, want_n = int(have), int(want)
                ok = {"=": have == want_n, "<=": have <= want_n, ">=": have >= want_n}[op]
            if not ok:
                failures.append("%s: %s is %s, expected %s %s" % (name, field, have, op, want))
    return failures


def main():
    args = parse_args()
    started = time.monotonic()
    work = args.work or tempfile.mkdtemp(prefix="damage.")
    os.makedirs(work, exist_ok=True)
    try:
        base, sent = queue_base(args, work)
        rows = []
        for index, (name, target, damage) in enumerate(ROWS):
            row = run_row(args, work, base, sent, index, name, target, damage)
            rows.append((name, row))
            print("damage: row=%r %s" % (name, " ".join("%s=%s" % (f, row[f]) for f in FIELDS)),
                  flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print("%d messages queued, seed %d, %s" % (args.messages, args.seed,
                                               time.strftime("%Y-%m-%d")))
    print()
    print("| damage | " + " | ".join(FIELDS) + " |")
    print("|---|" + "---|" * len(FIELDS))
    for name, row in rows:
        print("| %s | %s |" % (name, " | ".join(str(row[f]) for f in FIELDS)))
    print()
    for name, row in rows:
        if row["lines"]:
            print("%s:" % name)
            for line in row["lines"][:6]:
                print("    " + line[:200])
            if len(row["lines"]) > 6:
                print("    … %d more" % (len(row["lines"]) - 6))
    failures = check(rows, args.expect)
    for failure in failures:
        print("damage: FAIL " + failure)
    print("damage: %d rows, %d criteria failed, %.0f s" % (len(rows), len(failures),
                                                          time.monotonic() - started))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
