#!/bin/sh
# Mask the apt timers and services so no package list refresh or upgrade ever runs, and
# turn every APT::Periodic setting off in case something re-enables the timers.
set -eu
# One call, one daemon reload.
systemctl mask apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service
cat > /etc/apt/apt.conf.d/99-bake-no-periodic <<'CONF'
// Installed by bake: this image never updates itself.
APT::Periodic::Enable "0";
APT::Periodic::Update-Package-Lists "0";
APT::Periodic::Download-Upgradeable-Packages "0";
APT::Periodic::Unattended-Upgrade "0";
APT::Periodic::AutocleanInterval "0";
CONF
