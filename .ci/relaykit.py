"""Shared by .ci/powercut.py and .ci/damage.py: the release binary, the sink, a client.

Processes are started here and stopped by PID (never by name); every wait is bounded.
"""

import email.parser
import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SINK = os.path.join(ROOT, "tests", "data", "smtp_sink.py")
LISTENING = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")


def wait_until(seconds, check, interval=0.05):
    """Polls `check` until it returns a true value (returned) or `seconds` pass (None)."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


class Sink:
    """tests/data/smtp_sink.py on loopback, storing each message as OUTDIR/NNNN.eml."""

    def __init__(self, work, python=sys.executable):
        self.outdir = os.path.join(work, "sink")
        portfile = os.path.join(work, "sink.port")
        self.log = open(os.path.join(work, "sink.log"), "ab")
        self.proc = subprocess.Popen([python, SINK, self.outdir, portfile], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        if not wait_until(30, lambda: os.path.exists(portfile)):
            self.stop()
            raise RuntimeError("the sink did not start")
        with open(portfile) as f:
            self.port = int(f.read())

    def messages(self):
        """[(message_id, raw message, envelope sender)] in arrival order (the sender is "" for
        a bounce)."""
        out = []
        for name in sorted(os.listdir(self.outdir)):
            if not name.endswith(".eml"):
                continue
            with open(os.path.join(self.outdir, name), "rb") as f:
                raw = f.read()
            sender, _, body = raw.split(b"\r\n", 2)
            sender = sender.split(b":", 1)[1].strip().strip(b"<>").decode(errors="replace")
            out.append((message_id(body), body, sender))
        return out

    def stop(self):
        stop(self.proc)


def message_id(raw):
    head = email.parser.BytesHeaderParser().parsebytes(raw)
    value = head.get("Message-ID")
    return value.strip() if value else None


class ClosedPort:
    """A loopback port that refuses connections (bound, never listening): a smarthost down."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]


def write_config(path, data_dir, smarthost_port):
    with open(path, "w") as f:
        f.write(
            'hostname = "outpost.ci"\n'
            'data_dir = "%s"\n'
            'listen = ["127.0.0.1:0"]\n'
            "\n[smarthost]\n"
            'address = "127.0.0.1:%d"\n'
            'tls = "none"\n'
            "\n[queue]\n"
            'retry_min = "1s"\n'
            'retry_max = "2s"\n' % (data_dir, smarthost_port)
        )


class Relay:
    """`outpost serve --config CONFIG`, its log appended to LOG."""

    def __init__(self, outpost, config, log):
        self.outpost, self.config, self.log_path = outpost, config, log
        self.offset = os.path.getsize(log) if os.path.exists(log) else 0
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([outpost, "serve", "--config", config], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.port = None

    def output(self):
        with open(self.log_path, "rb") as f:
            f.seek(self.offset)
            return f.read()

    def wait_listening(self, seconds=30):
        """The SMTP port once the relay listens; None if it exited or did not within `seconds`."""
        def check():
            found = LISTENING.search(self.output())
            if found:
                return int(found.group(1))
            return -1 if self.proc.poll() is not None else None

        port = wait_until(seconds, check)
        self.port = port if port and port > 0 else None
        return self.port

    def recovered(self):
        """Whether start-up recovery ended: its pass over the body files (which may rebuild
        messages after the queue opened) logged that it is done, or that it failed."""
        out = self.output()
        return b"journal pass done" in out or b"journal pass failed" in out

    def queue(self):
        """`outpost queue list --json`, or None if the control socket does not answer."""
        run = subprocess.run([self.outpost, "queue", "list", "--json", "--config", self.config],
                             capture_output=True, timeout=30)
        if run.returncode != 0:
            return None
        return json.loads(run.stdout or b"[]")

    def status(self):
        """`outpost status --json`, or None."""
        run = subprocess.run([self.outpost, "status", "--json", "--config", self.config],
                             capture_output=True, timeout=30)
        try:
            return json.loads(run.stdout) if run.returncode == 0 else None
        except ValueError:
            return None

    def kill(self):
        stop(self.proc, signal.SIGKILL)

    def terminate(self):
        return stop(self.proc, signal.SIGTERM)


def stop(proc, sig=signal.SIGTERM, seconds=20):
    """Sends `sig` to `proc` (by PID), waits up to `seconds`, then SIGKILL. Returns its status."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            return proc.wait(seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(seconds)


def make_message(msg_id, size, rng):
    """A message of about `size` octets with Message-ID `msg_id` (printable, CRLF lines)."""
    lines = []
    total = 0
    while total < size:
        line = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 ") for _ in range(72))
        lines.append(line)
        total += 74
    return ("From: load@lan.test\r\nTo: ops@remote.test\r\nSubject: %s\r\nMessage-ID: %s\r\n\r\n"
            % (msg_id, msg_id) + "\r\n".join(lines) + "\r\n").encode()


def send(port, raw, timeout=15):
    """Submits `raw` over SMTP; True only on a 250 to the final dot."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as s:
            s.ehlo("load.test")
            refused = s.sendmail("load@lan.test", ["ops@remote.test"], raw)
            return not refused
    except (OSError, smtplib.SMTPException):
        return False
