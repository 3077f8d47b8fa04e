#!/bin/sh
# On Ubuntu EKS images kubelet (and more) are snaps, and snapd refreshes snaps on its own
# schedule: the same drift as unattended-upgrades. They must be held for good
# (`snap refresh --hold`, which snapd records as refresh.hold = forever), and snapd cut off the
# store (store.access = offline), since a hold does not stop a refresh that names a snap, as
# Canonical's bootstrap.sh runs for kubelet-eks at every node's join.
set -u
if ! command -v snap >/dev/null 2>&1; then
  echo "snapd is not installed: no snap can refresh"
  exit 0
fi
hold=$(snap get system refresh.hold 2>/dev/null || true)
if [ "$hold" != forever ]; then
  echo "snap refreshes are not held for good (refresh.hold = ${hold:-unset}); snapd would update kubelet under a running node"
  exit 1
fi
access=$(snap get system store.access 2>/dev/null || true)
if [ "$access" != offline ]; then
  echo "snapd can reach the store (store.access = ${access:-unset}): a refresh hold does not stop \`snap refresh kubelet-eks\`, which the EKS bootstrap runs at every join"
  exit 1
fi
echo "snap refreshes are held for good and the store is cut off: $(snap list 2>/dev/null | awk 'NR>1 {printf "%s@%s ", $1, $3}')"
