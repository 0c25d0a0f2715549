#!/usr/bin/env bash
# Release artifacts from static musl builds, into target/dist/ (PACKAGE_OUT):
# - Debian packages outpost_VERSION-REV_{amd64,arm64,armhf}.deb, made with dpkg-deb from the
#   files of boards/debian/ (control, maintainer scripts, the conffile) and the repository
#   (unit, man pages, licenses, changelog);
# - tarballs outpost-VERSION-{x86_64,aarch64,armv7,armv6}-linux-musl.tar.gz: the binary, the man
#   pages, boards/ (presets, systemd unit, OpenWrt scripts), the licenses and CHANGELOG.md;
# - SHA256SUMS over all of them.
# armhf is the ARMv6 build (arm-unknown-linux-musleabihf, ARM1176: Pi Zero/1 and the 32-bit
# Raspberry Pi OS), which runs on every 32-bit Pi. The ARM builds link with zig (cargo-zigbuild,
# from PyPI into the venv target/zig-venv) against zig's musl, built for the target CPU; where rustup has no rust-std
# for the target, std is built from source (rust-src, RUSTC_BOOTSTRAP=1 -Zbuild-std).
# The board binaries (aarch64, armv7, armv6) are held to the size budget of .ci/boards.sh; the
# x86_64 one (PCs and VMs, not a board) is printed: its code is about 0.5 MB larger (ring's
# x86_64 assembly, wider instructions) and it is a static PIE.
#
#   bash .ci/package.sh                       # all four targets
#   PACKAGE_TARGETS="x86_64" bash .ci/package.sh
#   OUTPOST_DEB_REVISION=2 bash .ci/package.sh   # the same version, the next package revision
#   PACKAGE_NO_BUILD=1 bash .ci/package.sh    # package the binaries already built
#
# Runs as any user (dpkg-deb --root-owner-group: files are root's in the package).
set -euo pipefail
cd "$(dirname "$0")/.."

out=${PACKAGE_OUT:-target/dist}
revision=${OUTPOST_DEB_REVISION:-1}
maintainer=${OUTPOST_DEB_MAINTAINER:-outpost developers <outpost@example.org>}
read -r -a names <<<"${PACKAGE_TARGETS:-x86_64 aarch64 armv7 armv6}"
BUDGET_BYTES=2500000
ZIG_PACKAGES=(ziglang==0.17.1 cargo-zigbuild==0.24.1)
target_dir=${CARGO_TARGET_DIR:-target}

version=$(sed -nE '0,/^version *= *"([^"]+)"/s//\1/p' Cargo.toml)
[[ -n "$version" ]] || { echo "package: no version in Cargo.toml" >&2; exit 1; }
debversion="$version-$revision"

triple_of() {
    case $1 in
        x86_64) echo x86_64-unknown-linux-musl ;;
        aarch64) echo aarch64-unknown-linux-musl ;;
        armv7) echo armv7-unknown-linux-musleabihf ;;
        armv6) echo arm-unknown-linux-musleabihf ;;
        *) echo "package: unknown target $1 (x86_64, aarch64, armv7, armv6)" >&2; return 1 ;;
    esac
}
debarch_of() {
    case $1 in x86_64) echo amd64 ;; aarch64) echo arm64 ;; armv6) echo armhf ;; *) ;; esac
}

step() { printf '\n==== %s ====\n' "$*"; }
die() { printf 'package: error: %s\n' "$*" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
t_start=$SECONDS
timings=()

# ---------------------------------------------------------------------------------------------
step "package: builds (${names[*]})"
zig_ready=false
need_zig() {
    $zig_ready && return
    # The venv .ci/boards.sh uses too: the same zig path, so cargo's fingerprints match and
    # one script reuses the other's ARM builds.
    local venv=$target_dir/zig-venv
    [[ -x $venv/bin/pip ]] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${ZIG_PACKAGES[@]}"
    export PATH="$(realpath "$venv")/bin:$PATH"
    echo "zig $(python-zig version), $(cargo-zigbuild --version)"
    zig_ready=true
}
build() { # build NAME: the stripped static release binary of target NAME
    local name=$1 triple t0=$SECONDS
    triple=$(triple_of "$name")
    case $name in
        x86_64 | aarch64)
            rustup target add "$triple" >/dev/null 2>&1 || true
            cargo build --release --locked --target "$triple"
            ;;
        *)
            need_zig
            if rustup target add "$triple" >/dev/null 2>&1; then
                cargo-zigbuild build --release --locked --target "$triple"
            else
                echo "$triple: rustup has no rust-std here; building std from rust-src"
                rustup component add rust-src >/dev/null 2>&1 || true
                RUSTC_BOOTSTRAP=1 cargo-zigbuild build --release --locked --target "$triple" \
                    -Zbuild-std=std,panic_abort
            fi
            ;;
    esac
    timings+=("$(printf '%-40s %4ds' "build $triple" $((SECONDS - t0)))")
}
if [[ "${PACKAGE_NO_BUILD:-}" != 1 ]]; then
    for name in "${names[@]}"; do build "$name"; done
fi

sizes=()
over=()
for name in "${names[@]}"; do
    bin=$target_dir/$(triple_of "$name")/release/outpost
    [[ -x $bin ]] || die "$bin was not built"
    readelf -lW "$bin" | grep -q INTERP && die "$bin is not static"
    size=$(stat -c %s "$bin")
    sizes+=("$(printf '%-34s %9d bytes' "$(triple_of "$name")" "$size")")
    [[ $name == x86_64 || $size -le $BUDGET_BYTES ]] || over+=("$name")
done

# ---------------------------------------------------------------------------------------------
step "package: man pages, copyright, changelogs"
mkdir -p "$tmp/man"
date=$(sed -nE '0,/^## [0-9][^ ]* - ([0-9-]+)$/s//\1/p' CHANGELOG.md)
[[ -n "$date" ]] || die "CHANGELOG.md has no '## VERSION - YYYY-MM-DD' line"
python3 .ci/man-sources.py
python3 .ci/md2man.py outpost 8 "store-and-forward SMTP relay (and sendmail, mailq, newaliases)" \
    "$version" "$date" docs/operating.md >"$tmp/man/outpost.8"
python3 .ci/md2man.py outpost.toml 5 "configuration file of outpost" \
    "$version" "$date" docs/configuration.md >"$tmp/man/outpost.toml.5"
for page in "$tmp"/man/*; do
    warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z "$page" 2>&1 >/dev/null)
    [[ -z "$warnings" ]] || die "$(basename "$page"): groff warnings: $warnings"
done
echo "man pages: $(cd "$tmp/man" && echo *) (from docs/operating.md, docs/configuration.md)"

# The crates linked into the binary, for the copyright file.
crates=$(cargo tree --locked -e normal --target "$(triple_of "${names[0]}")" --prefix none \
    -f '{p} {l}' | sed -E 's/ \(\*\)$//; s/ \(proc-macro\)//' | grep -v '^outpost ' | sort -u \
    | sed 's/^/  /')
python3 - "$maintainer" "$crates" boards/debian/copyright.in >"$tmp/copyright" <<'EOF'
import sys
maintainer, crates, template = sys.argv[1:]
text = open(template, encoding="utf-8").read()
print(text.replace("@MAINTAINER@", maintainer).replace("@CRATES@", crates), end="")
EOF

# changelog.Debian from CHANGELOG.md: one entry per version; the newest carries this revision.
python3 - "$maintainer" "$revision" CHANGELOG.md >"$tmp/changelog.Debian" <<'EOF'
import datetime, re, sys, textwrap
maintainer, revision, path = sys.argv[1:]
entries, cur = [], None
for line in open(path, encoding="utf-8"):
    line = line.rstrip("\n")
    m = re.match(r"^## (\S+) - (\d{4}-\d{2}-\d{2})$", line)
    if m:
        cur = {"version": m.group(1), "date": m.group(2), "items": []}
        entries.append(cur)
    elif cur and line.startswith("- "):
        cur["items"].append(line[2:].strip())
    elif cur and line.startswith("  ") and cur["items"]:
        cur["items"][-1] += " " + line.strip()
if not entries:
    sys.exit("CHANGELOG.md: no '## VERSION - YYYY-MM-DD' entries")
out = []
for n, e in enumerate(entries):
    rev = revision if n == 0 else "1"
    day = datetime.datetime.strptime(e["date"], "%Y-%m-%d").replace(tzinfo=datetime.timezone.utc)
    out.append(f"outpost ({e['version']}-{rev}) unstable; urgency=medium\n")
    if n == 0 and rev != "1":
        out.append(f"  * Package revision {rev} of {e['version']}.\n")
    for item in e["items"]:
        out.append(textwrap.fill(item.replace("`", ""), 78, initial_indent="  * ",
                                 subsequent_indent="    ") + "\n")
    out.append(f"\n -- {maintainer}  {day.strftime('%a, %d %b %Y %H:%M:%S +0000')}\n\n")
print("".join(out).rstrip("\n"))
EOF

# ---------------------------------------------------------------------------------------------
# The unit as the package installs it: the binary in /usr/sbin, and the static user `outpost`
# (which owns the queue across upgrades and is removed at purge) instead of a dynamic one.
# DynamicUser=yes implied the last two settings; they stay.
packaged_unit() {
    python3 - boards/outpost.service <<'EOF'
import re, sys
unit = open(sys.argv[1], encoding="utf-8").read()
unit = re.sub(r"^# Install \(docs/boards.md\):\n(#   .*\n)+", "", unit, flags=re.M)
unit = unit.replace("/usr/local/bin/outpost", "/usr/sbin/outpost")
unit = unit.replace("\n[Unit]\n", "\n[Unit]\nDocumentation=man:outpost(8) man:outpost.toml(5)\n", 1)
unit = re.sub(r"^# A user of its own, allocated by systemd;(.|\n)*?^DynamicUser=yes\n",
              "# The system user outpost (made by the package's postinst, removed at purge); the\n"
              "# queue lives in /var/lib/outpost (StateDirectory), the only writable path\n"
              "# (ProtectSystem=strict).\n"
              "User=outpost\nGroup=outpost\nRemoveIPC=yes\nRestrictSUIDSGID=yes\n",
              unit, count=1, flags=re.M)
print(unit, end="")
EOF
}
packaged_unit >"$tmp/outpost.service"
grep -q '^User=outpost$' "$tmp/outpost.service" || die "boards/outpost.service: no DynamicUser=yes line to replace"
grep -q '^ExecStart=/usr/sbin/outpost ' "$tmp/outpost.service" || die "boards/outpost.service: ExecStart is not /usr/local/bin/outpost"

# ---------------------------------------------------------------------------------------------
rm -rf "$out"
mkdir -p "$out"
make_deb() { # make_deb NAME
    local name=$1 arch root doc
    arch=$(debarch_of "$name")
    root=$tmp/deb-$arch
    doc=$root/usr/share/doc/outpost
    install -D -m 755 "$target_dir/$(triple_of "$name")/release/outpost" "$root/usr/sbin/outpost"
    mkdir -p "$root/usr/bin" "$root/usr/share/man/man1"
    ln -s outpost "$root/usr/sbin/sendmail"
    ln -s ../sbin/outpost "$root/usr/bin/mailq"
    ln -s ../sbin/outpost "$root/usr/bin/newaliases"
    install -D -m 644 boards/debian/outpost.toml "$root/etc/outpost/outpost.toml"
    install -D -m 644 "$tmp/outpost.service" "$root/lib/systemd/system/outpost.service"
    install -D -m 644 "$tmp/man/outpost.8" "$root/usr/share/man/man8/outpost.8"
    install -D -m 644 "$tmp/man/outpost.toml.5" "$root/usr/share/man/man5/outpost.toml.5"
    gzip -9n "$root/usr/share/man/man8/outpost.8" "$root/usr/share/man/man5/outpost.toml.5"
    ln -s outpost.8.gz "$root/usr/share/man/man8/sendmail.8.gz"
    ln -s outpost.8.gz "$root/usr/share/man/man8/newaliases.8.gz"
    ln -s ../man8/outpost.8.gz "$root/usr/share/man/man1/mailq.1.gz"
    install -D -m 644 "$tmp/copyright" "$doc/copyright"
    install -m 644 LICENSE-MIT LICENSE-APACHE "$doc/"
    install -m 644 "$tmp/changelog.Debian" "$doc/changelog.Debian"
    install -m 644 CHANGELOG.md "$doc/changelog"
    gzip -9n "$doc/changelog.Debian" "$doc/changelog"
    install -D -m 644 boards/debian/lintian-overrides "$root/usr/share/lintian/overrides/outpost"
    mkdir -p "$root/DEBIAN"
    install -m 755 boards/debian/postinst boards/debian/prerm boards/debian/postrm "$root/DEBIAN/"
    echo /etc/outpost/outpost.toml >"$root/DEBIAN/conffiles"
    sed -e "s|@VERSION@|$debversion|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" \
        -e "s|@SIZE@|$(du -sk --exclude=DEBIAN "$root" | cut -f1)|" \
        boards/debian/control.in >"$root/DEBIAN/control"
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
        | xargs -0 md5sum >DEBIAN/md5sums)
    chmod 644 "$root/DEBIAN/md5sums" "$root/DEBIAN/conffiles" "$root/DEBIAN/control"
    dpkg-deb --root-owner-group -Zxz --build "$root" "$out/outpost_${debversion}_$arch.deb" >/dev/null
    echo "$out/outpost_${debversion}_$arch.deb: $(stat -c %s "$out/outpost_${debversion}_$arch.deb") bytes"
}
make_tarball() { # make_tarball NAME
    local name=$1 dir
    dir=outpost-$version-$name-linux-musl
    mkdir -p "$tmp/tar/$dir/man"
    install -m 755 "$target_dir/$(triple_of "$name")/release/outpost" "$tmp/tar/$dir/outpost"
    install -m 644 "$tmp/man/outpost.8" "$tmp/man/outpost.toml.5" "$tmp/tar/$dir/man/"
    cp -r boards "$tmp/tar/$dir/boards"
    rm -rf "$tmp/tar/$dir/boards/debian"
    install -m 644 LICENSE-MIT LICENSE-APACHE CHANGELOG.md "$tmp/tar/$dir/"
    tar -C "$tmp/tar" --owner=0 --group=0 --numeric-owner --sort=name \
        --mtime="$date 00:00Z" -czf "$out/$dir.tar.gz" "$dir"
    echo "$out/$dir.tar.gz: $(stat -c %s "$out/$dir.tar.gz") bytes"
}

step "package: Debian packages and tarballs (version $debversion)"
for name in "${names[@]}"; do
    if [[ -n "$(debarch_of "$name")" ]]; then make_deb "$name"; fi
    make_tarball "$name"
done
(cd "$out" && sha256sum -- *.deb *.tar.gz >SHA256SUMS 2>/dev/null || sha256sum -- *.tar.gz >SHA256SUMS)
cat "$out/SHA256SUMS"

step "package: summary"
printf '%s\n' "${sizes[@]}"
echo "size budget: $BUDGET_BYTES bytes (stripped static musl release; boards: aarch64, armv7, armv6)"
printf '%s\n' "${timings[@]}"
echo "package total: $((SECONDS - t_start))s"
[[ ${#over[@]} -eq 0 ]] || die "over the size budget: ${over[*]}"
