#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ from SMTP transcripts (the ones in
src/smtp/server/tests.rs and client.rs tests, plus pipelined groups, STARTTLS and AUTH PLAIN)
and from OAuth token endpoint replies (the ones in src/forward/oauth.rs tests).

Each target reads a small configuration header before its payload (see the target's
`fuzz_target!`); this script writes those headers. Token-mode seeds are encoded with the
target's own TOKENS table, parsed from its source, so the two cannot drift. Run from fuzz/:
    python3 make-seeds.py
"""

import os
import re
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CHARS = b"\r\n\t " + bytes(range(0x21, 0x7F))


def unescape(lit):
    out = bytearray()
    i = 0
    while i < len(lit):
        c = lit[i]
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        n = lit[i + 1]
        if n == "x":
            out.append(int(lit[i + 2 : i + 4], 16))
            i += 4
            continue
        out.append({"r": 13, "n": 10, "t": 9, "0": 0, "\\": 92, '"': 34, "'": 39}[n])
        i += 2
    return bytes(out)


def tokens(target):
    src = open(os.path.join(HERE, "fuzz_targets", target + ".rs")).read()
    block = src[src.index("const TOKENS") : ]
    block = block[: block.index("];")]
    block = block[block.index("= &[") + 4 :]
    pattern = re.compile(r'b"((?:[^"\\]|\\.)*)"|&\[b\'(.)\'; (\d+)\]')
    return [unescape(m.group(1)) if m.group(1) is not None else m.group(2).encode() * int(m.group(3))
            for m in pattern.finditer(block)]


def encode(data, toks, separator=False):
    """Greedy longest-token encoding; bytes outside tokens go through CHARS."""
    out = bytearray()
    i = 0
    order = sorted(((t, n) for n, t in enumerate(toks) if t), key=lambda x: -len(x[0]))
    while i < len(data):
        for tok, n in order:
            if data.startswith(tok, i):
                out.append(n)
                i += len(tok)
                break
        else:
            out.append(len(toks) + CHARS.index(data[i : i + 1]))
            i += 1
    assert all(b < 256 for b in out)
    return bytes(out)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def crlf(*lines):
    return b"".join(l + b"\r\n" for l in lines)


PLAIN = b"AGNhbWVyYQBwdw=="  # \0camera\0pw

BASIC = crlf(b"EHLO client.example", b"MAIL FROM:<a@b.example> BODY=8BITMIME",
             b"RCPT TO:<c@d.example>", b"DATA", b"Subject: hi", b"", b"..dot", b"line", b".",
             b"QUIT")
PIPELINED = crlf(b"EHLO c") + crlf(b"MAIL FROM:<a@b.example>", b"RCPT TO:<r1@d.example>",
                                    b"RCPT TO:<r2@d.example>", b"RCPT TO:<r3@d.example>",
                                    b"DATA") + crlf(b"body", b".") + crlf(
    b"RSET", b"MAIL FROM:<> SIZE=10", b"RCPT TO:<postmaster>", b"DATA", b"x", b".", b"QUIT")
ERRORS = crlf(b"FOO", b"MAIL FROM:<a@b.example>", b"HELO", b"HELO c", b"RCPT TO:<c@d>",
              b"DATA", b"MAIL FROM:<>", b"DATA", b"NOOP", b"VRFY someone", b"HELP",
              b"BDAT 10 LAST", b"STARTTLS", b"AUTH PLAIN " + PLAIN, b"BAZ")
UTF8 = crlf(b"EHLO c", b"MAIL FROM:<a@b.example>", "RCPT TO:<δ@d.example>".encode(), b"RSET",
            b"MAIL FROM:<a@b.example> SMTPUTF8", "RCPT TO:<δ@d.example>".encode(), b"DATA",
            "Subject: é".encode(), b".", b"QUIT")
SMUGGLE = crlf(b"EHLO c", b"MAIL FROM:<a@b>", b"RCPT TO:<c@d>", b"DATA") + \
    b"a\n.\nMAIL FROM:<evil@x>\r\nb\r\n.\nc\n.\r\nd\r\n..\r\n.\r\nQUIT\r\n"
LONG = crlf(b"EHLO c", b"X" * 600, b"NOOP", b"MAIL FROM:<a@b>", b"RCPT TO:<c@d>", b"DATA",
            b"y" * 1200, b".", b"QUIT")
STARTTLS_PRE = crlf(b"EHLO c", b"STARTTLS") + crlf(b"MAIL FROM:<injected@x>")
STARTTLS_POST = crlf(b"EHLO c", b"AUTH PLAIN " + PLAIN, b"MAIL FROM:<a@b>", b"RCPT TO:<c@d>",
                     b"DATA", b"hi", b".", b"QUIT")
AUTH_LOGIN = crlf(b"EHLO c", b"AUTH LOGIN", b"Y2FtZXJh", b"d3Jvbmc=", b"AUTH PLAIN", b"*",
                  b"AUTH PLAIN", PLAIN, b"AUTH PLAIN " + PLAIN, b"QUIT")


def server_session():
    toks = tokens("server_session")
    # header: mode flags limits outcomes cut1 cut2
    def header(mode, flags, limits=0x52, outcomes=0x00, c1=37, c2=911):
        return bytes([mode, flags, limits, outcomes]) + struct.pack("<HH", c1, c2)
    relay = 0x08  # TLS unavailable, relay allowed, AUTH not offered
    for name, t, flags in [("basic", BASIC, relay), ("pipelined", PIPELINED, relay),
                           ("errors", ERRORS, relay), ("utf8", UTF8, relay),
                           ("smuggling", SMUGGLE, relay), ("long-lines", LONG, relay),
                           ("relay-denied", PIPELINED, relay | 0x04)]:
        write("server_session", name + ".raw", header(1, flags) + t)
        if t.isascii():
            write("server_session", name + ".tok", header(0, flags) + encode(t, toks))
    # STARTTLS then, in the next segment (token 0), the TLS session with AUTH PLAIN.
    tls = encode(STARTTLS_PRE, toks) + b"\x00" + encode(STARTTLS_POST, toks)
    write("server_session", "starttls-auth-plain.tok", header(0, 0x01) + tls)
    write("server_session", "starttls-required.tok", header(0, 0x11) + tls)
    write("server_session", "auth-login.tok", header(0, 0x03) + encode(AUTH_LOGIN, toks))
    write("server_session", "queue-full.raw", header(1, relay, 0x52, 0xEA) + PIPELINED)


def command():
    toks = tokens("command")
    lines = [b"EHLO client.example", b"HELO c", b"MAIL FROM:<a@b.example> BODY=8BITMIME SIZE=100",
             b"MAIL FROM:<>", b"mail from: <@a,@b:u@[192.0.2.1]> SMTPUTF8",
             b"RCPT TO:<\"quoted local\"@[IPv6:::1]>", b"RCPT TO:<postmaster>",
             "RCPT TO:<δ@d.example>".encode(), b"DATA", b"RSET", b"NOOP x", b"QUIT",
             b"VRFY someone", b"HELP", b"STARTTLS", b"AUTH PLAIN " + PLAIN, b"AUTH LOGIN",
             b"BDAT 10 LAST", b"MAIL FROM:<a@b> SIZE=18446744073709551616"]
    write("command", "all-verbs.tok", b"\x00" + encode(crlf(*[l for l in lines if l.isascii()]), toks))
    write("command", "all-verbs.raw", b"\x01" + crlf(*lines))
    write("command", "long-line.raw", b"\x05" + b"NOOP " + b"x" * 600 + b"\r\nQUIT\n")
    for i, line in enumerate(lines[:6]):
        write("command", "line-%d.raw" % i, b"\x03" + line)


def body():
    def header(mode):
        return bytes([mode]) + struct.pack("<6H", 3, 17, 200, 1, 9, 64)
    bodies = [b"Subject: hi\r\n\r\n.dot\r\n..two\r\nline", b"a\n.\nb\r\n.\nc\n.\r\nd",
              b"bare\rcr\r.\r\n", b".", b"", b"x" * 1001 + b"\r\nok\r\n", "é ü\n".encode()]
    for i, b in enumerate(bodies):
        write("body", "roundtrip-%d.raw" % i, header(1) + b)
    wire = [b"hi\r\n.\r\nMAIL", b".\r\n", b"a\n.\nb\r\n..\r\n.\r\n", b"x" * 1200 + b"\r\n.\r\n"]
    for i, w in enumerate(wire):
        write("body", "wire-%d.raw" % i, header(3 | (4 << 2)) + w)


def reply():
    replies = [b"220 mx.example ESMTP\r\n",
               b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n"
               b"250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n",
               b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
               b"550-5.1.1 no such\r\n550-5.1.1 user\r\n550 5.1.1 here\n",
               b"421 4.3.0 closing\r\n", b"334 \r\n235 2.7.0 ok\r\n", b"250\r\n"]
    for i, r in enumerate(replies):
        write("reply", "reply-%d.raw" % i, b"\x01\x07\x00" + r)
    write("reply", "stream.tok", b"\x00\x0b\x00" + encode(b"".join(replies), tokens("reply")))


def client_session():
    toks = tokens("client_session")
    ehlo = (b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 100\r\n250-8BITMIME\r\n"
            b"250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250 SMTPUTF8\r\n")
    plain = b"220 mx.example ESMTP\r\n" + ehlo + b"250 OK\r\n250 OK\r\n354 go ahead\r\n" + \
        b"250 2.0.0 queued\r\n221 2.0.0 bye\r\n"
    tls = b"220 mx.example ESMTP\r\n" + ehlo + b"220 2.0.0 Ready to start TLS\r\n" + ehlo + \
        b"235 2.7.0 ok\r\n250 OK\r\n250 OK\r\n550 5.1.1 unknown\r\n354 go ahead\r\n" + \
        b"250 2.0.0 queued\r\n221 2.0.0 bye\r\n"
    login = b"220 mx.example ESMTP\r\n250-mx.example\r\n250 AUTH=LOGIN\r\n" + \
        b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 ok\r\n250 OK\r\n250 OK\r\n" + \
        b"354 go ahead\r\n421 4.3.0 closing\r\n"
    old = b"220 old\r\n500 5.5.1 what\r\n250 old\r\n250 OK\r\n550 5.1.1 unknown\r\n" + \
        b"250 OK\r\n221 bye\r\n"
    # flags, message count, then (flags, recipients) per message
    for name, flags, msgs, stream in [("plain", 0x00, b"\x01\x00\x01", plain),
                                       ("starttls-auth", 0x06, b"\x02\x00\x02\x05\x0a", tls),
                                       ("implicit-login", 0x07, b"\x01\x00\x02", login),
                                       ("helo-fallback", 0x00, b"\x01\x00\x01", old)]:
        write("client_session", name + ".raw", bytes([flags | 0x08]) + msgs + stream)
        write("client_session", name + ".tok", bytes([flags]) + msgs + encode(stream, toks))


TOKEN_JSON = (b'{"token_type":"Bearer","scope":"https://outlook.office.com/SMTP.Send",'
              b'"expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0eXAi.eyJhdWQi.sig-_",'
              b'"refresh_token":"0.AX8A\\/new"}')
ERROR_JSON = b'{"error":"invalid_grant","error_description":"AADSTS70000: expired","codes":[70000]}'


def oauth_json():
    bodies = [TOKEN_JSON, ERROR_JSON, b'{"access_token":"abc","expires_in":"60"}',
              b' {"access_token":"abc","id":{"nested":[1,2.5e3,true,null,"\\"}"]}} ',
              b'{"access_token":"a\\u0041b","token_type":"bearer"}', b'{}']
    for i, b in enumerate(bodies):
        write("oauth_json", "reply-%d.json" % i, b)


def oauth_response():
    def http(status, headers, body):
        return b"HTTP/1.1 " + status + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
    length = b"Content-Length: %d" % len(TOKEN_JSON)
    chunked = b"%x\r\n%s\r\n%x;ext=1\r\n%s\r\n0\r\n\r\n" % (
        20, TOKEN_JSON[:20], len(TOKEN_JSON) - 20, TOKEN_JSON[20:])
    replies = [http(b"200 OK", [b"Content-Type: application/json", length], TOKEN_JSON),
               http(b"400 Bad Request", [b"transfer-encoding: chunked"], chunked),
               b"HTTP/1.0 200 OK\r\nCache-Control: no-store\r\n\r\n" + TOKEN_JSON,
               http(b"503 Service Unavailable", [b"Content-Length: 17"], b"<html>down</html>")]
    for i, r in enumerate(replies):
        # First byte: the prefix step (see the target).
        write("oauth_response", "reply-%d.raw" % i, bytes([i * 5 + 3]) + r)


if __name__ == "__main__":
    server_session()
    command()
    body()
    reply()
    client_session()
    oauth_json()
    oauth_response()
