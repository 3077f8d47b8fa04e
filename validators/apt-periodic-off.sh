#!/bin/sh
set -u
dump=$(apt-config dump 2>/dev/null | grep '^APT::Periodic::' || true)
nonzero=$(printf '%s\n' "$dump" | grep -v '^$' | grep -v ' "0";$' || true)
if [ -n "$nonzero" ]; then echo "APT::Periodic settings not zero: $(echo $nonzero)"; exit 1; fi
for k in Update-Package-Lists Unattended-Upgrade; do
  if ! printf '%s\n' "$dump" | grep -q "^APT::Periodic::$k \"0\";$"; then
    echo "APT::Periodic::$k is not set to \"0\""; exit 1
  fi
done
echo "APT::Periodic is off"
