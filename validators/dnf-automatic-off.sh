#!/bin/sh
# AL2023 and other dnf systems: dnf-automatic must not be installed, and no dnf-automatic
# timer may be left, so nothing installs updates behind the node's back.
set -u
if rpm -q dnf-automatic >/dev/null 2>&1; then echo "dnf-automatic is installed"; exit 1; fi
for t in dnf-automatic.timer dnf-automatic-install.timer dnf-automatic-download.timer dnf-automatic-notifyonly.timer; do
  state=$(systemctl is-enabled "$t" 2>/dev/null || true)
  case "$state" in enabled*|static|alias|linked*) echo "$t is $state"; exit 1 ;; esac
done
echo "dnf-automatic is not installed"
