#!/bin/sh
# On Ubuntu EKS images kubelet and kubectl are snaps; snapd refreshes them on its own schedule,
# the same drift as unattended-upgrades. Hold every refresh for good (snapd >= 2.58).
set -eu
if ! command -v snap >/dev/null 2>&1; then
  echo "snapd is not installed: nothing to hold"
  exit 0
fi
snap refresh --hold
hold=$(snap get system refresh.hold)
[ "$hold" = forever ] || { echo "snap refresh --hold left refresh.hold = $hold"; exit 1; }
echo "snap refreshes held for good"
