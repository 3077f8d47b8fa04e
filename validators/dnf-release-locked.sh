#!/bin/sh
# AL2023 repositories are versioned. dnf takes `releasever` from --releasever, else from
# /etc/dnf/vars/releasever, else from the installed system-release package: an image stays on
# the release it was baked from unless that file says `latest`, which lets any `dnf upgrade`
# jump to the newest release. The recipe writes the baked release into the file explicitly.
set -u
installed=$(rpm -q --qf '%{VERSION}' system-release 2>/dev/null || true)
f=/etc/dnf/vars/releasever
if [ ! -e "$f" ]; then
  [ -n "$installed" ] || { echo "no $f and no system-release package: cannot tell which release dnf follows"; exit 1; }
  echo "releasever follows the installed system-release $installed (no override in $f)"
  exit 0
fi
v=$(tr -d ' \n' < "$f")
case "$v" in
  latest) echo "$f says latest: dnf upgrade would move the node to the newest release"; exit 1 ;;
  ""|*[!0-9.]*) echo "$f says \"$v\", which is not a release version"; exit 1 ;;
esac
echo "releasever is locked to $v in $f (system-release ${installed:-unknown})"
