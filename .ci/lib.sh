# Shared by the .ci scripts (bash): `source .ci/lib.sh` from the repository root, with CI_NAME
# set to the script's name. Gives a scratch dir $work and a PID list `pids` that are cleaned up
# at exit (processes killed by PID, never by name), and the helpers below.

die() { printf 'ci: %s: error: %s\n' "${CI_NAME:-run}" "$*" >&2; exit 1; }
step() { printf '\n==== %s ====\n' "$*"; }

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.1 s; fails after SECONDS.
wait_for() {
    local seconds=$1 what=$2 i
    shift 2
    for ((i = 0; i < seconds * 10; i++)); do
        if "$@"; then return 0; fi
        sleep 0.1
    done
    echo "timed out after ${seconds}s waiting for $what" >&2
    return 1
}

# fail MESSAGE: prints $work/outpost.log and $work/sink.log, then dies.
fail() {
    echo "---- relay log ----"; cat "$work/outpost.log" || true
    echo "---- sink log ----"; cat "$work/sink.log" || true
    die "$1"
}

work=$(mktemp -d)
pids=()
# Commands (strings) run at exit after the processes are killed, e.g. removing a namespace.
at_exit=()
ci_cleanup() {
    local pid hook
    for pid in "${pids[@]}"; do
        { kill -9 "$pid" && wait "$pid"; } 2>/dev/null || true
    done
    for hook in "${at_exit[@]}"; do
        eval "$hook" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap ci_cleanup EXIT
