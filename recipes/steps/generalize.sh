#!/bin/sh
# Make the image generic: every node gets its own identity at first boot, and nothing from
# the bake (logs, caches, staging files) ships in the image.
set -eu
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
rm -f /etc/ssh/ssh_host_*
if command -v cloud-init >/dev/null 2>&1; then cloud-init clean --logs; fi
if command -v apt-get >/dev/null 2>&1; then apt-get clean; fi
if command -v dnf >/dev/null 2>&1; then dnf clean all >/dev/null; fi
rm -rf /var/lib/apt/lists/* /var/cache/dnf/* /tmp/* /var/tmp/*.log /root/.bash_history /home/*/.bash_history
# The persistent journal is named after the builder's machine-id: make journald log to /run
# until power-off, then remove what it wrote under /var.
journalctl --relinquish-var >/dev/null 2>&1 || true
rm -rf /var/log/journal/*
# At power-off systemd records the gettys' end and the shutdown in /var/log/wtmp: stop them
# now, so those records are written before the logs are truncated below.
systemctl stop 'getty@*.service' 'serial-getty@*.service' console-getty.service \
  systemd-update-utmp-runlevel.service systemd-update-utmp.service >/dev/null 2>&1 || true
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
sync
