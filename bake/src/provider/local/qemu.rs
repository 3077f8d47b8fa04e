//! QEMU VMs for builders and canaries: direct kernel boot of a qcow2 overlay, the guest agent
//! on a virtio-serial Unix socket, the serial console in a log file, no network. QEMU is
//! started with PDEATHSIG so it dies with `bake`, even on SIGKILL.

use super::qga::{Agent, QgaError};
use crate::{Arch, Error, Result};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The accelerator a VM actually runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// True when KVM could run this guest at all: same arch as the host and /dev/kvm opens.
/// Whether it really works is decided by a probe boot (see `LocalProvider`).
pub fn kvm_possible(arch: Arch) -> bool {
    Arch::host() == Some(arch)
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: String,
    pub arch: Arch,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub disk: PathBuf,
    /// Where the agent socket goes.
    pub dir: PathBuf,
    /// Where the serial console log goes.
    pub log_dir: PathBuf,
    /// Read-only drives after the root disk (`/dev/vdb`, ...): the NoCloud seed, the image.
    pub drives: Vec<Drive>,
}

/// A read-only virtio drive; the guest finds it as `/dev/disk/by-id/virtio-<serial>`.
#[derive(Debug, Clone)]
pub struct Drive {
    pub path: PathBuf,
    /// `raw` or `qcow2`.
    pub format: &'static str,
    /// At most 20 characters (virtio-blk).
    pub serial: String,
}

pub struct Vm {
    pub name: String,
    child: tokio::process::Child,
    pub pid: u32,
    pub socket: PathBuf,
    pub serial: PathBuf,
}

/// A random (version 4) UUID for a VM's SMBIOS system UUID.
fn vm_uuid() -> String {
    crate::input::recipe::uuid_text(rand::random(), 4)
}

impl Vm {
    /// Long because the QEMU command line is in one place, each option with why, per arch and
    /// accelerator.
    pub fn start(spec: &VmSpec) -> Result<Vm> {
        std::fs::create_dir_all(&spec.dir)
            .map_err(|e| Error::io(format!("creating {}", spec.dir.display()), e))?;
        let socket = spec.dir.join(format!("{}.qga.sock", spec.name));
        let serial = spec.log_dir.join(format!("{}.serial.log", spec.name));
        let _ = std::fs::remove_file(&socket);
        let (binary, machine, cpu, console) = match (spec.arch, spec.accel) {
            (Arch::X86_64, Accel::Tcg) => ("qemu-system-x86_64", "q35", "qemu64", "ttyS0"),
            (Arch::X86_64, Accel::Kvm) => ("qemu-system-x86_64", "q35", "host", "ttyS0"),
            (Arch::Arm64, Accel::Tcg) => ("qemu-system-aarch64", "virt", "max", "ttyAMA0"),
            (Arch::Arm64, Accel::Kvm) => ("qemu-system-aarch64", "virt", "host", "ttyAMA0"),
        };
        let mut cmd = tokio::process::Command::new(binary);
        cmd.args(["-machine", &format!("{machine},accel={}", spec.accel)])
            .args(["-cpu", cpu])
            .args(["-m", &spec.memory_mib.to_string()])
            .args(["-smp", &spec.cpus.to_string()])
            // Every EC2 instance has its own SMBIOS system UUID, and systemd makes an empty
            // machine-id from it: each VM gets one too, so the canary boots as an instance does.
            .args(["-uuid", &vm_uuid()])
            .args([
                "-nographic",
                "-no-reboot",
                "-nodefaults",
                "-display",
                "none",
                "-monitor",
                "none",
            ])
            .args(["-kernel", &spec.kernel.display().to_string()])
            .args(["-initrd", &spec.initrd.display().to_string()])
            .args([
                "-append",
                &format!("root=/dev/vda rw console={console} panic=-1 quiet"),
            ])
            // The root disk first, so it is /dev/vda; the read-only drives follow in order.
            .args([
                "-drive",
                &format!(
                    "file={},if=none,id=root,format=qcow2,cache=unsafe",
                    spec.disk.display()
                ),
                "-device",
                "virtio-blk-pci,drive=root,serial=bake-root",
            ])
            .args(spec.drives.iter().enumerate().flat_map(|(i, d)| {
                [
                    "-drive".to_string(),
                    format!(
                        "file={},if=none,id=ro{i},format={},readonly=on",
                        d.path.display(),
                        d.format,
                    ),
                    "-device".to_string(),
                    format!("virtio-blk-pci,drive=ro{i},serial={}", d.serial),
                ]
            }))
            .args(["-device", "virtio-serial"])
            .args([
                "-chardev",
                &format!(
                    "socket,path={},server=on,wait=off,id=qga0",
                    socket.display()
                ),
            ])
            .args([
                "-device",
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            ])
            .args(["-nic", "none"])
            .args(["-serial", &format!("file:{}", serial.display())])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; it makes the kernel kill QEMU when bake dies.
        unsafe {
            cmd.as_std_mut().pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            Error::provider(
                "local",
                format!("cannot start {binary}: {e} (run scripts/setup-host)"),
            )
        })?;
        let pid = child.id().unwrap_or(0);
        tracing::info!(vm = %spec.name, pid, accel = %spec.accel, "started {binary}");
        Ok(Vm {
            name: spec.name.clone(),
            child,
            pid,
            socket,
            serial,
        })
    }

    /// Waits for the guest agent, failing at once if QEMU exits.
    pub async fn agent(&mut self, timeout: Duration) -> Result<Agent> {
        let child = &mut self.child;
        let serial = self.serial.clone();
        let name = self.name.clone();
        let result = Agent::connect(&self.socket, timeout, || match child.try_wait() {
            Ok(Some(status)) => Err(format!(
                "QEMU exited ({status}) before the guest agent answered"
            )),
            _ => Ok(()),
        })
        .await;
        result.map_err(|e| {
            let tail = tail_file(&serial, 10);
            let mut message = format!("VM {name}: {e}");
            if let QgaError::NotReady { .. } = e {
                message.push_str(" (boot timeout; raise `boot_timeout` in the pipeline's [local] section if the host is slow)");
            }
            if !tail.is_empty() {
                message.push_str(&format!("\nlast serial console lines:\n{tail}"));
            }
            Error::provider("local", message)
        })
    }

    /// Waits up to `timeout` for QEMU to exit; true if it did.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .is_ok()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills QEMU (if still running) and removes its socket.
    pub async fn kill(&mut self) {
        if self.running() {
            let _ = self.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// QEMU's own error output (after it exited).
    pub async fn stderr_tail(&mut self) -> String {
        use tokio::io::AsyncReadExt;
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), e.read_to_string(&mut s)).await;
        }
        s
    }
}

/// The last `n` lines of a text file, for error messages.
pub fn tail_file(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How long a probe boot with KVM may take before KVM counts as unusable.
pub const KVM_PROBE: Duration = Duration::from_secs(30);

/// Elapsed time helper for phase logs.
pub fn since(start: Instant) -> String {
    format!("{:.1}s", start.elapsed().as_secs_f64())
}
