#!/bin/sh
# The seed incident: an OS update reset MACAddressPolicy to `persistent` and udev rewrote the
# MACs of veth devices the CNI created. Check the configuration and the behaviour.
set -u
dropin=""
for f in /etc/systemd/network/99-default.link.d/*.conf; do
  [ -f "$f" ] || continue
  if grep -Eq '^[[:space:]]*MACAddressPolicy[[:space:]]*=[[:space:]]*none[[:space:]]*$' "$f"; then dropin=$f; fi
done
if [ -z "$dropin" ]; then
  echo "no /etc/systemd/network/99-default.link.d/*.conf sets MACAddressPolicy=none"
  exit 1
fi
link=/usr/lib/systemd/network/99-default.link
edited=""
if command -v dpkg >/dev/null 2>&1; then
  dpkg --verify udev systemd 2>/dev/null | grep -q '99-default.link' && edited=1
elif command -v rpm >/dev/null 2>&1; then
  rpm -Vf "$link" 2>/dev/null | grep -q '99-default.link' && edited=1
fi
if [ -n "$edited" ]; then
  echo "$link was edited in place; the next udev/systemd upgrade reverts it"
  exit 1
fi

a=bakev$$a; b=bakev$$b
ip link add "$a" type veth peer name "$b" || { echo "cannot create a veth pair"; exit 1; }
trap 'ip link del "$a" 2>/dev/null' EXIT
before=$(cat "/sys/class/net/$a/address")
udevadm settle --timeout=30
after=$(cat "/sys/class/net/$a/address")
assign=$(cat "/sys/class/net/$a/addr_assign_type")
echo "drop-in $dropin; veth MAC $before -> $after, addr_assign_type $assign"
if [ "$assign" != 1 ] || [ "$before" != "$after" ]; then
  echo "udev rewrote the veth MAC (addr_assign_type $assign): MACAddressPolicy is not none"
  exit 1
fi
