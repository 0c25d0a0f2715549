#!/usr/bin/env bash
# Link-aware forwarding, proven in network namespaces (needs root; called by .ci/run):
#
#   root namespace: the smarthost (tests/data/smtp_sink.py) on 10.213.0.1, one end of a veth pair
#   namespace $ns:  the relay; the other veth end, configured but DOWN (no route to the smarthost)
#
# 1. A message queued while the link is down is not delivered; `outpost status` says "down".
#    retry_min/retry_max are 10/20 minutes, so no timer can deliver it during this script.
# 2. `ip link set … up` inside the namespace: the relay's netlink watch probes at once and the
#    sink has the message within seconds (the time is printed).
# 3. A listen address that does not exist at start (10.213.1.1:2525) is retried; once it is added
#    to the namespace's lo, the relay binds it and accepts mail there.
#
# usage: .ci/netns.sh OUTPOST [PYTHON]   (PYTHON runs the sink: a venv with aiosmtpd, or python3)
set -euo pipefail
cd "$(dirname "$0")/.."

outpost=$(realpath "$1")
sink_python=${2:-python3}
CI_NAME=netns
source .ci/lib.sh

[[ $(id -u) == 0 ]] || die "needs root (ip netns)"
command -v ip >/dev/null || die "ip (iproute2) is not installed"

ns=outpost-ci-$$
host_if=opo$$h
ns_if=opo$$n
smarthost_ip=10.213.0.1
late_ip=10.213.1.1
at_exit+=("ip link del $host_if" "ip netns del $ns")
in_ns() { ip netns exec "$ns" "$@"; }
now_ms() { date +%s%3N; }

ip netns add "$ns"
ip link add "$host_if" type veth peer name "$ns_if"
ip link set "$ns_if" netns "$ns"
ip addr add "$smarthost_ip/24" dev "$host_if"
ip link set "$host_if" up
in_ns ip link set lo up
in_ns ip addr add 10.213.0.2/24 dev "$ns_if"
# "$ns_if" stays down: the kernel installs no route to 10.213.0.0/24, connect fails at once.

"$sink_python" tests/data/smtp_sink.py "$work/sink" "$work/sink.port" "$smarthost_ip" \
    >"$work/sink.log" 2>&1 &
pids+=($!)
wait_for 30 "the sink's port" test -s "$work/sink.port" || fail "sink did not start"
sink_port=$(cat "$work/sink.port")

cat >"$work/outpost.toml" <<EOF
hostname = "outpost.netns"
data_dir = "$work/data"
listen = ["127.0.0.1:0", "$late_ip:2525"]
relay_from = ["127.0.0.0/8", "$late_ip/32"]

[smarthost]
address = "$smarthost_ip:$sink_port"
tls = "none"

[queue]
retry_min = "10m"
retry_max = "20m"
EOF
"$outpost" check-config --config "$work/outpost.toml"
# Not through in_ns: run in the background, a shell function is a subshell whose PID `$!` would
# be, and killing it at exit would leave the relay running. `ip netns exec` execs the relay, so
# `$!` is the relay itself.
ip netns exec "$ns" "$outpost" serve --config "$work/outpost.toml" >"$work/outpost.log" 2>&1 &
pids+=($!)
listening() { grep -qE 'listening on 127\.0\.0\.1:[0-9]+' "$work/outpost.log"; }
wait_for 30 "the relay's listening line" listening || fail "relay did not start"
grep -q "cannot listen on $late_ip:2525 yet" "$work/outpost.log" \
    || fail "no retry line for the missing listen address"
port=$(grep -oE 'listening on 127\.0\.0\.1:[0-9]+' "$work/outpost.log" | head -n1 | grep -oE '[0-9]+$')

send() { # send HOST PORT SUBJECT, from inside the namespace
    in_ns timeout 60 python3 - "$1" "$2" "$3" <<'EOF'
import smtplib, sys
host, port, subject = sys.argv[1], int(sys.argv[2]), sys.argv[3]
msg = "From: cron@site.test\r\nTo: ops@remote.test\r\nSubject: %s\r\n\r\nnetns\r\n" % subject
with smtplib.SMTP(host, port, timeout=30) as s:
    assert not s.sendmail("cron@site.test", ["ops@remote.test"], msg)
EOF
}
at_sink() { grep -qs "^Subject: $1" "$work"/sink/*.eml; }

echo "== link down: a message waits"
send 127.0.0.1 "$port" netns-link-up || fail "the relay did not accept mail"
link_down() { "$outpost" status --config "$work/outpost.toml" 2>/dev/null | grep -q "link: down since"; }
wait_for 30 "status: link down" link_down || fail "status never said the link is down"
sleep 2
at_sink netns-link-up && fail "delivered while the link was down?"
"$outpost" status --config "$work/outpost.toml"

echo "== interface up: netlink makes the relay probe now"
start=$(now_ms)
in_ns ip link set "$ns_if" up
wait_for 30 "delivery after link-up" at_sink netns-link-up || fail "not delivered after the link came up"
elapsed=$(($(now_ms) - start))
grep -q "network change (" "$work/outpost.log" || fail "no netlink log line"
echo "delivered ${elapsed} ms after the interface came up (retry_min is 10 min)"

echo "== a listen address that appears late is bound"
in_ns ip addr add "$late_ip/32" dev lo
late_bound() { grep -q "listening on $late_ip:2525 (address came up)" "$work/outpost.log"; }
wait_for 30 "the late bind" late_bound || fail "the late address was never bound"
send "$late_ip" 2525 netns-late-listener || fail "no mail accepted on the late address"
wait_for 30 "delivery via the late address" at_sink netns-late-listener \
    || fail "mail sent to the late address not delivered"
grep -E "network change|address came up|cannot listen" "$work/outpost.log"
echo "netns: link-up drain and late listen address: ok"
