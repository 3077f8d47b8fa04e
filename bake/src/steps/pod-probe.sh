# bake's pod-network probe: the command of a pod bake schedules on the canary. It runs in the
# probe image's shell (busybox's ash, or any POSIX sh with awk, cat, nslookup and sleep) and only
# reads: the pod end of its veth (eth0), its default gateway and the neighbour entry the CNI
# pinned for it, then asks the cluster DNS service (the pod's resolv.conf, as the kubelet writes
# it for dnsPolicy ClusterFirst) for the API server's service, every 2 seconds, at most 150 times.
echo "bake-probe iflink $(cat /sys/class/net/eth0/iflink 2>/dev/null || echo none)"
# /proc/net/route holds addresses as little-endian hex; the default route's gateway, dotted.
gw=$(awk '$2 == "00000000" && $1 != "Iface" {
  h = "0123456789ABCDEF"; g = toupper($3); ip = ""
  for (i = 7; i >= 1; i -= 2) {
    b = (index(h, substr(g, i, 1)) - 1) * 16 + index(h, substr(g, i + 1, 1)) - 1
    ip = ip (i < 7 ? "." : "") b
  }
  print ip; exit }' /proc/net/route)
echo "bake-probe gateway ${gw:-none} $(awk -v ip="$gw" '$1 == ip { print $4, $3; exit }' /proc/net/arp)"
i=0
while [ "$i" -lt 150 ]; do
  i=$((i + 1))
  if nslookup kubernetes.default.svc.cluster.local > /dev/null 2>&1; then
    echo "bake-probe dns $i ok"
  else
    echo "bake-probe dns $i fail"
  fi
  sleep 2
done
