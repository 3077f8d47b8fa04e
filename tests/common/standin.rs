//! Stand-ins for the vendors' EKS bases, for the rehearsal tier: Debian-built VMs that carry,
//! each beside its vendor source (tests/standins/*.sh), what bake's recipe for that base
//! touches. Built with bake's own base builder (mmdebstrap, cached by the digest of the
//! packages and the script, shared by every checkout and run on the machine).

use super::moto::{self, Moto, UBUNTU_X86};
use super::Project;
use bake::provider::local::base::{self, Base, BaseSpec};
use bake::Arch;
use serde_json::json;
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
        fs_label: None,
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

/// The root filesystem's label in the Ubuntu EKS stand-in: Canonical's cloud images boot and
/// mount their root by `LABEL=cloudimg-rootfs`, so a volume made from the same snapshot carries
/// the same label.
pub const UBUNTU_ROOT_LABEL: &str = "cloudimg-rootfs";

/// The Debian (trixie: its snapd, 2.68, holds refreshes for good; bookworm's 2.57 cannot)
/// packages the Ubuntu EKS stand-in is made of: init, udev and networkd (netplan renders to
/// it on Ubuntu), cloud-init and sshd, rsyslog (Ubuntu logs to /var/log/syslog), apt with
/// unattended-upgrades (enabled by default on Ubuntu), snapd (AppArmor with it, as on Ubuntu)
/// and squashfs-tools to pack the snaps; the kernel and the QEMU guest agent are the
/// emulator's (see tests/standins/ubuntu-eks.sh). No CNI plugins, no kubectl on the PATH.
const UBUNTU_PACKAGES: &[&str] = &[
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
    "rsyslog",
    "unattended-upgrades",
    "apparmor",
    "snapd",
    "squashfs-tools",
    "qemu-guest-agent",
];

/// The Ubuntu 24.04 EKS stand-in (x86_64), built once per machine: the base from the packages
/// and tests/standins/ubuntu-eks.sh, then booted once so snapd installs the snaps the script
/// packed (Canonical preseeds its images' snaps at build time; snapd installs only while it
/// runs), cached beside the base under the same digest.
pub async fn ubuntu_eks() -> Base {
    let arch = Arch::X86_64;
    let mut packages: Vec<String> = UBUNTU_PACKAGES.iter().map(|s| s.to_string()).collect();
    packages.push(format!("linux-image-cloud-{}", arch.debian()));
    packages.sort();
    let spec = BaseSpec {
        suite: "trixie".into(),
        arch,
        packages,
        mirror: None,
        size_gib: bake::input::recipe::DEFAULT_SIZE_GIB,
        offline_apt: false,
        customize: vec![include_str!("../standins/ubuntu-eks.sh").to_string()],
        fs_uuid: None,
        fs_label: Some(UBUNTU_ROOT_LABEL.into()),
    };
    let base = built(&spec, "ubuntu stand-in").await;
    booted_once(
        &base,
        &format!("{}-preseeded", spec.digest()),
        &format!("LABEL={UBUNTU_ROOT_LABEL}"),
        "BAKE-STANDIN-PRESEEDED",
    )
    .await
}

/// `base` after one boot of its own (x86_64, TCG, no network) that ends in a power-off with
/// `done` on the console, cached in bake's bases directory as `name`. The boot's console is
/// kept beside the disk as console.log.
async fn booted_once(base: &Base, name: &str, root: &str, done: &str) -> Base {
    let bases = bake::provider::local::cache_dir().join("bases");
    let dir = bases.join(name);
    let at = |d: &std::path::Path| Base {
        disk: d.join("disk.qcow2"),
        kernel: base.kernel.clone(),
        initrd: base.initrd.clone(),
    };
    if at(&dir).disk.is_file() {
        return at(&dir);
    }
    let tmp = bases.join(format!("{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let disk = at(&tmp).disk;
    std::fs::copy(&base.disk, &disk).unwrap();
    let console = tmp.join("console.log");
    eprintln!("{name}: booting the stand-in once (TCG, a few minutes)");
    let mut qemu = tokio::process::Command::new("qemu-system-x86_64");
    qemu.args([
        "-machine",
        "q35,accel=tcg",
        "-cpu",
        "qemu64",
        "-m",
        "1536",
        "-smp",
        "2",
    ])
    .args([
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-display",
        "none",
    ])
    .args(["-monitor", "none", "-nic", "none"])
    .arg("-kernel")
    .arg(&base.kernel)
    .arg("-initrd")
    .arg(&base.initrd)
    .args(["-append", &format!("root={root} rw console=ttyS0 panic=-1")])
    .arg("-drive")
    .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .kill_on_drop(true);
    let status = tokio::time::timeout(Duration::from_secs(1200), qemu.status())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{name}: the boot did not power off in 20 min; see {}",
                console.display()
            )
        })
        .unwrap();
    let said = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        status.success() && said.contains(done),
        "{name}: the boot failed ({status}); its console, {}:\n{}",
        console.display(),
        said.lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another process finished the same boot first.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    at(&dir)
}

// The rehearsal tier's emulator and project (shared with the engines bench).

/// The project's eks-node recipe, as bake loads it.
pub fn eks_node(p: &Project) -> bake::input::recipe::Recipe {
    let catalog = bake::input::validate::Catalog::load(&p.path("validators")).unwrap();
    bake::input::recipe::Recipe::load(&p.path("recipes"), "eks-node", &catalog).unwrap()
}

/// The local x86_64 base the eks-node recipe bakes from (built once, cached like bake's own).
pub async fn local_base(p: &Project) -> base::Base {
    let recipe = eks_node(p);
    let spec = base::BaseSpec::new(
        recipe.local.as_ref().unwrap(),
        bake::Arch::X86_64,
        None,
        recipe
            .volume
            .size()
            .unwrap_or(bake::input::recipe::DEFAULT_SIZE_GIB),
    );
    built(&spec, "local base").await
}

/// A project whose aws pipeline bakes x86_64 only, joins no cluster, and waits as long as VMs
/// under TCG need.
pub fn rehearsal_project(prefix: &str) -> Project {
    let p = Project::new();
    p.edit(
        "pipelines/aws.toml",
        "ssm_prefix = \"/bake\"",
        &format!(
            "ssm_prefix = \"{prefix}\"\npoll_interval = \"500ms\"\ninstance_timeout = \"300s\"\nagent_timeout = \"600s\"\ncommand_timeout = \"900s\"\nimage_timeout = \"600s\"\nretry_max_backoff = \"1s\""
        ),
    );
    super::moto::x86_only(&p);
    p.edit("pipelines/aws.toml", "[canary]\ncluster = \"dev\"\n", "");
    // The local base is plain Debian, not an EKS node (no kubelet): dev names no EKS cluster,
    // so auto-promotion has no Kubernetes version to hold the release to.
    p.edit(
        "pipelines/aws.toml",
        "[clusters.dev]\narches = [\"x86_64\"]\neks_cluster = \"dev\"\n",
        "[clusters.dev]\narches = [\"x86_64\"]\n",
    );
    p
}

/// Registers a base AMI whose instances are VMs of the local base, and points the recipe's
/// public base parameter at it.
pub async fn rehearsal_emulator(p: &Project) -> (&'static Moto, String) {
    let base = local_base(p).await;
    // The root filesystem is found by its label, as Canonical's cloud images find theirs
    // (LABEL=cloudimg-rootfs); the local base's filesystem is labelled `root`. A volume made
    // from the same snapshot carries the same label, so the canary's image copy must not be
    // there when the canary boots.
    emulator_of(&base, UBUNTU_X86, "LABEL=root").await
}

/// Registers a base AMI whose instances boot `base` with `root` on the kernel's command line,
/// and points the public parameter `param` at it.
pub async fn emulator_of(base: &base::Base, param: &str, root: &str) -> (&'static Moto, String) {
    let moto = Moto::get();
    let ami = moto::register_x86(moto, "rehearsal-base").await;
    let dir = moto.dir.path().join("machines");
    std::fs::create_dir_all(&dir).unwrap();
    moto.set_config(json!({
        "parameters": {param: ami},
        "machines": {
            "dir": dir,
            "images": {ami.clone(): {
                "disk": base.disk, "kernel": base.kernel, "initrd": base.initrd, "arch": "x86_64",
                "root": root,
            }},
            // One vCPU: the rehearsals boot their guests beside the local VM chain's on two
            // cores (see tests/vm.rs, project_for).
            "cpus": 1,
            "memory_mib": 1536,
        },
    }));
    (moto, ami)
}

/// A rehearsal pipeline on the `imagebuilder` engine: Image Builder's build and test
/// instances in the emulator's default subnet and security group, as a team points it at its
/// own.
pub async fn use_image_builder(p: &Project, moto: &Moto) {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let subnet = ec2.describe_subnets().send().await.unwrap().subnets()[0].clone();
    let groups = ec2
        .describe_security_groups()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("vpc-id")
                .values(subnet.vpc_id().unwrap())
                .build(),
        )
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("group-name")
                .values("default")
                .build(),
        )
        .send()
        .await
        .unwrap();
    p.edit(
        "pipelines/aws.toml",
        "engine = \"ec2\"",
        &format!(
            "engine = \"imagebuilder\"\nsubnet_id = \"{}\"\nsecurity_group_id = \"{}\"",
            subnet.subnet_id().unwrap(),
            groups.security_groups()[0].group_id().unwrap()
        ),
    );
}
