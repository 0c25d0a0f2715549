#!/usr/bin/env bash
# Disk full on a real small filesystem, as root: the data dir on a 16 MiB tmpfs.
#   A. The free-space reserve: with the disk nearly full the relay answers 452 4.3.1, keeps
#      serving (NOOP, new sessions), and takes mail again as soon as space returns, no restart.
#   B. Head-on: concurrent sessions that pass the reserve check together run sled into ENOSPC;
#      a commit that fails gets 451 4.3.0 (never 250) and the daemon exits 75 for its
#      supervisor. Either way nothing acknowledged is lost.
#   C. Restarted with room and a smarthost, the store reopens cleanly (nothing quarantined) and
#      every acknowledged message reaches the sink.
# (`cargo test` covers the head-on case root-free with ulimit -f: tests/it/diskfull.rs.)
#
# Usage: bash .ci/faults.sh [path/to/outpost]   (default target/release/outpost, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."

CI_NAME=faults
source .ci/lib.sh

outpost=${1:-target/release/outpost}
[[ -x $outpost ]] || cargo build --release
[[ $(id -u) == 0 ]] || die "needs root (mount -t tmpfs)"
command -v python3 >/dev/null || die "python3 is needed"

disk="$work/disk"
# Unmounted before $work is removed (lib.sh runs these after killing the processes).
at_exit+=("umount '$disk'")
mkdir -p "$disk"
mount -t tmpfs -o size=16m tmpfs "$disk"
cat >"$work/outpost.toml" <<EOF
hostname = "outpost.ci"
data_dir = "$disk/data"
listen = ["127.0.0.1:0"]
# Reserve: max(2 x 256 KiB, 1 MiB) = 1 MiB.
max_message_size = 262144
EOF

relay_pid=""
start_relay() {
    "$outpost" serve --config "$work/outpost.toml" "$@" >>"$work/outpost.log" 2>&1 &
    relay_pid=$!
    pids+=("$relay_pid")
    listening() { [[ $(grep -cE 'listening on 127\.0\.0\.1:[0-9]+' "$work/outpost.log") -gt $starts ]]; }
    wait_for 30 "the relay's listening line" listening || fail "relay did not start"
    starts=$((starts + 1))
    port=$(grep -oE 'listening on 127\.0\.0\.1:[0-9]+' "$work/outpost.log" | tail -n1 | grep -oE '[0-9]+$')
}
starts=0
: >"$work/outpost.log"
start_relay

# send.py PORT PREFIX COUNT SIZE [PARALLEL]: one session per thread, COUNT messages each of
# ~SIZE octets; the threads start each body together (a barrier after the 354), so that
# parallel sessions pass the free-space check at the same moment. Prints one line per reply to
# the final dot ("250 id", "452 4.3.1 ..."), stops a session at its first refusal, then NOOPs.
# Appends acknowledged ids to send.py.acked.
cat >"$work/send.py" <<'EOF'
import smtplib, sys, threading
port, prefix, count, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
parallel = int(sys.argv[5]) if len(sys.argv) > 5 else 1
lock = threading.Lock()
barrier = threading.Barrier(parallel, timeout=30)
def say(line):
    with lock:
        print(line, flush=True)
def session(t):
    s = smtplib.SMTP("127.0.0.1", port, timeout=60)
    s.ehlo("ci.test")
    for n in range(count):
        mid = "%s-%d-%d" % (prefix, t, n)
        body = "X-Test-Id: %s\r\nSubject: %s\r\n\r\n" % (mid, mid) + ("y" * 70 + "\r\n") * (size // 72)
        s.mail("ci@lan.test")
        s.rcpt("ops@remote.test")
        code, _ = s.docmd("DATA")
        assert code == 354, code
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        s.send((body + ".\r\n").encode())
        code, text = s.getreply()
        if code != 250:
            say("%d %s" % (code, text.decode(errors="replace")))
            break
        say("250 " + mid)
        with lock:
            open(sys.argv[0] + ".acked", "a").write(mid + "\n")
    barrier.abort()
    say("noop %d" % s.noop()[0])
    s.quit()
def guarded(t):
    try:
        session(t)
    except Exception as e:
        say("error %r" % e)
        barrier.abort()
threads = [threading.Thread(target=guarded, args=(t,)) for t in range(parallel)]
for t in threads: t.start()
for t in threads: t.join()
EOF
acked="$work/send.py.acked"
: >"$acked"
fill_to() { # fill_to KIB: leaves about KIB KiB available on the tmpfs
    rm -f "$disk/filler"
    local avail
    avail=$(df -k --output=avail "$disk" | tail -n1 | tr -d ' ')
    if ((avail > $1)); then
        dd if=/dev/zero of="$disk/filler" bs=1K count=$((avail - $1)) status=none
    fi
    df -k --output=avail "$disk" | tail -n1
}

step "A: nearly full: 452 4.3.1, still serving, recovers when space returns"
echo "available KiB: $(fill_to 3072)"
timeout 120 python3 "$work/send.py" "$port" full 200 65536 >"$work/a.out" || true
tail -n 3 "$work/a.out"
grep -q '^452 4.3.1' "$work/a.out" || fail "no 452 4.3.1 with the disk nearly full"
grep -q '^noop 250' "$work/a.out" || fail "the session did not go on after the 452"
a_acked=$(grep -c '^250 ' "$work/a.out" || true)
timeout 60 python3 "$work/send.py" "$port" still 1 1000 >"$work/a2.out" || true
grep -q '^452 4.3.1' "$work/a2.out" || fail "a new session was not answered 452 while full"
kill -0 "$relay_pid" || fail "the relay died with the disk nearly full"
rm -f "$disk/filler"
timeout 60 python3 "$work/send.py" "$port" room 3 65536 >"$work/a3.out" || true
[[ $(grep -c '^250 ' "$work/a3.out") == 3 ]] || fail "no 250 after space returned"
echo "A: $a_acked accepted, then 452 4.3.1; NOOP 250; 250 again once space returned (no restart)"

step "B: head-on: concurrent sessions into ENOSPC"
echo "available KiB: $(fill_to 1300)"
timeout 180 python3 "$work/send.py" "$port" rush 2 250000 8 >"$work/b.out" || true
sort "$work/b.out" | uniq -c | sed 's/^/  /' | head -n 20
if grep -q '^451 4.3.0' "$work/b.out"; then
    status=0
    for ((i = 0; i < 300; i++)); do
        kill -0 "$relay_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$relay_pid" 2>/dev/null && fail "451 from a failed store but the relay kept running"
    wait "$relay_pid" || status=$?
    [[ $status == 75 ]] || fail "exit status $status after the store failed, expected 75"
    echo "B: 451 4.3.0 and exit 75 (store failed head-on)"
else
    grep -qE '^(250|452) ' "$work/b.out" || fail "no reply at all in the head-on phase"
    echo "B: the reserve held (only 250/452): the head-on case did not occur this time"
    kill -TERM "$relay_pid"
    wait "$relay_pid" || true
fi

step "C: restart with room and a smarthost: clean reopen, everything delivered"
rm -f "$disk/filler"
sink_dir="$work/sink"
mkdir -p "$sink_dir"
python3 tests/data/smtp_sink.py "$sink_dir" "$work/sink.port" >"$work/sink.log" 2>&1 &
pids+=($!)
wait_for 30 "the sink's port" test -s "$work/sink.port" || die "sink did not start"
printf '\n[smarthost]\naddress = "127.0.0.1:%s"\ntls = "none"\n' "$(cat "$work/sink.port")" \
    >>"$work/outpost.toml"
start_relay
opened=$(grep 'queue opened' "$work/outpost.log" | tail -n1)
echo "$opened"
[[ $opened == *"quarantined=0"* ]] || fail "the store did not reopen cleanly"
total=$(sort -u "$acked" | wc -l)
arrived() { [[ $(cat "$sink_dir"/*.eml 2>/dev/null | grep -c '^X-Test-Id: ') -ge $total ]]; }
wait_for 120 "$total messages at the sink" arrived || true
cat "$sink_dir"/*.eml | tr -d '\r' | sed -n 's/^X-Test-Id: //p' | sort >"$work/arrived"
missing=0
while read -r id; do
    grep -qx "$id" "$work/arrived" || { echo "lost: $id"; missing=$((missing + 1)); }
done < <(sort -u "$acked")
[[ $missing == 0 ]] || fail "$missing acknowledged messages never arrived"
echo "faults: disk full: $total acknowledged messages, 0 lost, $(sort -u "$work/arrived" | wc -l) \
delivered (a 451 may follow a commit that did reach the disk: delivered, never acknowledged), \
$(($(wc -l <"$work/arrived") - $(sort -u "$work/arrived" | wc -l))) duplicates; store reopened cleanly"
