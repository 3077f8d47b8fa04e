//! Local base images: a Debian root filesystem built by mmdebstrap, turned into an ext4 disk
//! (`mkfs.ext4 -d`, no loop mounts) and a qcow2, with the kernel and initrd copied out for
//! direct boot. Cached by the digest of its inputs under the user's cache dir, shared by
//! every checkout and CI run on the machine; the digest is the base "ID" in the bake key.

use super::cmd;
use super::native::NativeTools;
use crate::input::recipe::LocalBase;
use crate::{Arch, Error, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bump when the way a base is built changes, so old caches are not reused.
mod progress;
use progress::BaseProgress;

const BASE_FORMAT: &str = "bake-local-base/6";

/// Every node base has these: init and device management, the cloud kernel, the guest agent
/// that drives the VM, networking tools, and what a real node image ships and the hardening
/// must deal with (apt, unattended-upgrades and its timers, dbus for clean shutdown). Like an
/// EC2 image it boots with cloud-init (fed a NoCloud seed) and an SSH server, so first boot
/// makes host keys and takes user data as on EC2; the standard CNI plugins are there as on a
/// node whose CNI is installed (the `pod-network` check itself needs only iproute2).
pub const NODE_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "qemu-guest-agent",
    "iproute2",
    "apt",
    "unattended-upgrades",
    "ca-certificates",
    "cloud-init",
    // cloud-init grows the root filesystem at first boot, as on EC2.
    "e2fsprogs",
    "openssh-server",
    "containernetworking-plugins",
];

/// While packages install, `update-initramfs` is diverted to `true`: the kernel's postinst and
/// initramfs-tools' trigger would each build the initramfs (under qemu-user each build of the
/// arm64 one takes minutes). The customize hook puts it back and builds it once, for every
/// installed kernel, with the configuration the packages left.
const DIVERT_INITRAMFS: &str = "chroot \"$1\" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs && ln -s /bin/true \"$1/usr/sbin/update-initramfs\"";
const BUILD_INITRAMFS_ONCE: &str = "rm \"$1/usr/sbin/update-initramfs\" && chroot \"$1\" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs && echo 'I: building the initramfs once...' && chroot \"$1\" update-initramfs -c -k all";

/// systemd-networkd runs, as on the EKS bases bake's recipes target (Ubuntu's netplan renders to
/// it; AL2023 uses it directly, awslabs/amazon-eks-ami templates/al2023), so what a networkd
/// restart does to a node's routes is judged here too. The VMs have no NIC, so networkd manages
/// nothing until a check gives it a link, and systemd-networkd-wait-online (enabled with it)
/// would wait its full two minutes for one at every boot: it stays off.
const ENABLE_NETWORKD: &str = "chroot \"$1\" systemctl enable systemd-networkd.service && chroot \"$1\" systemctl disable systemd-networkd-wait-online.service";

/// cloud-init settings of the local base (see `build`).
const CLOUD_CFG: &str = "# bake local base: no locales package (C.UTF-8 needs none); only the NoCloud seed bake attaches\nlocale: C.UTF-8\ndatasource_list: [ NoCloud, None ]\n";

/// What a base is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseSpec {
    pub suite: String,
    pub arch: Arch,
    pub packages: Vec<String>,
    pub mirror: Option<String>,
    pub size_gib: u32,
    pub offline_apt: bool,
    /// Shell scripts run after bake's own customize hooks, each with the root filesystem as
    /// `$1` (mmdebstrap's customize hooks): how the test harness makes a stand-in for another
    /// vendor's base from Debian packages. None for bake's own bases.
    pub customize: Vec<String>,
    /// The root filesystem's UUID; mkfs picks one at random when None.
    pub fs_uuid: Option<String>,
    /// The root filesystem's label; `root` (what bake's VMs boot by) when None.
    pub fs_label: Option<String>,
}

impl BaseSpec {
    pub fn new(base: &LocalBase, arch: Arch, mirror: Option<String>, size_gib: u32) -> BaseSpec {
        let mut packages: Vec<String> = NODE_PACKAGES.iter().map(|s| s.to_string()).collect();
        packages.push(format!("linux-image-cloud-{}", arch.debian()));
        packages.extend(base.packages.iter().cloned());
        packages.sort();
        packages.dedup();
        BaseSpec {
            suite: base.suite.clone(),
            arch,
            packages,
            mirror,
            size_gib,
            offline_apt: base.offline_apt,
            customize: Vec::new(),
            fs_uuid: None,
            fs_label: None,
        }
    }

    /// The digest of everything that decides the base's content.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            BASE_FORMAT,
            &self.suite,
            self.arch.debian(),
            &self.packages.join(","),
            self.mirror.as_deref().unwrap_or("(mmdebstrap default)"),
            &self.size_gib.to_string(),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        if self.offline_apt {
            h.update(b"offline-apt\0");
        }
        // Absent for bake's own bases, so their digests (and caches) stay as they were.
        for script in &self.customize {
            h.update(b"customize\0");
            h.update(script.as_bytes());
            h.update([0]);
        }
        if let Some(uuid) = &self.fs_uuid {
            h.update(b"fs-uuid\0");
            h.update(uuid.as_bytes());
            h.update([0]);
        }
        if let Some(label) = &self.fs_label {
            h.update(b"fs-label\0");
            h.update(label.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    }

    pub fn describe(&self) -> String {
        format!("mmdebstrap {} {}", self.suite, self.arch.debian())
    }
}

/// A built base in the cache.
#[derive(Debug, Clone)]
pub struct Base {
    pub disk: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl Base {
    fn at(dir: &Path) -> Base {
        Base {
            disk: dir.join("disk.qcow2"),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
        }
    }
    fn complete(&self) -> bool {
        self.disk.is_file() && self.kernel.is_file() && self.initrd.is_file()
    }
}

/// Returns the cached base for `spec`, building it first if needed. Concurrent builders of
/// the same base (two runs, two checkouts) wait for each other through a lock file.
/// `progress` hears what the build is doing and how far it is (mmdebstrap's stages and a count
/// of packages set up), for a wait that takes minutes under qemu-user.
pub async fn ensure(
    spec: &BaseSpec,
    cache_dir: &Path,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Base> {
    let digest = spec.digest();
    let bases = cache_dir.join("bases");
    std::fs::create_dir_all(&bases)
        .map_err(|e| Error::io(format!("creating {}", bases.display()), e))?;
    let dir = bases.join(&digest);
    let base = Base::at(&dir);
    if base.complete() {
        return Ok(base);
    }
    let lock_path = bases.join(format!("{digest}.lock"));
    let _lock = FileLock::acquire(&lock_path).await?;
    if base.complete() {
        return Ok(base);
    }
    remove_stale_builds(&bases, &digest);
    let tmp = bases.join(format!("{digest}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)
        .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    let counted = count_file(&bases, spec);
    let built = tokio::time::timeout(timeout, build(spec, &tmp, &counted, progress)).await;
    let result = match built {
        Ok(r) => r,
        Err(_) => Err(Error::provider(
            "local",
            format!(
                "building the {} base took longer than {}",
                spec.describe(),
                humantime::format_duration(timeout)
            ),
        )),
    };
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)
        .map_err(|e| Error::io(format!("moving {} into place", tmp.display()), e))?;
    Ok(base)
}

/// Removes what builds of `digest` killed before they finished left (`<digest>.tmp-<pid>` of a
/// process that is gone): a root filesystem of several hundred MB each. Called with the base's
/// lock held, so no live build of it is touched. A directory with anything still mounted below
/// it (mmdebstrap mounts /proc, /sys and /dev into the root it builds) is left alone and named:
/// deleting through a mount would delete what is mounted.
fn remove_stale_builds(bases: &Path, digest: &str) {
    let prefix = format!("{digest}.tmp-");
    let Ok(entries) = std::fs::read_dir(bases) else {
        return;
    };
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        if has_mount_below(&mounts, &dir) {
            tracing::warn!(
                "{} is left from a killed base build and still has mounts below it; unmount them (umount -R) and remove it",
                dir.display()
            );
            continue;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!("removed {} left by a killed base build", dir.display()),
            Err(err) => tracing::warn!("cannot remove {}: {err}", dir.display()),
        }
    }
}

/// True if a mount point in `mountinfo` (the format of /proc/self/mountinfo) is `dir` or below.
fn has_mount_below(mountinfo: &str, dir: &Path) -> bool {
    let dir = dir.to_string_lossy();
    mountinfo.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .map(|m| m.replace("\\040", " "))
            .is_some_and(|m| m == *dir || m.starts_with(&format!("{dir}/")))
    })
}

/// `counted`: where the number of packages set up is read from (the last build's, for
/// progress) and written to.
async fn build(
    spec: &BaseSpec,
    tmp: &Path,
    counted: &Path,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<()> {
    let rootfs = tmp.join("rootfs");
    let stage = tmp.join("native");
    let native = NativeTools::stage(spec.arch, &stage).await?;
    let args = mmdebstrap_args(spec, tmp, &rootfs, native.as_ref())?;
    run_mmdebstrap(&args, counted, progress).await?;
    if let Some(n) = &native {
        progress("base: checking that nothing lent from the host is left in it");
        n.check(&rootfs)?;
    }
    let _ = std::fs::remove_dir_all(&stage);
    progress("base: making the ext4 disk and its qcow2");
    let boot = rootfs.join("boot");
    let base = Base::at(tmp);
    std::fs::copy(newest_in(&boot, "vmlinuz-")?, &base.kernel)
        .map_err(|e| Error::io("copying the kernel", e))?;
    std::fs::copy(newest_in(&boot, "initrd.img-")?, &base.initrd)
        .map_err(|e| Error::io("copying the initrd", e))?;
    make_disk(spec, &rootfs, tmp, &base).await
}

/// mmdebstrap's arguments for `spec`: the packages, the hooks that make it a bootable node
/// (and the spec's own customize scripts, written beside `rootfs`), the tools lent from the
/// host where the arch is foreign.
fn mmdebstrap_args(
    spec: &BaseSpec,
    tmp: &Path,
    rootfs: &Path,
    native: Option<&NativeTools>,
) -> Result<Vec<String>> {
    let mut args: Vec<String> = vec![
        // apt's and dpkg's own lines, which `BaseProgress` turns into progress.
        "--verbose".into(),
        "--variant=apt".into(),
        format!("--arch={}", spec.arch.debian()),
        format!("--include={}", spec.packages.join(",")),
        // The tree is thrown away if the build fails: no fsync for each file dpkg unpacks.
        "--dpkgopt=force-unsafe-io".into(),
        format!("--essential-hook={DIVERT_INITRAMFS}"),
    ];
    if let Some(n) = native {
        args.push(format!("--essential-hook={}", n.lend_hook()));
    }
    args.extend([
        format!("--customize-hook={BUILD_INITRAMFS_ONCE}"),
        // A node boots from the virtio disk straight into systemd; no fstab entries needed.
        "--customize-hook=echo bake-node > \"$1/etc/hostname\"".into(),
        format!("--customize-hook={ENABLE_NETWORKD}"),
        // A minimal Debian has no `locales`: C.UTF-8 needs no generation, so cloud-init's locale
        // module succeeds instead of failing every first boot; it probes only the NoCloud seed.
        format!("--customize-hook=printf '%s' '{CLOUD_CFG}' > \"$1/etc/cloud/cloud.cfg.d/90-bake-local-base.cfg\""),
    ]);
    for (i, script) in spec.customize.iter().enumerate() {
        let file = tmp.join(format!("customize-{i}.sh"));
        std::fs::write(&file, script)
            .map_err(|e| Error::io(format!("writing {}", file.display()), e))?;
        args.push(format!(
            "--customize-hook=sh {} \"$1\"",
            crate::guest::sh_quote(&file.display().to_string())
        ));
    }
    if let Some(n) = native {
        args.push(format!("--customize-hook={}", n.return_hook()));
    }
    if spec.offline_apt {
        args.push("--skip=cleanup/apt/lists".into());
        args.push("--skip=cleanup/apt/cache".into());
        args.push("--aptopt=Binary::apt::APT::Keep-Downloaded-Packages \"true\"".into());
    }
    args.push(spec.suite.clone());
    args.push(rootfs.display().to_string());
    if let Some(mirror) = &spec.mirror {
        args.push(mirror.clone());
    }
    Ok(args)
}

/// Runs mmdebstrap, its lines told as progress against the package count of the last build
/// (kept in `counted` for the next).
async fn run_mmdebstrap(
    args: &[String],
    counted: &Path,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<()> {
    let seen = std::sync::Mutex::new(BaseProgress::expecting(
        std::fs::read_to_string(counted)
            .ok()
            .and_then(|n| n.trim().parse().ok()),
    ));
    let on_line = |line: &str| {
        let said = seen.lock().unwrap_or_else(|p| p.into_inner()).line(line);
        if let Some(said) = said {
            progress(&said);
        }
    };
    cmd::run_lines("mmdebstrap", args, &on_line).await?;
    let n = seen.lock().unwrap_or_else(|p| p.into_inner()).set_up;
    let _ = std::fs::write(counted, format!("{n}\n"));
    Ok(())
}

/// The last (by name) file in `boot` whose name starts with `prefix`: the kernel or initrd.
fn newest_in(boot: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(boot)
        .map_err(|e| Error::io(format!("reading {}", boot.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    found.sort();
    found.pop().ok_or_else(|| {
        Error::provider(
            "local",
            format!("no {prefix}* in {} after mmdebstrap", boot.display()),
        )
    })
}

/// The tree as an ext4 filesystem (the spec's label and UUID) in `base`'s qcow2; the tree and
/// the raw disk go.
async fn make_disk(spec: &BaseSpec, rootfs: &Path, tmp: &Path, base: &Base) -> Result<()> {
    let raw = tmp.join("disk.raw");
    let label = spec.fs_label.as_deref().unwrap_or("root");
    let mut mkfs: Vec<String> = vec!["-q".into(), "-F".into(), "-L".into(), label.into()];
    if let Some(uuid) = &spec.fs_uuid {
        mkfs.extend(["-U".into(), uuid.clone()]);
    }
    mkfs.extend([
        "-d".into(),
        rootfs.display().to_string(),
        raw.display().to_string(),
        format!("{}G", spec.size_gib),
    ]);
    cmd::run("mkfs.ext4", &mkfs, None).await?;
    let _ = std::fs::remove_dir_all(rootfs);
    cmd::run(
        "qemu-img",
        &[
            "convert".into(),
            "-O".into(),
            "qcow2".into(),
            raw.display().to_string(),
            base.disk.display().to_string(),
        ],
        None,
    )
    .await?;
    let _ = std::fs::remove_file(&raw);
    Ok(())
}

/// Where the number of packages the last base build of `spec`'s suite and arch set up is kept.
fn count_file(bases: &Path, spec: &BaseSpec) -> PathBuf {
    bases.join(format!(
        "{}-{}.packages-set-up",
        spec.suite,
        spec.arch.debian()
    ))
}

/// An exclusive lock on a file (`flock`), released on drop.
struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    async fn acquire(path: &Path) -> Result<FileLock> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        // std's File::lock is flock(LOCK_EX) on Linux: released when the file closes.
        let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .map_err(|e| Error::provider("local", format!("lock task: {e}")))?
            .map_err(|e| Error::io(format!("locking {}", path.display()), e))?;
        Ok(FileLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(arch: Arch) -> BaseSpec {
        BaseSpec::new(
            &LocalBase {
                suite: "bookworm".into(),
                packages: vec!["curl".into()],
                offline_apt: false,
            },
            arch,
            None,
            8,
        )
    }

    /// A killed build's directory goes; a live process's and a mounted one stay.
    #[test]
    fn stale_builds_of_dead_processes_are_removed_and_nothing_mounted_is() {
        let dir = tempfile::tempdir().unwrap();
        let bases = dir.path();
        // A pid that is surely gone: past the kernel's maximum.
        let dead = bases.join("abc.tmp-4194305");
        std::fs::create_dir_all(dead.join("rootfs/etc")).unwrap();
        std::fs::write(dead.join("rootfs/etc/os-release"), "ID=debian\n").unwrap();
        let live = bases.join(format!("abc.tmp-{}", std::process::id()));
        std::fs::create_dir_all(&live).unwrap();
        let other = bases.join("xyz.tmp-4194305");
        std::fs::create_dir_all(&other).unwrap();
        remove_stale_builds(bases, "abc");
        assert!(!dead.exists());
        assert!(live.exists(), "our own build stays");
        assert!(
            other.exists(),
            "another digest's is not this lock's to judge"
        );

        let mountinfo = format!(
            "36 35 98:0 / /proc rw - proc proc rw\n\
             40 36 0:5 / {}/rootfs/proc rw - proc proc rw\n",
            other.display()
        );
        assert!(has_mount_below(&mountinfo, &other));
        assert!(!has_mount_below(&mountinfo, &live));
        assert!(!has_mount_below(
            "40 36 0:5 / /x/abc.tmp-12rootfs rw - proc proc rw\n",
            Path::new("/x/abc.tmp-12")
        ));
    }

    /// Lines as mmdebstrap --verbose writes them (stages, dpkg's configure and trigger lines,
    /// a kernel postinst's own `I:` line) become the stage, a count against the last build's,
    /// and package names.
    #[test]
    fn digest_depends_on_every_input() {
        let a = spec(Arch::X86_64);
        assert_eq!(a.digest(), spec(Arch::X86_64).digest());
        assert_ne!(a.digest(), spec(Arch::Arm64).digest());
        let mut b = a.clone();
        b.mirror = Some("http://mirror.example/debian".into());
        assert_ne!(a.digest(), b.digest());
        let mut c = a.clone();
        c.suite = "trixie".into();
        assert_ne!(a.digest(), c.digest());
        let mut d = a.clone();
        d.size_gib = 9;
        assert_ne!(a.digest(), d.digest());
        let mut e = a.clone();
        e.offline_apt = true;
        assert_ne!(a.digest(), e.digest());
        let mut f = a.clone();
        f.customize = vec!["echo stand-in > \"$1/etc/motd\"".into()];
        assert_ne!(a.digest(), f.digest());
        let mut g = f.clone();
        g.customize = vec!["echo another > \"$1/etc/motd\"".into()];
        assert_ne!(f.digest(), g.digest());
        let mut h = a.clone();
        h.fs_uuid = Some("6f1b1c2e-0d6a-4b5e-9a47-3c2f5e8d7a10".into());
        assert_ne!(a.digest(), h.digest());
        let mut l = a.clone();
        l.fs_label = Some("cloudimg-rootfs".into());
        assert_ne!(a.digest(), l.digest());
        assert!(a.packages.contains(&"linux-image-cloud-amd64".to_string()));
    }
}
