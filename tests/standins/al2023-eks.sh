#!/bin/sh
# A stand-in for the Amazon EKS-optimized Amazon Linux 2023 AMI, made from Debian packages for
# the rehearsal tier (tests/common/standin.rs runs this as an mmdebstrap customize hook; $1 is
# the root filesystem). It carries what bake's al2023-eks recipe, its steps and its validators
# touch on that base, each trait beside the vendor source it comes from:
#   [eks-ami]  awslabs/amazon-eks-ami at 81fec2e, templates/al2023/ (install-worker.sh is
#              provisioners/install-worker.sh, cleanup.sh is provisioners/cleanup.sh)
#   [al2023]   AWS, Amazon Linux 2023 User Guide (docs.aws.amazon.com/linux/al2023/ug/)
#   [notes]    AWS, AL2023 release notes for 2023.6.20250218 (package versions)
# Not carried, because nothing bake does depends on them and Debian cannot give them honestly:
# the kernel (Debian's cloud kernel boots the VM), SELinux (permissive on AL2023, [al2023]
# default-SELinux-modes-states), kubelet, containerd and nodeadm (the rehearsal joins no
# cluster), and amazon-ssm-agent (the emulator's SSM agent drives the VM through the QEMU guest
# agent and leaves what the real agent leaves, tests/moto/machines.py).
set -eu
root=$1
release=2023.6.20250218

# --- What the system says it is -------------------------------------------------------------
# [al2023] ident-os-release: ID=amzn, VERSION_ID="2023", the full release in PRETTY_NAME;
# /etc/system-release belongs to the system-release package.
cat > "$root/usr/lib/os-release" <<OS
NAME="Amazon Linux"
VERSION="2023"
ID="amzn"
ID_LIKE="fedora"
VERSION_ID="2023"
PLATFORM_ID="platform:al2023"
PRETTY_NAME="Amazon Linux $release"
ANSI_COLOR="0;33"
CPE_NAME="cpe:2.3:o:amazon:amazon_linux:2023"
HOME_URL="https://aws.amazon.com/linux/amazon-linux-2023/"
SUPPORT_END="2029-06-30"
OS
ln -sf ../usr/lib/os-release "$root/etc/os-release"
echo "Amazon Linux release $release (Amazon Linux)" > "$root/etc/system-release"
rm -f "$root/etc/debian_version"

# --- Networking, as the EKS build leaves it ---------------------------------------------------
# [eks-ami] runtime/rootfs/etc/systemd/network/99-default.link.d/99-no-policy.conf (since
# v20250419 a drop-in; up to v20250410 install-worker.sh edited /usr/lib's file in place).
mkdir -p "$root/etc/systemd/network/99-default.link.d" "$root/etc/systemd/networkd.conf.d"
printf '[Link]\nMACAddressPolicy=none\n' > "$root/etc/systemd/network/99-default.link.d/99-no-policy.conf"
# [eks-ami] runtime/rootfs/etc/systemd/networkd.conf.d/80-release.conf (since v20251002).
printf '[Network]\nManageForeignRoutes=no\nManageForeignRoutingPolicyRules=no\n' > "$root/etc/systemd/networkd.conf.d/80-release.conf"
# [eks-ami] install-worker.sh: `mkdir -p /opt/cni/bin` and nothing in it; the VPC CNI
# installs its plugins when it starts on the node.
mkdir -p "$root/opt/cni/bin"

# --- cloud-init -------------------------------------------------------------------------------
# [eks-ami] install-worker.sh comments out package-update-upgrade-install in
# /etc/cloud/cloud.cfg "so that nodes do not have version skew".
sed -i 's/^\( *\)- package-update-upgrade-install/\1# - package-update-upgrade-install/' "$root/etc/cloud/cloud.cfg"

# --- Packages: rpm and dnf, never dpkg or apt --------------------------------------------------
# AL2023 is rpm/dnf only ([al2023] package-management); dnf 4.14 ([notes]: dnf-4.14.0), the
# same version Debian packages. The vendor's packages bake reads are registered in rpm's
# database as local rpms whose files are the ones on disk:
#   system-release  owns /etc/system-release and os-release, VERSION the release ([al2023]
#                   deterministic-upgrades: releasever comes from it unless
#                   /etc/dnf/vars/releasever says otherwise);
#   systemd-udev    owns /usr/lib/systemd/network/99-default.link (systemd 252 on AL2023 as on
#                   bookworm), so `rpm -V` sees an in-place edit of it;
#   dnf             owns dnf-makecache.service and .timer, which dnf's own sources ship
#                   (rpm-software-management/dnf, etc/systemd/) and Debian's package leaves out.
mkdir -p "$root/usr/lib/systemd/system"
cat > "$root/usr/lib/systemd/system/dnf-makecache.service" <<'UNIT'
[Unit]
Description=dnf makecache
ConditionPathExists=!/run/ostree-booted
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
Nice=19
IOSchedulingClass=2
IOSchedulingPriority=7
ExecStart=/usr/bin/dnf makecache --timer
UNIT
cat > "$root/usr/lib/systemd/system/dnf-makecache.timer" <<'UNIT'
[Unit]
Description=dnf makecache --timer
ConditionKernelCommandLine=!rd.live.image
ConditionPathExists=!/run/ostree-booted
Wants=network-online.target

[Timer]
OnBootSec=10min
OnUnitInactiveSec=1h
RandomizedDelaySec=60m
Unit=dnf-makecache.service

[Install]
WantedBy=timers.target
UNIT
# Whether the minimal AL2023 AMI enables the timer is not stated in a vendor source read for
# this stand-in; it is enabled here, the case the recipe must handle (it masks it).
chroot "$root" systemctl enable dnf-makecache.timer
# [al2023] deterministic-upgrades: the repository URL is versioned by $releasever.
mkdir -p "$root/etc/yum.repos.d"
cat > "$root/etc/yum.repos.d/amazonlinux.repo" <<'REPO'
[amazonlinux]
name=Amazon Linux 2023 repository
mirrorlist=https://cdn.amazonlinux.com/al2023/core/mirrors/$releasever/$basearch/mirror.list
enabled=1
skip_if_unavailable=False
REPO

# rpm's database where AL2023 keeps it: rpm-software-management/rpm macros.in sets
# `%_dbpath %{_var}/lib/rpm` (rpm 4.16, as AL2023 ships it: rpmdb.sqlite there); Debian's rpm
# package moves it to ~/.rpmdb, which no AL2023 node has.
mkdir -p "$root/etc/rpm" "$root/var/lib/rpm"
printf '%%_dbpath /var/lib/rpm\n' > "$root/etc/rpm/macros.dbpath"
rm -rf "$root/root/.rpmdb"
build=/tmp/standin-rpms
rm -rf "$root$build"
mkdir -p "$root$build"
# rpm_of NAME VERSION RELEASE ARCH FILE...: a binary rpm of files already in the root.
rpm_of() {
  name=$1 version=$2 rel=$3 arch=$4
  shift 4
  {
    printf 'Name: %s\nVersion: %s\nRelease: %s\nSummary: %s (AL2023 stand-in)\nLicense: stand-in\n' "$name" "$version" "$rel" "$name"
    [ "$arch" = noarch ] && printf 'BuildArch: noarch\n'
    printf '%%description\nThe files of %s on the AL2023 stand-in.\n%%install\n' "$name"
    for f in "$@"; do printf 'mkdir -p %%{buildroot}%s && cp -a %s %%{buildroot}%s\n' "$(dirname "$f")" "$f" "$f"; done
    printf '%%files\n'
    for f in "$@"; do printf '%s\n' "$f"; done
  } > "$root$build/$name.spec"
  chroot "$root" rpmbuild --quiet -bb --define "_topdir $build/top" --define '_build_id_links none' \
    --define '__os_install_post %{nil}' "$build/$name.spec"
}
rpm_of system-release "$release" 0.amzn2023 noarch /etc/system-release /usr/lib/os-release
rpm_of systemd-udev 252.23 2.amzn2023 "$(chroot "$root" rpm --eval '%{_arch}')" /usr/lib/systemd/network/99-default.link
rpm_of dnf 4.14.0 1.amzn2023.0.6 noarch /usr/lib/systemd/system/dnf-makecache.service /usr/lib/systemd/system/dnf-makecache.timer
chroot "$root" sh -c "rpm -i --justdb --nodeps $build/top/RPMS/*/*.rpm"
rm -rf "$root$build"
# Nothing Debian's package tools would answer: no dpkg, no apt, and none of their timers
# (apt-daily, apt-daily-upgrade, dpkg-db-backup), which AL2023 does not have.
rm -f "$root"/usr/bin/dpkg* "$root"/usr/bin/apt "$root"/usr/bin/apt-*
for unit in apt-daily.timer apt-daily.service apt-daily-upgrade.timer apt-daily-upgrade.service \
            dpkg-db-backup.timer dpkg-db-backup.service; do
  rm -f "$root/etc/systemd/system/timers.target.wants/$unit" "$root/lib/systemd/system/$unit" \
        "$root/usr/lib/systemd/system/$unit"
done

# --- Logs: journald and auditd, no rsyslog ---------------------------------------------------
# [al2023] journald: no rsyslog by default; [eks-ami] cleanup.sh stops auditd, truncates
# /var/log/audit/audit.log and starts it again, so auditd logs on the node.
chroot "$root" systemctl enable auditd.service

# --- What cleanup.sh leaves ------------------------------------------------------------------
# [eks-ami] cleanup.sh: no host keys, no hostname, no cloud-init state, an empty machine-id.
rm -f "$root"/etc/ssh/ssh_host_* "$root/etc/hostname"
rm -rf "$root"/var/lib/cloud/data "$root"/var/lib/cloud/instance "$root"/var/lib/cloud/instances "$root"/var/lib/cloud/sem
: > "$root/etc/machine-id"
