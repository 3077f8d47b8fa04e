//! Stand-ins for the vendors' EKS bases, for the rehearsal tier: Debian-built VMs that carry,
//! each beside its vendor source (tests/standins/*.sh), what bake's recipe for that base
//! touches. Built with bake's own base builder (mmdebstrap, cached by the digest of the
//! packages and the script, shared by every checkout and run on the machine).

use bake::provider::local::base::{self, Base, BaseSpec};
use bake::Arch;
use std::time::Duration;

/// The root filesystem's UUID in the AL2023 stand-in: the vendor's image boots `root=UUID=`
/// (its grub entry), so a volume made from the same snapshot carries the same UUID.
pub const AL2023_ROOT_UUID: &str = "0e9c2a8e-5a3b-4e0f-9d1c-7b2f3a4c5d60";

/// The Debian packages the AL2023 stand-in is made of: init, udev and networkd (AL2023 runs
/// systemd-networkd), cloud-init and sshd (both on AL2023), auditd (it logs there), rpm and
/// dnf (4.14, as AL2023); the kernel and the QEMU guest agent are the emulator's, not traits
/// (see tests/standins/al2023-eks.sh). No apt tooling beyond what mmdebstrap needs to build,
/// which the script removes; no unattended-upgrades; no CNI plugins.
const AL2023_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "iproute2",
    "ca-certificates",
    "cloud-init",
    "e2fsprogs",
    "openssh-server",
    "auditd",
    "rpm",
    "dnf",
    "qemu-guest-agent",
];

/// The AL2023 EKS stand-in for `arch`, built once per machine.
pub async fn al2023(arch: Arch) -> Base {
    let mut packages: Vec<String> = AL2023_PACKAGES.iter().map(|s| s.to_string()).collect();
    packages.push(format!("linux-image-cloud-{}", arch.debian()));
    packages.sort();
    let spec = BaseSpec {
        suite: "bookworm".into(),
        arch,
        packages,
        mirror: None,
        // The vendor's root volume is 20 GiB (template.json); the stand-in's disk grows to
        // what the launch asks, as an EBS root does.
        size_gib: bake::input::recipe::DEFAULT_SIZE_GIB,
        offline_apt: false,
        customize: vec![include_str!("../standins/al2023-eks.sh").to_string()],
        fs_uuid: Some(AL2023_ROOT_UUID.into()),
    };
    built(&spec, "al2023 stand-in").await
}

/// The base of `spec` from bake's cache, built first if it is not there (its progress on
/// stderr, after `what`).
pub async fn built(spec: &BaseSpec, what: &str) -> Base {
    base::ensure(
        spec,
        &bake::provider::local::cache_dir(),
        Duration::from_secs(3600),
        &|said: &str| eprintln!("{what}: {said}"),
    )
    .await
    .unwrap()
}
