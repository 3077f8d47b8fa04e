#!/bin/sh
set -u
status=$(dpkg-query -W -f='${Status}' unattended-upgrades 2>/dev/null || true)
case "$status" in
  *"ok installed"*) echo "unattended-upgrades is installed"; exit 1 ;;
  *config-files*) echo "unattended-upgrades was removed but its configuration is left (purge it)"; exit 1 ;;
esac
for f in /etc/apt/apt.conf.d/50unattended-upgrades /etc/apt/apt.conf.d/20auto-upgrades; do
  if [ -e "$f" ]; then echo "$f is present"; exit 1; fi
done
echo "unattended-upgrades is not installed"
