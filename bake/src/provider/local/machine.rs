//! The VM lifecycle of a local bake: the base, a qcow2 overlay per machine, booting builder
//! and canary (KVM probe, then TCG), and the builder's power-off.

use super::base::{self, BaseSpec};
use super::qemu::{self, Accel, Drive, Vm, VmSpec};
use super::state::State;
use super::{cmd, seed, store, LocalProvider};
use crate::journal::Kind;
use crate::provider::{BakeJob, Role};
use crate::steps::{Outcome, Step, StepContext};
use crate::{Error, Result};
use async_trait::async_trait;
use std::time::{Duration, Instant};

pub(super) struct PrepareBase<'a> {
    pub spec: BaseSpec,
    pub provider: &'a LocalProvider,
}

#[async_trait]
impl Step<State> for PrepareBase<'_> {
    fn name(&self) -> &str {
        "base"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let digest = self.spec.digest();
        let cached = self
            .provider
            .cache_dir
            .join("bases")
            .join(&digest)
            .join("disk.qcow2")
            .is_file();
        cx.phase(&if cached {
            format!("base {} (cached)", &digest[..12])
        } else {
            format!(
                "base: building {} with mmdebstrap (cached afterwards)",
                self.spec.describe()
            )
        });
        let start = Instant::now();
        let progress = |said: &str| cx.phase(said);
        let base = base::ensure(
            &self.spec,
            &self.provider.cache_dir,
            self.provider.settings.base_timeout,
            &progress,
        )
        .await?;
        tracing::info!(recipe = cx.recipe, arch = %cx.arch, "base ready in {}", qemu::since(start));
        state.base = Some(base);
        Ok(())
    }
}

/// The disk a machine works on: a qcow2 overlay of the base (builder VM) or of the image
/// (canary), or, for the offline builder (`raw`), a standalone raw copy of the base, since a
/// loop device mounts raw files only; the image store flattens it into a qcow2 afterwards.
pub(super) struct CreateDisk {
    pub role: Role,
    pub raw: bool,
}

#[async_trait]
impl Step<State> for CreateDisk {
    fn name(&self) -> &str {
        match self.role {
            Role::Builder => "builder-disk",
            Role::Canary => "canary-disk",
        }
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let backing = match self.role {
            Role::Builder => state.base.as_ref().map(|b| b.disk.clone()),
            Role::Canary => state.image.as_ref().map(|i| i.disk.clone()),
        }
        .ok_or_else(|| cx.error(self.name(), "nothing to boot from"))?;
        let disk = state.work.join(format!(
            "{}.{}",
            self.role.as_str(),
            if self.raw { "raw" } else { "qcow2" }
        ));
        // Journal first: the disk may exist even if qemu-img fails half way.
        cx.created(Kind::Overlay, &disk.display().to_string())?;
        *state.disks.slot(self.role) = Some(disk.clone());
        if !self.raw {
            return overlay(&backing, &disk).await;
        }
        let (backing, disk) = (backing.display().to_string(), disk.display().to_string());
        let args = ["convert", "-f", "qcow2", "-O", "raw", &backing, &disk];
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        cmd::run("qemu-img", &args, None).await?;
        Ok(())
    }
    async fn cleanup(
        &self,
        state: &mut State,
        _outcome: Outcome,
        cx: &StepContext<'_>,
    ) -> Result<()> {
        if let Some(disk) = state.disks.slot(self.role).take() {
            store::remove_path(&disk)?;
            cx.removed(Kind::Overlay, &disk.display().to_string())?;
        }
        Ok(())
    }
}

pub(super) struct BootVm<'a> {
    pub role: Role,
    pub provider: &'a LocalProvider,
    pub job: &'a BakeJob<'a>,
}

impl BootVm<'_> {
    fn spec(&self, state: &State, accel: Accel, seed: Drive) -> Result<VmSpec> {
        let mut drives = vec![seed];
        let (kernel, initrd, disk) = match self.role {
            Role::Builder => {
                let base = state
                    .base
                    .as_ref()
                    .ok_or_else(|| Error::provider("local", "no base"))?;
                (
                    base.kernel.clone(),
                    base.initrd.clone(),
                    state.disks.get(Role::Builder).cloned(),
                )
            }
            Role::Canary => {
                let image = state
                    .image
                    .as_ref()
                    .ok_or_else(|| Error::provider("local", "no image"))?;
                // The image as shipped, read-only beside the canary's own disk: what the
                // validators of the image's root judge (first boot changes the root disk).
                drives.push(Drive {
                    path: image.disk.clone(),
                    format: "qcow2",
                    serial: crate::canary::LOCAL_IMAGE_SERIAL.into(),
                });
                (
                    image.kernel.clone(),
                    image.initrd.clone(),
                    state.disks.get(Role::Canary).cloned(),
                )
            }
        };
        Ok(VmSpec {
            name: self.role.as_str().to_string(),
            arch: self.job.arch,
            accel,
            memory_mib: self.provider.settings.memory_mib,
            cpus: self.provider.vcpus(),
            kernel,
            initrd,
            disk: disk.ok_or_else(|| Error::provider("local", "no disk"))?,
            dir: state.work.clone(),
            log_dir: state.logs.clone(),
            drives,
        })
    }

    /// How long this VM may live before its dead-man's timer powers it off: longer than every
    /// wait of the run (boots, each file, step and validator at its limit, shutdown) plus an hour.
    fn lifetime(&self) -> Duration {
        let s = &self.provider.settings;
        let recipe = self.job.recipe;
        let commands = recipe.files.len() + recipe.validators.len() + 3;
        let steps: Duration = recipe
            .steps
            .iter()
            .map(|st| st.timeout.unwrap_or(s.step_timeout))
            .sum();
        s.boot_timeout * 2
            + s.step_timeout * commands as u32
            + steps
            + s.shutdown_timeout
            + Duration::from_secs(3600)
    }

    /// The NoCloud seed for this boot: a new instance ID, and user data of the same kind an
    /// EC2 instance of bake gets (the dead-man's timer; there is no cluster to join locally).
    async fn seed(&self, state: &State) -> Result<Drive> {
        let instance_id = new_instance_id();
        node_seed(
            &state.work,
            self.role.as_str(),
            &instance_id,
            self.lifetime(),
        )
        .await
    }

    async fn boot(
        &self,
        state: &mut State,
        cx: &StepContext<'_>,
        accel: Accel,
        timeout: Duration,
    ) -> Result<()> {
        let seed = self.seed(state).await?;
        let spec = self.spec(state, accel, seed)?;
        let journal =
            |vm: &Vm| cx.created(Kind::Vm, &format!("{} pid {}", vm.socket.display(), vm.pid));
        let started = Instant::now();
        let (vm, agent) = boot_vm(&spec, timeout, journal).await?;
        let slot = state.vms.slot(self.role);
        match agent {
            Ok(agent) => {
                tracing::info!(recipe = cx.recipe, arch = %cx.arch, vm = self.role.as_str(), %accel, "guest agent answered after {}", qemu::since(started));
                *slot = Some((vm, Some(agent)));
                Ok(())
            }
            Err(e) => {
                *slot = Some((vm, None));
                Err(e)
            }
        }
    }

    async fn stop(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let slot = state.vms.slot(self.role);
        if let Some((mut vm, agent)) = slot.take() {
            drop(agent);
            vm.kill().await;
            cx.removed(Kind::Vm, &format!("{} pid {}", vm.socket.display(), vm.pid))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Step<State> for BootVm<'_> {
    fn name(&self) -> &str {
        match self.role {
            Role::Builder => "boot-builder",
            Role::Canary => "boot-canary",
        }
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let timeout = self.provider.settings.boot_timeout;
        let accel = match state
            .accel
            .or_else(|| self.provider.known_accel(self.job.arch))
        {
            Some(a) => a,
            None => {
                // Probe: KVM counts as usable only if a boot with it answers quickly.
                cx.phase(&format!("boot {}: probing KVM", self.role.as_str()));
                match self.boot(state, cx, Accel::Kvm, qemu::KVM_PROBE).await {
                    Ok(()) => {
                        self.provider.remember_accel(self.job.arch, Accel::Kvm);
                        state.accel = Some(Accel::Kvm);
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!("KVM is not usable here ({e}); using TCG");
                        self.stop(state, cx).await?;
                        self.provider.remember_accel(self.job.arch, Accel::Tcg);
                        Accel::Tcg
                    }
                }
            }
        };
        state.accel = Some(accel);
        cx.phase(&format!("boot {} ({accel})", self.role.as_str()));
        self.boot(state, cx, accel, timeout).await
    }
    async fn cleanup(
        &self,
        state: &mut State,
        _outcome: Outcome,
        cx: &StepContext<'_>,
    ) -> Result<()> {
        self.stop(state, cx).await
    }
}

pub(super) struct Shutdown<'a> {
    pub provider: &'a LocalProvider,
}

#[async_trait]
impl Step<State> for Shutdown<'_> {
    fn name(&self) -> &str {
        "shutdown"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        cx.phase("shutdown builder");
        let timeout = self.provider.settings.shutdown_timeout;
        let (vm, agent) = state
            .vms
            .slot(Role::Builder)
            .as_mut()
            .ok_or_else(|| cx.error("shutdown", "the builder is not running"))?;
        if let Some(mut a) = agent.take() {
            a.shutdown()
                .await
                .map_err(|e| cx.error("shutdown", e.to_string()))?;
        }
        // Never poll the agent while the guest goes down: wait for QEMU to exit.
        if !vm.wait_exit(timeout).await {
            return Err(cx.error(
                "shutdown",
                format!(
                    "the builder did not power off within {}",
                    humantime::format_duration(timeout)
                ),
            ));
        }
        Ok(())
    }
}

/// A fresh EC2-shaped instance ID for a local VM (`i-` and 17 hex digits).
pub(super) fn new_instance_id() -> String {
    format!("i-{}", &hex::encode(rand::random::<[u8; 9]>())[..17])
}

/// The NoCloud seed a bake VM (builder, canary or an audited node) boots with: its instance ID,
/// and user data of the kind an EC2 instance of bake gets (the dead-man's timer powering it off
/// after `lifetime`).
pub(super) async fn node_seed(
    work: &std::path::Path,
    role: &str,
    instance_id: &str,
    lifetime: Duration,
) -> Result<Drive> {
    let path = seed::write(
        work,
        role,
        &seed::Seed {
            instance_id,
            hostname: &format!("bake-{role}"),
            user_data: &crate::user_data::dead_man_text(role, lifetime),
        },
    )
    .await?;
    Ok(Drive {
        path,
        format: "raw",
        serial: "bake-seed".into(),
    })
}

/// Starts the VM of `spec` (`started` hears of it before anything else can fail, e.g. to
/// journal it) and waits up to `timeout` for its guest agent: the VM, and the agent or why it
/// did not answer (with QEMU's own words when it exited).
pub(super) async fn boot_vm(
    spec: &VmSpec,
    timeout: Duration,
    started: impl FnOnce(&Vm) -> Result<()>,
) -> Result<(Vm, Result<super::qga::Agent>)> {
    let mut vm = Vm::start(spec)?;
    started(&vm)?;
    let agent = match vm.agent(timeout).await {
        Ok(agent) => Ok(agent),
        Err(e) => {
            let stderr = if vm.running() {
                String::new()
            } else {
                vm.stderr_tail().await
            };
            Err(if stderr.trim().is_empty() {
                e
            } else {
                Error::provider("local", format!("{e}\nQEMU said: {}", stderr.trim()))
            })
        }
    };
    Ok((vm, agent))
}

/// A qcow2 overlay at `disk` whose backing file is `backing` (the base or a stored image):
/// what a VM boots and writes, leaving the backing file as it is.
pub(super) async fn overlay(backing: &std::path::Path, disk: &std::path::Path) -> Result<()> {
    let (backing, disk) = (backing.display().to_string(), disk.display().to_string());
    let args = [
        "create", "-q", "-f", "qcow2", "-b", &backing, "-F", "qcow2", &disk,
    ];
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    cmd::run("qemu-img", &args, None).await?;
    Ok(())
}
