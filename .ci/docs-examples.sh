#!/usr/bin/env bash
# Runs the command examples of docs/*.md against a release binary, so the manual cannot drift
# from the program: `bash .ci/docs-examples.sh [OUTPOST] [PYTHON]` from the repository root
# (OUTPOST defaults to target/release/outpost, PYTHON, which runs the test sink, to python3).
#
# What counts as an example: a fenced block marked ```sh. Blocks that need root, a board or the
# network are marked ```console or ```text and are not run. Each page runs as one bash script
# (set -euo pipefail), its blocks in order, in a fresh temp dir holding `outpost` on the PATH and
# a link to the repository's tests/ (for tests/data/smtp_sink.py, run by PYTHON). Ports 2525
# and 2526 in the examples are replaced by free ones. After a block that starts `outpost serve --config FILE`
# in the background, the script waits until `outpost status --config FILE` answers; after one
# that starts smtp_sink.py, until the sink has written its port file. At the end of a page that
# started both, every queued message must reach the sink. Background processes are killed by
# PID at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

CI_NAME=docs-examples
source .ci/lib.sh

outpost=$(realpath "${1:-target/release/outpost}")
python=${2:-python3}
[[ -x $outpost ]] || die "$outpost is not built (cargo build --release)"

# Two free ports on loopback, held open together so that they differ.
free_ports() {
    python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))'
}

# page_script PAGE SMTP_PORT SINK_PORT PYTHON: the page's ```sh blocks as one bash script on
# stdout.
page_script() {
    python3 - "$@" <<'EOF'
import re, sys

page, smtp_port, sink_port, python = sys.argv[1:5]
lines = open(page, encoding="utf-8").read().split("\n")
blocks, i = [], 0
while i < len(lines):
    if lines[i].strip() == "```sh":
        start, body = i + 1, []
        i += 1
        while lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        blocks.append((start, "\n".join(body)))
    i += 1

out = []
serve_config = sink_dir = None
for start, body in blocks:
    body = body.replace("2525", smtp_port).replace("2526", sink_port)
    body = body.replace("python3 tests/data/smtp_sink.py", python + " tests/data/smtp_sink.py")
    out.append(f'echo "---- {page}:{start}"')
    out.append("set -x")
    out.append(body)
    out.append("{ set +x; } 2>/dev/null")
    background = any(line.rstrip().endswith("&") for line in body.split("\n"))
    if background:
        out.append('pids+=("$!")')
    serve = re.search(r"outpost serve --config (\S+)", body)
    if serve and background:
        serve_config = serve.group(1)
        out.append(f'relay_up() {{ outpost status --config {serve_config} >/dev/null 2>&1; }}')
        out.append('wait_for 30 "the relay" relay_up || fail "the relay did not start"')
    sink = re.search(r"smtp_sink\.py (\S+) (\S+)", body)
    if sink and background:
        sink_dir = sink.group(1)
        out.append(f'wait_for 30 "the sink" test -s {sink.group(2)} || fail "the sink did not start"')
if serve_config and sink_dir:
    out.append(f'queue_empty() {{ local q; q=$(outpost queue list --json --config {serve_config}) '
               f'&& [[ $q != *\'"id"\'* ]]; }}')
    out.append(f'wait_for 60 "the queue to drain into the sink" queue_empty '
               f'|| {{ outpost queue --config {serve_config}; fail "the queue did not drain"; }}')
    out.append(f'ls {sink_dir}/*.eml >/dev/null || fail "nothing reached the sink"')
    out.append(f'echo "---- {page}: $(ls {sink_dir}/*.eml | wc -l) messages at the sink, queue empty"')
print("\n".join(out))
EOF
}

ran=0
for page in docs/*.md; do
    grep -q '^```sh$' "$page" || continue
    step "$page"
    dir="$work/$(basename "$page" .md)"
    mkdir -p "$dir/bin"
    ln -s "$outpost" "$dir/bin/outpost"
    ln -s "$PWD/tests" "$dir/tests"
    {
        echo 'set -euo pipefail'
        echo "CI_NAME=docs-examples; work=\"$dir\""
        # The helpers of lib.sh without its scratch dir: this page's dir is the scratch dir.
        declare -f die step wait_for fail
        echo 'pids=()'
        echo 'stop() { local rc=$? p; for p in "${pids[@]}"; do { kill "$p" && wait "$p"; } 2>/dev/null || true; done; exit "$rc"; }'
        echo 'trap stop EXIT'
        echo "export PATH=\"$dir/bin:\$PATH\""
        read -r smtp_port sink_port < <(free_ports)
        page_script "$page" "$smtp_port" "$sink_port" "$python"
    } >"$dir/examples.sh"
    (cd "$dir" && bash examples.sh) || {
        echo "---- the examples as run: $dir/examples.sh"
        cat -n "$dir/examples.sh"
        die "an example in $page failed"
    }
    ran=$((ran + 1))
done
((ran > 0)) || die "no docs page has a \`\`\`sh example"
echo "docs examples: $ran pages ran"
