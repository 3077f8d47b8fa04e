#!/bin/sh
# No repository metadata refresh on a node: mask dnf's makecache timer and service.
set -eu
for unit in dnf-makecache.timer dnf-makecache.service; do
  systemctl mask "$unit"
done
