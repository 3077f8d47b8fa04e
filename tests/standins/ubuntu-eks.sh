#!/bin/sh
# A stand-in for Canonical's Ubuntu 24.04 EKS image, made from Debian trixie packages for the
# rehearsal tier (tests/common/standin.rs runs this as an mmdebstrap customize hook, $1 being
# the root filesystem, then boots the result once to install its snaps, as Canonical's image
# build preseeds them). It carries what bake's ubuntu2404-eks recipe, its steps and its
# validators touch on that base, each trait beside the source it comes from:
#   [server]      Canonical, Ubuntu Server documentation, "Automatic updates"
#                 (documentation.ubuntu.com/server/how-to/software/automatic-updates/)
#   [cloudimg]    Canonical's cloud images (cloud-images.ubuntu.com, their /etc/fstab and
#                 kernel command line): the root filesystem is found by LABEL=cloudimg-rootfs
#   [eks-snaps]   Canonical, "Snaps in the EKS images" (documentation.ubuntu.com/aws/,
#                 aws-explanation/eks-snaps) and "kubelet-eks snap" (aws-reference/
#                 eks-kubelet-snap): kubelet-eks, kubectl-eks and ecr-credential-provider, their
#                 automatic background updates disabled on the image
#   [snapd]       canonical/snapd 2.68 (the version Debian trixie packages; Ubuntu 24.04's
#                 snapd is newer, with the same `refresh --hold`, since 2.58)
# Not carried, because nothing bake does depends on them and Debian cannot give them honestly:
# the kernel (Debian's cloud kernel boots the VM), kubelet itself (the kubelet-eks snap here
# prints its version and nothing more: the rehearsal joins no cluster), /etc/eks/bootstrap.sh
# (it runs only when a node joins a cluster; Canonical's copy runs `snap refresh kubelet-eks
# ... || true` at every join, which a refresh hold does not stop and the recipe's
# store.access=offline does) and the amazon-ssm-agent snap (the emulator's SSM
# agent drives the VM through the QEMU guest agent and leaves what the real agent leaves,
# tests/moto/machines.py).
set -eu
root=$1

# --- What the system says it is -------------------------------------------------------------
# os-release of Ubuntu 24.04 (base-files), as every Ubuntu image carries it.
cat > "$root/usr/lib/os-release" <<'OS'
PRETTY_NAME="Ubuntu 24.04.1 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
VERSION="24.04.1 LTS (Noble Numbat)"
VERSION_CODENAME=noble
ID=ubuntu
ID_LIKE=debian
HOME_URL="https://www.ubuntu.com/"
SUPPORT_URL="https://help.ubuntu.com/"
BUG_REPORT_URL="https://bugs.launchpad.net/ubuntu/"
UBUNTU_CODENAME=noble
LOGO=ubuntu-logo
OS
ln -sf ../usr/lib/os-release "$root/etc/os-release"
printf 'DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=24.04\nDISTRIB_CODENAME=noble\nDISTRIB_DESCRIPTION="Ubuntu 24.04.1 LTS"\n' > "$root/etc/lsb-release"
rm -f "$root/etc/debian_version"

# --- The root filesystem, found by its label -------------------------------------------------
# [cloudimg] /etc/fstab: `LABEL=cloudimg-rootfs / ext4 discard,commit=30,errors=remount-ro 0 1`.
printf 'LABEL=cloudimg-rootfs\t/\text4\tdiscard,commit=30,errors=remount-ro\t0 1\n' > "$root/etc/fstab"

# --- Packages: dpkg and apt, upgraded unattended ----------------------------------------------
# [server] unattended-upgrades is installed and enabled by default: APT::Periodic runs the
# list update and the upgrade every day (its debconf default on Ubuntu writes 20auto-upgrades),
# from apt's apt-daily and apt-daily-upgrade timers (enabled, as apt ships them).
printf 'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n' > "$root/etc/apt/apt.conf.d/20auto-upgrades"
chroot "$root" systemctl enable apt-daily.timer apt-daily-upgrade.timer unattended-upgrades.service

# --- Logs: rsyslog and journald ---------------------------------------------------------------
# Ubuntu's standard seed (the ubuntu-standard metapackage, on every server image) brings
# rsyslog and its /var/log/syslog beside journald.
chroot "$root" systemctl enable rsyslog.service

# --- Snaps ------------------------------------------------------------------------------------
# [eks-snaps] kubelet, kubectl and the ECR credential provider are the classic snaps
# kubelet-eks, kubectl-eks and ecr-credential-provider (on the core20 base). They are packed here from local files and installed when the stand-in boots
# once (standin.rs), with snapd's own `snap install --dangerous`, so snapd's state, `snap
# list` and its revisions (x1) are snapd's; the snaps are unknown to the store, so nothing can
# refresh them from it. On a classic system snapd will not install an application snap before
# the `snapd` snap is there ([snapd] overlord/snapstate installPrereqs); Ubuntu images carry it
# from the store, the stand-in a placeholder of that name without binaries, so the deb's snapd
# keeps running (snapdtool: no re-exec into a snap without them).
snaps=$root/var/lib/bake-standin/snaps
rm -rf "$snaps"
mkdir -p "$snaps"
# pack NAME: squashes $snaps/NAME (a snap's tree) into $snaps/NAME.snap, as `snap pack` does
# ([snapd] snap/squashfs/squashfs.go Build).
pack() {
  chmod 0755 "$snaps/$1" "$snaps/$1/meta"
  chroot "$root" mksquashfs "/var/lib/bake-standin/snaps/$1" "/var/lib/bake-standin/snaps/$1.snap" \
    -noappend -comp xz -no-fragments -no-progress -all-root -no-xattrs -quiet
  rm -rf "$snaps/$1"
}
mkdir -p "$snaps/snapd/meta" "$snaps/snapd/etc/apparmor.d"
printf 'name: snapd\nversion: "2.68.3"\ntype: snapd\nsummary: snapd placeholder\ndescription: the stand-in runs the deb snapd\n' > "$snaps/snapd/meta/snap.yaml"
# [snapd] interfaces/apparmor/backend.go: with AppArmor on, the snapd snap must carry the
# snap-confine profile.
cp "$root/etc/apparmor.d/usr.lib.snapd.snap-confine.real" "$snaps/snapd/etc/apparmor.d/"
pack snapd
mkdir -p "$snaps/core20/meta"
for d in bin dev etc home lib lib64 media mnt proc root run snap sys tmp usr var; do mkdir -p "$snaps/core20/$d"; done
printf 'name: core20\nversion: "20240911"\ntype: base\nsummary: core20 placeholder\ndescription: the base of the EKS snaps\n' > "$snaps/core20/meta/snap.yaml"
pack core20
# tool NAME VERSION COMMAND: a classic snap NAME whose app NAME prints COMMAND's version line.
tool() {
  mkdir -p "$snaps/$1/meta" "$snaps/$1/bin"
  printf 'name: %s\nversion: "%s"\nbase: core20\nconfinement: classic\nsummary: %s (stand-in)\ndescription: prints its version\napps:\n  %s:\n    command: bin/%s\n' \
    "$1" "$2" "$1" "$3" "$3" > "$snaps/$1/meta/snap.yaml"
  printf '#!/bin/sh\necho "Kubernetes v%s"\n' "$2" > "$snaps/$1/bin/$3"
  chmod 0755 "$snaps/$1/bin/$3"
  pack "$1"
}
tool kubelet-eks 1.31.2 kubelet
tool kubectl-eks 1.31.2 kubectl
tool ecr-credential-provider 1.31.0 ecr-credential-provider

# --- What Canonical's image build leaves ------------------------------------------------------
# [cloudimg] no host keys (cloud-init makes them at first boot), an empty machine-id, no
# cloud-init state.
rm -f "$root"/etc/ssh/ssh_host_*
rm -rf "$root"/var/lib/cloud/data "$root"/var/lib/cloud/instance "$root"/var/lib/cloud/instances "$root"/var/lib/cloud/sem
: > "$root/etc/machine-id"

# --- The harness's one boot (not a trait) -----------------------------------------------------
# snapd installs snaps only while it runs: standin.rs boots the stand-in once with this unit,
# which installs the snaps packed above, removes itself and what the boot left, and powers off.
cat > "$root/usr/local/sbin/bake-standin-preseed" <<'SH'
#!/bin/sh
set -eux
exec >/dev/console 2>&1
s=/var/lib/bake-standin/snaps
snap wait system seed.loaded
snap install --dangerous $s/snapd.snap
snap install --dangerous $s/core20.snap
snap install --dangerous --classic $s/kubelet-eks.snap
snap install --dangerous --classic $s/kubectl-eks.snap
snap install --dangerous --classic $s/ecr-credential-provider.snap
# [eks-snaps] the image's snaps are not refreshed in the background.
snap refresh --hold
snap list
rm -rf /var/lib/bake-standin
systemctl disable bake-standin-preseed.service
rm -f /etc/systemd/system/bake-standin-preseed.service /usr/local/sbin/bake-standin-preseed
rm -f /etc/ssh/ssh_host_* /var/lib/dbus/machine-id
rm -rf /var/lib/cloud/data /var/lib/cloud/instance /var/lib/cloud/instances /var/lib/cloud/sem /var/log/journal/*
find /var/log -type f -exec truncate -s 0 {} +
: > /etc/machine-id
echo BAKE-STANDIN-PRESEEDED
sync
systemctl poweroff
SH
chmod 0755 "$root/usr/local/sbin/bake-standin-preseed"
cat > "$root/etc/systemd/system/bake-standin-preseed.service" <<'UNIT'
[Unit]
Description=stand-in: install the packed snaps once, then power off
After=snapd.service snapd.seeded.service snapd.apparmor.service
Wants=snapd.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/bake-standin-preseed

[Install]
WantedBy=multi-user.target
UNIT
chroot "$root" systemctl enable bake-standin-preseed.service
