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
# The instance's own state of the agent that runs bake's commands: amazon-ssm-agent keeps each
# command's script and output under /var/lib/amazon/ssm/<instance-id>/document/orchestration/
# (aws/amazon-ssm-agent: OrchestrationDirectoryCleanup defaults to keeping them), with its
# state and idempotency entries beside them. A new instance makes a directory of its own.
sweep='rm -rf /var/lib/amazon/ssm/i-* /var/lib/amazon/ssm/mi-*
find /var/log -type f \( -name "*.gz" -o -name "*.[0-9]" -o -name "*.old" \) -delete
find /var/log -type f -exec truncate -s 0 {} +'
sh -c "$sweep"
# What is written after this step must not ship either, and this step cannot remove it now:
# the agent records this very command (its output, its log lines) once the command has exited,
# then every later one (bake reads the package manifest next), and at power-off the agent,
# auditd and rsyslog log their stop. A unit in /run (a tmpfs: it never reaches the image) runs
# the same sweep once those services have stopped, before the filesystems go.
if [ -d /run/systemd/system ]; then
  printf '#!/bin/sh\n%s\nsync\n' "$sweep" > /run/bake-seal.sh
  cat > /run/systemd/system/bake-seal.service <<'UNIT'
[Unit]
Description=bake: sweep what the agents and loggers wrote after generalize, at power-off
DefaultDependencies=no
RequiresMountsFor=/var/log /var/lib
Conflicts=shutdown.target
Before=shutdown.target amazon-ssm-agent.service snap.amazon-ssm-agent.amazon-ssm-agent.service auditd.service rsyslog.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/bin/sh /run/bake-seal.sh
UNIT
  systemctl daemon-reload
  systemctl start bake-seal.service
fi
sync
