#!/bin/sh
# AL2023 repositories are versioned: write the release this image is baked from into dnf's
# releasever override, so no `dnf upgrade` on a node moves it to a newer release (`latest`).
set -eu
release=$(rpm -q --qf '%{VERSION}' system-release)
case "$release" in
  ""|*[!0-9.]*) echo "cannot read the AL2023 release from system-release: \"$release\""; exit 1 ;;
esac
mkdir -p /etc/dnf/vars
printf '%s\n' "$release" > /etc/dnf/vars/releasever
echo "releasever locked to $release"
