#!/usr/bin/env python3
"""SMTP sink for the interop checks in .ci/run: stands in for the smarthost.

usage: smtp_sink.py OUTDIR PORTFILE [HOST [PORT]]

Listens on HOST (default 127.0.0.1) and PORT (default a free port), written to PORTFILE once ready, and stores every message it
accepts as OUTDIR/NNNN.eml, prefixed with X-Sink-From / X-Sink-To lines for the envelope. Uses
aiosmtpd when it is installed; otherwise a minimal built-in server that speaks enough SMTP for a
well-behaved client. Runs until killed.
"""

import itertools
import os
import socket
import socketserver
import sys
import threading
import time

OUTDIR, PORTFILE = sys.argv[1], sys.argv[2]
HOST = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
PORT = int(sys.argv[4]) if len(sys.argv) > 4 else 0
COUNTER = itertools.count(1)
LOCK = threading.Lock()


def store(mail_from, rcpt_tos, content):
    with LOCK:
        n = next(COUNTER)
    path = os.path.join(OUTDIR, "%04d.eml" % n)
    head = "X-Sink-From: <%s>\r\nX-Sink-To: %s\r\n" % (mail_from, ",".join(rcpt_tos))
    with open(path + ".tmp", "wb") as f:
        f.write(head.encode())
        f.write(content)
    os.rename(path + ".tmp", path)


def free_port():
    if PORT:
        return PORT
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def announce(port):
    with open(PORTFILE + ".tmp", "w") as f:
        f.write("%d\n" % port)
    os.rename(PORTFILE + ".tmp", PORTFILE)


def run_aiosmtpd():
    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            store(envelope.mail_from, envelope.rcpt_tos, envelope.original_content or envelope.content)
            return "250 2.0.0 stored"

    port = free_port()
    controller = Controller(Handler(), hostname=HOST, port=port)
    controller.start()
    print("sink: aiosmtpd on %s:%d" % (HOST, port), flush=True)
    announce(port)
    while True:
        time.sleep(3600)


class MiniSmtp(socketserver.StreamRequestHandler):
    """Just enough RFC 5321 for outpost's forwarder: no pipelining, no extensions but 8BITMIME."""

    def reply(self, line):
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self):
        self.reply("220 sink.test ESMTP")
        mail_from, rcpts = None, []
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            verb = line.strip().split(b" ")[0].upper()
            if verb in (b"EHLO", b"HELO"):
                self.wfile.write(b"250-sink.test\r\n250 8BITMIME\r\n")
            elif line.upper().startswith(b"MAIL FROM:"):
                mail_from = line[10:].strip().split(b" ")[0].strip(b"<>").decode("utf-8", "replace")
                rcpts = []
                self.reply("250 2.1.0 ok")
            elif line.upper().startswith(b"RCPT TO:"):
                rcpts.append(line[8:].strip().split(b" ")[0].strip(b"<>").decode("utf-8", "replace"))
                self.reply("250 2.1.5 ok")
            elif verb == b"DATA":
                self.reply("354 go ahead")
                content = bytearray()
                while True:
                    data = self.rfile.readline(65536)
                    if not data:
                        return  # the client went away before the final dot: nothing taken
                    if data == b".\r\n":
                        break
                    content += data[1:] if data.startswith(b".") else data
                store(mail_from, rcpts, bytes(content))
                self.reply("250 2.0.0 stored")
            elif verb == b"QUIT":
                self.reply("221 2.0.0 bye")
                return
            elif verb in (b"RSET", b"NOOP"):
                self.reply("250 2.0.0 ok")
            else:
                self.reply("502 5.5.1 not implemented")


def run_builtin():
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer((HOST, PORT), MiniSmtp)
    port = server.server_address[1]
    print("sink: built-in server on %s:%d" % (HOST, port), flush=True)
    announce(port)
    server.serve_forever()


if __name__ == "__main__":
    os.makedirs(OUTDIR, exist_ok=True)
    try:
        import aiosmtpd  # noqa: F401
    except ImportError:
        run_builtin()
    else:
        run_aiosmtpd()
