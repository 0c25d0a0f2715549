#!/usr/bin/env python3
"""TLS smarthost for the TLS/AUTH interop checks (.ci/interop-tls.sh): stands in for a provider's
submission server.

usage: tls_sink.py OUTDIR PORTFILE CERT KEY USER PASSWORD

Listens on 127.0.0.1 (a free port, written to PORTFILE once ready), offers STARTTLS (Python's ssl
module, i.e. OpenSSL: independent of outpost's rustls), and after the handshake AUTH PLAIN and
LOGIN. A PASSWORD of the form `bearer:TOKEN` makes it an OAuth 2.0 smarthost instead: it offers
AUTH XOAUTH2 and OAUTHBEARER and accepts only USER with that access token. MAIL is refused before STARTTLS (530 5.7.0) and before AUTH (530 5.7.0). Every accepted
message is stored as OUTDIR/NNNN.eml with X-Sink-TLS / X-Sink-Auth lines in front. Runs until
killed.
"""

import base64
import itertools
import os
import socketserver
import ssl
import sys
import threading

OUTDIR, PORTFILE, CERT, KEY, USER, PASSWORD = sys.argv[1:7]
COUNTER = itertools.count(1)
LOCK = threading.Lock()
CONTEXT = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
CONTEXT.load_cert_chain(CERT, KEY)
BEARER = PASSWORD[len("bearer:"):] if PASSWORD.startswith("bearer:") else None
MECHANISMS = b"XOAUTH2 OAUTHBEARER" if BEARER else b"PLAIN LOGIN"


def store(tls_version, user, mail_from, rcpts, content):
    with LOCK:
        n = next(COUNTER)
    path = os.path.join(OUTDIR, "%04d.eml" % n)
    head = "X-Sink-TLS: %s\r\nX-Sink-Auth: %s\r\nX-Sink-From: <%s>\r\nX-Sink-To: %s\r\n" % (
        tls_version, user, mail_from, ",".join(rcpts))
    with open(path + ".tmp", "wb") as f:
        f.write(head.encode())
        f.write(content)
    os.rename(path + ".tmp", path)


class Session(socketserver.StreamRequestHandler):
    def reply(self, line):
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def line(self):
        data = self.rfile.readline(4096)
        if not data:
            raise EOFError
        return data

    def starttls(self):
        self.reply("220 2.0.0 go ahead")
        self.wfile.flush()
        sock = CONTEXT.wrap_socket(self.request, server_side=True)
        self.request = sock
        self.rfile = sock.makefile("rb")
        self.wfile = sock.makefile("wb")
        self.tls = sock.version()

    def auth(self, args):
        words = args.split()
        mech = words[0].upper() if words else b""
        if mech == b"PLAIN":
            blob = words[1] if len(words) > 1 else None
            if blob is None:
                self.reply("334 ")
                blob = self.line().strip()
            fields = base64.b64decode(blob).split(b"\0")
            user, password = fields[1].decode(), fields[2].decode()
        elif BEARER and mech in (b"XOAUTH2", b"OAUTHBEARER") and len(words) > 1:
            text = base64.b64decode(words[1]).decode()
            fields = text.split("\x01")
            if mech == b"XOAUTH2":
                user = fields[0][len("user="):]
            else:
                user = fields[0][len("n,a="):].rstrip(",")
            tokens = [f[len("auth=Bearer "):] for f in fields if f.startswith("auth=Bearer ")]
            password = "bearer:" + (tokens[0] if tokens else "")
        elif mech == b"LOGIN" and not BEARER:
            self.reply("334 VXNlcm5hbWU6")
            user = base64.b64decode(self.line().strip()).decode()
            self.reply("334 UGFzc3dvcmQ6")
            password = base64.b64decode(self.line().strip()).decode()
        else:
            self.reply("504 5.5.4 mechanism not supported")
            return
        if user == USER and password == PASSWORD:
            self.user = user
            self.reply("235 2.7.0 authenticated")
        else:
            self.reply("535 5.7.8 bad credentials")

    def handle(self):
        self.tls, self.user = None, None
        self.reply("220 tls-sink.test ESMTP")
        mail_from, rcpts = None, []
        try:
            while True:
                line = self.line()
                verb, _, args = line.strip().partition(b" ")
                verb = verb.upper()
                if verb == b"EHLO":
                    ext = [b"250-tls-sink.test", b"250-8BITMIME"]
                    ext.append(b"250 AUTH " + MECHANISMS if self.tls else b"250 STARTTLS")
                    self.wfile.write(b"\r\n".join(ext) + b"\r\n")
                    self.wfile.flush()
                elif verb == b"STARTTLS" and not self.tls:
                    self.starttls()
                elif verb == b"AUTH" and self.tls and not self.user:
                    self.auth(args)
                elif verb == b"MAIL":
                    if not self.tls:
                        self.reply("530 5.7.0 Must issue a STARTTLS command first")
                    elif not self.user:
                        self.reply("530 5.7.0 Authentication required")
                    else:
                        mail_from = line[10:].strip().split(b" ")[0].strip(b"<>").decode()
                        rcpts = []
                        self.reply("250 2.1.0 ok")
                elif verb == b"RCPT" and mail_from is not None:
                    rcpts.append(line[8:].strip().split(b" ")[0].strip(b"<>").decode())
                    self.reply("250 2.1.5 ok")
                elif verb == b"DATA" and rcpts:
                    self.reply("354 go ahead")
                    content = bytearray()
                    while True:
                        data = self.rfile.readline(65536)
                        if not data or data == b".\r\n":
                            break
                        content += data[1:] if data.startswith(b".") else data
                    store(self.tls, self.user, mail_from, rcpts, bytes(content))
                    mail_from, rcpts = None, []
                    self.reply("250 2.0.0 stored")
                elif verb == b"QUIT":
                    self.reply("221 2.0.0 bye")
                    return
                elif verb in (b"RSET", b"NOOP"):
                    mail_from, rcpts = None, []
                    self.reply("250 2.0.0 ok")
                else:
                    self.reply("503 5.5.1 bad sequence")
        except (EOFError, OSError, ssl.SSLError, IndexError, ValueError) as e:
            print("tls-sink: session ended: %r" % (e,), flush=True)


if __name__ == "__main__":
    os.makedirs(OUTDIR, exist_ok=True)
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Session)
    port = server.server_address[1]
    print("tls-sink: on 127.0.0.1:%d" % port, flush=True)
    with open(PORTFILE + ".tmp", "w") as f:
        f.write("%d\n" % port)
    os.rename(PORTFILE + ".tmp", PORTFILE)
    server.serve_forever()
