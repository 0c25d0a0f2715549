#!/usr/bin/env bash
# Memory: threads and RSS, idle and while 32 sessions send 1 KiB messages, of the x86_64
# release binary as `cargo build --release` makes it (glibc, dynamic) and as the boards ship it
# (static musl: no libc.so/ld.so pages). Printed, not asserted: benches/results/ keeps the
# figures. usage: .ci/memory.sh RELEASE_BINARY PYTHON_WITH_AIOSMTPD
set -euo pipefail
cd "$(dirname "$0")/.."
CI_NAME=memory
source .ci/lib.sh
trap ci_cleanup EXIT
glibc_bin=$1
python=${2:-python3}
musl=x86_64-unknown-linux-musl

command -v musl-gcc >/dev/null || die "musl-gcc (Debian's musl-tools) is needed for ring's C code"
rustup target add "$musl" >/dev/null 2>&1 || die "rustup target add $musl failed"
# ring compiles C: cc-rs reads the compiler for the target from CC_<triple>.
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target "$musl" 2>&1 | tail -n 1

for bin in "$glibc_bin" "target/$musl/release/outpost"; do
    step "memory: $bin"
    timeout 300 "$python" benches/threads_rss.py --binary "$bin"
done

# OAuth 2.0 to the smarthost against a password, both over STARTTLS to
# tests/data/tls_sink.py; the token endpoint is Python's (OpenSSL), so this is also an interop
# check of the HTTPS refresh: the run fails unless every message reaches the sink.
command -v openssl >/dev/null || die "openssl is needed for the private CA of --auth"
for auth in password oauth2; do
    step "memory: target/$musl/release/outpost, AUTH $auth"
    timeout 300 "$python" benches/threads_rss.py --binary "target/$musl/release/outpost" \
        --auth "$auth"
done

# [coalesce]: the drain after an outage (everything queued with the sink down, then
# flushed) one message at a time against digests of up to 100 originals; the run fails unless
# every original reaches the sink.
for extra in "" "[coalesce]"; do
    step "memory: target/$musl/release/outpost, outage drain ${extra:-without coalescing}"
    timeout 300 "$python" benches/threads_rss.py --binary "target/$musl/release/outpost" \
        --outage --config "$extra"
done
