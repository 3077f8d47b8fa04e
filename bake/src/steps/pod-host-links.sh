#!/bin/sh
# bake: the canary's links once udev has settled, for the pod-network check bake judges from
# the cluster: one line per link in the node's own network namespace, "index name mac".
set -u
udevadm settle --timeout=60 || echo "bake-links udev did not settle within 60s"
for d in /sys/class/net/*; do
  [ -e "$d/ifindex" ] || continue
  echo "bake-link $(cat "$d/ifindex") ${d##*/} $(cat "$d/address" 2>/dev/null)"
done
