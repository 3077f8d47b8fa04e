#!/bin/sh
# Every node must make its own machine-id at first boot, so the image must ship none: an empty
# /etc/machine-id (or "uninitialized", or none at all). Judged on the image's root as shipped
# (BAKE_IMAGE_ROOT, read-only): by now this canary has made its own, from the VM's SMBIOS UUID
# on EC2 Nitro, Xen, KVM and QEMU with -uuid, or at random elsewhere.
set -u
root=${BAKE_IMAGE_ROOT:-}
[ -n "$root" ] && [ -d "$root/etc" ] || { echo "the image's root filesystem is not mounted (BAKE_IMAGE_ROOT)"; exit 77; }
f="$root/etc/machine-id"
shipped=""
if [ -s "$f" ]; then shipped=$(tr -d '\n' < "$f"); fi
case "$shipped" in
  ""|uninitialized) ;;
  *) echo "the image shipped a machine-id ($shipped); every node from it would share it"; exit 1 ;;
esac
d="$root/var/lib/dbus/machine-id"
if [ -f "$d" ] && [ ! -L "$d" ] && [ -s "$d" ]; then
  echo "the image shipped a D-Bus machine-id ($(tr -d '\n' < "$d")) in /var/lib/dbus/machine-id; every node from it would share it"
  exit 1
fi
mine=$(cat /etc/machine-id 2>/dev/null)
if [ -z "$mine" ] || [ "$mine" = uninitialized ]; then
  echo "the image ships an empty machine-id, but this canary did not make one at first boot"
  exit 1
fi
how=$( (journalctl -b -o cat 2>/dev/null; dmesg 2>/dev/null) | grep -o 'Initializing machine ID from [A-Za-z/ -]*' | head -n1)
echo "the image ships an empty machine-id; this canary made $mine at first boot${how:+ (${how#Initializing machine ID })}"
