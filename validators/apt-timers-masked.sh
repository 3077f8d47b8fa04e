#!/bin/sh
set -u
bad=""
for unit in apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service; do
  state=$(systemctl is-enabled "$unit" 2>/dev/null || true)
  [ "$state" = masked ] || bad="$bad $unit=${state:-unknown}"
done
if [ -n "$bad" ]; then echo "not masked:$bad"; exit 1; fi
echo "apt timers and services are masked"
