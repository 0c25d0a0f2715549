#!/usr/bin/env bash
# The release artifacts, built and checked: `bash .ci/package-test.sh [SINK_PYTHON]` as root
# (CI=true in .ci/run; by hand on a Debian machine it installs, upgrades and purges the amd64
# package on that machine, so only where no other mail transport agent is installed).
# - .ci/package.sh builds the packages, the tarballs and SHA256SUMS; then revision 2 of the amd64
#   package (the same version, the next package revision) for the upgrade;
# - lintian on each .deb: no errors; its warnings and infos printed (docs/packaging.md argues
#   the overridden one);
# - arm64 and armhf: control fields and contents (the same files as amd64), the binary inside is
#   static, for its machine (armhf: `Tag_CPU_arch: v6`), and under qemu-user (armhf: `-cpu
#   arm1176`, the Pi Zero's core) prints its version and relays a message to a sink;
# - amd64 on this machine: dpkg -i; the user, the queue, the links, the conffile, the man pages;
#   `outpost check-config` and `/usr/sbin/sendmail -bv root`; systemd-analyze verify of the
#   installed unit; the unit's ExecStart line, run as the unit's user, accepts a message through
#   /usr/sbin/sendmail; `apt-get install --simulate bsd-mailx` does not want exim4; dpkg -i of
#   revision 2 keeps the edited config and the queued message; dpkg --purge warns that the
#   queue held a message, and leaves nothing of outpost behind (files, dirs, user, group).
set -euo pipefail
cd "$(dirname "$0")/.."

CI_NAME=package-test
source .ci/lib.sh
sink_python=${1:-python3}
t_start=$SECONDS
dist=target/dist
dist2=target/dist-rev2
version=$(sed -nE '0,/^version *= *"([^"]+)"/s//\1/p' Cargo.toml)

[[ $(id -u) == 0 ]] || die "run as root: it installs and purges the amd64 package"
export DEBIAN_FRONTEND=noninteractive
need=()
for tool in dpkg-deb lintian fakeroot qemu-aarch64 qemu-arm readelf systemd-analyze setpriv man; do
    command -v "$tool" >/dev/null || need+=("$tool")
done
if [[ ${#need[@]} -gt 0 ]]; then
    echo "installing the tools for: ${need[*]}"
    # .ci/run has already run apt-get update.
    timeout 900 apt-get install -y -qq --no-install-recommends dpkg-dev lintian fakeroot \
        qemu-user binutils systemd util-linux man-db adduser python3-venv >/dev/null
fi

step "package-test: build (.ci/package.sh)"
t0=$SECONDS
bash .ci/package.sh
# The same binary as the next package revision: what an upgrade does to config and queue.
PACKAGE_NO_BUILD=1 OUTPOST_DEB_REVISION=2 PACKAGE_TARGETS=x86_64 PACKAGE_OUT=$dist2 \
    bash .ci/package.sh >/dev/null
echo "built in $((SECONDS - t0))s"
ls -l "$dist" "$dist2"
(cd "$dist" && sha256sum -c SHA256SUMS)
deb_amd64=$dist/outpost_${version}-1_amd64.deb
deb_amd64_2=$dist2/outpost_${version}-2_amd64.deb
for f in "$deb_amd64" "$deb_amd64_2" "$dist/outpost_${version}-1_arm64.deb" \
    "$dist/outpost_${version}-1_armhf.deb"; do
    [[ -f $f ]] || die "missing $f"
done
for name in x86_64 aarch64 armv7 armv6; do
    tarball=$dist/outpost-$version-$name-linux-musl.tar.gz
    [[ -f $tarball ]] || die "missing $tarball"
    listing=$(tar -tzf "$tarball")
    for f in outpost man/outpost.8 man/outpost.toml.5 LICENSE-MIT LICENSE-APACHE CHANGELOG.md \
        boards/outpost.service boards/openwrt/outpost.init boards/raspberry-pi-64.toml \
        boards/raspberry-pi-zero.toml; do
        grep -qx "outpost-$version-$name-linux-musl/$f" <<<"$listing" || die "$tarball lacks $f"
    done
done
echo "tarballs: binary, man pages, boards/, licenses, changelog in each"

step "package-test: lintian"
for deb in "$dist"/*.deb; do
    # Errors fail (`E:`); warnings, infos and the overridden tags (`O:`, argued in
    # boards/debian/lintian-overrides) are listed.
    lintian --fail-on none --display-info --show-overrides --tag-display-limit 0 "$deb" \
        2>&1 | grep -v '^running with root privileges' | tee "$work/lintian.out"
    grep -q '^E: ' "$work/lintian.out" && die "lintian: errors in $deb"
    echo "lintian $(basename "$deb"): no errors, $(grep -c '^W: ' "$work/lintian.out" || true) warnings"
done

step "package-test: arm64 and armhf packages under qemu-user"
files_of() { dpkg-deb -c "$1" | awk '{ print $1, $6 }' | sort; }
"$sink_python" tests/data/smtp_sink.py "$work/sink" "$work/sink.port" >"$work/sink.log" 2>&1 &
pids+=($!)
mkdir -p "$work/sink"
wait_for 30 "the sink's port" test -s "$work/sink.port" || fail "the sink did not start"
sink_port=$(cat "$work/sink.port")
for arch in arm64 armhf; do
    deb=$dist/outpost_${version}-1_$arch.deb
    for field in "Package: outpost" "Version: ${version}-1" "Architecture: $arch" \
        "Provides: mail-transport-agent" "Conflicts: mail-transport-agent" \
        "Replaces: mail-transport-agent" "Depends: adduser"; do
        dpkg-deb -f "$deb" | grep -qx "$field" || die "$deb: no '$field' in its control file"
    done
    diff <(files_of "$deb_amd64") <(files_of "$deb") || die "$deb: not the files of the amd64 package"
    dpkg-deb -x "$deb" "$work/$arch"
    bin=$work/$arch/usr/sbin/outpost
    readelf -lW "$bin" | grep -q INTERP && die "$arch: not a static binary"
    case $arch in
        arm64)
            machine=AArch64
            runner=(qemu-aarch64)
            ;;
        armhf)
            machine=ARM
            runner=(qemu-arm -cpu arm1176)
            readelf -A "$bin" | grep -E 'Tag_CPU_arch:|Tag_FP_arch:|Tag_THUMB_ISA_use:'
            readelf -A "$bin" | grep -qE '^ *Tag_CPU_arch: v6$' || die "armhf: not an ARMv6 binary"
            ;;
    esac
    readelf -hW "$bin" | grep -qE "Machine: +$machine" || die "$arch: not an $machine binary"
    "${runner[@]}" "$bin" --version | grep -x "outpost $version.*" || die "$arch: --version failed"
    cat >"$work/$arch.toml" <<EOF
data_dir = "$work/$arch-data"
listen = ["127.0.0.1:0"]

[smarthost]
address = "127.0.0.1:$sink_port"
tls = "none"
EOF
    "${runner[@]}" "$bin" check-config --config "$work/$arch.toml" >/dev/null
    "${runner[@]}" "$bin" serve --config "$work/$arch.toml" >"$work/outpost.log" 2>&1 &
    relay_pid=$!
    pids+=("$relay_pid")
    listening() { grep -qE 'listening on 127\.0\.0\.1:[0-9]+' "$work/outpost.log"; }
    wait_for 60 "the $arch relay's listening line" listening || fail "$arch: the relay did not start"
    port=$(grep -oE 'listening on 127\.0\.0\.1:[0-9]+' "$work/outpost.log" | head -n1 | grep -oE '[0-9]+$')
    timeout 120 python3 - "$port" "$arch" <<'EOF' || fail "$arch: smtplib could not send"
import smtplib, sys
port, arch = int(sys.argv[1]), sys.argv[2]
with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
    s.sendmail("ci@lan.test", ["ops@remote.test"], f"Subject: package-{arch}\r\n\r\nfrom qemu\r\n")
EOF
    at_sink() { grep -qs "^Subject: package-$arch" "$work"/sink/*.eml; }
    wait_for 120 "the $arch message at the sink" at_sink || fail "$arch: the message did not reach the sink"
    kill -TERM "$relay_pid"
    wait_for 30 "the $arch relay to exit" bash -c "! kill -0 $relay_pid 2>/dev/null" \
        || fail "$arch: the relay did not stop on SIGTERM"
    echo "$arch: control fields and files ok; ${runner[*]}: --version, a message relayed to the sink"
done

step "package-test: amd64 on this machine: install"
# The package conflicts with any other mail transport agent (it is one): on a CI machine, one
# that came with the image is removed first; by hand, this script stops rather than remove it.
other_mta=$(dpkg-query -W -f='${Package} ${db:Status-Status} ${Provides}\n' 2>/dev/null \
    | awk '$2 == "installed" && /mail-transport-agent/ && $1 != "outpost" { print $1 }')
if [[ -n "$other_mta" ]]; then
    [[ "${CI:-}" == "true" ]] || die "a mail transport agent is installed ($other_mta): not replacing it outside CI"
    echo "removing the image's mail transport agent: $other_mta"
    # shellcheck disable=SC2086
    timeout 600 apt-get remove -y -qq $other_mta >/dev/null
fi
dpkg-query -W -f='${db:Status-Status}' outpost 2>/dev/null | grep -q installed \
    && die "outpost is already installed here: purge it first"
getent passwd outpost >/dev/null && die "a user outpost exists here already: the purge check needs none"
command -v adduser >/dev/null || timeout 600 apt-get install -y -qq adduser >/dev/null
dpkg -i "$deb_amd64" </dev/null
dpkg-query -W -f='${Package} ${Version} ${db:Status-Status}\n' outpost | grep -x "outpost ${version}-1 installed"
dpkg -L outpost >"$work/files"

[[ $(readlink -f /usr/sbin/sendmail) == /usr/sbin/outpost ]] || die "/usr/sbin/sendmail is not outpost"
[[ $(readlink -f /usr/bin/mailq) == /usr/sbin/outpost ]] || die "/usr/bin/mailq is not outpost"
[[ $(readlink -f /usr/bin/newaliases) == /usr/sbin/outpost ]] || die "/usr/bin/newaliases is not outpost"
uid=$(id -u outpost)
[[ $uid -lt 1000 ]] || die "outpost is not a system user (uid $uid)"
getent group outpost >/dev/null || die "no group outpost"
[[ $(stat -c '%U:%G %a' /var/lib/outpost) == "outpost:outpost 700" ]] || die "/var/lib/outpost: $(stat -c '%U:%G %a' /var/lib/outpost)"
dpkg-query -W -f='${Conffiles}\n' outpost | grep -q '^ /etc/outpost/outpost.toml ' \
    || die "/etc/outpost/outpost.toml is not a conffile"
man -w outpost | grep -q '/man8/outpost.8.gz$' || die "man outpost: not found"
man -w 5 outpost.toml | grep -q '/man5/outpost.toml.5.gz$' || die "man outpost.toml: not found"
man -w sendmail >/dev/null || die "man sendmail: not found"
zcat /usr/share/doc/outpost/changelog.Debian.gz | head -n1 | grep -q "^outpost (${version}-1) " \
    || die "changelog.Debian does not start with ${version}-1"
for f in copyright LICENSE-MIT LICENSE-APACHE; do
    [[ -s /usr/share/doc/outpost/$f ]] || die "no /usr/share/doc/outpost/$f"
done
if command -v deb-systemd-helper >/dev/null; then
    [[ -L /etc/systemd/system/multi-user.target.wants/outpost.service ]] \
        || die "the unit was not enabled (multi-user.target.wants)"
    echo "outpost.service enabled (started only where systemd runs: here $(if [[ -d /run/systemd/system ]]; then echo it does; else echo it does not; fi))"
fi
outpost check-config | tee "$work/check-config.out" | head -n1
grep -q '^# /etc/outpost/outpost.toml: ok' "$work/check-config.out" || die "check-config did not use /etc/outpost/outpost.toml"
grep -q 'smarthost.*none configured' "$work/check-config.out" || die "check-config does not say the smarthost is missing"
/usr/sbin/sendmail -bv root || die "sendmail -bv root failed"
systemd-analyze verify /lib/systemd/system/outpost.service
echo "systemd-analyze verify outpost.service: ok"

step "package-test: amd64: the unit's ExecStart, as its user, accepts mail through /usr/sbin/sendmail"
unit=/lib/systemd/system/outpost.service
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
user=$(sed -n 's/^User=//p' "$unit")
[[ -n "$exec_start" && $user == outpost ]] || die "$unit: ExecStart '$exec_start', User '$user'"
grep -qx 'AmbientCapabilities=CAP_NET_BIND_SERVICE' "$unit" || die "$unit: no CAP_NET_BIND_SERVICE"
# What systemd would do: RuntimeDirectory=outpost (0755), then the command as User=outpost with
# the one ambient capability.
start_unit_command() {
    install -d -m 0755 -o outpost -g outpost /run/outpost
    # shellcheck disable=SC2086 # ExecStart is a command line
    setpriv --reuid=outpost --regid=outpost --init-groups --inh-caps=+net_bind_service \
        --ambient-caps=+net_bind_service -- $exec_start >"$work/outpost.log" 2>&1 &
    daemon_pid=$!
    pids+=("$daemon_pid")
    daemon_up() { grep -q 'listening on 127.0.0.1:25' "$work/outpost.log"; }
    wait_for 30 "the daemon's 'listening on 127.0.0.1:25'" daemon_up || fail "the daemon did not start"
}
stop_unit_command() {
    kill -TERM "$daemon_pid"
    wait_for 30 "the daemon to exit" bash -c "! kill -0 $daemon_pid 2>/dev/null" || fail "the daemon did not stop"
}
queued() { outpost status --json | sed -n 's/.*"queue":{"messages":\([0-9]*\).*/\1/p'; }
start_unit_command
echo "$exec_start: running as $(ps -o user= -p "$daemon_pid" || true)"
printf 'Subject: package-amd64\n\nthrough /usr/sbin/sendmail\n' | /usr/sbin/sendmail root \
    || fail "/usr/sbin/sendmail root failed"
grep -q 'status=queued' "$work/outpost.log" || fail "no 'status=queued' in the daemon's log"
[[ $(queued) == 1 ]] || fail "outpost status: $(queued) messages queued, not 1"
mailq | tee "$work/mailq.out"
grep -q 'in 1 Request' "$work/mailq.out" || fail "mailq does not list the message"

step "package-test: amd64: with the package installed, bsd-mailx does not want exim4"
apt-get install --simulate bsd-mailx >"$work/mailx.sim" 2>&1 || { cat "$work/mailx.sim"; die "apt-get install --simulate bsd-mailx failed"; }
grep -E '^(Inst|Remv) ' "$work/mailx.sim" || true
grep -qE '^Inst exim4' "$work/mailx.sim" && die "apt-get would install exim4 for bsd-mailx"
grep -qE '^Remv outpost' "$work/mailx.sim" && die "apt-get would remove outpost for bsd-mailx"
echo "bsd-mailx: no exim4, outpost stays"

step "package-test: amd64: upgrade to ${version}-2 (config and queue kept)"
echo '# edited by package-test' >>/etc/outpost/outpost.toml
dpkg -i "$deb_amd64_2" </dev/null
dpkg-query -W -f='${Version} ${db:Status-Status}\n' outpost | grep -x "${version}-2 installed"
grep -qx '# edited by package-test' /etc/outpost/outpost.toml || die "the upgrade lost the edit of the conffile"
[[ ! -e /etc/outpost/outpost.toml.dpkg-dist && ! -e /etc/outpost/outpost.toml.dpkg-old ]] \
    || die "the upgrade left a .dpkg-dist/.dpkg-old"
[[ $(id -u outpost) == "$uid" ]] || die "the upgrade changed the uid of outpost"
# Without systemd (as in CI) postinst cannot restart the daemon: restart it the unit's way.
stop_unit_command
start_unit_command
[[ $(queued) == 1 ]] || fail "after the upgrade: $(queued) messages queued, not 1"
echo "upgraded: the edited config and the queued message are kept"

step "package-test: amd64: remove and purge"
dpkg --remove outpost </dev/null
[[ -f /etc/outpost/outpost.toml && -d /var/lib/outpost ]] || die "dpkg --remove took the config or the queue"
stop_unit_command
dpkg --purge outpost </dev/null 2>&1 | tee "$work/purge.log"
grep -q 'WARNING: purging /var/lib/outpost: 1 queued message(s) were not delivered' "$work/purge.log" \
    || die "purge did not warn about the queued message"
left=()
while read -r f; do
    [[ $f == /. ]] && continue
    if [[ -e $f || -L $f ]] && ! [[ -d $f && $f =~ ^/(etc|lib|usr|usr/[a-z]+|usr/share/[a-z]+|usr/share/man/man[0-9]|lib/systemd|lib/systemd/system|usr/share/lintian/overrides)$ ]]; then
        left+=("$f")
    fi
done <"$work/files"
for f in /etc/outpost /var/lib/outpost /run/outpost /etc/systemd/system/outpost.service \
    /etc/systemd/system/multi-user.target.wants/outpost.service; do
    [[ -e $f || -L $f ]] && left+=("$f")
done
while read -r f; do left+=("$f"); done < <(find /etc /var/lib /run /usr /lib -xdev \
    \( -name outpost -o -name 'outpost.*' -o -name 'outpost_*' \) \
    -not -path '/var/lib/dpkg/*' -not -path "$PWD/*" 2>/dev/null || true)
getent passwd outpost >/dev/null && left+=("user outpost")
getent group outpost >/dev/null && left+=("group outpost")
[[ ${#left[@]} -eq 0 ]] || die "left after purge: ${left[*]}"
echo "purged: no file, directory, user or group of outpost is left"
echo "package-test total: $((SECONDS - t_start))s"
