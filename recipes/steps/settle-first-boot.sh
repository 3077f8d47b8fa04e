#!/bin/sh
# A builder's first boot is still busy when the agent answers: cloud-init runs the user data,
# and the distribution's package timers (apt-daily, unattended-upgrades, dnf-makecache) may
# start a refresh or an upgrade that holds the package database lock in the middle of the
# bake ("Could not get lock /var/lib/dpkg/lock-frontend"). Wait for cloud-init, stop the
# timers so nothing new starts, then wait for any package manager still running. Limit:
# BAKE_SETTLE_LIMIT seconds (default 600) for each wait, with an error that names who held on.
set -u
limit=${BAKE_SETTLE_LIMIT:-600}
# An offline builder (a chroot of the image, no systemd running) has no first boot to wait for.
if [ ! -d /run/systemd/system ]; then
  echo "no running system (offline builder): no first boot to settle"
  exit 0
fi
if command -v cloud-init >/dev/null 2>&1; then
  # The exit status is read on its own line: inside `if ! cmd`, `$?` is the negation's (0).
  # `cloud-init status --wait` exits 0 when done, 1 on an error, 2 on a recoverable one
  # (cloud-init 23.4+); timeout(1) exits 124 when the wait itself ran out.
  rc=0
  timeout "$limit" cloud-init status --wait >/dev/null 2>&1 || rc=$?
  case "$rc" in
    0) ;;
    124)
      echo "cloud-init's first boot did not finish within ${limit}s: $(timeout 10 cloud-init status 2>&1 | tr '\n' ' ')"
      exit 1 ;;
    *)
      echo "cloud-init finished with problems (exit $rc; going on): $(timeout 10 cloud-init status --long 2>&1 | tr '\n' ' ')" ;;
  esac
fi
for unit in apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service \
            unattended-upgrades.service dnf-makecache.timer dnf-makecache.service \
            dnf-automatic.timer dnf-automatic-install.timer; do
  systemctl stop "$unit" >/dev/null 2>&1 || true
done
busy() {
  for c in /proc/[0-9]*/comm; do
    read -r name < "$c" 2>/dev/null || continue
    case "$name" in
      apt|apt-get|apt-check|dpkg|unattended-upgr|dnf|dnf-automatic|yum|rpm|snap|snapd.refresh)
        pid=${c#/proc/}; echo "$name (pid ${pid%/comm})"; return 0 ;;
    esac
  done
  return 1
}
start=$(date +%s)
while who=$(busy); do
  if [ $(( $(date +%s) - start )) -ge "$limit" ]; then
    echo "the package manager is still busy after ${limit}s: $who holds the package database; the bake cannot install or remove packages"
    exit 1
  fi
  sleep 2
done
echo "first boot settled in $(( $(date +%s) - start ))s after cloud-init"
