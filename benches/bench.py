#!/usr/bin/env python3
"""outpost vs Postfix, side by side, on loopback.

Owns: starting smtp-sink (the common upstream), a release outpost and a PRIVATE Postfix
instance (own config/queue/data directories under a temp dir), driving both with smtp-source and
a small latency client, sampling RSS and /proc/PID/io, and printing the markdown report.
Must never: touch the system Postfix instance, listen on anything but 127.0.0.1, kill by name,
or wait without a bound. Normally started by `benches/run`, which installs what this needs.
"""

import argparse
import asyncio
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

KIB = 1024
MIB = 1024 * 1024
SENDER = "bench@source.invalid"
RCPT = "sink@sink.invalid"

# (sessions, message size, messages per smtp-source pass). Sized so one full run (2 relays x
# rounds) takes a few minutes on 2 cores while Postfix (fsync per message) stays busy for seconds.
CONFIGS = [
    (1, 1 * KIB, 400),
    (8, 1 * KIB, 1000),
    (32, 1 * KIB, 2000),
    (1, 100 * KIB, 100),
    (8, 100 * KIB, 300),
    (32, 100 * KIB, 600),
]


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, step=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def wait_port(port, timeout=10):
    def up():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.settimeout(2)
                return s.recv(512).startswith(b"220")
        except OSError:
            return False

    wait_until(up, timeout, step=0.05, what=f"220 banner on 127.0.0.1:{port}")


# ---------------------------------------------------------------- /proc helpers


def read_status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def read_statm_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KIB
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError, ValueError):
        return 0


def read_pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def read_write_bytes(pid):
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(root):
    """root and all its descendants (the relay's processes)."""
    kids = children_map()
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


class Sampler:
    """Sums RSS over a relay's process tree every ~50 ms and PSS every ~0.5 s; keeps the peaks.

    Kept cheap so it does not steal the relays' CPU: the process tree (a scan of /proc) and PSS
    (smaps_rollup walks page tables) are refreshed every `slow` samples, RSS comes from statm."""

    def __init__(self, root, period=0.05, slow=10):
        self.root, self.period, self.slow = root, period, slow
        self.peak_kib = 0
        self.peak_pss_kib = 0
        self.max_procs = 0
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        procs = []
        while not self._stop.is_set():
            if self.samples % self.slow == 0:
                procs = tree(self.root)
                self.max_procs = max(self.max_procs, len(procs))
                self.peak_pss_kib = max(self.peak_pss_kib, sum(read_pss_kib(p) for p in procs))
            self.peak_kib = max(self.peak_kib, sum(read_statm_rss_kib(p) for p in procs))
            self.samples += 1
            self._stop.wait(self.period)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=5)


def rss_kib(root):
    return sum(read_status_kib(p, "VmRSS") for p in tree(root))


def pss_kib(root):
    return sum(read_pss_kib(p) for p in tree(root))


def written_bytes(root):
    # A reaped child's counters are added to its parent's /proc/PID/io, and Postfix's master
    # reaps all its daemons: master + live children, end minus start, is exact.
    return sum(read_write_bytes(p) for p in tree(root))


# ---------------------------------------------------------------- the sink


class Sink:
    """smtp-sink -c on a loopback port; a thread follows its `mesg=N` counter."""

    def __init__(self, workdir):
        self.port = free_port()
        self.count = 0
        self._lock = threading.Lock()
        self.errlog = open(os.path.join(workdir, "smtp-sink.err"), "wb")
        self.proc = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-c", "-4", "-m", "512", f"127.0.0.1:{self.port}", "512"],
            stdout=subprocess.PIPE,
            stderr=self.errlog,
        )
        self._t = threading.Thread(target=self._follow, daemon=True)
        self._t.start()
        wait_port(self.port)

    def _follow(self):
        buf = b""
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            buf += chunk
            *done, buf = re.split(rb"[\r\n]", buf)
            for tok in reversed(done):
                m = re.search(rb"mesg=(\d+)", tok)
                if m:
                    with self._lock:
                        self.count = max(self.count, int(m.group(1)))
                    break

    def messages(self):
        with self._lock:
            return self.count

    def wait_for(self, target, timeout):
        wait_until(lambda: self.messages() >= target, timeout, step=0.01,
                   what=f"smtp-sink to count {target} messages (has {self.messages()})")

    def stop(self):
        stop_pid(self.proc.pid, self.proc)
        self.errlog.close()


def remove_tree(path):
    """rm -rf, retried: a stopping Postfix may still be removing its own files."""
    for _ in range(10):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            return
        time.sleep(0.2)
    log(f"could not remove {path}")


def stop_pid(pid, popen=None, grace=10):
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        if popen is not None:
            popen.wait(timeout=grace)
        else:
            wait_until(lambda: not os.path.exists(f"/proc/{pid}"), grace, what=f"pid {pid} to exit")
    except (subprocess.TimeoutExpired, TimeoutError):
        log(f"pid {pid} ignored SIGTERM for {grace}s: SIGKILL")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if popen is not None:
            popen.wait(timeout=5)


# ---------------------------------------------------------------- the relays


class Outpost:
    name = "outpost"

    def __init__(self, binary, workdir, sink_port, extra_toml=""):
        self.dir = tempfile.mkdtemp(prefix="outpost-", dir=workdir)
        cfg = os.path.join(self.dir, "outpost.toml")
        with open(cfg, "w") as f:
            f.write(
                f'hostname = "outpost.bench.invalid"\n'
                f'data_dir = "{self.dir}/data"\n'
                f'listen = ["127.0.0.1:0"]\n'
                f"max_connections = 64\n"
                f"[smarthost]\n"
                f'address = "127.0.0.1:{sink_port}"\n'
                f'tls = "none"\n'
                f"{extra_toml}\n"
            )
        self.logpath = os.path.join(self.dir, "outpost.log")
        self.logf = open(self.logpath, "wb")
        self.proc = subprocess.Popen([binary, "serve", "--config", cfg],
                                     stdout=self.logf, stderr=self.logf)
        self.pid = self.proc.pid

        def listening():
            if self.proc.poll() is not None:
                raise RuntimeError(f"outpost exited {self.proc.returncode}: see {self.logpath}")
            with open(self.logpath, "rb") as f:
                m = re.search(rb"listening on 127\.0\.0\.1:(\d+)", f.read())
            return int(m.group(1)) if m else None

        self.port = wait_until(listening, 15, what="outpost's 'listening on'")
        wait_port(self.port)

    def hwm_kib(self):
        return read_status_kib(self.pid, "VmHWM")

    def alive(self):
        return self.proc.poll() is None

    def problems(self):
        """WARN/ERROR lines of the log (deferrals, store trouble)."""
        with open(self.logpath, "rb") as f:
            lines = [l.decode(errors="replace") for l in f if re.search(rb"\b(WARN|ERROR)\b", l)]
        return lines

    def stop(self):
        stop_pid(self.pid, self.proc, grace=15)
        self.logf.close()


MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
config_directory = {d}/etc
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.invalid
mydomain = bench.invalid
myorigin = $myhostname
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 no local delivery in this benchmark
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtp_tls_security_level = none
smtpd_tls_security_level = none
message_size_limit = 20971520
maillog_file = {d}/maillog
syslog_name = postfix-bench
biff = no
append_dot_mydomain = no
"""


class Postfix:
    """A private instance: `postfix -c DIR start`, never the system one."""

    name = "postfix"

    def __init__(self, workdir, sink_port):
        self.dir = tempfile.mkdtemp(prefix="postfix-", dir=workdir)
        os.chmod(self.dir, 0o755)
        self.etc = os.path.join(self.dir, "etc")
        os.makedirs(self.etc)
        os.makedirs(os.path.join(self.dir, "queue"))
        os.makedirs(os.path.join(self.dir, "data"))
        self.port = free_port()
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(MAIN_CF.format(d=self.dir, sink=sink_port))
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))
        # the "data" directory belongs to the mail owner (postfix check would fix it too)
        shutil.chown(os.path.join(self.dir, "data"), "postfix")
        r = subprocess.run(["postfix", "-c", self.etc, "start"], capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"postfix -c {self.etc} start failed: {r.stdout}{r.stderr}")
        pidfile = os.path.join(self.dir, "queue", "pid", "master.pid")

        def master():
            try:
                with open(pidfile) as f:
                    pid = int(f.read().strip())
                return pid if os.path.exists(f"/proc/{pid}") else None
            except (OSError, ValueError):
                return None

        self.pid = wait_until(master, 15, what="postfix master.pid")
        wait_port(self.port)

    def alive(self):
        return os.path.exists(f"/proc/{self.pid}")

    def problems(self):
        try:
            with open(os.path.join(self.dir, "maillog"), errors="replace") as f:
                return [l for l in f if re.search(r"(warning|error|fatal|panic):", l)]
        except OSError:
            return []

    def stop(self):
        procs = tree(self.pid)
        subprocess.run(["postfix", "-c", self.etc, "stop"], capture_output=True, timeout=60)
        try:
            wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in procs), 15,
                       what="postfix instance to stop")
        except TimeoutError:
            log("postfix did not stop: SIGKILL its processes by PID")
            for p in procs:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass


# ---------------------------------------------------------------- load generators


def smtp_source(port, sessions, size, count, timeout):
    cmd = ["smtp-source", "-4", "-d", "-s", str(sessions), "-m", str(count), "-l", str(size),
           "-M", "source.invalid", "-f", SENDER, "-t", RCPT, f"127.0.0.1:{port}"]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"smtp-source failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return t0, dt


def make_body(size, tag):
    line = b"X" * 76 + b"\r\n"
    head = (f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: latency {tag}\r\n"
            f"Message-ID: <{tag}@source.invalid>\r\n\r\n").encode()
    n = max(1, size // len(line))
    return head + line * n


async def latency_session(port, size, quota, lat, timeout):
    async def reply(r):
        while True:
            line = await asyncio.wait_for(r.readline(), timeout)
            if not line:
                raise ConnectionError("connection closed")
            if line[3:4] != b"-":
                return int(line[:3]), line

    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        code, line = await reply(r)
        if code != 220:
            raise ConnectionError(f"banner {line!r}")
        w.write(b"EHLO source.invalid\r\n")
        await w.drain()
        await reply(r)
        body = make_body(size, "lat")
        while quota[0] > 0:
            quota[0] -= 1
            for cmd, want in ((f"MAIL FROM:<{SENDER}>", 250), (f"RCPT TO:<{RCPT}>", 250),
                              ("DATA", 354)):
                w.write(cmd.encode() + b"\r\n")
                await w.drain()
                code, line = await reply(r)
                if code != want:
                    raise ConnectionError(f"{cmd}: {line!r}")
            w.write(body + b".\r\n")
            t = time.perf_counter()
            await w.drain()
            code, line = await reply(r)
            lat.append(time.perf_counter() - t)
            if code != 250:
                raise ConnectionError(f"final dot: {line!r}")
        w.write(b"QUIT\r\n")
        await w.drain()
        await reply(r)
    finally:
        w.close()


def latency_pass(port, sessions, size, count, timeout=60):
    """N concurrent sessions, no pipelining; time from the final dot sent to its reply."""
    lat, quota = [], [count]

    async def main():
        await asyncio.gather(*(latency_session(port, size, quota, lat, timeout)
                               for _ in range(sessions)))

    asyncio.run(asyncio.wait_for(main(), timeout * 4))
    lat.sort()
    return pct(lat, 50), pct(lat, 99), len(lat)


def pct(xs, p):
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))
    return xs[k]


# ---------------------------------------------------------------- one run


def run_relay(kind, args, sink, sessions, size, count):
    relay = Outpost(args.outpost, args.workdir, sink.port,
                    args.outpost_toml.replace("\\n", "\n")) if kind == "outpost" \
        else Postfix(args.workdir, sink.port)
    res = {}
    try:
        time.sleep(args.settle)
        res["idle_kib"] = rss_kib(relay.pid)
        res["idle_pss_kib"] = pss_kib(relay.pid)
        w0 = written_bytes(relay.pid)
        base = sink.messages()
        with Sampler(relay.pid) as smp:
            t0, dt = smtp_source(relay.port, sessions, size, count, timeout=args.timeout)
            res["accept_rate"] = count / dt
            sink.wait_for(base + count, args.timeout)
            res["e2e_s"] = time.monotonic() - t0
            res["e2e_rate"] = count / res["e2e_s"]
            time.sleep(args.settle)  # let deletions reach the disk before reading write_bytes
            res["bytes_per_msg"] = (written_bytes(relay.pid) - w0) / count
            res["idle_after_kib"] = rss_kib(relay.pid)
            res["idle_after_pss_kib"] = pss_kib(relay.pid)
            lcount = max(sessions * 8, count // 4)
            base = sink.messages()
            p50, p99, n = latency_pass(relay.port, sessions, size, lcount, timeout=args.timeout)
            sink.wait_for(base + lcount, args.timeout)
            res["p50_ms"], res["p99_ms"] = p50 * 1000, p99 * 1000
        res["peak_kib"] = smp.peak_kib
        res["peak_pss_kib"] = smp.peak_pss_kib
        res["procs"] = smp.max_procs
        if kind == "outpost":
            res["hwm_kib"] = relay.hwm_kib()
        if not relay.alive():
            raise RuntimeError(f"{kind} died during the run")
        probs = relay.problems()
        if probs:
            res["problems"] = probs[:5]
            log(f"{kind}: {len(probs)} warning/error log lines, first: {probs[0].strip()}")
    finally:
        relay.stop()
        if not args.keep:
            remove_tree(relay.dir)
    return res


# ---------------------------------------------------------------- limits


def sink_direct(sink, sessions, size, count, timeout):
    base = sink.messages()
    t0, dt = smtp_source(sink.port, sessions, size, count, timeout)
    sink.wait_for(base + count, timeout)
    return count / dt


def fsync_rate(directory, append, seconds=2.0):
    """512 B write + fdatasync in a loop: appending (the file grows: a journal commit each
    time, like a queue file or a log-structured store) or overwriting in place."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            os.pwrite(fd, b"x" * 512, n * 512 if append else (n % 8) * 512)
            os.fdatasync(fd)
            n += 1
        return n / (time.monotonic() - t0)
    finally:
        os.close(fd)
        os.unlink(path)


# ---------------------------------------------------------------- report


def med(runs, key):
    vals = [r[key] for r in runs if key in r]
    return statistics.median(vals) if vals else float("nan")


def fmt(x, unit=""):
    if x != x:  # NaN
        return "–"
    if unit == "MiB":
        return f"{x / 1024:.1f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def ratio(a, b):
    return f"{a / b:.2f}×" if b and a == a and b == b else "–"


def machine_info():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = read_meminfo_total()
    load = os.getloadavg()
    dev = subprocess.run(["df", "--output=source,fstype", "."], capture_output=True,
                         text=True).stdout.splitlines()[-1].split()
    return (f"nproc {os.cpu_count()}, {cpu}, {mem} MiB RAM, kernel {platform.release()}, "
            f"disk {dev[0]} ({dev[1]}), load average at start {load[0]:.2f}")


def read_meminfo_total():
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) // 1024


def linkage(binary):
    """'static' or 'dynamic': whether the ELF file asks for an interpreter (PT_INTERP). The
    shared libraries of a dynamic build (libc, ld.so) count in its RSS."""
    import struct
    with open(binary, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return "?"
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    types = [struct.unpack_from("<I", table, i * phentsize)[0] for i in range(phnum)]
    return "dynamic, glibc" if 3 in types else "static"


def report(args, info, fsync, direct, results, started, elapsed, version):
    L = []
    build = " (static musl build)" if linkage(args.outpost) == "static" else ""
    L.append(f"# outpost{build} vs Postfix — last run\n")
    L.append(f"- date: {started} UTC, wall time {elapsed:.0f} s, {args.rounds} rounds "
             f"alternating outpost/Postfix per row; every figure is the median over the rounds")
    L.append(f"- machine: {info}")
    if os.getloadavg()[0] > (os.cpu_count() or 1) or "busy" in info:
        L.append(f"- **the machine was busy** (load average {os.getloadavg()[0]:.1f} at the end, "
                 f"{os.cpu_count()} CPUs): absolute figures are noisy; ratios from the same run "
                 f"are the thing to read")
    pfv = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                         text=True).stdout.strip()
    L.append(f"- {version} (release build, {linkage(args.outpost)}) vs Postfix {pfv} (Debian "
             f"package, private instance: defaults + relayhost)")
    L.append(f"- limits: the disk's fdatasync rate **{fsync[0]:.0f}/s appending**, "
             f"{fsync[1]:.0f}/s overwriting in place (512 B write + fdatasync loop, 2 s each, in "
             f"the work dir); smtp-sink accepting directly from smtp-source (no relay, no disk, 3× the messages, "
             f"measured next to each pair): the `sink direct` column")
    L.append(f"- command: `{args.cmdline}`\n")

    def rows(title, cols, fn):
        L.append(f"### {title}\n")
        L.append("| sessions | size | " + " | ".join(cols) + " |")
        L.append("|---:|---:|" + "---:|" * len(cols))
        for (s, size, n) in CONFIGS:
            o, p = results[(s, size)]["outpost"], results[(s, size)]["postfix"]
            L.append(f"| {s} | {size // KIB} KiB | " + " | ".join(fn(o, p, s, size, n)) + " |")
        L.append("")

    rows("Accepted messages/s (smtp-source, durable 250)",
         ["msgs", "outpost", "Postfix", "outpost/Postfix", "sink direct", "outpost/sink"],
         lambda o, p, s, size, n: [str(n), fmt(med(o, "accept_rate")), fmt(med(p, "accept_rate")),
                                   ratio(med(o, "accept_rate"), med(p, "accept_rate")),
                                   fmt(direct[(s, size)]),
                                   ratio(med(o, "accept_rate"), direct[(s, size)])])
    rows("End to end: seconds until smtp-sink has every message (msgs/s)",
         ["outpost s", "Postfix s", "outpost msgs/s", "Postfix msgs/s", "outpost/Postfix (rate)"],
         lambda o, p, *_: [fmt(med(o, "e2e_s")), fmt(med(p, "e2e_s")), fmt(med(o, "e2e_rate")),
                           fmt(med(p, "e2e_rate")),
                           ratio(med(o, "e2e_rate"), med(p, "e2e_rate"))])
    rows("Final-dot reply latency, ms (python client, same sessions, no pipelining)",
         ["outpost p50", "Postfix p50", "ratio p50", "outpost p99", "Postfix p99", "ratio p99"],
         lambda o, p, *_: [fmt(med(o, "p50_ms")), fmt(med(p, "p50_ms")),
                           ratio(med(o, "p50_ms"), med(p, "p50_ms")), fmt(med(o, "p99_ms")),
                           fmt(med(p, "p99_ms")), ratio(med(o, "p99_ms"), med(p, "p99_ms"))])
    rows("Peak memory, MiB (sum over all the relay's processes, sampled every 50 ms)",
         ["outpost RSS", "outpost VmHWM", "Postfix RSS", "RSS ratio", "Postfix PSS",
          "PSS ratio", "Postfix procs"],
         lambda o, p, *_: [fmt(med(o, "peak_kib"), "MiB"), fmt(med(o, "hwm_kib"), "MiB"),
                           fmt(med(p, "peak_kib"), "MiB"),
                           ratio(med(o, "peak_kib"), med(p, "peak_kib")),
                           fmt(med(p, "peak_pss_kib"), "MiB"),
                           ratio(med(o, "peak_pss_kib"), med(p, "peak_pss_kib")),
                           fmt(med(p, "procs"))])
    rows("Idle memory, MiB: fresh start, and 1 s after the smtp-source pass was delivered",
         ["outpost RSS", "Postfix RSS", "Postfix PSS", "outpost RSS after", "Postfix RSS after",
          "Postfix PSS after"],
         lambda o, p, *_: [fmt(med(o, "idle_kib"), "MiB"), fmt(med(p, "idle_kib"), "MiB"),
                           fmt(med(p, "idle_pss_kib"), "MiB"),
                           fmt(med(o, "idle_after_kib"), "MiB"),
                           fmt(med(p, "idle_after_kib"), "MiB"),
                           fmt(med(p, "idle_after_pss_kib"), "MiB")])
    rows("Disk bytes written per message (/proc/PID/io write_bytes, accept + relay + delete)",
         ["outpost B", "Postfix B", "outpost/Postfix", "outpost / msg size", "Postfix / msg size"],
         lambda o, p, s, size, n: [fmt(med(o, "bytes_per_msg")), fmt(med(p, "bytes_per_msg")),
                                   ratio(med(o, "bytes_per_msg"), med(p, "bytes_per_msg")),
                                   f"{med(o, 'bytes_per_msg') / size:.2f}",
                                   f"{med(p, 'bytes_per_msg') / size:.2f}"])

    # the targets the report checks
    L.append("### Issue 7 targets (this run)\n")
    L.append("| target | measured | met |")
    L.append("|---|---|---|")

    def mark(ok):
        return "yes" if ok else "**no**"

    for s in (8, 32):
        for size in (1 * KIB, 100 * KIB):
            if (s, size) not in results:
                continue
            o, p = results[(s, size)]["outpost"], results[(s, size)]["postfix"]
            a, b, d = med(o, "accept_rate"), med(p, "accept_rate"), direct[(s, size)]
            L.append(f"| accept ≥ 2× Postfix, {s} sessions {size // KIB} KiB | {a / b:.2f}× | "
                     f"{mark(a >= 2 * b)} |")
            L.append(f"| accept ≥ 50% of sink, {s} sessions {size // KIB} KiB | {100 * a / d:.0f}% | "
                     f"{mark(a >= 0.5 * d)} |")
    for (s, size, n) in CONFIGS:
        o, p = results[(s, size)]["outpost"], results[(s, size)]["postfix"]
        a, b = med(o, "e2e_rate"), med(p, "e2e_rate")
        L.append(f"| end to end ≥ Postfix, {s} sessions {size // KIB} KiB | {a / b:.2f}× | "
                 f"{mark(a >= b)} |")
    for size in (1 * KIB, 100 * KIB):
        if (32, size) not in results:
            continue
        o = results[(32, size)]["outpost"]
        pk = max(med(o, "peak_kib"), med(o, "hwm_kib"))
        L.append(f"| peak RSS ≤ 6 MiB, 32 sessions {size // KIB} KiB | {pk / 1024:.1f} MiB | "
                 f"{mark(pk <= 6 * 1024)} |")
    idle = max(med(results[k]["outpost"], "idle_kib") for k in results)
    L.append(f"| idle RSS ≤ 3 MiB (fresh start) | {idle / 1024:.1f} MiB | {mark(idle <= 3 * 1024)} |")
    idle2 = max(med(results[k]["outpost"], "idle_after_kib") for k in results)
    L.append(f"| idle RSS ≤ 3 MiB (after a run) | {idle2 / 1024:.1f} MiB | {mark(idle2 <= 3 * 1024)} |")
    worst = max(med(results[(s, size)]["outpost"], "bytes_per_msg") / size
                for (s, size, _) in CONFIGS)
    L.append(f"| disk bytes ≤ 3× message size | worst {worst:.2f}× | {mark(worst <= 3)} |")
    L.append("")

    probs = [(k, kind, r["problems"]) for k, v in results.items() for kind, runs in v.items()
             for r in runs if r.get("problems")]
    if probs:
        L.append("### Warnings/errors the relays logged\n")
        for (s, size), kind, lines in probs[:12]:
            L.append(f"- {kind}, {s} sessions {size // KIB} KiB: `{lines[0].strip()[:200]}`")
        L.append("")
    L.append("Notes: accepted msgs/s = messages / smtp-source wall time (each session reuses its "
             "connection, `-d`); end to end runs from the first connection to the sink's count "
             "reaching the total. Disk bytes count pages the relay's processes dirtied "
             "(`write_bytes`); the filesystem journal (jbd2) is not included for either. "
             "Postfix's RSS sums master and every daemon it spawned (smtpd, cleanup, qmgr, "
             "smtp, …); RSS counts shared pages (libc, …) once per process, as `ps` would, PSS "
             "splits them among the processes sharing them (fairer to Postfix). outpost is one "
             "process: its RSS ≈ PSS.")
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outpost", required=True, help="path of the release binary")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    ap.add_argument("--workdir-parent", default="/var/tmp",
                    help="where the temp dir goes (a real disk, not tmpfs)")
    ap.add_argument("--out", default=None, help="also write the markdown here")
    ap.add_argument("--only", default=None, help="e.g. 8x1 or 32x100: run one row (debugging)")
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (logs)")
    ap.add_argument("--outpost-toml", default="",
                    help=r"appended to outpost's config (tables only), for tuning, e.g. "
                         r"'[store]\ncache_bytes = 262144'")
    args = ap.parse_args()
    args.cmdline = os.environ.get("BENCH_CMDLINE") or " ".join(["python3"] + sys.argv)
    args.outpost = os.path.abspath(args.outpost)
    if os.geteuid() != 0:
        sys.exit("run as root: a private Postfix instance needs it (benches/run uses sudo)")

    global CONFIGS
    CONFIGS = [(s, z, max(s * 4, int(n * args.scale))) for (s, z, n) in CONFIGS]
    if args.only:
        s, z = args.only.split("x")
        CONFIGS = [c for c in CONFIGS if c[0] == int(s) and c[1] == int(z) * KIB]

    args.workdir = tempfile.mkdtemp(prefix="outpost-bench-", dir=args.workdir_parent)
    os.chmod(args.workdir, 0o755)
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    t_start = time.monotonic()
    info = machine_info()
    version = subprocess.run([args.outpost, "--version"], capture_output=True,
                             text=True).stdout.strip() or "?"
    sink = None
    try:
        os.chdir(args.workdir)
        info = machine_info()
        fsync = (fsync_rate(args.workdir, append=True), fsync_rate(args.workdir, append=False))
        log(f"fdatasync rate: append {fsync[0]:.0f}/s, overwrite {fsync[1]:.0f}/s; {info}")
        sink = Sink(args.workdir)
        direct, results = {}, {}
        for (s, size, n) in CONFIGS:
            direct[(s, size)] = []
            results[(s, size)] = {"outpost": [], "postfix": []}
        for rnd in range(args.rounds):
            for (s, size, n) in CONFIGS:
                # the ceiling, measured next to each pair (the machine's load moves)
                d = sink_direct(sink, s, size, n * 3, args.timeout)
                direct[(s, size)].append(d)
                log(f"round {rnd + 1} sink    {s:2}x{size // KIB:3}KiB n={n * 3}: {d:.0f} msgs/s")
                order = ("outpost", "postfix") if rnd % 2 == 0 else ("postfix", "outpost")
                for kind in order:
                    r = run_relay(kind, args, sink, s, size, n)
                    results[(s, size)][kind].append(r)
                    log(f"round {rnd + 1} {kind:7} {s:2}x{size // KIB:3}KiB n={n}: "
                        f"accept {r['accept_rate']:.0f}/s, e2e {r['e2e_s']:.2f}s, "
                        f"p50 {r['p50_ms']:.1f}ms p99 {r['p99_ms']:.1f}ms, "
                        f"idle {r['idle_kib'] / 1024:.1f} peak {r['peak_kib'] / 1024:.1f} MiB, "
                        f"{r['bytes_per_msg']:.0f} B/msg")
        direct = {k: statistics.median(v) for k, v in direct.items()}
        md = report(args, info, fsync, direct, results, started, time.monotonic() - t_start,
                    version)
        print(md)
        if args.out:
            with open(args.out, "w") as f:
                f.write(md)
    finally:
        if sink is not None:
            sink.stop()
        os.chdir("/")
        if not args.keep:
            remove_tree(args.workdir)
        else:
            log(f"kept {args.workdir}")


if __name__ == "__main__":
    main()
