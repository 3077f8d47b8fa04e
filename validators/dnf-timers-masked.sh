#!/bin/sh
# dnf's metadata refresh (dnf-makecache.timer and its service) must be masked: no repository
# metadata refresh runs on a node.
set -u
bad=""
for unit in dnf-makecache.timer dnf-makecache.service; do
  state=$(systemctl is-enabled "$unit" 2>/dev/null || true)
  [ "$state" = masked ] || bad="$bad $unit=${state:-unknown}"
done
if [ -n "$bad" ]; then echo "not masked:$bad"; exit 1; fi
echo "dnf-makecache timer and service are masked"
