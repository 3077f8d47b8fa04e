#!/bin/sh
# On the canary the running system has a machine-id by now; what matters is that the image
# shipped an empty one. systemd then says at boot, in the kernel log, that it initialized the
# machine ID: from the VM's SMBIOS/DMI UUID where the hypervisor gives one (EC2 Nitro and Xen,
# KVM, QEMU started with -uuid) or from the random generator where it does not. With an ID
# baked into the image it initializes nothing and says nothing.
set -u
said=$(dmesg 2>/dev/null | grep -o 'Initializing machine ID from [A-Za-z/ -]*' | head -n1)
if [ -n "$said" ]; then
  echo "the image shipped no machine-id; this node made $(cat /etc/machine-id) at first boot (${said#Initializing machine ID })"
  exit 0
fi
if ! dmesg >/dev/null 2>&1; then
  echo "cannot read the kernel log to tell whether the machine-id was generated at boot"
  exit 77
fi
echo "the image shipped a machine-id ($(cat /etc/machine-id)); every node from it would share it"
exit 1
