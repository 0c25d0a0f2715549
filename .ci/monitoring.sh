#!/usr/bin/env bash
# What monitoring written for Postfix and systemd reads from outpost, checked with their own
# logic:
#   A. `mailq` read by the regular expressions of nagios-plugins' `check_mailq -M postfix`
#      (the request count on the last line) and of Postfix queue parsers (one line per
#      message: ID with `*`/`!`, size, arrival time, sender), for an empty queue and for a
#      queue with a deferred and a held message.
#   B. `systemd-analyze security --offline=yes` on boards/outpost.service: the exposure score,
#      printed, at most 2.0.
#
# Usage: bash .ci/monitoring.sh [path/to/outpost]   (default target/release/outpost, built if
# missing)
set -euo pipefail
cd "$(dirname "$0")/.."

CI_NAME=monitoring
source .ci/lib.sh

outpost=${1:-target/release/outpost}
[[ -x $outpost ]] || cargo build --release
command -v perl >/dev/null || die "perl is needed"
command -v python3 >/dev/null || die "python3 is needed"

# check_mailq -M postfix, its parsing reproduced: the last line gives the count; every message
# line must parse, and their number must be that count. Prints the count.
cat >"$work/check_mailq.pl" <<'EOF'
use strict;
use warnings;
my @lines = <STDIN>;
my @rev = reverse @lines;
my $msg_q;
if ($rev[0] =~ /Kbytes in (\d+)/) {
    $msg_q = $1;
} elsif ($rev[0] =~ /Mail queue is empty/) {
    $msg_q = 0;
} else {
    print "UNKNOWN: cannot parse the last line: $rev[0]";
    exit 3;
}
if ($msg_q > 0) {
    $lines[0] =~ /^-Queue ID-\s+--Size--\s+----Arrival Time----\s+-Sender\/Recipient-------$/
        or do { print "UNKNOWN: header: $lines[0]"; exit 3 };
}
my $messages = 0;
for (@lines) {
    if (/^([0-9A-F]+)([*!]?)\s+(\d+)\s+(\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d)\s+(\S+)$/) {
        $messages++;
    } elsif (!/^(-Queue ID-|\s*\(.*\)$|\s{41}\S+$|$|-- \d+ Kbytes in \d+ Requests?\.$|Mail queue is empty$)/) {
        print "UNKNOWN: unparsed line: $_";
        exit 3;
    }
}
if ($messages != $msg_q) {
    print "UNKNOWN: $messages message lines, $msg_q requests\n";
    exit 3;
}
print "$msg_q\n";
EOF

step "A. mailq read as check_mailq -M postfix reads it"
# A smarthost port nobody listens on: mail stays queued, with the link's reason.
closed_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/outpost.toml" <<EOF
hostname = "outpost.ci"
data_dir = "$work/data"
listen = ["127.0.0.1:0"]

[smarthost]
address = "127.0.0.1:$closed_port"
tls = "none"

[queue]
retry_min = "10m"
retry_max = "20m"
EOF
"$outpost" serve --config "$work/outpost.toml" >"$work/outpost.log" 2>&1 &
pids+=($!)
relay_listening() { grep -qE 'listening on 127\.0\.0\.1:[0-9]+' "$work/outpost.log"; }
wait_for 30 "the relay's listening line" relay_listening || fail "relay did not start"
port=$(grep -oE 'listening on 127\.0\.0\.1:[0-9]+' "$work/outpost.log" | head -n1 | grep -oE '[0-9]+$')
ln -s "$(realpath "$outpost")" "$work/mailq"
mailq() { "$work/mailq" --config "$work/outpost.toml"; }

mailq | tee "$work/empty.txt"
[[ $(perl "$work/check_mailq.pl" <"$work/empty.txt") == 0 ]] || die "an empty queue is not 0"

timeout 60 python3 - "$port" <<'EOF' || fail "smtplib could not queue"
import smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30) as s:
    for n in range(3):
        s.sendmail("ci@lan.test", ["a@remote.test", "b@remote.test"],
                   "Subject: mailq %d\r\n\r\n%s" % (n, ("x" * 70 + "\r\n") * 40))
EOF
held=$("$outpost" queue list --json --config "$work/outpost.toml" | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["id"])')
"$outpost" queue hold "$held" --config "$work/outpost.toml"
mailq | tee "$work/queue.txt"
count=$(perl "$work/check_mailq.pl" <"$work/queue.txt") || die "check_mailq cannot read mailq: $count"
[[ $count == 3 ]] || die "check_mailq counted $count requests, not 3"
grep -qE "^${held}! " "$work/queue.txt" || die "the held message is not marked !"
echo "check_mailq -M postfix: $count requests"

step "B. systemd-analyze security on boards/outpost.service"
if ! command -v systemd-analyze >/dev/null && command -v apt-get >/dev/null; then
    SUDO=""
    if [[ $(id -u) != 0 ]] && command -v sudo >/dev/null; then SUDO="sudo -n"; fi
    DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
command -v systemd-analyze >/dev/null || die "systemd-analyze is needed"
mkdir -p "$work/unit"
cp boards/outpost.service "$work/unit/outpost.service"
systemd-analyze security --offline=yes --no-pager "$work/unit/outpost.service" | tee "$work/security.txt" | grep -v '✓' || true
score=$(grep -oE 'Overall exposure level for outpost.service: [0-9.]+' "$work/security.txt" | grep -oE '[0-9.]+$')
echo "outpost.service exposure: $score (at most 2.0)"
python3 -c "import sys; sys.exit(0 if float('$score') <= 2.0 else 1)" || die "exposure $score is above 2.0"
