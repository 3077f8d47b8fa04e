#!/bin/sh
# The seed incident, end to end, as a CNI does it: the standard ptp plugin wires a pod network
# namespace to the host with a veth pair; the pod pins the host veth's MAC in a static neighbour
# entry (as the VPC CNI does for its gateway); udev settles; then the host veth must still have
# the MAC the pod pinned, and a TCP connection from the pod to the host must work. Where
# MACAddressPolicy is `persistent`, udev rewrites the host veth's MAC after the CNI read it,
# the pod's frames go to a MAC nobody has, and pod networking is gone.
set -u
plugins=""
for d in /opt/cni/bin /usr/lib/cni /usr/libexec/cni; do
  if [ -x "$d/ptp" ] && [ -x "$d/host-local" ]; then plugins=$d; break; fi
done
[ -n "$plugins" ] || { echo "no CNI ptp and host-local plugins in /opt/cni/bin or /usr/lib/cni"; exit 77; }
command -v bash >/dev/null 2>&1 || { echo "bash is needed for the TCP check"; exit 77; }
command -v systemd-socket-activate >/dev/null 2>&1 || { echo "systemd-socket-activate is needed for the TCP check"; exit 77; }
ns=bakepod$$
id=bake-canary-$$
work=/run/bake-cni-$$
port=17377
server=""
conf="{\"cniVersion\":\"0.4.0\",\"name\":\"bake-canary\",\"type\":\"ptp\",\"ipMasq\":false,\"mtu\":1500,\"ipam\":{\"type\":\"host-local\",\"ranges\":[[{\"subnet\":\"198.18.250.0/29\"}]],\"dataDir\":\"$work/ipam\"}}"
cni() {
  printf '%s' "$conf" | CNI_COMMAND=$1 CNI_CONTAINERID=$id CNI_NETNS=/run/netns/$ns CNI_IFNAME=eth0 CNI_PATH=$plugins "$plugins/ptp"
}
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null
  cni DEL >/dev/null 2>&1
  ip netns del "$ns" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work"
ip netns add "$ns" || { echo "cannot create a pod network namespace"; exit 1; }
result=$(cni ADD 2>&1) || { echo "the CNI ptp plugin could not wire the pod: $(echo $result)"; exit 1; }
flat=$(printf '%s' "$result" | tr -d ' \n\t')
# The host side is the first interface of the result (no sandbox), as the plugin saw it.
veth=$(printf '%s' "$flat" | sed -n 's/.*"interfaces":\[{"name":"\([^"]*\)","mac":"\([^"]*\)".*/\1/p')
pinned=$(printf '%s' "$flat" | sed -n 's/.*"interfaces":\[{"name":"\([^"]*\)","mac":"\([^"]*\)".*/\2/p')
gw=$(printf '%s' "$flat" | sed -n 's/.*"gateway":"\([0-9.]*\)".*/\1/p')
pod=$(printf '%s' "$flat" | sed -n 's/.*"address":"\([0-9.]*\)\/.*/\1/p')
if [ -z "$veth" ] || [ -z "$pinned" ] || [ -z "$gw" ] || [ -z "$pod" ]; then
  echo "cannot read the host veth, its MAC and the addresses from the plugin's result: $flat"; exit 1
fi
ip -n "$ns" neigh replace "$gw" lladdr "$pinned" dev eth0 nud permanent \
  || { echo "cannot pin the host veth's MAC in the pod"; exit 1; }
udevadm settle --timeout=30
now=$(cat "/sys/class/net/$veth/address" 2>/dev/null)
assign=$(cat "/sys/class/net/$veth/addr_assign_type" 2>/dev/null)
echo "pod $pod on $veth (gateway $gw): MAC $pinned when wired, $now after udev settled, addr_assign_type $assign"
systemd-socket-activate -l "$gw:$port" -a --inetd sh -c 'echo bake-pod-network-ok' >/dev/null 2>&1 &
server=$!
moved=""
if [ "$now" != "$pinned" ] || [ "$assign" != 1 ]; then moved=1; fi
# A pod on a healthy node reaches its host within seconds; with the MAC moved, it never will.
tries=10
[ -n "$moved" ] && tries=1
answer=""
i=0
while [ "$i" -lt "$tries" ]; do
  answer=$(ip netns exec "$ns" timeout 5 bash -c "exec 3<>/dev/tcp/$gw/$port && head -n1 <&3" 2>/dev/null)
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
  echo "the pod cannot open a TCP connection to the host at $gw:$port although the MAC held"
  exit 1
fi
echo "the pod reached the host over TCP; the veth MAC held"
