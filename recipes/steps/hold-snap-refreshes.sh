#!/bin/sh
# On Ubuntu EKS images kubelet and kubectl are snaps; snapd refreshes them on its own schedule,
# the same drift as unattended-upgrades. Hold every automatic refresh for good (snapd >= 2.58),
# and cut snapd off the store (store.access=offline, snapd >= 2.61): a hold does not stop a
# refresh that names the snap, and Canonical's /etc/eks/bootstrap.sh runs
# `snap refresh kubelet-eks` at every node's join (tolerating its failure), so two nodes of one
# image would otherwise run different kubelets.
set -eu
if ! command -v snap >/dev/null 2>&1; then
  echo "snapd is not installed: nothing to hold"
  exit 0
fi
snap refresh --hold >/dev/null
snap set system store.access=offline
hold=$(snap get system refresh.hold)
[ "$hold" = forever ] || { echo "snap refresh --hold left refresh.hold = $hold"; exit 1; }
access=$(snap get system store.access)
[ "$access" = offline ] || { echo "snap set system store.access=offline left store.access = $access"; exit 1; }
echo "snap refreshes held for good and the store cut off: the snaps stay at their baked revisions"
