#!/usr/bin/env bash
# The mailers a Debian host already has, sending through outpost's `sendmail` (a symlink to the
# binary, the config found by OUTPOST_CONFIG) to a real Postfix configured as a strict smarthost
# (reject_non_fqdn_sender, reject_non_fqdn_recipient): cron's exact invocation from another
# working directory, `sendmail pi` reaching `admin`, bsd-mailx through /usr/sbin/sendmail (a
# bind mount of the symlink in a private mount namespace, so the host's file is untouched) and
# PHP's mail() through sendmail_path. Postfix is a private instance (`postfix -c DIR`) that
# delivers into a maildir; its virtual(8) agent records the envelope as Return-Path: (sender)
# and X-Original-To: (recipient). The system Postfix instance is never started or configured.
# Usage: bash .ci/mailer-interop.sh OUTPOST (as root; installs postfix, bsd-mailx, php-cli)
set -euo pipefail
outpost_binary=$(realpath -e "${1:-}" 2>/dev/null) || outpost_binary=
cd "$(dirname "$0")/.."
CI_NAME=mailer-interop
source .ci/lib.sh

[[ -x $outpost_binary ]] || die "usage: $0 OUTPOST (an outpost binary)"
if [[ $(id -u) != 0 ]]; then
    # a private Postfix instance and a mount namespace need root; CI runs as root
    [[ ${CI:-} != true ]] || die "needs root"
    echo "mailer interop: not root: skipped"
    exit 0
fi

need=()
command -v postfix >/dev/null 2>&1 || [[ -x /usr/sbin/postfix ]] || need+=(postfix)
command -v bsd-mailx >/dev/null 2>&1 || need+=(bsd-mailx)
command -v php >/dev/null 2>&1 || need+=(php-cli)
if ((${#need[@]})); then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null
fi
[[ -e /usr/sbin/sendmail ]] || die "/usr/sbin/sendmail is missing: nothing to bind the symlink over"

chmod 0755 "$work"
install -m 0755 "$outpost_binary" "$work/outpost"
mkdir -m 0755 "$work/bin"
ln -s "$work/outpost" "$work/bin/sendmail"
sendmail="$work/bin/sendmail"

passed=0 failed=0
summary() { echo "mailer interop: $passed passed, $failed failed"; }
check() { # check NAME COMMAND...: runs one check, counts it
    local name=$1
    shift
    if "$@"; then
        echo "ok: $name"
        passed=$((passed + 1))
    else
        echo "FAILED: $name"
        failed=$((failed + 1))
    fi
}

read -r pf_port < <(python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

step "mailer interop: a private Postfix as a strict smarthost on 127.0.0.1:$pf_port"
pf="$work/postfix"
mkdir -p "$pf/etc" "$pf/queue" "$pf/data" "$pf/mail"
chown postfix "$pf/data"
chown "$(id -u nobody):$(id -g nobody)" "$pf/mail"
cat >"$pf/etc/main.cf" <<EOF
compatibility_level = 3.6
config_directory = $pf/etc
queue_directory = $pf/queue
data_directory = $pf/data
mail_owner = postfix
setgid_group = postdrop
myhostname = smarthost.corp.example
mydomain = corp.example
myorigin = \$myhostname
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 no local delivery here
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_sender_restrictions = reject_non_fqdn_sender
smtpd_recipient_restrictions = reject_non_fqdn_recipient, permit_mynetworks, reject
virtual_mailbox_domains = corp.example
virtual_mailbox_base = $pf/mail
virtual_mailbox_maps = static:box/
virtual_uid_maps = static:$(id -u nobody)
virtual_gid_maps = static:$(id -g nobody)
smtp_tls_security_level = none
smtpd_tls_security_level = none
maillog_file = $pf/maillog
maillog_file_prefixes = $pf
syslog_name = postfix-interop
biff = no
append_dot_mydomain = no
EOF
cat >"$pf/etc/master.cf" <<EOF
127.0.0.1:$pf_port inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
# pf_stop: `postfix -c DIR stop`, then waits (bounded) for the master to exit, else kills it by
# its PID; once, and only for an instance this script started.
pf_started=false
pf_stop() {
    local master
    $pf_started || return 0
    pf_started=false
    master=$(tr -d ' ' <"$pf/queue/pid/master.pid") || return 0
    postfix -c "$pf/etc" stop || true
    wait_for 30 "Postfix's master to exit" eval '! kill -0 "$master" 2>/dev/null' \
        || kill -9 "$master" 2>/dev/null || true
}
at_exit+=(pf_stop)
pf_started=true
postfix -c "$pf/etc" start || { cat "$pf/maillog" || true; die "postfix -c $pf/etc start failed"; }
master_pid() { [[ -s $pf/queue/pid/master.pid ]] && kill -0 "$(tr -d ' ' <"$pf/queue/pid/master.pid")"; }
wait_for 30 "Postfix's master.pid" master_pid || die "postfix did not start"
pf_listening() { (exec 3<>"/dev/tcp/127.0.0.1/$pf_port") 2>/dev/null; }
wait_for 30 "Postfix on port $pf_port" pf_listening || die "postfix does not listen"

step "mailer interop: outpost with domain, [aliases] and admin, Postfix as its smarthost"
cat >"$work/outpost.toml" <<EOF
hostname = "relay.site.example"
domain = "site.example"
admin = "admin@corp.example"
data_dir = "$work/data"
listen = ["127.0.0.1:0"]

[aliases]
root = "ops@corp.example"

[smarthost]
address = "127.0.0.1:$pf_port"
tls = "none"
EOF
chmod 0644 "$work/outpost.toml"
export OUTPOST_CONFIG="$work/outpost.toml"
"$work/outpost" serve >"$work/outpost.log" 2>&1 &
pids+=($!)
relay_died() { cat "$work/outpost.log"; die "$1"; }
wait_for 30 "the submission socket" test -S "$work/data/submit.sock" || relay_died "relay did not start"

# delivered SUBJECT: the maildir file Postfix delivered with that Subject (none: fails).
delivered() { grep -lsx -- "Subject: $1" "$pf"/mail/box/new/* 2>/dev/null | head -n 1; }
# arrived SUBJECT SENDER RECIPIENT: waits for SUBJECT at Postfix, then checks its envelope.
arrived() {
    local file
    if ! wait_for 30 "'$1' at Postfix" delivered "$1" >/dev/null; then
        return 1
    fi
    file=$(delivered "$1")
    grep -qsx "Return-Path: <$2>" "$file" || { echo "'$1': sender is not <$2>:"; head -n 20 "$file"; return 1; }
    grep -qsx "X-Original-To: $3" "$file" || { echo "'$1': recipient is not $3:"; head -n 20 "$file"; return 1; }
    grep -qs "by relay.site.example (outpost)" "$file" || { echo "'$1': not relayed by outpost:"; head -n 20 "$file"; return 1; }
}

step "mailer interop: cron's invocation (sendmail -FCronDaemon -i -B8BITMIME -oem root) from /tmp"
cron_message() {
    cat <<'EOF'
From: root (Cron Daemon)
To: root
Subject: Cron <root@relay> run-parts --report /etc/cron.daily
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: 8bit
X-Cron-Env: <SHELL=/bin/sh>
X-Cron-Env: <HOME=/root>
X-Cron-Env: <LOGNAME=root>

/etc/cron.daily/logrotate: rotated 3 files — état: ok
EOF
}
cron_sent() { (cd /tmp && export PATH="$work/bin:$PATH" && cron_message | sendmail -FCronDaemon -i -B8BITMIME -oem root); }
check "cron's sendmail exits 0" cron_sent
check "cron's mail reaches Postfix from root@site.example to ops@corp.example" \
    arrived "Cron <root@relay> run-parts --report /etc/cron.daily" root@site.example ops@corp.example

cron_body() { grep -qsx "/etc/cron.daily/logrotate: rotated 3 files — état: ok" "$(delivered "$1")"; }
check "cron's 8-bit body arrives intact" cron_body "Cron <root@relay> run-parts --report /etc/cron.daily"

step "mailer interop: sendmail pi (no alias) goes to admin"
pi_sent() { printf 'Subject: interop-admin\n\nfor pi\n' | (cd / && "$sendmail" pi); }
check "sendmail pi exits 0" pi_sent
check "mail for pi reaches Postfix addressed to admin@corp.example" \
    arrived interop-admin root@site.example admin@corp.example
# The From: sendmail adds is qualified with `domain`, like the envelope sender.
added_from() { grep -qsx "From: <root@site.example>" "$(delivered interop-admin)"; }
check "the From: sendmail adds is <root@site.example>" added_from

step "mailer interop: bsd-mailx (mail -s SUBJECT root) through /usr/sbin/sendmail"
# mail(1) runs /usr/sbin/sendmail; in a private mount namespace the symlink is bound over it (a
# bind mount follows the symlink, so argv[0] stays "sendmail"). bsd-mailx runs it as
# `sendmail -i -t` (it also honours `set sendmail=PATH` in $MAILRC; the bind mount checks the
# path it uses by default). Called as bsd-mailx: `mail` may be another alternative.
mailx_sent() {
    echo "sent by bsd-mailx" | timeout 60 unshare --mount --propagation private \
        sh -c 'mount --bind "$1" /usr/sbin/sendmail && cd /tmp && exec bsd-mailx -s interop-mailx root' \
        sh "$sendmail"
}
check "bsd-mailx -s interop-mailx root exits 0" mailx_sent
check "bsd-mailx's mail reaches Postfix from root@site.example to ops@corp.example" \
    arrived interop-mailx root@site.example ops@corp.example

step "mailer interop: PHP's mail() with sendmail_path = \"sendmail -t -i\""
php_sent() {
    (cd /tmp && timeout 60 php -n -d sendmail_path="$sendmail -t -i" \
        -r 'exit(mail("root", "interop-php", "sent by PHP mail()\n", "From: root") ? 0 : 1);')
}
check "php mail() returns true" php_sent
check "PHP's mail reaches Postfix from root@site.example to ops@corp.example" \
    arrived interop-php root@site.example ops@corp.example

step "mailer interop: Postfix refused nothing"
no_rejects() {
    if grep -E 'reject|NOQUEUE|status=(bounced|deferred)|\<5[0-9]{2}[ -]5\.[0-9]' "$pf/maillog"; then
        return 1
    fi
    grep -q 'status=sent' "$pf/maillog"
}
check "no 5xx and no reject in Postfix's log" no_rejects

# The checks above prove something only if this Postfix refuses what an unqualified sender or
# recipient looks like: it must, after the log check (these refusals are logged).
strict() {
    timeout 60 python3 - "$pf_port" <<'PY'
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30)
s.ehlo("probe.corp.example")
s.mail("root")
code, _ = s.rcpt("ops@corp.example")
assert code >= 500, f"MAIL FROM:<root> then RCPT: {code}"
s.rset()
s.mail("root@site.example")
code, _ = s.rcpt("root")
assert code >= 500, f"RCPT TO:<root>: {code}"
s.quit()
PY
}
check "Postfix refuses MAIL FROM:<root> and RCPT TO:<root> (the smarthost is strict)" strict

pf_stop
if ((failed)); then
    echo "---- relay log ----"; cat "$work/outpost.log" || true
    echo "---- postfix log ----"; cat "$pf/maillog" || true
    summary
    exit 1
fi
summary
