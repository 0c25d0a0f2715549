#!/usr/bin/env python3
"""Power-cut test: the relay's data directory on a file system that loses, at a cut, every
write not yet synced and every directory change not yet synced (.ci/lazyfs.py, the LazyFS
model); counts acknowledged messages that never reach the smarthost.

usage: powercut.py [--outpost BIN] [--cuts N] [--seed S] [--load-secs T] [--clients C]
                   [--ignore-sync data|dir|all] [--expect-lost N] [--expect-lost-at-least N]
                   [--expect-start-failures N] [--work DIR]

Each round mounts the durable state the previous cut left (empty at first), starts
`outpost serve` on it, and submits messages from C client threads (each with its own
Message-ID; every one that got 250 is recorded). In even rounds the smarthost is down, in odd
rounds it is the sink (tests/data/smtp_sink.py), so that cuts also land in deliveries and
removals. Then the cut: in the first half of the rounds at a random moment within T seconds; in
the second half at a targeted moment between a write and its sync (the Nth fdatasync of a body
file or of sled's log, the Nth write to them, the Nth fsync of bodies/), falling back to a
random cut if the load did not reach it. At the cut the relay is killed with SIGKILL and the
file system unmounted; only what was durable is kept. Finally the relay runs on the last durable
state (a plain directory) with the sink up until its queue is empty (bounded), and the sink's
messages are compared with the acknowledged ones.

Prints one line per round and a summary line:
  powercut: cuts=10 random=5 targeted=5 acked=… delivered=… lost=… duplicates=… start_failures=… seconds=…
and exits 1 if lost > --expect-lost (default 0), lost < --expect-lost-at-least (default 0;
a control run with --ignore-sync all sets it to 1: the test has to be able to fail), or the
relay failed to start on what a cut left more than --expect-start-failures times (default 0).

Needs root or fusermount, libfuse2 and fusepy (.ci/powercut.sh installs them).
"""

import argparse
import collections
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in .ci/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import relaykit  # noqa: E402

LAZYFS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lazyfs.py")
# Targeted cuts: (event kind, highest N drawn); see lazyfs.py for the kinds.
TARGETS = [("sync:body", 40), ("sync:db", 40), ("write:db", 60), ("write:body", 60),
           ("syncdir:bodies", 2), ("unlink:body", 1)]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--outpost", default=os.path.join(relaykit.ROOT, "target/release/outpost"))
    p.add_argument("--cuts", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--load-secs", type=float, default=6.0)
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--drain-secs", type=float, default=180.0)
    p.add_argument("--ignore-sync", choices=["data", "dir", "all"])
    p.add_argument("--expect-lost", type=int, default=0)
    p.add_argument("--expect-lost-at-least", type=int, default=0)
    p.add_argument("--expect-start-failures", type=int, default=0)
    p.add_argument("--work", help="keep the run's files in this directory")
    return p.parse_args()


class Load:
    """C threads submitting messages until stopped; `acked` holds the Message-IDs that got 250."""

    def __init__(self, port, clients, rng, prefix):
        self.port, self.stop_flag = port, threading.Event()
        self.acked, self.lock = [], threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(random.Random(rng.random()),
                                                                 "%s.%d" % (prefix, i)))
                        for i in range(clients)]
        for t in self.threads:
            t.start()

    def run(self, rng, prefix):
        n = 0
        while not self.stop_flag.is_set():
            n += 1
            msg_id = "<%s.%d@powercut.test>" % (prefix, n)
            raw = relaykit.make_message(msg_id, rng.choice([300, 2000, 9000, 40000]), rng)
            if relaykit.send(self.port, raw, timeout=10):
                with self.lock:
                    self.acked.append(msg_id)
            elif not self.stop_flag.is_set():
                time.sleep(0.05)

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(30)


def mount(source, mountpoint, dump, log, cut_at, ignore):
    cmd = [sys.executable, LAZYFS, source or "-", mountpoint, dump]
    if cut_at:
        cmd += ["--cut-at", cut_at]
    if ignore:
        cmd += ["--ignore-sync", ignore]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    if not relaykit.wait_until(30, lambda: os.path.ismount(mountpoint) or proc.poll() is not None):
        raise RuntimeError("lazyfs did not mount")
    if proc.poll() is not None:
        raise RuntimeError("lazyfs exited with %s" % proc.returncode)
    return proc


def unmount(proc, mountpoint):
    for _ in range(50):
        if subprocess.run(["fusermount", "-u", mountpoint], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    else:
        subprocess.run(["fusermount", "-u", "-z", mountpoint], capture_output=True)
    relaykit.stop(proc)


def main():
    args = parse_args()
    rng = random.Random(args.seed)
    work = args.work or tempfile.mkdtemp(prefix="powercut.")
    os.makedirs(work, exist_ok=True)
    started = time.monotonic()
    sink = relaykit.Sink(work)
    down = relaykit.ClosedPort()
    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt, exist_ok=True)
    fs_log = open(os.path.join(work, "lazyfs.log"), "ab")
    relay_log = os.path.join(work, "outpost.log")
    acked = []
    durable = None  # the last cut's durable state (a directory); None: empty
    start_failures = 0
    kinds = collections.Counter()
    try:
        for r in range(args.cuts):
            targeted = r >= (args.cuts + 1) // 2
            cut_at = None
            if targeted:
                kind, most = TARGETS[r % len(TARGETS)]
                cut_at = "%s:%d" % (kind, rng.randint(1, most))
            dump = os.path.join(work, "durable.%d" % r)
            fs = mount(durable, mnt, dump, fs_log, cut_at, args.ignore_sync)
            config = os.path.join(work, "outpost.%d.toml" % r)
            relaykit.write_config(config, os.path.join(mnt, "data"),
                                  sink.port if r % 2 else down.port)
            relay = relaykit.Relay(args.outpost, config, relay_log)
            load = None
            port = relay.wait_listening(30)
            if port is None:
                start_failures += 1
                print("round %d: the relay did not start on the last durable state:" % r)
                print(relay.output().decode(errors="replace")[-2000:])
            else:
                try:
                    os.stat(os.path.join(mnt, ".powercut-arm"))
                except OSError:
                    pass
                load = Load(port, args.clients, rng, "r%d" % r)
            delay = rng.uniform(0.5, args.load_secs)
            cut_file = dump + ".json"
            if not (cut_at and relaykit.wait_until(args.load_secs, lambda: os.path.exists(cut_file))):
                time.sleep(0 if cut_at else delay)
                try:
                    os.stat(os.path.join(mnt, ".powercut"))
                except OSError:
                    pass
            reason = relaykit.wait_until(30, lambda: os.path.exists(cut_file))
            relay.kill()
            if load:
                load.stop()
                acked += load.acked
            unmount(fs, mnt)
            if not reason:
                raise RuntimeError("round %d: lazyfs did not cut" % r)
            with open(cut_file) as f:
                info = json.load(f)
            kind = "targeted" if info["reason"] != "random" else "random"
            kinds[kind] += 1
            print("round %d: smarthost %s, %d acknowledged, cut: %s%s" % (
                r, "up" if r % 2 else "down", len(load.acked) if load else 0, info["reason"],
                " (asked %s)" % cut_at if cut_at else ""), flush=True)
            durable = dump

        # The last durable state, on a plain directory, with the sink up until the queue is empty.
        final = os.path.join(work, "final")
        shutil.copytree(durable, final, symlinks=True)
        config = os.path.join(work, "outpost.final.toml")
        relaykit.write_config(config, os.path.join(final, "data"), sink.port)
        relay = relaykit.Relay(args.outpost, config, relay_log)
        remaining = None
        if relay.wait_listening(60) is None:
            start_failures += 1
            print("final start failed:\n" + relay.output().decode(errors="replace")[-2000:])
        else:
            def empty():
                queue = relay.queue()
                return queue is not None and len(queue) == 0 and relay.recovered()

            if not relaykit.wait_until(args.drain_secs, empty, interval=0.5):
                remaining = relay.queue()
                print("queue not empty after %ds: %d messages" % (
                    args.drain_secs, len(remaining or [])))
        relay.terminate()
        log = relay.output().decode(errors="replace")
        warnings = [line for line in log.splitlines() if " WARN " in line or " ERROR " in line]
        for line in warnings[:20]:
            print("final start: " + line)
    finally:
        sink.stop()

    delivered = collections.Counter(mid for mid, _, _ in sink.messages())
    lost = [m for m in acked if delivered[m] == 0]
    duplicates = sum(n - 1 for m, n in delivered.items() if n > 1)
    for m in lost[:20]:
        print("lost: " + m)
    seconds = time.monotonic() - started
    print("powercut: cuts=%d random=%d targeted=%d acked=%d delivered=%d lost=%d duplicates=%d "
          "start_failures=%d ignore_sync=%s seconds=%.0f" % (
              args.cuts, kinds["random"], kinds["targeted"], len(acked),
              sum(1 for m in set(acked) if delivered[m]), len(lost), duplicates, start_failures,
              args.ignore_sync or "none", seconds))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    ok = args.expect_lost_at_least <= len(lost) <= args.expect_lost
    ok = ok and start_failures <= args.expect_start_failures
    if not ok:
        print("powercut: FAIL (expected lost <= %d and >= %d, start failures <= %d)" % (
            args.expect_lost, args.expect_lost_at_least, args.expect_start_failures))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
