#!/bin/sh
# On the canary the running system has a machine-id by now; what matters is that the image
# shipped an empty one. systemd then says at boot, in the kernel log, that it initialized the
# machine ID from the random generator; with an ID baked into the image it says nothing.
set -u
if dmesg 2>/dev/null | grep -q 'Initializing machine ID from random generator'; then
  echo "the image shipped no machine-id; this node generated $(cat /etc/machine-id) at first boot"
  exit 0
fi
if ! dmesg >/dev/null 2>&1; then
  echo "cannot read the kernel log to tell whether the machine-id was generated at boot"
  exit 77
fi
echo "the image shipped a machine-id ($(cat /etc/machine-id)); every node from it would share it"
exit 1
