#!/bin/sh
# The seed incident, end to end, with a pod wired as the VPC CNI wires one
# (aws/amazon-vpc-cni-k8s cmd/routed-eni-cni-plugin/driver/driver.go, setupVeth and
# SetupPodNetwork): a veth pair whose pod end is eth0 in the pod's network namespace; the pod
# has a /32 address, a link-scoped route to the gateway 169.254.1.1, a default route through
# it and a permanent ARP entry for the gateway with the host veth's MAC; the host routes the
# pod's address to the host veth. Until v1.20.1 the VPC CNI let the kernel pick the host veth's
# MAC at random (its #3354 then set it explicitly "bypassing udev interference"), as the ptp
# and bridge plugins still do: where MACAddressPolicy is `persistent`, udev rewrites that MAC
# after the pod pinned it, the pod's frames go to a MAC nobody has, and pod networking is gone.
# The check wires the pod with iproute2 alone, so it runs on every base: EKS bases ship no CNI
# plugin binaries (AL2023 only creates /opt/cni/bin, awslabs/amazon-eks-ami
# templates/al2023/provisioners/install-worker.sh; the VPC CNI installs its own at join).
# After udev settles the host veth must keep the MAC the pod pinned, and the pod must reach
# the host over TCP.
set -u
command -v ip >/dev/null 2>&1 || { echo "iproute2 (ip) is needed to wire the pod"; exit 77; }
command -v bash >/dev/null 2>&1 || { echo "bash is needed for the TCP check"; exit 77; }
command -v systemd-socket-activate >/dev/null 2>&1 || { echo "systemd-socket-activate is needed for the TCP check"; exit 77; }
ns=bakepod$$
# The VPC CNI names host veths eni<hash>; interface names are at most 15 characters.
veth=enibake$$
gw=169.254.1.1
pod=198.18.250.2
host=198.18.250.1
port=17377
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null
  ip link del "$veth" 2>/dev/null
  ip netns del "$ns" 2>/dev/null
}
trap cleanup EXIT
ip netns add "$ns" || { echo "cannot create a pod network namespace"; exit 1; }
# Both ends made at once, the pod's straight in its namespace and the host's in the host's, as
# the driver does (PeerNamespace); no MAC is given, so the kernel picks one at random.
ip link add "$veth" type veth peer name eth0 netns "$ns" \
  || { echo "cannot create the pod's veth pair"; exit 1; }
pinned=$(cat "/sys/class/net/$veth/address" 2>/dev/null)
wire() {
  ip link set "$veth" up &&
  ip -n "$ns" link set lo up &&
  ip -n "$ns" link set eth0 up &&
  ip -n "$ns" addr add "$pod/32" dev eth0 &&
  ip -n "$ns" route replace "$gw" dev eth0 scope link &&
  ip -n "$ns" route replace default via "$gw" dev eth0 &&
  ip -n "$ns" neigh replace "$gw" lladdr "$pinned" dev eth0 nud permanent &&
  # The host side: the pod's address routed to its veth (the driver's host route), and an
  # address of the host's own for the pod to reach (a node's IP, in the driver's world).
  ip route replace "$pod/32" dev "$veth" scope link &&
  ip addr add "$host/32" dev "$veth"
}
wire || { echo "cannot wire the pod as the VPC CNI does (addresses, routes, the gateway's ARP entry)"; exit 1; }
udevadm settle --timeout=30
now=$(cat "/sys/class/net/$veth/address" 2>/dev/null)
assign=$(cat "/sys/class/net/$veth/addr_assign_type" 2>/dev/null)
echo "pod $pod on $veth (gateway $gw): MAC $pinned when wired, $now after udev settled, addr_assign_type $assign"
systemd-socket-activate -l "$host:$port" -a --inetd sh -c 'echo bake-pod-network-ok' >/dev/null 2>&1 &
server=$!
moved=""
# addr_assign_type 1 is the kernel's random MAC; udev setting one makes it 3.
if [ "$now" != "$pinned" ] || [ "$assign" != 1 ]; then moved=1; fi
# A pod on a healthy node reaches its host within seconds; with the MAC moved, it never will.
tries=10
[ -n "$moved" ] && tries=1
answer=""
i=0
while [ "$i" -lt "$tries" ]; do
  answer=$(ip netns exec "$ns" timeout 5 bash -c "exec 3<>/dev/tcp/$host/$port && head -n1 <&3" 2>/dev/null)
  [ "$answer" = bake-pod-network-ok ] && break
  i=$((i + 1)); sleep 1
done
if [ -n "$moved" ]; then
  tcp="and its TCP connection to the host failed"
  [ "$answer" = bake-pod-network-ok ] && tcp="although its TCP connection still worked this once"
  echo "udev rewrote the host veth's MAC ($pinned -> $now, addr_assign_type $assign) after the CNI wired the pod, $tcp: pods lose their network when MACAddressPolicy is not none for veths"
  exit 1
fi
if [ "$answer" != bake-pod-network-ok ]; then
  echo "the pod cannot open a TCP connection to the host at $host:$port although the MAC held"
  exit 1
fi
echo "the pod reached the host over TCP; the veth MAC held"
