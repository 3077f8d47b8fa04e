#!/bin/sh
# Static nodes change only on `terraform apply`: nothing may upgrade packages behind our back.
set -eu
if dpkg-query -W -f='${Status}' unattended-upgrades 2>/dev/null | grep -q 'install ok installed'; then
  apt-get -o DPkg::Lock::Timeout=300 purge -y -q unattended-upgrades
fi
rm -f /etc/apt/apt.conf.d/50unattended-upgrades /etc/apt/apt.conf.d/20auto-upgrades
