#!/usr/bin/env bash
# The power-cut test (.ci/powercut.py on the LazyFS model of .ci/lazyfs.py), as root: first a
# control run whose file system ignores every sync, which must lose acknowledged messages (the
# test can fail), then the real run, which must lose none.
# Installs libfuse2 (apt) and fusepy (PyPI, in a venv under the scratch dir).
#
# Usage: bash .ci/powercut.sh [path/to/outpost] [CUTS]   (defaults: target/release/outpost, 10)
set -euo pipefail
cd "$(dirname "$0")/.."

CI_NAME=powercut
source .ci/lib.sh

outpost=${1:-target/release/outpost}
cuts=${2:-10}
[[ -x $outpost ]] || cargo build --release
[[ -e /dev/fuse ]] || die "needs /dev/fuse"
command -v fusermount >/dev/null || die "needs fusermount (apt-get install fuse3)"
if ! ldconfig -p | grep -q 'libfuse\.so\.2'; then
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends \
        libfuse2 >/dev/null || die "cannot install libfuse2"
fi
timeout 300 python3 -m venv "$work/venv" >/dev/null
timeout 300 "$work/venv/bin/pip" install --quiet --disable-pip-version-check fusepy \
    || die "cannot install fusepy"

step "powercut control: syncs ignored, acknowledged messages must be lost"
timeout 600 "$work/venv/bin/python3" .ci/powercut.py --outpost "$outpost" --cuts 2 \
    --ignore-sync all --expect-lost 1000000 --expect-lost-at-least 1 \
    --expect-start-failures 1000000 | grep -v '^lost: '

step "powercut: $cuts cuts, 0 acknowledged messages lost"
timeout 1200 "$work/venv/bin/python3" .ci/powercut.py --outpost "$outpost" --cuts "$cuts" \
    --expect-lost 0
