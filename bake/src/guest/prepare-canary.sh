#!/bin/sh
# bake runs this on every canary before its validators. It reports which OS booted, and mounts
# the image's root filesystem as the image shipped it -- a second disk made from the image (QEMU:
# a read-only drive; EC2: a volume from the AMI's root snapshot) -- read-only at the image root,
# so checks of what the image ships are not fooled by what the canary's first boot made
# (machine-id, SSH host keys, cloud-init state, logs).
# Usage: prepare-canary ROOT DEVICE...   (or BAKE_IMAGE_ROOT and BAKE_IMAGE_DEVICES in the env)
set -u
root=${1:-${BAKE_IMAGE_ROOT:-/run/bake/image-root}}
[ "$#" -gt 0 ] && shift
set -- "$@" ${BAKE_IMAGE_DEVICES:-}
. /etc/os-release 2>/dev/null || . /usr/lib/os-release 2>/dev/null || true
# Nothing is judged before the first boot is over: what it changes -- a package upgrade by
# cloud-init's final stage, a bootstrap's snap refresh, a unit that installs something -- is
# what the checks, software-as-baked first, must see. The agent answers long before that (its
# unit starts early; cloud-final and units wanted by multi-user.target start after it).
# systemd says when the start-up transaction is done (`is-system-running --wait`: running, or
# degraded if a unit failed), cloud-final included -- asked first, as cloud-init 22.4's
# `status --wait` can say `done` between its stages, before cloud-final has started -- and
# cloud-init when its stages are; ten minutes at most.
limit=${BAKE_BOOT_WAIT:-600}
if command -v systemctl >/dev/null 2>&1; then
  echo "boot_state=$(timeout "$limit" systemctl is-system-running --wait 2>/dev/null || true)"
fi
if command -v cloud-init >/dev/null 2>&1; then
  timeout "$limit" cloud-init status --wait >/dev/null 2>&1
  echo "cloud_init_status=$?"
fi
echo "os_id=${ID:-}"
echo "os_like=${ID_LIKE:-}"
echo "os_version=${VERSION_ID:-}"
if mountpoint -q "$root" 2>/dev/null && [ -e "$root/etc" ]; then echo "image_root=$root"; exit 0; fi
mkdir -p "$root" || { echo "image_root_error=cannot create $root"; exit 0; }
booted=$(readlink -f "$(findmnt -no SOURCE / 2>/dev/null)" 2>/dev/null)
# bake attaches the volume once the canary has booted, before this runs; it shows up within
# seconds. Wait a minute at most.
wait=${BAKE_DEVICE_WAIT:-60}
i=0
dev=""
while [ -z "$dev" ] && [ "$i" -lt "$wait" ]; do
  for d in "$@"; do
    if [ -b "$d" ]; then dev=$(readlink -f "$d"); break; fi
  done
  [ -n "$dev" ] || { i=$((i + 1)); sleep 1; }
done
if [ -z "$dev" ]; then echo "image_root_error=no disk made from the image is attached (looked for: $*)"; exit 0; fi
name=${dev##*/}
# The image's root is the disk itself or one of its partitions: the one with an os-release.
for part in "$dev" /sys/class/block/"$name"/"$name"*; do
  case $part in /sys/*) part=/dev/${part##*/} ;; esac
  [ -b "$part" ] || continue
  [ "$part" = "$booted" ] && continue
  # ext4 without replaying a journal, XFS without recovery and with the booted root's UUID.
  mount -o ro,noload "$part" "$root" 2>/dev/null \
    || mount -o ro,norecovery,nouuid "$part" "$root" 2>/dev/null \
    || mount -o ro "$part" "$root" 2>/dev/null \
    || continue
  if [ -e "$root/etc/os-release" ] || [ -e "$root/usr/lib/os-release" ]; then
    echo "image_root=$root"
    echo "image_device=$part"
    exit 0
  fi
  umount "$root" 2>/dev/null
done
echo "image_root_error=no root filesystem found on $dev"
