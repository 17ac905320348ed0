#!/usr/bin/env bash
# The peers (Postfix, nullmailer, dma, msmtp) without installing any of them: they all want
# /usr/sbin/sendmail and have /etc and /var/spool paths compiled in, so each one runs in a
# private namespace (mount, net, pid) whose /etc, /usr and /var are throw-away overlays
# with the extracted package copied to its real paths. Only `lo` is up, so nothing can
# leave 127.0.0.0/8, and every daemon dies with the namespace.
#
#   bench/peers.sh fetch                 apt-get download + dpkg-deb -x into bench/.peers/
#   bench/peers.sh run PEER CMD [ARG..]  run CMD inside PEER's namespace (needs root); the peer's
#                                        daemon is running, Postfix's smtp-sink listens on
#                                        127.0.0.1:$SINK_PORT, and $PEER_SENDMAIL names the
#                                        command that is the peer's `sendmail`
#   bench/peers.sh check PEER            why PEER cannot run here, or "ok"
#
# With SINK_TLS=DIR (sink.pem: certificate and key, ca.pem, user, password) the upstream is
# bench/tls_sink.py (run by $SINK_PYTHON) instead of smtp-sink, and every peer relays as it
# would to the Elastx relay and as relay-agent does: STARTTLS, the CA checked where the
# peer can, then AUTH.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PEERS=${PEERS_DIR:-$HERE/.peers}
SINK_PORT=${SINK_PORT:-2525}
ALL_PEERS="postfix nullmailer dma msmtp"
# msmtp links libsecret, which is not part of a minimal Debian system; Postfix's AUTH (SINK_TLS)
# needs Cyrus SASL's client mechanisms, which may not be either.
DEBS="postfix nullmailer dma msmtp libsecret-1-0 libsasl2-modules"

die() { echo "peers.sh: $*" >&2; exit 1; }
sink_secret() { cat "$SINK_TLS/$1"; }  # user or password of the TLS sink

drain_spool() {  # give the peer up to 5 s to relay what it queued, so the sink's count is whole
    local i
    for i in $(seq 100); do
        [ -z "$(find /var/spool/postfix/maildrop /var/spool/postfix/incoming /var/spool/postfix/active \
            /var/spool/postfix/deferred /var/spool/nullmailer/queue /var/spool/dma \
            -type f 2>/dev/null | head -n 1)" ] && return
        sleep 0.05
    done
}

fetch() {
    command -v apt-get >/dev/null || die "apt-get not found: the peers are fetched as Debian packages"
    mkdir -p "$PEERS/debs"
    for pkg in $DEBS; do
        if ! ls "$PEERS/debs/${pkg}"_*.deb >/dev/null 2>&1; then
            # _apt cannot write to a root-owned dir: download in a temp dir it may use
            (cd "$PEERS/debs" && apt-get download -q "$pkg" >/dev/null 2>&1) \
                || { apt-get update -qq >/dev/null 2>&1 && (cd "$PEERS/debs" && apt-get download -q "$pkg" >/dev/null 2>&1); } \
                || die "apt-get download $pkg failed"
        fi
    done
    for pkg in $DEBS; do
        local dest="$PEERS/root/$pkg"
        [ -d "$dest" ] && continue
        mkdir -p "$dest.tmp"
        dpkg-deb -x "$PEERS/debs/${pkg}"_*.deb "$dest.tmp"
        mv "$dest.tmp" "$dest"
    done
    echo "peers in $PEERS/root: $(ls "$PEERS/root" | tr '\n' ' ')"
}

check() {
    local peer=$1
    [ "$(id -u)" = 0 ] || { echo "needs root (mount and network namespaces)"; return; }
    command -v unshare >/dev/null || { echo "unshare (util-linux) not found"; return; }
    [ -d "$PEERS/root/$peer" ] || { echo "not fetched: run bench/peers.sh fetch"; return; }
    [ -d "$PEERS/root/postfix" ] || { echo "postfix not fetched (its smtp-sink is the upstream)"; return; }
    local out
    if ! out=$(printf 'From: bench@bench.test\nTo: sink@bench.test\nSubject: check\n\nhello\n' \
        | "$0" run "$peer" sh -c '"$PEER_SENDMAIL" -t -i && echo PEER-OK' 2>&1); then
        echo "failed: $(echo "$out" | tail -3 | tr '\n' ' ')"
        return
    fi
    case "$out" in
        *PEER-OK*) echo ok ;;
        *) echo "failed: $(echo "$out" | tail -3 | tr '\n' ' ')" ;;
    esac
}

run() {
    local peer=$1; shift
    case " $ALL_PEERS " in *" $peer "*) ;; *) die "unknown peer $peer (one of: $ALL_PEERS)" ;; esac
    [ "$(id -u)" = 0 ] || die "needs root (mount and network namespaces)"
    [ -d "$PEERS/root/$peer" ] || die "$peer not fetched: run bench/peers.sh fetch"
    exec unshare --mount --net --pid --fork --mount-proc "$0" _inside "$peer" "$@"
}

overlay() {
    local dir=$1 name
    name=$(echo "$dir" | tr / _)
    mkdir -p "$SCRATCH/$name.u" "$SCRATCH/$name.w"
    mount -t overlay overlay -o "lowerdir=$dir,upperdir=$SCRATCH/$name.u,workdir=$SCRATCH/$name.w" "$dir"
}

add_user() {  # name uid gid home: in the overlay's /etc only
    grep -q "^$1:" /etc/group || echo "$1:x:$3:" >>/etc/group
    grep -q "^$1:" /etc/passwd || echo "$1:x:$2:$3::$4:/usr/sbin/nologin" >>/etc/passwd
}

setup_postfix() {
    local POSTFIX_TLS_LEVEL=none
    [ -n "${SINK_TLS:-}" ] && POSTFIX_TLS_LEVEL=verify
    add_user postfix 2901 2901 /var/spool/postfix
    grep -q '^postdrop:' /etc/group || echo "postdrop:x:2902:" >>/etc/group
    mkdir -p /etc/postfix /var/lib/postfix /var/spool/postfix /var/log
    cp /usr/share/postfix/master.cf.dist /etc/postfix/master.cf
    cp /usr/share/postfix/dynamicmaps.cf /etc/postfix/dynamicmaps.cf
    cat >/etc/postfix/main.cf <<EOF
compatibility_level = 3.6
myhostname = bench.localdomain
mydomain = localdomain
myorigin = \$myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
relayhost = [127.0.0.1]:$SINK_PORT
maillog_file = /var/log/postfix.log
smtp_tls_security_level = ${POSTFIX_TLS_LEVEL:-none}
alias_maps =
alias_database =
EOF
    if [ -n "${SINK_TLS:-}" ]; then
        # a null client for the Elastx relay: STARTTLS with the CA checked (level set above), then AUTH
        tar -C "$PEERS/root/libsasl2-modules" -c . | tar -C / -x --keep-directory-symlink
        cat >>/etc/postfix/main.cf <<EOF
smtp_tls_verify_cert_match = nexthop
smtp_tls_CAfile = $SINK_TLS/ca.pem
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = static:$(sink_secret user):$(sink_secret password)
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
EOF
    fi
    # no chroot: the namespace is the sandbox, and a chroot would need copies of /etc files
    postconf -F '*/*/chroot = n' >/dev/null
    postfix set-permissions >/dev/null 2>&1 || true
    # what Debian's postinst does with dpkg-statoverride (dpkg-deb -x sets no setgid bits), so
    # that users other than root can post: postdrop and postqueue are setgid postdrop
    chgrp postdrop /usr/sbin/postdrop /usr/sbin/postqueue
    chmod 2555 /usr/sbin/postdrop /usr/sbin/postqueue
    postfix start >/dev/null 2>&1 || { cat /var/log/postfix.log >&2 2>/dev/null; die "postfix start failed"; }
    export PEER_SENDMAIL=/usr/sbin/sendmail
}

setup_nullmailer() {
    grep -q '^mail:' /etc/passwd || add_user mail 8 8 /var/mail
    mkdir -p /etc/nullmailer /var/spool/nullmailer/queue /var/spool/nullmailer/tmp /var/spool/nullmailer/failed
    local tls=""
    [ -n "${SINK_TLS:-}" ] && tls=" --starttls --x509cafile=$SINK_TLS/ca.pem --user=$(sink_secret user) --pass=$(sink_secret password)"
    echo "127.0.0.1 smtp --port=$SINK_PORT$tls" >/etc/nullmailer/remotes
    echo bench.localdomain >/etc/nullmailer/me
    echo bench.localdomain >/etc/mailname
    [ -p /var/spool/nullmailer/trigger ] || mkfifo /var/spool/nullmailer/trigger
    chown -R mail:root /var/spool/nullmailer
    chmod 0622 /var/spool/nullmailer/trigger
    # nullmailer-send drains the queue to the sink (as the Debian service does)
    setpriv --reuid=mail --regid=mail --clear-groups /usr/sbin/nullmailer-send >/dev/null 2>&1 &
    export PEER_SENDMAIL=/usr/sbin/sendmail
}

setup_dma() {
    mkdir -p /etc/dma /var/spool/dma
    chown root:mail /var/spool/dma && chmod 2775 /var/spool/dma
    echo bench.localdomain >/etc/mailname
    cat >/etc/dma/dma.conf <<EOF
SMARTHOST 127.0.0.1
PORT $SINK_PORT
MAILNAME /etc/mailname
SPOOLDIR /var/spool/dma
EOF
    : >/etc/dma/auth.conf
    if [ -n "${SINK_TLS:-}" ]; then  # dma has no CA setting: it encrypts without checking
        printf 'SECURETRANSFER\nSTARTTLS\nAUTHPATH /etc/dma/auth.conf\n' >>/etc/dma/dma.conf
        echo "$(sink_secret user)|127.0.0.1:$(sink_secret password)" >/etc/dma/auth.conf
    fi
    export PEER_SENDMAIL=/usr/sbin/sendmail
}

setup_msmtp() {
    tar -C "$PEERS/root/libsecret-1-0" -c . | tar -C / -x --keep-directory-symlink
    cat >/etc/msmtprc <<EOF
defaults
tls off
auth off
account default
host 127.0.0.1
port $SINK_PORT
from bench@bench.test
EOF
    if [ -n "${SINK_TLS:-}" ]; then
        printf 'tls on\ntls_starttls on\ntls_trust_file %s\nauth on\nuser %s\npassword %s\n' \
            "$SINK_TLS/ca.pem" "$(sink_secret user)" "$(sink_secret password)" >>/etc/msmtprc
    fi
    chmod 0644 /etc/msmtprc
    # msmtp-mta's /usr/sbin/sendmail is a symlink to msmtp; use msmtp by name
    export PEER_SENDMAIL=/usr/bin/msmtp
}

inside() {
    local peer=$1; shift
    mount --make-rprivate /
    ip link set lo up
    # On disk, not tmpfs: the peers' spools must pay for fsync as relay-agent's queue does
    # (on tmpfs postdrop's fsyncs cost nothing). Removed when the command ends.
    SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/peer-ns.XXXXXX")
    trap 'rm -rf "$SCRATCH"' EXIT
    overlay /etc; overlay /usr; overlay /var
    # each peer's spool on a plain directory of that disk, not through the overlay, whose
    # lookups and copy-ups cost Postfix's postdrop ~0.25 ms a message here
    for spool in /var/spool/postfix /var/spool/nullmailer /var/spool/dma; do
        mkdir -p "$SCRATCH/spools$spool" "$spool"
        mount --bind "$SCRATCH/spools$spool" "$spool"
    done
    # --keep-directory-symlink: /lib, /sbin are symlinks into /usr (usrmerge)
    tar -C "$PEERS/root/$peer" -c . | tar -C / -x --keep-directory-symlink
    local pf="$PEERS/root/postfix"
    if [ -n "${SINK_TLS:-}" ]; then
        "$SINK_PYTHON" "$HERE/tls_sink.py" "$SINK_TLS/sink.pem" "$(sink_secret user)" \
            "$(sink_secret password)" "$SINK_PORT" >"$SINK_TLS/sink-$peer.out" 2>&1 &
        SINK_PID=$!
        # its count of what arrived, once the command is done (the namespace's end is a SIGKILL)
        trap 'drain_spool; kill -TERM $SINK_PID; wait $SINK_PID; rm -rf "$SCRATCH"' EXIT
    else
        LD_LIBRARY_PATH="$pf/usr/lib/postfix" "$pf/usr/sbin/smtp-sink" -u nobody "127.0.0.1:$SINK_PORT" 1000 \
            >/dev/null 2>&1 &
    fi
    "setup_$peer"
    export PEER="$peer" SINK_PORT
    # wait for the sink, so a first message is not deferred
    for _ in $(seq 50); do
        (exec 3<>/dev/tcp/127.0.0.1/"$SINK_PORT") 2>/dev/null && break
        sleep 0.05
    done
    "$@"
}

cmd=${1:-}
shift || true
case "$cmd" in
    fetch) fetch ;;
    run) [ $# -ge 2 ] || die "usage: peers.sh run PEER CMD [ARG...]"; run "$@" ;;
    check) [ $# -eq 1 ] || die "usage: peers.sh check PEER"; check "$1" ;;
    _inside) inside "$@" ;;
    *) echo "usage: bench/peers.sh fetch | run PEER CMD [ARG...] | check PEER" >&2; exit 64 ;;
esac
