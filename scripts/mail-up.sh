#!/usr/bin/env bash
# A local mail setup for the tests: Debian's mailx (`mail`, what BU's nodes have) and exim4 in
# its local-delivery-only configuration, and a user whose mailbox the tests read
# (/var/mail/slmjobs-mail). Nothing leaves this machine. Idempotent; run as root.
set -euo pipefail

user=slmjobs-mail
if ! command -v mail >/dev/null || ! command -v exim4 >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q bsd-mailx exim4-daemon-light
fi
if grep -q "^dc_eximconfig_configtype='local'" /etc/exim4/update-exim4.conf.conf 2>/dev/null; then
    :
else
    sed -i "s/^dc_eximconfig_configtype=.*/dc_eximconfig_configtype='local'/" /etc/exim4/update-exim4.conf.conf
    update-exim4.conf
fi
# exim delivers from the user's home directory: it must exist
id "$user" >/dev/null 2>&1 || useradd --system --create-home --home-dir "/var/lib/$user" \
    --shell /usr/sbin/nologin "$user"
home=$(getent passwd "$user" | cut -d: -f6)
[ -d "$home" ] || install -d -o "$user" "$home"
exim4 -qff 2>/dev/null || true   # anything deferred before the home existed

# Delivery works, or we stop here: one mail through the same `mail` command the runs use.
marker="slmjobs mail-up $(date +%s.%N)"
echo "$marker" | mail -s "$marker" "$user@localhost"
for _ in $(seq 1 100); do
    if grep -qF "$marker" "/var/mail/$user" 2>/dev/null; then
        echo "mail-up: local delivery to /var/mail/$user works"
        exit 0
    fi
    sleep 0.1
done
echo "mail-up: a mail to $user@localhost did not arrive in /var/mail/$user" >&2
exim4 -bp >&2 || true
exit 1
