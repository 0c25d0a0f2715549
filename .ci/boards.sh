#!/usr/bin/env bash
# The board targets, without containers: Debian's cross gcc links, qemu-user runs.
# - the targets come from boards/*.toml (`# board.target` and `# board.also`), so what the docs
#   list is what CI builds; a gnu target names its glibc floor (`armv7-unknown-linux-gnueabihf.2.31`)
#   and is linked against that glibc with cargo-zigbuild (zig and cargo-zigbuild from PyPI);
# - every target is built in release and its stripped size printed; the static musl builds
#   (what boards/*.toml recommend) are held to the budget;
# - the whole `cargo test` runs under qemu-user for the targets in TEST_TARGETS (the harness
#   runs the spawned binary through OUTPOST_TEST_RUNNER; OUTPOST_TEST_SLACK stretches its
#   deadlines, it skips nothing);
# - a gnu binary must need no glibc newer than its floor, a musl one must be static;
# - the service files are checked (systemd-analyze verify, sh -n).
# Run by .ci/run as root (CI=true); runnable by hand where the packages are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Stripped static (musl) release binary, TLS included (docs/boards.md).
BUDGET_BYTES=2500000
# The suite under emulation: the recommended static build and the 32-bit Pi build, plus the gnu
# aarch64 build. Override with TEST_TARGETS="…" (space-separated; empty for none).
TEST_TARGETS=${TEST_TARGETS-aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf aarch64-unknown-linux-gnu}
# Pinned: the glibc-floor builds (gnu targets) are linked by these.
ZIG_PACKAGES=(ziglang==0.17.1 cargo-zigbuild==0.24.1)
export OUTPOST_TEST_SLACK=${OUTPOST_TEST_SLACK:-4}
# Each target's suite runs under this limit (seconds; about 220 s per target on the 2-core
# machine), its progress streamed into the log, so a slow or stuck test is named, not guessed.
RUN_LIMIT=${BOARDS_RUN_LIMIT:-900}

target_dir=${CARGO_TARGET_DIR:-target}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

step() { printf '\n==== %s ====\n' "$*"; }
die() { printf 'boards: error: %s\n' "$*" >&2; exit 1; }
t_start=$SECONDS
timings=()
timed() { # timed LABEL COMMAND...: runs COMMAND, records LABEL's duration, returns its status
    local label=$1 t0=$SECONDS rc=0
    shift
    "$@" || rc=$?
    timings+=("$(printf '%-72s %4ds' "$label" $((SECONDS - t0)))")
    return $rc
}

step "boards: machine"
echo "cpus: $(nproc); memory: $(awk '/MemTotal|MemAvailable/ { printf "%s %d MiB  ", $1, $2 / 1024 }' /proc/meminfo)"
df -h . "${TMPDIR:-/tmp}" | sed 's/^/disk: /'

step "boards: packages"
packages=(gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross
    qemu-user binutils python3-venv)
need_install=false
for tool in aarch64-linux-gnu-gcc arm-linux-gnueabihf-gcc qemu-aarch64 qemu-arm readelf systemd-analyze; do
    command -v "$tool" >/dev/null || need_install=true
done
command -v systemd-analyze >/dev/null || packages+=(systemd)
if [[ "${CI:-}" == "true" || $need_install == true ]]; then
    SUDO=""
    if [[ $(id -u) != 0 ]] && command -v sudo >/dev/null; then SUDO="sudo -n"; fi
    # .ci/run has already run apt-get update.
    DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y -qq --no-install-recommends \
        "${packages[@]}" >/dev/null
fi
aarch64-linux-gnu-gcc --version | head -n1
arm-linux-gnueabihf-gcc --version | head -n1
qemu-aarch64 --version | head -n1

# Targets named in the board files, in first-mention order: specs (triple, or triple.GLIBC for
# a gnu target linked against that glibc) and plain triples.
specs=()
while read -r spec; do
    [[ " ${specs[*]} " == *" $spec "* ]] || specs+=("$spec")
done < <(sed -nE 's/^# board\.(target|also) *= *//p' boards/*.toml | tr ' ' '\n' \
    | grep -E '^[a-z0-9_]+-[a-z0-9_]+-[a-z0-9_]+(-[a-z0-9_]+)?(\.[0-9]+\.[0-9]+)?$' || true)
[[ ${#specs[@]} -gt 0 ]] || die "no '# board.target' lines in boards/*.toml"
targets=()
for spec in "${specs[@]}"; do targets+=("${spec%%.*}"); done
echo "targets from boards/*.toml: ${specs[*]}"
spec_of() { # spec_of TRIPLE
    local spec
    for spec in "${specs[@]}"; do [[ ${spec%%.*} == "$1" ]] && { echo "$spec"; return; }; done
    return 1
}
for t in $TEST_TARGETS; do
    spec_of "$t" >/dev/null || die "TEST_TARGETS names $t, which no board file lists"
done
# cargo, or cargo-zigbuild for a spec with a glibc floor: `build_tool SPEC build|test`.
# The 32-bit ARM musl targets are linked by zig too: Debian's armhf gcc and its libgcc are ARMv7.
build_tool() {
    if [[ $1 == *.* || $1 == arm*-musleabihf ]]; then
        if [[ $2 == build ]]; then echo "cargo-zigbuild zigbuild"; else echo "cargo-zigbuild $2"; fi
    else
        echo "cargo $2"
    fi
}

step "boards: rustup targets, zig"
# A target whose rust-std rustup cannot fetch (it has none for some tier-2 targets on some
# mirrors) gets std built from rust-src (RUSTC_BOOTSTRAP=1 -Zbuild-std), as .ci/package.sh does.
std_from_source=()
for t in "${targets[@]}"; do
    if ! timed "rustup target add $t" rustup target add "$t"; then
        [[ $t == arm*-musleabihf ]] || die "rustup target add $t failed"
        std_from_source+=("$t")
    fi
done
if [[ ${#std_from_source[@]} -gt 0 ]]; then
    echo "std from source for: ${std_from_source[*]}"
    rustup component add rust-src
fi
# build_args TRIPLE: what building std from source needs, if TRIPLE needs it.
build_args() {
    if [[ " ${std_from_source[*]} " == *" $1 "* ]]; then echo "-Zbuild-std=std,panic_abort"; fi
}
if [[ " ${specs[*]} " == *.* || " ${targets[*]} " == *-musleabihf* ]]; then
    # Shared with .ci/package.sh (the same zig path keeps cargo's fingerprints of the builds).
    zig_venv=$(realpath -m "$target_dir/zig-venv")
    timed "zig, cargo-zigbuild (PyPI)" bash -c "{ test -x '$zig_venv/bin/pip' || python3 -m venv '$zig_venv'; } \
        && '$zig_venv/bin/pip' install --quiet --disable-pip-version-check ${ZIG_PACKAGES[*]}"
    export PATH="$zig_venv/bin:$PATH"
    echo "zig $(python-zig version), $(cargo-zigbuild --version)"
fi

# cargo's runner for TARGET from .cargo/config.toml: the same command runs the spawned binary.
runner_of() {
    awk -v section="[target.$1]" '
        $0 == section { inside = 1; next }
        /^\[/ { inside = 0 }
        inside && $1 == "runner" { sub(/^[^"]*"/, ""); sub(/".*$/, ""); print; exit }
    ' .cargo/config.toml
}

step "boards: release builds"
sizes=()
over=()
for spec in "${specs[@]}"; do
    t=${spec%%.*}
    tool=$(build_tool "$spec" build)
    # shellcheck disable=SC2086 # the tool is a command line
    boot=()
    if [[ -n "$(build_args "$t")" ]]; then boot=(env RUSTC_BOOTSTRAP=1); fi
    # shellcheck disable=SC2046 # none or one word
    timed "$tool --release --target $spec" "${boot[@]}" $tool --release --locked \
        --target "$spec" $(build_args "$t")
    bin=$target_dir/$t/release/outpost
    size=$(stat -c %s "$bin")
    echo "$t: $(readelf -hW "$bin" | sed -nE 's/^ *(Class|Machine): *//p' | paste -sd' ')"
    sizes+=("$(printf '%-32s %9d bytes (%s MB)' "$t" "$size" "$(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1e6 }')")")
    # The budget is the static binary's; a glibc build links libc dynamically and is printed.
    if [[ $t == *-musl* && $size -gt $BUDGET_BYTES ]]; then over+=("$t"); fi
    case "$t" in
        *-musl*)
            if readelf -lW "$bin" | grep -q INTERP; then
                die "$t: not a static binary"
            fi
            echo "$t: static (no ELF interpreter)"
            ;;
        *-gnu*)
            needs=$(readelf --dyn-syms -W "$bin" | grep -oE 'GLIBC_[0-9]+\.[0-9]+(\.[0-9]+)?' \
                | sed 's/^GLIBC_//' | sort -V -u | tail -n1 || true)
            [[ -n "$needs" ]] || die "$t: no GLIBC symbol versions found"
            echo "$t: needs glibc $needs or newer"
            if [[ $spec == *.* ]]; then
                floor=${spec#*.}
                [[ $(printf '%s\n' "$needs" "$floor" | sort -V | tail -n1) == "$floor" ]] \
                    || die "$t: needs glibc $needs, newer than its floor $floor"
                echo "$t: within its glibc floor $floor"
            fi
            ;;
    esac
    runner=$(runner_of "$t")
    [[ -n "$runner" ]] || die "no runner for $t in .cargo/config.toml"
    # shellcheck disable=SC2086 # the runner is a command line
    $runner "$bin" --version
    # shellcheck disable=SC2086
    for board in boards/*.toml; do $runner "$bin" check-config --config "$board" >/dev/null; done
    echo "$t: --version and check-config of every board file ok under ${runner%% *}"
done

step "boards: service files"
sed "s|/usr/local/bin/outpost|$(realpath "$target_dir/${targets[0]}/release/outpost")|g" boards/outpost.service \
    >"$tmp/outpost.service"
systemd-analyze verify "$tmp/outpost.service"
echo "outpost.service: systemd-analyze verify ok"
for script in boards/openwrt/*; do
    sh -n "$script"
    echo "$script: sh -n ok"
done

step "boards: cargo test under qemu-user"
# Line tables only: the emulated test binaries are a third of the size and load faster; what
# the tests check does not change.
export CARGO_PROFILE_DEV_DEBUG=line-tables-only
# A 32-bit guest under qemu-user has a 4 GiB address space: with std's 2 MiB thread stacks the
# harness (8 test threads, and each test's smarthost, client and pipe-reader threads) ran out of
# it on armv7 ("failed to spawn thread": EAGAIN from the stack's mmap). The suites run with 1 MiB
# stacks (the spawned relays inherit it, which their threads have room for); only the run gets
# it, never rustc (which sizes its own stack by it).
test_stack=${OUTPOST_TEST_STACK:-1048576}
for t in $TEST_TARGETS; do
    spec=$(spec_of "$t")
    tool=$(build_tool "$spec" test)
    export OUTPOST_TEST_RUNNER
    OUTPOST_TEST_RUNNER=$(runner_of "$t")
    # shellcheck disable=SC2086 # the tool is a command line
    timed "$tool --target $spec (build)" $tool --locked --target "$spec" --no-run
    log="$tmp/test-$t.log"
    t0=$SECONDS
    echo "$t: running the suite under ${OUTPOST_TEST_RUNNER} (limit ${RUN_LIMIT}s)"
    # The whole output goes to $log; the log of this script gets each test binary's start, its
    # result line, failures and libtest's notes on tests running for over 60 seconds, as they come.
    set +e
    # shellcheck disable=SC2086
    {
        RUST_MIN_STACK=$test_stack timeout -k 20 "$RUN_LIMIT" $tool --locked --no-fail-fast \
            --target "$spec" --lib --bins --tests 2>&1
        rc=$?
        # The doc tests are compiled by rustdoc as they run: rustc's stack, not the 1 MiB one.
        timeout -k 20 "$RUN_LIMIT" $tool --locked --no-fail-fast --target "$spec" --doc 2>&1 \
            || rc=$((rc == 0 ? $? : rc))
        exit "$rc"
    } | tee "$log" \
        | grep --line-buffered -E '^ +Running |^ +Doc-tests |^test result:|running for over|FAILED|panicked'
    rc=${PIPESTATUS[0]}
    set -e
    elapsed=$((SECONDS - t0))
    if [[ $rc -ne 0 ]]; then
        echo "---- last 80 lines of the output ----"
        tail -n 80 "$log"
        [[ $rc -ne 124 ]] || die "$t: the suite under ${OUTPOST_TEST_RUNNER} did not finish in ${RUN_LIMIT}s"
        die "$tool --target $spec failed under ${OUTPOST_TEST_RUNNER} (exit $rc after ${elapsed}s)"
    fi
    timings+=("$(printf '%-72s %4ds' "$tool --target $spec (run)" "$elapsed")")
    passed=$(awk '/^test result: ok\./ { n += $4 } END { print n + 0 }' "$log")
    timings+=("$(printf '  %-70s %5s' "$t: tests passed" "$passed")")
done

step "boards: summary"
printf '%s\n' "${sizes[@]}"
echo "size budget: $BUDGET_BYTES bytes (stripped static musl release, TLS included)"
printf '%s\n' "${timings[@]}"
echo "boards total: $((SECONDS - t_start))s"
if [[ ${#over[@]} -gt 0 ]]; then
    die "over the size budget: ${over[*]}"
fi
