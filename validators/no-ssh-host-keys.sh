#!/bin/sh
# Every node must make its own SSH host keys (cloud-init or sshd-keygen at first boot), so the
# image must ship none. Judged on the image's root as shipped (BAKE_IMAGE_ROOT, read-only): by
# now this canary's first boot has made its own.
set -u
root=${BAKE_IMAGE_ROOT:-}
[ -n "$root" ] && [ -d "$root/etc" ] || { echo "the image's root filesystem is not mounted (BAKE_IMAGE_ROOT)"; exit 77; }
keys=$(cd "$root" && ls etc/ssh/ssh_host_*key* 2>/dev/null || true)
if [ -n "$keys" ]; then
  echo "the image ships SSH host keys ($(echo $keys)); every node from it would share them"
  exit 1
fi
made=$(ls /etc/ssh/ssh_host_*_key.pub 2>/dev/null | wc -l)
echo "the image ships no SSH host keys; this canary made $made key pair(s) at first boot"
