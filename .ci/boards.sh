#!/usr/bin/env bash
# The board targets (issue 5), without containers: Debian's cross gcc links, qemu-user runs.
# - the targets come from boards/*.toml (`# board.target` and `# board.also`), so what the docs
#   list is what CI builds;
# - every target is built in release, its stripped size printed and held to the budget;
# - the whole `cargo test` runs under qemu-user for the targets in TEST_TARGETS (the harness
#   runs the spawned binary through OUTPOST_TEST_RUNNER; OUTPOST_TEST_SLACK stretches its
#   deadlines, it skips nothing);
# - gnu binaries print the glibc they need, the musl one must be static;
# - the service files are checked (systemd-analyze verify, sh -n).
# Run by .ci/run as root (CI=true); runnable by hand where the packages are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Stripped release binary, TLS included (README, "Install on a board").
BUDGET_BYTES=2500000
# The suite under emulation: the recommended static build and the 32-bit Pi build, plus the gnu
# aarch64 build. Override with TEST_TARGETS="…" (space-separated; empty for none).
TEST_TARGETS=${TEST_TARGETS-aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf aarch64-unknown-linux-gnu}
export OUTPOST_TEST_SLACK=${OUTPOST_TEST_SLACK:-4}

target_dir=${CARGO_TARGET_DIR:-target}

step() { printf '\n==== %s ====\n' "$*"; }
die() { printf 'boards: error: %s\n' "$*" >&2; exit 1; }
t_start=$SECONDS
timings=()
timed() { # timed LABEL COMMAND...: runs COMMAND, records LABEL's duration
    local label=$1 t0=$SECONDS
    shift
    "$@"
    timings+=("$(printf '%-62s %4ds' "$label" $((SECONDS - t0)))")
}

step "boards: packages"
packages=(gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross
    qemu-user binutils)
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

# Targets named in the board files, in first-mention order.
targets=()
while read -r t; do
    [[ " ${targets[*]} " == *" $t "* ]] || targets+=("$t")
done < <(sed -nE 's/^# board\.(target|also) *= *//p' boards/*.toml | tr ' ' '\n' \
    | grep -E '^[a-z0-9_]+-[a-z0-9_]+-[a-z0-9_]+(-[a-z0-9_]+)?$' || true)
[[ ${#targets[@]} -gt 0 ]] || die "no '# board.target' lines in boards/*.toml"
echo "targets from boards/*.toml: ${targets[*]}"
for t in $TEST_TARGETS; do
    [[ " ${targets[*]} " == *" $t "* ]] || die "TEST_TARGETS names $t, which no board file lists"
done

step "boards: rustup targets"
timed "rustup target add" rustup target add "${targets[@]}"

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
for t in "${targets[@]}"; do
    timed "cargo build --release --target $t" cargo build --release --locked --target "$t"
    bin=$target_dir/$t/release/outpost
    size=$(stat -c %s "$bin")
    echo "$t: $(readelf -hW "$bin" | sed -nE 's/^ *(Class|Machine): *//p' | paste -sd' ')"
    sizes+=("$(printf '%-32s %9d bytes (%s MB)' "$t" "$size" "$(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1e6 }')")")
    [[ $size -le $BUDGET_BYTES ]] || over+=("$t")
    case "$t" in
        *-musl*)
            if readelf -lW "$bin" | grep -q INTERP; then
                die "$t: not a static binary"
            fi
            echo "$t: static (no ELF interpreter)"
            ;;
        *-gnu*)
            floor=$(readelf --dyn-syms -W "$bin" | grep -oE 'GLIBC_[0-9]+\.[0-9]+(\.[0-9]+)?' \
                | sort -V -u | tail -n1 || true)
            echo "$t: needs ${floor:-an unknown glibc} or newer"
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
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|/usr/local/bin/outpost|$(realpath "$target_dir/${targets[0]}/release/outpost")|g" boards/outpost.service \
    >"$tmp/outpost.service"
systemd-analyze verify "$tmp/outpost.service"
echo "outpost.service: systemd-analyze verify ok"
for script in boards/openwrt/*; do
    sh -n "$script"
    echo "$script: sh -n ok"
done

step "boards: cargo test under qemu-user"
for t in $TEST_TARGETS; do
    export OUTPOST_TEST_RUNNER
    OUTPOST_TEST_RUNNER=$(runner_of "$t")
    timed "cargo test --target $t (build)" cargo test --locked --target "$t" --no-run
    log="$tmp/test-$t.log"
    t0=$SECONDS
    if ! cargo test --locked --no-fail-fast --target "$t" >"$log" 2>&1; then
        cat "$log"
        die "cargo test --target $t failed under ${OUTPOST_TEST_RUNNER}"
    fi
    timings+=("$(printf '%-62s %4ds' "cargo test --target $t (run)" $((SECONDS - t0)))")
    passed=$(awk '/^test result: ok\./ { n += $4 } END { print n + 0 }' "$log")
    grep -E '^test result:' "$log"
    timings+=("$(printf '  %-60s %5s' "$t: tests passed" "$passed")")
done

step "boards: summary"
printf '%s\n' "${sizes[@]}"
echo "size budget: $BUDGET_BYTES bytes (stripped, release, TLS included)"
printf '%s\n' "${timings[@]}"
echo "boards total: $((SECONDS - t_start))s"
if [[ ${#over[@]} -gt 0 ]]; then
    die "over the size budget: ${over[*]}"
fi
