#!/usr/bin/env bash
# TLS and AUTH interop, run by .ci/run after the plaintext interop: outside tools against
# the release binary. openssl makes a private CA and the certificates; `openssl s_client
# -starttls smtp` checks the handshake and the chain; swaks sends with STARTTLS + AUTH PLAIN and
# with implicit TLS + AUTH LOGIN, and checks that AUTH is refused in plaintext; the smarthost is
# tests/data/tls_sink.py (Python's ssl module, i.e. OpenSSL), which demands STARTTLS and AUTH.
#
# usage: .ci/interop-tls.sh OUTPOST_BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
outpost=$1

CI_NAME=interop-tls
source .ci/lib.sh

SUDO=""
if [[ $(id -u) != 0 ]] && command -v sudo >/dev/null; then SUDO="sudo -n"; fi
if ! command -v openssl >/dev/null || ! perl -MIO::Socket::SSL -e1 2>/dev/null; then
    if command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        # .ci/run already ran `apt-get update` and installed these; this covers running the
        # script alone on a machine whose package lists are fresh enough.
        timeout 900 $SUDO apt-get install -y -qq --no-install-recommends openssl \
            libio-socket-ssl-perl libnet-ssleay-perl >/dev/null
    fi
fi
command -v openssl >/dev/null || die "openssl is not installed"
perl -MIO::Socket::SSL -e1 2>/dev/null || die "swaks needs IO::Socket::SSL (libio-socket-ssl-perl)"
openssl version

# A private CA and a certificate for localhost / 127.0.0.1, valid for a day.
cd "$work"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 \
    -subj "/CN=outpost CI CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost" \
    2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    >server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
    -days 1 -extfile server.ext 2>/dev/null
hash=$(openssl passwd -6 camera-pw)
printf 'upstream-pw\n' >smarthost-password
cd - >/dev/null

python3 tests/data/tls_sink.py "$work/sink" "$work/sink.port" "$work/server.pem" \
    "$work/server.key" relay upstream-pw >"$work/sink.log" 2>&1 &
pids+=($!)
wait_for 30 "the TLS sink's port" test -s "$work/sink.port" || fail "TLS sink did not start"
sink_port=$(cat "$work/sink.port")

cat >"$work/outpost.toml" <<EOF
hostname = "outpost.ci"
data_dir = "$work/data"
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]
# Loopback must authenticate to relay.
relay_from = ["192.0.2.0/24"]

[tls]
cert = "$work/server.pem"
key = "$work/server.key"

[[users]]
name = "camera"
password_hash = "$hash"

[smarthost]
address = "localhost:$sink_port"
tls = "starttls"
ca_file = "$work/ca.pem"
username = "relay"
password_file = "$work/smarthost-password"

[queue]
retry_min = "1s"
retry_max = "2s"
EOF
"$outpost" check-config --config "$work/outpost.toml" >"$work/check.out" \
    || fail "check-config refused the TLS config"
if grep -q upstream-pw "$work/check.out"; then fail "check-config printed the password"; fi
"$outpost" serve --config "$work/outpost.toml" >"$work/outpost.log" 2>&1 &
pids+=($!)
listening() { grep -qE 'listening on 127\.0\.0\.1:[0-9]+ \(implicit TLS\)' "$work/outpost.log"; }
wait_for 30 "the relay's listening lines" listening || fail "relay did not start"
port=$(grep -oE 'listening on 127\.0\.0\.1:[0-9]+ \(STARTTLS\)' "$work/outpost.log" \
    | grep -oE ':[0-9]+' | tr -d :)
tls_port=$(grep -oE 'listening on 127\.0\.0\.1:[0-9]+ \(implicit TLS\)' "$work/outpost.log" \
    | grep -oE ':[0-9]+' | tr -d :)
echo "relay: STARTTLS on $port, implicit TLS on $tls_port; TLS sink on $sink_port"

echo "-- openssl s_client -starttls smtp"
out=$(timeout 30 openssl s_client -starttls smtp -connect "127.0.0.1:$port" -servername localhost \
    -CAfile "$work/ca.pem" -verify_return_error </dev/null 2>&1) || true
grep -q "Verify return code: 0 (ok)" <<<"$out" || { echo "$out"; fail "s_client: no verified handshake"; }
# OpenSSL prints the version on the "New, TLSv1.3, Cipher is …" line; the "Protocol :" line of
# the SSL-Session block only appears once a session ticket has arrived, which is timing-dependent.
grep -qE "^New, TLSv1\.[23],|Protocol *: TLSv1\.[23]" <<<"$out" \
    || { echo "$out"; fail "s_client: not TLS 1.2/1.3"; }

echo "-- swaks: AUTH refused in plaintext"
if timeout 60 swaks --server "127.0.0.1:$port" --timeout 20 --from cam@lan.test \
    --to ops@remote.test --auth PLAIN --auth-user camera --auth-password camera-pw \
    >"$work/swaks-plain.log" 2>&1; then
    cat "$work/swaks-plain.log"; fail "AUTH succeeded without TLS"
fi

echo "-- swaks: STARTTLS + AUTH PLAIN"
timeout 60 swaks --server "127.0.0.1:$port" --timeout 20 --tls --auth PLAIN \
    --auth-user camera --auth-password camera-pw --from cam@lan.test --to ops@remote.test \
    --header "Subject: interop-tls-starttls" --body "sent by swaks over STARTTLS" \
    >"$work/swaks-starttls.log" 2>&1 || { cat "$work/swaks-starttls.log"; fail "swaks STARTTLS"; }

echo "-- swaks: implicit TLS + AUTH LOGIN"
timeout 60 swaks --server "127.0.0.1:$tls_port" --timeout 20 --tlsc --auth LOGIN \
    --auth-user camera --auth-password camera-pw --from cam@lan.test --to ops@remote.test \
    --header "Subject: interop-tls-implicit" --body "sent by swaks over implicit TLS" \
    >"$work/swaks-implicit.log" 2>&1 || { cat "$work/swaks-implicit.log"; fail "swaks implicit TLS"; }

echo "-- swaks: wrong password gets 535"
if timeout 60 swaks --server "127.0.0.1:$port" --timeout 20 --tls --auth PLAIN \
    --auth-user camera --auth-password wrong --from cam@lan.test --to ops@remote.test \
    >"$work/swaks-wrong.log" 2>&1; then
    cat "$work/swaks-wrong.log"; fail "a wrong password was accepted"
fi
grep -q "<~\* 535 5.7.8" "$work/swaks-wrong.log" || grep -q "535 5.7.8" "$work/swaks-wrong.log" \
    || { cat "$work/swaks-wrong.log"; fail "no 535 5.7.8 for a wrong password"; }

echo "-- the TLS sink got both, over TLS, authenticated as relay"
got_both() {
    grep -qs "^Subject: interop-tls-starttls" "$work"/sink/*.eml \
        && grep -qs "^Subject: interop-tls-implicit" "$work"/sink/*.eml
}
wait_for 60 "two messages at the TLS sink" got_both || fail "messages did not reach the TLS sink"
grep -L "^X-Sink-Auth: relay" "$work"/sink/*.eml | grep -q . && fail "a message arrived without AUTH"
grep -L "^X-Sink-TLS: TLSv1\.[23]" "$work"/sink/*.eml | grep -q . && fail "a message arrived without TLS"
if grep -q "upstream-pw\|camera-pw" "$work/outpost.log"; then fail "a password is in the log"; fi
echo "interop-tls: ok"
