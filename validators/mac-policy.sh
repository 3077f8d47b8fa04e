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
# Is the packaged file as its package shipped it? A base may come edited: EKS AL2023 AMIs up
# to v20250410 ran `sed -i s/^MACAddressPolicy=.*/MACAddressPolicy=none/` on it
# (awslabs/amazon-eks-ami templates/al2023/provisioners/install-worker.sh; an /etc drop-in
# since v20250419, PR #2220). Such an edit is no fault of the image as long as the /etc
# drop-in governs the link file the veth matches: drop-ins are read after the file they
# extend, so an upgrade that restores the packaged file changes nothing.
edited=""
if command -v dpkg >/dev/null 2>&1; then
  dpkg --verify udev systemd 2>/dev/null | grep -q '99-default.link' && edited=1
elif command -v rpm >/dev/null 2>&1; then
  rpm -Vf "$link" 2>/dev/null | grep -q '99-default.link' && edited=1
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
# Which .link file udev applied (net_setup_link exports it): the drop-in governs only
# 99-default.link; another file that sorts first would decide the policy on its own.
props=$(udevadm info --query=property "/sys/class/net/$a" 2>/dev/null)
matched=$(printf '%s\n' "$props" | sed -n 's/^ID_NET_LINK_FILE=//p')
dropins=$(printf '%s\n' "$props" | sed -n 's/^ID_NET_LINK_FILE_DROPINS=//p')
case "$matched" in
  */99-default.link) ;;
  "") echo "udev applied no .link file to the veth: the drop-in governs nothing"; exit 1 ;;
  *) echo "the veth matched $matched, which sorts before 99-default.link: the /etc drop-in does not govern it"; exit 1 ;;
esac
# systemd 251+ also lists the drop-ins it read (older ones read every 99-default.link.d).
if [ -n "$dropins" ]; then
  case ":$dropins:" in
    *":$dropin:"*) ;;
    *) echo "udev read the drop-ins $dropins for $matched, not $dropin"; exit 1 ;;
  esac
fi
if [ -n "$edited" ]; then
  echo "note: $link differs from what its package shipped (edited in place, by the base's vendor or a step); the /etc drop-in $dropin governs it and the veth kept its MAC, so a package upgrade that restores the file changes nothing"
fi
