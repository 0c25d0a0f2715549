#!/usr/bin/env bash
# Local submission from outside `cargo test`: Python's smtplib (a real client library) driving
# `outpost sendmail -bs` over pipes; and, as root, `sendmail` run as nobody and as root with
# umask 077 against a daemon running as another user with a 0700 data_dir, its submission
# socket in /run/outpost (a tmpfs in a private mount namespace, so the host's /run is untouched).
# Usage: bash .ci/submit.sh OUTPOST SINK_PYTHON
set -euo pipefail
cd "$(dirname "$0")/.."
CI_NAME=submit
source .ci/lib.sh

chmod 0755 "$work"
install -m 0755 "$1" "$work/outpost"
outpost="$work/outpost"
sink_python=$2

"$sink_python" tests/data/smtp_sink.py "$work/sink" "$work/sink.port" >"$work/sink.log" 2>&1 &
pids+=($!)
wait_for 30 "the sink's port" test -s "$work/sink.port" || fail "sink did not start"
sink_port=$(cat "$work/sink.port")

# config FILE DATA_DIR
config() {
    cat >"$1" <<EOF
hostname = "outpost.ci"
data_dir = "$2"
listen = ["127.0.0.1:0"]

[smarthost]
address = "127.0.0.1:$sink_port"
tls = "none"
EOF
    chmod 0644 "$1"
}

# at_sink SUBJECT NEEDLE: a message with SUBJECT at the sink holds NEEDLE.
at_sink() { grep -ls "^Subject: $1" "$work"/sink/*.eml 2>/dev/null | xargs -r grep -qsF "$2"; }

step "submit: Python smtplib drives sendmail -bs over pipes"
config "$work/outpost.toml" "$work/data"
"$outpost" serve --config "$work/outpost.toml" >"$work/outpost.log" 2>&1 &
pids+=($!)
wait_for 30 "the submission socket" test -S "$work/data/submit.sock" || fail "relay did not start"
timeout 60 python3 - "$outpost" "$work/outpost.toml" <<'EOF' || fail "smtplib over sendmail -bs failed"
import smtplib, socket, subprocess, sys
outpost, config = sys.argv[1:3]
ours, theirs = socket.socketpair()
child = subprocess.Popen([outpost, "sendmail", "-bs", "--config", config], stdin=theirs, stdout=theirs)
theirs.close()
class OverPipes(smtplib.SMTP):
    def _get_socket(self, host, port, timeout):
        return ours
s = OverPipes()
code, _ = s.connect("localhost")
assert code == 220, code
s.ehlo("ci.test")
assert s.has_extn("8bitmime"), "EHLO lacks 8BITMIME"
refused = s.sendmail("py-bs@lan.test", ["ops@remote.test"],
                     "Subject: interop-bs\r\n\r\nsent by smtplib through sendmail -bs\r\n")
assert not refused, refused
s.quit()
assert child.wait(timeout=30) == 0, "sendmail -bs did not exit 0"
print("smtplib over sendmail -bs: sent")
EOF
wait_for 30 "the -bs message at the sink" at_sink interop-bs "Received: from local (uid $(id -u))" \
    || fail "the -bs message did not arrive with its trace header"

if [[ $(id -u) != 0 ]]; then
    echo "not root: the other-user check is skipped"
    exit 0
fi

step "submit: nobody and root (umask 077) against a daemon running as another user"
runas=daemon
uid=$(id -u "$runas") gid=$(id -g "$runas")
nobody=$(id -u nobody)
mkdir -m 0700 "$work/data2"
chown "$uid:$gid" "$work/data2"
config "$work/outpost2.toml" "$work/data2"
export outpost work uid gid nobody
timeout 120 unshare --mount --propagation private bash -euo pipefail <<'EOF' || fail "local submission as another user failed"
mount -t tmpfs -o mode=0755 none /run
mkdir -m 0755 /run/outpost
chown "$uid:$gid" /run/outpost
setpriv --reuid="$uid" --regid="$gid" --clear-groups -- \
    "$outpost" serve --config "$work/outpost2.toml" >"$work/outpost2.log" 2>&1 &
daemon=$!
trap 'kill "$daemon" 2>/dev/null || true' EXIT
for ((i = 0; i < 300; i++)); do [[ -S /run/outpost/submit.sock ]] && break; sleep 0.1; done
printf 'Subject: interop-nobody\n\nfrom nobody\n' \
    | setpriv --reuid="$nobody" --regid="$nobody" --clear-groups -- \
        "$outpost" sendmail --config "$work/outpost2.toml" ops@remote.test
(umask 077 && printf 'Subject: interop-root077\n\nfrom root\n' \
    | "$outpost" sendmail --config "$work/outpost2.toml" ops@remote.test)
for ((i = 0; i < 300; i++)); do
    [[ $(grep -lsE '^Subject: interop-(nobody|root077)' "$work"/sink/*.eml | wc -l) == 2 ]] && break
    sleep 0.1
done
kill -TERM "$daemon"
wait "$daemon"
EOF
cat "$work/outpost2.log"
wait_for 30 "nobody's message" at_sink interop-nobody "Received: from local (uid $nobody)" \
    || fail "nobody's message did not arrive"
wait_for 30 "root's message" at_sink interop-root077 "Received: from local (uid 0)" \
    || fail "root's umask 077 message did not arrive"
echo "submit: nobody and root (umask 077) delivered"
