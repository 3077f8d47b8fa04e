#!/bin/sh
# On the canary the running system has a machine-id by now; what matters is that the image
# shipped an empty one. systemd marks such a boot as a first boot in /run/systemd/first-boot.
set -u
if [ -e /run/systemd/first-boot ]; then
  echo "first boot: the image shipped an empty /etc/machine-id"
  exit 0
fi
echo "not a first boot: the image shipped a populated /etc/machine-id ($(cat /etc/machine-id))"
exit 1
