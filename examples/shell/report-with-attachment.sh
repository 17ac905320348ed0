#!/bin/sh
# Mail a report file as an attachment with nothing but POSIX sh, coreutils and sendmail.
#
#   report-with-attachment.sh FILE RECIPIENT [SUBJECT]
#
# Environment (optional): REPORT_FROM (default reports@example.com: must be in a
# domain relay-agent has a DKIM key for), SENDMAIL (default /usr/sbin/sendmail),
# CONTENT_TYPE of the attachment (default application/octet-stream).
#
# Exit status is sendmail's: 0 once the message is durably queued (daemon up or not),
# 75 "try again later" (e.g. disk full): re-run from cron or a systemd timer.
# (With mailutils installed, `mail -A FILE -s SUBJECT -r FROM RCPT < body` does the same.)
set -eu

if [ $# -lt 2 ] || [ ! -r "$1" ]; then
    echo "usage: $0 FILE RECIPIENT [SUBJECT]" >&2
    exit 64
fi
file=$1
to=$2
subject=${3:-"Report: $(basename "$file")"}
from=${REPORT_FROM:-reports@example.com}
sendmail=${SENDMAIL:-/usr/sbin/sendmail}
ctype=${CONTENT_TYPE:-application/octet-stream}
name=$(basename "$file")
# A boundary that cannot occur in base64 output or in the text part below.
boundary="=_report_$(date +%s)_$$"

{
    printf 'From: %s\n' "$from"
    printf 'To: %s\n' "$to"
    printf 'Subject: %s\n' "$subject"
    printf 'MIME-Version: 1.0\n'
    printf 'Content-Type: multipart/mixed; boundary="%s"\n' "$boundary"
    printf '\n'
    printf -- '--%s\n' "$boundary"
    printf 'Content-Type: text/plain; charset=UTF-8\n\n'
    printf 'Report %s from %s, generated %s.\n\n' "$name" "$(hostname)" "$(date -R)"
    printf -- '--%s\n' "$boundary"
    printf 'Content-Type: %s; name="%s"\n' "$ctype" "$name"
    printf 'Content-Disposition: attachment; filename="%s"\n' "$name"
    printf 'Content-Transfer-Encoding: base64\n\n'
    # base64 wraps at 76 columns, as MIME requires (RFC 2045 6.8).
    base64 "$file"
    printf -- '--%s--\n' "$boundary"
} | "$sendmail" -t -i
# -t: recipients from To:; -i: a lone "." line is data. Date: and Message-ID:
# are added by relay-agent, which also DKIM-signs before queueing.
