#!/bin/sh
set -u
if [ -e /var/tmp/bake ]; then echo "bake's staging dir /var/tmp/bake is left in the image"; exit 1; fi
lists=$(find /var/lib/apt/lists -maxdepth 1 -type f ! -name lock 2>/dev/null | head -n 3)
if [ -n "$lists" ]; then echo "apt lists left: $(echo $lists)"; exit 1; fi
btime=$(awk '/^btime/ {print $2}' /proc/stat)
old=$(find /var/log -type f -size +0c ! -newermt "@$btime" 2>/dev/null | head -n 5)
if [ -n "$old" ]; then echo "logs from the bake left: $(echo $old)"; exit 1; fi
echo "no leftovers"
