#!/bin/sh
# No repository metadata refresh on a node: mask dnf's makecache timer and service.
set -eu
systemctl mask dnf-makecache.timer dnf-makecache.service
