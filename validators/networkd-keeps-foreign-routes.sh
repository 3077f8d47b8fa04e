#!/bin/sh
# The second systemd drift vector: a package update restarts systemd-networkd, which removes
# every ip rule and route it did not make itself, unless told to leave them (networkd.conf(5):
# ManageForeignRoutes=, ManageForeignRoutingPolicyRules=). The VPC CNI's per-pod rules and
# per-ENI tables are such rules and routes (aws/amazon-vpc-cni-k8s#3309, kubernetes/kops#17433).
# Proved by behaviour: add a rule and a route in a private table as the CNI does, restart
# networkd, both must be there. The route is on a dummy link networkd manages (networkd drops
# foreign routes only on links it manages, and foreign rules whenever it configures one). The
# link has no address: networkd would count one the check added as foreign and drop it, and
# the kernel flushes a link's routes with its last address, whatever networkd.conf says. The
# rule and route use documentation addresses only, so nothing on a node can use them.
set -u
if ! systemctl is-active --quiet systemd-networkd.service; then
  echo "systemd-networkd is not running on this canary: the base manages its network another way, so no networkd restart can remove the CNI's rules"
  exit 78
fi

# What the configuration says (the last assignment wins, drop-ins after the main file).
setting() {
  systemd-analyze cat-config systemd/networkd.conf 2>/dev/null |
    sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\([^[:space:]]*\).*/\1/p" | tail -n 1
}
routes=$(setting ManageForeignRoutes); rules=$(setting ManageForeignRoutingPolicyRules)
echo "networkd.conf: ManageForeignRoutes=${routes:-yes (default)} ManageForeignRoutingPolicyRules=${rules:-yes (default)}"

# On a live node (`bake audit`, BAKE_AUDIT=1) a restart is the very thing this check guards
# against: judge the configuration only (systemd booleans: no, false, off, 0).
if [ "${BAKE_AUDIT:-}" = 1 ]; then
  off() { case "$1" in no|false|off|0) return 0 ;; *) return 1 ;; esac; }
  if off "$routes" && off "$rules"; then
    echo "networkd.conf leaves foreign routes and rules alone (judged from the configuration, as on a live node nothing is restarted)"
    exit 0
  fi
  echo "networkd.conf lets systemd-networkd remove foreign routes or rules (ManageForeignRoutes=${routes:-yes} ManageForeignRoutingPolicyRules=${rules:-yes}): its next restart cuts the pods off"
  exit 1
fi

link=bakenf$$
table=$((30000 + $$ % 10000))
prio=32100
net=/run/systemd/network/10-$link.network
cleanup() {
  rm -f "$net"
  networkctl reload >/dev/null 2>&1
  ip link del "$link" 2>/dev/null
  ip rule del priority $prio from 198.51.100.7 2>/dev/null
}
trap cleanup EXIT

# Configured = networkd has applied the .network to the link; by then it has also dropped what
# it means to drop (its first act when it configures a link).
configured() {
  i=0
  while [ $i -lt 60 ]; do
    idx=$(cat "/sys/class/net/$link/ifindex" 2>/dev/null) &&
      grep -qx 'ADMIN_STATE=configured' "/run/systemd/netif/links/$idx" 2>/dev/null && return 0
    sleep 0.5; i=$((i + 1))
  done
  echo "networkd never configured the test link $link within 30s"
  return 1
}

mkdir -p /run/systemd/network
printf '[Match]\nName=%s\n\n[Link]\nRequiredForOnline=no\n\n[Network]\nLinkLocalAddressing=no\nIPv6AcceptRA=no\nConfigureWithoutCarrier=yes\n' "$link" > "$net"
networkctl reload || { echo "networkctl reload failed"; exit 1; }
ip link add "$link" type dummy || { echo "cannot create a dummy link"; exit 1; }
configured || exit 1
ip route add 198.51.100.0/24 dev "$link" table $table || { echo "cannot add a route to table $table"; exit 1; }
ip rule add from 198.51.100.7 lookup $table priority $prio || { echo "cannot add an ip rule"; exit 1; }
echo "before the restart: $(ip route show table $table | head -n 1); $(ip rule show priority $prio)"

systemctl restart systemd-networkd.service || { echo "systemd-networkd did not restart"; exit 1; }
configured || exit 1

lost=""
ip route show table $table | grep -q '^198\.51\.100\.0/24 ' || lost="the route in table $table"
if ! ip rule show | grep -q "^$prio:.*from 198\.51\.100\.7 lookup $table"; then
  lost="${lost:+$lost and }the ip rule (priority $prio)"
fi
if [ -n "$lost" ]; then
  echo "## the link after the restart"; ip -d link show "$link"; ip addr show "$link"
  echo "## networkd's log"; journalctl -u systemd-networkd.service -n 30 --no-pager 2>/dev/null
  echo "systemd-networkd removed $lost when it restarted (ManageForeignRoutes=${routes:-yes} ManageForeignRoutingPolicyRules=${rules:-yes}): a package update that restarts it cuts the pods off"
  exit 1
fi
echo "an ip rule and a route in table $table, added as the CNI adds them, survived a restart of systemd-networkd"
