#!/usr/bin/env python3
"""Threads and RSS of a running outpost, idle and under load (docs/boards.md, "Size and memory on a board").

usage: benches/threads_rss.py [--binary target/release/outpost] [--sessions 32] [--messages 20]
                              [--size 1024] [--smarthosts 1] [--auth none|password|oauth2]
                              [--outage] [--config TOML]

Starts `outpost serve` on 127.0.0.1 with a fresh data dir, forwarding to tests/data/smtp_sink.py,
then reports, from /proc/PID: the threads (/proc/PID/task/*/comm) and VmRSS when idle (after the
start settles); the peak VmRSS sampled every 20 ms and VmHWM while SESSIONS concurrent smtplib
sessions each send MESSAGES messages of SIZE bytes; the threads seen during the load; and the
idle figures again once the sink has everything. With --smarthosts N > 1 the config lists N
`[[smarthost]]` entries: N-1 closed loopback ports first (down: every pass fails over past them
until their backoff holds them), the sink last; this measures what failover costs. With --auth
password or oauth2 the sink is tests/data/tls_sink.py (STARTTLS, a private CA made with openssl)
and the relay logs in with a password, or with OAuth 2.0: an HTTPS token endpoint in this script
hands out one access token for the refresh token in a file, and the sink accepts only it (XOAUTH2
or OAUTHBEARER); this measures what OAuth 2.0 costs against a password. With --outage the sink
only starts once every message is queued (the link was down), then SIGUSR1 flushes the queue and
the drain's peak RSS is reported on its own; with `--config '[coalesce]'` the drain sends digests
(every message has the same sender, recipient and Subject) and the sink counts the originals in
them. Loopback only; every wait is bounded; all children are killed by PID at the end.
"""

import argparse
import collections
import http.server
import json
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def wait_until(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    sys.exit("timed out waiting for " + what)


def split(pid):
    """VmRSS by kind: anonymous (heap, stacks, sled's buffers) and file-backed (the binary's
    text, libc.so and ld.so where dynamic)."""
    return f"anon {status_kib(pid, 'RssAnon')} KiB, file {status_kib(pid, 'RssFile')} KiB"


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def threads(pid):
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:
            pass
    return collections.Counter(names)


def closed_ports(n):
    """n loopback ports nothing listens on (bound to find them, then closed: connects are refused)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def make_pki(work):
    """A private CA and a certificate for 127.0.0.1 (openssl), as in .ci/interop-tls.sh."""
    def run(*cmd):
        subprocess.run(cmd, cwd=work, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
        "-out", "ca.pem", "-days", "1", "-subj", "/CN=bench CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", "/CN=localhost")
    with open(os.path.join(work, "server.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "extendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "server.ext")
    return [os.path.join(work, n) for n in ("ca.pem", "server.pem", "server.key")]


# A Microsoft-sized access token (a JWT of about 1.5 KiB).
ACCESS_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9." + "A" * 1400 + ".sig"


def token_endpoint(cert, key, refresh_token, calls):
    """HTTPS on 127.0.0.1: a POST with grant_type=refresh_token and the right refresh token gets
    ACCESS_TOKEN for an hour; returns the server (serve_forever runs in a daemon thread)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            calls.append(body)
            ok = "grant_type=refresh_token" in body and f"refresh_token={refresh_token}" in body
            reply = json.dumps({"token_type": "Bearer", "expires_in": 3600,
                                "access_token": ACCESS_TOKEN} if ok else
                               {"error": "invalid_grant"}).encode()
            self.send_response(200 if ok else 400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def show(counter):
    return ", ".join(f"{name} x{n}" if n > 1 else name for name, n in sorted(counter.items()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(REPO, "target/release/outpost"))
    ap.add_argument("--sessions", type=int, default=32)
    ap.add_argument("--messages", type=int, default=20)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--smaps", help="write /proc/PID/smaps here after the load (where the RSS is)")
    ap.add_argument("--config", default="", help="TOML appended to the relay's config, e.g. "
                    "'[store]\\ncache_bytes = \"256 KiB\"'")
    ap.add_argument("--smarthosts", type=int, default=1)
    ap.add_argument("--auth", choices=["none", "password", "oauth2"], default="none")
    ap.add_argument("--outage", action="store_true",
                    help="queue everything with the sink down, then start it and flush")
    args = ap.parse_args()
    if args.outage and (args.auth != "none" or args.smarthosts != 1):
        sys.exit("--outage needs --auth none and --smarthosts 1")
    if args.auth != "none" and args.smarthosts != 1:
        sys.exit("--auth needs --smarthosts 1")

    work = tempfile.mkdtemp(prefix="outpost-threads-")
    procs = []
    try:
        sink_dir = os.path.join(work, "sink")
        os.mkdir(sink_dir)
        portfile = os.path.join(work, "sink.port")
        smarthost_keys = 'tls = "none"\n'
        token_calls = []
        if args.auth == "none":
            sink_cmd = [os.path.join(REPO, "tests/data/smtp_sink.py"), sink_dir, portfile]
        else:
            ca, cert, key = make_pki(work)
            secret = "bench-pw"
            smarthost_keys = f'tls = "starttls"\nca_file = "{ca}"\nusername = "relay"\n'
            if args.auth == "password":
                with open(os.path.join(work, "password"), "w") as f:
                    f.write(secret + "\n")
                smarthost_keys += f'password_file = "{work}/password"\n'
            else:
                secret = "bearer:" + ACCESS_TOKEN
                with open(os.path.join(work, "refresh"), "w") as f:
                    f.write("bench-refresh-token\n")
                endpoint = token_endpoint(cert, key, "bench-refresh-token", token_calls)
                smarthost_keys += (
                    f'oauth2_token_url = "https://127.0.0.1:{endpoint.server_address[1]}/token"\n'
                    f'oauth2_client_id = "bench"\noauth2_refresh_token_file = "{work}/refresh"\n')
            sink_cmd = [os.path.join(REPO, "tests/data/tls_sink.py"), sink_dir, portfile, cert,
                        key, "relay", secret]

        def start_sink(cmd):
            sink = subprocess.Popen([sys.executable] + cmd,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(sink)
            wait_until(lambda: os.path.exists(portfile) and open(portfile).read().strip(), 30,
                       "sink")
            return int(open(portfile).read())

        if args.outage:
            sink_port = closed_ports(1)[0]
            sink_cmd += ["127.0.0.1", str(sink_port)]
        else:
            sink_port = start_sink(sink_cmd)

        config = os.path.join(work, "outpost.toml")
        with open(config, "w") as f:
            f.write(f'data_dir = "{work}/data"\nlisten = ["127.0.0.1:0"]\n'
                    f'max_connections = {args.sessions + 8}\n\n')
            if args.smarthosts <= 1:
                f.write(f'[smarthost]\naddress = "127.0.0.1:{sink_port}"\n{smarthost_keys}')
            else:
                for down in closed_ports(args.smarthosts - 1):
                    f.write(f'[[smarthost]]\naddress = "127.0.0.1:{down}"\ntls = "none"\n\n')
                f.write(f'[[smarthost]]\naddress = "127.0.0.1:{sink_port}"\ntls = "none"\n')
            f.write(args.config.replace("\\n", "\n") + "\n")
        log = open(os.path.join(work, "outpost.log"), "w+")
        relay = subprocess.Popen([args.binary, "serve", "--config", config],
                                 stdout=log, stderr=log)
        procs.append(relay)

        def port():
            log.seek(0)
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read())
            return m and int(m.group(1))

        wait_until(port, 30, "the relay's listening line")
        relay_port = port()
        pid = relay.pid
        time.sleep(2)
        idle_rss, idle_threads = status_kib(pid, "VmRSS"), threads(pid)
        idle_split = split(pid)

        body = ("x" * 63 + "\r\n") * (args.size // 65)
        msg = f"From: a@lan.test\r\nTo: b@remote.test\r\nSubject: load\r\n\r\n{body}"
        peak = [0]
        seen = collections.Counter()
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], status_kib(pid, "VmRSS"))
                for name, n in threads(pid).items():
                    seen[name] = max(seen[name], n)
                time.sleep(0.02)

        def session():
            with smtplib.SMTP("127.0.0.1", relay_port, timeout=60) as s:
                for _ in range(args.messages):
                    s.sendmail("a@lan.test", ["b@remote.test"], msg)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.monotonic()
        workers = [threading.Thread(target=session) for _ in range(args.sessions)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(300)
        accepted_s = time.monotonic() - t0
        total = args.sessions * args.messages
        load_peak = peak[0]
        if args.outage:
            peak[0] = 0
            start_sink(sink_cmd)
            os.kill(pid, signal.SIGUSR1)
        counted = {}

        def originals():
            """Messages at the sink, each digest counted as the originals it carries."""
            for name in os.listdir(sink_dir):
                if name.endswith(".eml") and name not in counted:
                    with open(os.path.join(sink_dir, name), "rb") as f:
                        data = f.read()
                    parts = data.count(b"\r\nContent-Type: message/rfc822\r\n")
                    counted[name] = parts if b"\r\nSubject: [" in data and parts else 1
            return sum(counted.values())

        wait_until(lambda: originals() >= total, 300, f"{total} messages at the sink")
        stop.set()
        sampler.join()
        hwm = status_kib(pid, "VmHWM")
        time.sleep(2)
        after_rss, after_threads = status_kib(pid, "VmRSS"), threads(pid)
        after_split = split(pid)
        if args.smaps:
            with open(f"/proc/{pid}/smaps") as src, open(args.smaps, "w") as dst:
                dst.write(src.read())

        print(f"binary: {args.binary} ({os.path.getsize(args.binary)} bytes), "
              f"{args.smarthosts} smarthost(s), auth {args.auth}")
        if args.auth == "oauth2":
            print(f"oauth2: the token endpoint was asked {len(token_calls)} time(s)")
        print(f"idle: VmRSS {idle_rss} KiB ({idle_rss / 1024:.1f} MiB; {idle_split}); "
              f"{sum(idle_threads.values())} threads: {show(idle_threads)}")
        print(f"load: {args.sessions} sessions x {args.messages} messages x {len(msg)} bytes, "
              f"accepted in {accepted_s:.1f} s, all at the sink")
        if args.outage:
            print(f"drain: {len(counted)} messages at the sink carrying {originals()} originals; "
                  f"peak VmRSS while draining {peak[0]} KiB ({peak[0] / 1024:.1f} MiB)")
            peak[0] = max(peak[0], load_peak)
        print(f"load: peak VmRSS {peak[0]} KiB ({peak[0] / 1024:.1f} MiB), VmHWM {hwm} KiB "
              f"({hwm / 1024:.1f} MiB); {sum(seen.values())} distinct threads seen: {show(seen)}")
        print(f"after: VmRSS {after_rss} KiB ({after_rss / 1024:.1f} MiB; {after_split}); "
              f"{sum(after_threads.values())} threads: {show(after_threads)}")
    finally:
        for p in reversed(procs):
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        subprocess.run(["rm", "-rf", work], check=False)


if __name__ == "__main__":
    main()
