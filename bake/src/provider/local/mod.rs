//! The local provider: bakes in a real QEMU VM driven through the guest agent, proves the
//! image on a separate canary VM, and keeps images in a local store. KVM when a probe boot
//! shows it works, TCG otherwise.

pub mod base;
mod cmd;
pub mod qemu;
pub mod qga;
mod seed;
pub mod store;

use self::base::{Base, BaseSpec};
use self::qemu::{Accel, Drive, Vm, VmSpec};
use self::qga::Agent;
use self::store::{ImageFiles, Store};
use super::{BakeJob, BaseImage, ImageRecord, ImageStatus, Provider, Role};
use crate::journal::Journal;
use crate::key::BakeKey;
use crate::pipeline::{self, LocalSettings};
use crate::provider::Leftover;
use crate::recipe::{sha256_hex, Recipe};
use crate::steps::{Outcome, Runner, Step, StepContext};
use crate::validate::Verdict;
use crate::{Arch, Error, Result};
use async_trait::async_trait;
use chrono::Utc;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where provisioning scripts are staged in the builder; removed before the image is taken.
const STAGING: &str = "/var/tmp/bake";
const GUEST_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct LocalProvider {
    settings: LocalSettings,
    /// vCPUs per VM, `settings.cpus` resolved for this host and run.
    cpus: u32,
    state_dir: PathBuf,
    cache_dir: PathBuf,
    store: Store,
    /// The accelerator decided per arch in this process.
    accel: Mutex<Vec<(Arch, Accel)>>,
}

/// The user's cache dir for bases (`BAKE_CACHE_DIR`, else `$XDG_CACHE_HOME/bake`, else
/// `~/.cache/bake`), shared by every checkout and CI run on the machine.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BAKE_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("bake");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("bake")
}

impl LocalProvider {
    /// `vms_at_once`: how many VMs the run may have up together (one per arch it bakes), which
    /// `cpus = "auto"` shares the host's cores among.
    pub fn new(
        settings: LocalSettings,
        state_dir: &Path,
        vms_at_once: usize,
    ) -> Result<LocalProvider> {
        // Absolute, because qcow2 overlays record their backing file's path.
        let state_dir = std::path::absolute(state_dir)
            .map_err(|e| Error::io(format!("resolving state dir {}", state_dir.display()), e))?;
        let host_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(LocalProvider {
            cpus: settings.cpus.resolve(host_cores, vms_at_once),
            settings,
            store: Store::new(&state_dir),
            state_dir,
            cache_dir: cache_dir(),
            accel: Mutex::new(Vec::new()),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn base_spec(&self, recipe: &Recipe, arch: Arch) -> Result<BaseSpec> {
        let local = recipe.local.as_ref().ok_or_else(|| {
            Error::Usage(format!(
                "recipe {} has no [base.local] section",
                recipe.file.display()
            ))
        })?;
        Ok(BaseSpec::new(
            local,
            arch,
            self.settings.mirror.clone(),
            recipe
                .volume
                .size()
                .unwrap_or(crate::recipe::DEFAULT_SIZE_GIB),
        ))
    }

    fn known_accel(&self, arch: Arch) -> Option<Accel> {
        match self.settings.accel {
            pipeline::Accel::Tcg => return Some(Accel::Tcg),
            pipeline::Accel::Kvm => return Some(Accel::Kvm),
            pipeline::Accel::Auto => {}
        }
        if !qemu::kvm_possible(arch) {
            return Some(Accel::Tcg);
        }
        if let Some((_, a)) = self
            .accel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(x, _)| *x == arch)
        {
            return Some(*a);
        }
        // A probe result from an earlier run on this host.
        let probe = std::fs::read_to_string(self.probe_file()).ok()?;
        let (verdict, host) = probe.split_once(' ')?;
        if host.trim() != host_fingerprint() {
            return None;
        }
        Some(if verdict == "kvm" {
            Accel::Kvm
        } else {
            Accel::Tcg
        })
    }

    fn remember_accel(&self, arch: Arch, accel: Accel) {
        self.accel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((arch, accel));
        if self.settings.accel == pipeline::Accel::Auto {
            let _ = std::fs::create_dir_all(&self.cache_dir);
            let _ = std::fs::write(
                self.probe_file(),
                format!("{accel} {}\n", host_fingerprint()),
            );
        }
    }

    fn probe_file(&self) -> PathBuf {
        self.cache_dir.join("kvm-probe")
    }
}

/// The pid in a journal `vm` entry (`<socket> pid <pid>`).
fn vm_pid(id: &str) -> Option<u32> {
    id.rsplit(" pid ").next()?.trim().parse().ok()
}

/// True if `pid` is a QEMU started for this VM (its command line names the socket).
fn qemu_running(pid: u32, id: &str) -> bool {
    let socket = id.split(" pid ").next().unwrap_or_default();
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let c = String::from_utf8_lossy(&c);
            c.contains("qemu-system") && c.contains(socket)
        })
        .unwrap_or(false)
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Identifies this host's kernel and QEMU, so a KVM probe is redone when either changes.
fn host_fingerprint() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let qemu = std::fs::metadata("/usr/bin/qemu-system-x86_64")
        .map(|m| m.len().to_string())
        .unwrap_or_default();
    format!("{}-{qemu}", kernel.trim())
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn resolve_base(&self, recipe: &Recipe, arch: Arch) -> Result<BaseImage> {
        let spec = self.base_spec(recipe, arch)?;
        Ok(BaseImage {
            id: format!("base-{}", &spec.digest()[..16]),
            source: spec.describe(),
            join: None,
        })
    }

    async fn find_image(
        &self,
        recipe: &str,
        arch: Arch,
        key: &BakeKey,
    ) -> Result<Option<ImageRecord>> {
        self.store.find(recipe, arch, key)
    }

    async fn package_manifest(&self, image_id: &str) -> Result<Option<String>> {
        let path = self.store.files(image_id).packages;
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    async fn image_in_use(&self, image_id: &str) -> Result<Option<String>> {
        // A VM of a live run may be booted from it (a canary overlay backed by the image).
        let work = self.state_dir.join("work");
        let disk = self.store.files(image_id).disk;
        for entry in walk_files(&work) {
            if entry.extension().is_some_and(|e| e == "qcow2") {
                if let Ok(info) = cmd::run(
                    "qemu-img",
                    &[
                        "info".into(),
                        "--output=json".into(),
                        "-U".into(),
                        entry.display().to_string(),
                    ],
                    None,
                )
                .await
                {
                    if info.contains(&*disk.display().to_string()) {
                        return Ok(Some(format!(
                            "backs the running VM disk {}",
                            entry.display()
                        )));
                    }
                }
            }
        }
        Ok(None)
    }

    async fn delete_image(&self, image_id: &str) -> Result<()> {
        self.store.remove(image_id)
    }

    async fn leftovers(
        &self,
        live: &std::collections::BTreeSet<String>,
        published: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<Leftover>> {
        let mut out = Vec::new();
        let validated: std::collections::BTreeSet<String> = self
            .store
            .records()?
            .into_iter()
            .filter(|i| i.status == ImageStatus::Validated)
            .map(|i| i.id)
            .collect();
        for (run_id, entries) in crate::journal::Journal::all(&self.state_dir)? {
            if live.contains(&run_id) {
                continue;
            }
            for r in Journal::outstanding(&entries) {
                let gone = "already gone; recorded as removed";
                let action = match r.kind.as_str() {
                    "overlay" | "file" if Path::new(&r.id).exists() => {
                        "delete the file".to_string()
                    }
                    "vm" => match vm_pid(&r.id) {
                        Some(pid) if qemu_running(pid, &r.id) => format!("kill QEMU (pid {pid})"),
                        _ => gone.to_string(),
                    },
                    "image" if published.contains(&r.id) => continue,
                    "image" if self.store.files(&r.id).disk.exists() => {
                        "delete the unpublished image".to_string()
                    }
                    _ => gone.to_string(),
                };
                let reusable = r.kind == "image" && validated.contains(&r.id);
                out.push(Leftover {
                    kind: r.kind,
                    id: r.id,
                    run_id: run_id.clone(),
                    recipe: r.recipe,
                    arch: Some(r.arch),
                    action,
                    reusable,
                });
            }
            let work = self.state_dir.join("work").join(&run_id);
            if work.exists() {
                out.push(Leftover {
                    kind: "work-dir".into(),
                    id: work.display().to_string(),
                    run_id: run_id.clone(),
                    recipe: String::new(),
                    arch: None,
                    action: "delete the directory".into(),
                    reusable: false,
                });
            }
        }
        Ok(out)
    }

    async fn remove_leftover(&self, l: &Leftover) -> Result<()> {
        match l.kind.as_str() {
            "overlay" | "file" | "work-dir" => store::remove_path(Path::new(&l.id)),
            "vm" => {
                if let Some(pid) = vm_pid(&l.id) {
                    if qemu_running(pid, &l.id) {
                        unsafe {
                            libc::kill(pid as i32, libc::SIGKILL);
                        }
                    }
                }
                if let Some(socket) = l.id.split(" pid ").next() {
                    let _ = std::fs::remove_file(socket);
                }
                Ok(())
            }
            "image" => self.store.remove(&l.id),
            other => Err(Error::provider(
                "local",
                format!("unknown leftover kind `{other}`"),
            )),
        }
    }

    async fn bake(&self, job: &BakeJob<'_>, cx: &StepContext<'_>) -> Result<ImageRecord> {
        let spec = self.base_spec(job.recipe, job.arch)?;
        let name = format!("{}-{}", job.recipe.name, job.arch);
        let mut state = State {
            work: self.state_dir.join("work").join(job.run_id).join(&name),
            logs: crate::journal::Journal::runs_dir(&self.state_dir)
                .join(job.run_id)
                .join(&name),
            ..State::default()
        };
        for d in [&state.work, &state.logs] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        let steps: Vec<Box<dyn Step<State> + '_>> = vec![
            Box::new(PrepareBase {
                spec,
                provider: self,
            }),
            Box::new(CreateDisk {
                role: Role::Builder,
            }),
            Box::new(BootVm {
                role: Role::Builder,
                provider: self,
                job,
            }),
            Box::new(InstallFiles {
                job,
                provider: self,
            }),
            Box::new(RunScripts {
                job,
                provider: self,
            }),
            Box::new(CapturePackages),
            Box::new(Shutdown { provider: self }),
            Box::new(StoreImage {
                provider: self,
                job,
            }),
            Box::new(CreateDisk { role: Role::Canary }),
            Box::new(BootVm {
                role: Role::Canary,
                provider: self,
                job,
            }),
            Box::new(Validate {
                job,
                provider: self,
            }),
        ];
        let runner = Runner {
            cleanup_timeout: self.settings.shutdown_timeout + Duration::from_secs(60),
        };
        let report = runner
            .run(&steps, &mut state, cx, |s| {
                s.verdict.as_ref().is_some_and(|v| v.accepted)
            })
            .await;
        // Sockets and overlays live in the work dir; logs stay under runs/.
        let _ = std::fs::remove_dir_all(&state.work);
        if let Some(parent) = state.work.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        let outcome = report.into_result()?;
        tracing::info!(recipe = %job.recipe.name, arch = %job.arch, ?outcome, "bake finished");
        state.record.ok_or_else(|| {
            Error::provider(
                "local",
                format!("{name}: the bake ended without an image record"),
            )
        })
    }
}

/// What the steps of one local bake share.
#[derive(Default)]
struct State {
    work: PathBuf,
    logs: PathBuf,
    base: Option<Base>,
    accel: Option<Accel>,
    builder_disk: Option<PathBuf>,
    canary_disk: Option<PathBuf>,
    builder: Option<(Vm, Option<Agent>)>,
    canary: Option<(Vm, Option<Agent>)>,
    kernel: Option<Vec<u8>>,
    initrd: Option<Vec<u8>>,
    packages: Option<String>,
    image: Option<ImageFiles>,
    verdict: Option<Verdict>,
    record: Option<ImageRecord>,
}

impl State {
    fn agent(&mut self, role: Role) -> Result<&mut Agent> {
        let slot = match role {
            Role::Builder => &mut self.builder,
            Role::Canary => &mut self.canary,
        };
        slot.as_mut().and_then(|(_, a)| a.as_mut()).ok_or_else(|| {
            Error::provider("local", format!("the {} VM is not running", role.as_str()))
        })
    }
}

fn step_err(cx: &StepContext<'_>, step: &str, message: impl Into<String>) -> Error {
    cx.error(step, message)
}

fn guest_env(cx: &StepContext<'_>) -> Vec<String> {
    vec![
        GUEST_PATH.to_string(),
        "HOME=/root".into(),
        "LANG=C.UTF-8".into(),
        "DEBIAN_FRONTEND=noninteractive".into(),
        format!("BAKE_RECIPE={}", cx.recipe),
        format!("BAKE_ARCH={}", cx.arch),
    ]
}

/// Runs a shell command in a VM and fails the step on a non-zero exit.
async fn sh(
    agent: &mut Agent,
    cx: &StepContext<'_>,
    step: &str,
    script: &str,
    timeout: Duration,
) -> Result<String> {
    let out = agent
        .exec("/bin/sh", &["-c", script], &guest_env(cx), timeout)
        .await
        .map_err(|e| step_err(cx, step, e.to_string()))?;
    if out.exit_code != 0 {
        return Err(step_err(
            cx,
            step,
            format!(
                "`{script}` exited {}: {}{}",
                out.exit_code,
                out.stdout.trim(),
                out.stderr.trim()
            ),
        ));
    }
    Ok(out.stdout)
}

struct PrepareBase<'a> {
    spec: BaseSpec,
    provider: &'a LocalProvider,
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
        let base = base::ensure(
            &self.spec,
            &self.provider.cache_dir,
            self.provider.settings.base_timeout,
        )
        .await?;
        tracing::info!(recipe = cx.recipe, arch = %cx.arch, "base ready in {}", qemu::since(start));
        state.base = Some(base);
        Ok(())
    }
}

struct CreateDisk {
    role: Role,
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
        .ok_or_else(|| step_err(cx, self.name(), "nothing to boot from"))?;
        let disk = state.work.join(format!("{}.qcow2", self.role.as_str()));
        // Journal first: the overlay may exist even if qemu-img fails half way.
        cx.created("overlay", &disk.display().to_string())?;
        match self.role {
            Role::Builder => state.builder_disk = Some(disk.clone()),
            Role::Canary => state.canary_disk = Some(disk.clone()),
        }
        cmd::run(
            "qemu-img",
            &[
                "create".into(),
                "-q".into(),
                "-f".into(),
                "qcow2".into(),
                "-b".into(),
                backing.display().to_string(),
                "-F".into(),
                "qcow2".into(),
                disk.display().to_string(),
            ],
            None,
        )
        .await?;
        Ok(())
    }
    async fn cleanup(
        &self,
        state: &mut State,
        _outcome: Outcome,
        cx: &StepContext<'_>,
    ) -> Result<()> {
        let disk = match self.role {
            Role::Builder => state.builder_disk.take(),
            Role::Canary => state.canary_disk.take(),
        };
        if let Some(disk) = disk {
            store::remove_path(&disk)?;
            cx.removed("overlay", &disk.display().to_string())?;
        }
        Ok(())
    }
}

struct BootVm<'a> {
    role: Role,
    provider: &'a LocalProvider,
    job: &'a BakeJob<'a>,
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
                    state.builder_disk.clone(),
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
                    state.canary_disk.clone(),
                )
            }
        };
        Ok(VmSpec {
            name: self.role.as_str().to_string(),
            arch: self.job.arch,
            accel,
            memory_mib: self.provider.settings.memory_mib,
            cpus: self.provider.cpus,
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
        let instance_id = format!("i-{}", &hex::encode(rand::random::<[u8; 9]>())[..17]);
        let path = seed::write(
            &state.work,
            self.role.as_str(),
            &seed::Seed {
                instance_id: &instance_id,
                hostname: &format!("bake-{}", self.role.as_str()),
                user_data: &crate::user_data::dead_man_text(self.role.as_str(), self.lifetime()),
            },
        )
        .await?;
        Ok(Drive {
            path,
            format: "raw",
            serial: "bake-seed".into(),
        })
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
        let mut vm = Vm::start(&spec)?;
        cx.created("vm", &format!("{} pid {}", vm.socket.display(), vm.pid))?;
        let started = Instant::now();
        let agent = vm.agent(timeout).await;
        let slot = match self.role {
            Role::Builder => &mut state.builder,
            Role::Canary => &mut state.canary,
        };
        match agent {
            Ok(agent) => {
                tracing::info!(recipe = cx.recipe, arch = %cx.arch, vm = self.role.as_str(), %accel, "guest agent answered after {}", qemu::since(started));
                *slot = Some((vm, Some(agent)));
                Ok(())
            }
            Err(e) => {
                let stderr = if vm.running() {
                    String::new()
                } else {
                    vm.stderr_tail().await
                };
                *slot = Some((vm, None));
                Err(if stderr.trim().is_empty() {
                    e
                } else {
                    Error::provider("local", format!("{e}\nQEMU said: {}", stderr.trim()))
                })
            }
        }
    }

    async fn stop(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let slot = match self.role {
            Role::Builder => &mut state.builder,
            Role::Canary => &mut state.canary,
        };
        if let Some((mut vm, agent)) = slot.take() {
            drop(agent);
            vm.kill().await;
            cx.removed("vm", &format!("{} pid {}", vm.socket.display(), vm.pid))?;
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

struct InstallFiles<'a> {
    job: &'a BakeJob<'a>,
    provider: &'a LocalProvider,
}

#[async_trait]
impl Step<State> for InstallFiles<'_> {
    fn name(&self) -> &str {
        "install-files"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let timeout = self.provider.settings.step_timeout;
        let agent = state.agent(Role::Builder)?;
        sh(
            agent,
            cx,
            self.name(),
            &format!("mkdir -p {STAGING}"),
            timeout,
        )
        .await?;
        for (i, f) in self.job.recipe.files.iter().enumerate() {
            cx.phase(&format!(
                "file {}/{} {}",
                i + 1,
                self.job.recipe.files.len(),
                f.dest
            ));
            let parent = Path::new(&f.dest)
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "/".into());
            sh(
                agent,
                cx,
                self.name(),
                &format!("mkdir -p '{parent}'"),
                timeout,
            )
            .await?;
            agent
                .write_file(&f.dest, &f.content)
                .await
                .map_err(|e| step_err(cx, self.name(), format!("writing {}: {e}", f.dest)))?;
            let got = sh(
                agent,
                cx,
                self.name(),
                &format!("chmod {:o} '{}' && sha256sum '{}'", f.mode, f.dest, f.dest),
                timeout,
            )
            .await?;
            if !got.starts_with(&f.sha256) {
                return Err(step_err(
                    cx,
                    self.name(),
                    format!("{} arrived with a different sha256: {}", f.dest, got.trim()),
                ));
            }
        }
        Ok(())
    }
}

struct RunScripts<'a> {
    job: &'a BakeJob<'a>,
    provider: &'a LocalProvider,
}

#[async_trait]
impl Step<State> for RunScripts<'_> {
    fn name(&self) -> &str {
        "steps"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let steps = &self.job.recipe.steps;
        let logs = state.logs.clone();
        let agent = state.agent(Role::Builder)?;
        for (i, step) in steps.iter().enumerate() {
            cx.phase(&format!("step {}/{} {}", i + 1, steps.len(), step.name));
            let path = format!("{STAGING}/{:02}-{}", i + 1, step.name);
            agent
                .write_file(&path, &step.content)
                .await
                .map_err(|e| step_err(cx, &step.name, format!("uploading {}: {e}", step.script)))?;
            let timeout = step.timeout.unwrap_or(self.provider.settings.step_timeout);
            let start = Instant::now();
            let out = agent
                .exec(
                    "/bin/sh",
                    &["-c", &format!("chmod 0700 '{path}' && exec '{path}'")],
                    &guest_env(cx),
                    timeout,
                )
                .await
                .map_err(|e| step_err(cx, &step.name, e.to_string()))?;
            let log = logs.join(format!("{:02}-{}.log", i + 1, step.name));
            let _ = std::fs::write(
                &log,
                format!(
                    "# step {} ({}) exit {} in {}\n## stdout\n{}\n## stderr\n{}",
                    step.name,
                    step.script,
                    out.exit_code,
                    qemu::since(start),
                    out.stdout,
                    out.stderr
                ),
            );
            if out.exit_code != 0 {
                let tail: Vec<&str> = out
                    .stderr
                    .lines()
                    .chain(out.stdout.lines())
                    .rev()
                    .take(8)
                    .collect();
                return Err(step_err(
                    cx,
                    &step.name,
                    format!(
                        "{} exited {} (log: {}):\n{}",
                        step.script,
                        out.exit_code,
                        log.display(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ),
                ));
            }
        }
        sh(
            agent,
            cx,
            self.name(),
            &format!("rm -rf {STAGING}"),
            self.provider.settings.step_timeout,
        )
        .await?;
        Ok(())
    }
}

struct CapturePackages;

#[async_trait]
impl Step<State> for CapturePackages {
    fn name(&self) -> &str {
        "packages"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        cx.phase("package manifest and kernel");
        let agent = state.agent(Role::Builder)?;
        let list = sh(
            agent,
            cx,
            self.name(),
            "dpkg-query -W -f='${Package}\\t${Version}\\t${Architecture}\\n' | sort",
            Duration::from_secs(120),
        )
        .await?;
        let kernel = agent
            .read_file("/vmlinuz")
            .await
            .map_err(|e| step_err(cx, self.name(), format!("reading /vmlinuz: {e}")))?;
        let initrd = agent
            .read_file("/initrd.img")
            .await
            .map_err(|e| step_err(cx, self.name(), format!("reading /initrd.img: {e}")))?;
        state.packages = Some(list);
        state.kernel = Some(kernel);
        state.initrd = Some(initrd);
        Ok(())
    }
}

struct Shutdown<'a> {
    provider: &'a LocalProvider,
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
            .builder
            .as_mut()
            .ok_or_else(|| step_err(cx, "shutdown", "the builder is not running"))?;
        if let Some(mut a) = agent.take() {
            a.shutdown()
                .await
                .map_err(|e| step_err(cx, "shutdown", e.to_string()))?;
        }
        // Never poll the agent while the guest goes down: wait for QEMU to exit.
        if !vm.wait_exit(timeout).await {
            return Err(step_err(
                cx,
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

struct StoreImage<'a> {
    provider: &'a LocalProvider,
    job: &'a BakeJob<'a>,
}

#[async_trait]
impl Step<State> for StoreImage<'_> {
    fn name(&self) -> &str {
        "store-image"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        cx.phase("snapshot: flattening the builder disk into the image store");
        let store = &self.provider.store;
        std::fs::create_dir_all(store.dir())
            .map_err(|e| Error::io(format!("creating {}", store.dir().display()), e))?;
        let disk = state
            .builder_disk
            .clone()
            .ok_or_else(|| step_err(cx, self.name(), "no builder disk"))?;
        let tmp = store.dir().join(format!(
            "tmp-{}-{}-{}.qcow2",
            self.job.run_id, cx.recipe, cx.arch
        ));
        cx.created("file", &tmp.display().to_string())?;
        let flattened = cmd::run(
            "qemu-img",
            &[
                "convert".into(),
                "-O".into(),
                "qcow2".into(),
                disk.display().to_string(),
                tmp.display().to_string(),
            ],
            None,
        )
        .await;
        if let Err(e) = flattened {
            let _ = std::fs::remove_file(&tmp);
            cx.removed("file", &tmp.display().to_string())?;
            return Err(e);
        }
        let digest = {
            let path = tmp.clone();
            tokio::task::spawn_blocking(move || file_sha256(&path))
                .await
                .map_err(|e| Error::provider("local", e.to_string()))?
                .map_err(|e| Error::io(format!("hashing {}", tmp.display()), e))?
        };
        let files = store.files(&Store::id_for(&digest));
        cx.created("image", &files.id)?;
        state.image = Some(files.clone());
        let write = |p: &Path, b: &[u8]| {
            std::fs::write(p, b).map_err(|e| Error::io(format!("writing {}", p.display()), e))
        };
        write(&files.kernel, state.kernel.as_deref().unwrap_or_default())?;
        write(&files.initrd, state.initrd.as_deref().unwrap_or_default())?;
        write(
            &files.packages,
            state.packages.as_deref().unwrap_or_default().as_bytes(),
        )?;
        std::fs::rename(&tmp, &files.disk)
            .map_err(|e| Error::io(format!("moving {} into the store", tmp.display()), e))?;
        cx.removed("file", &tmp.display().to_string())?;
        tracing::info!(recipe = cx.recipe, arch = %cx.arch, image = %files.id, "image stored");
        Ok(())
    }
    async fn cleanup(
        &self,
        state: &mut State,
        outcome: Outcome,
        cx: &StepContext<'_>,
    ) -> Result<()> {
        if let Some(files) = &state.image {
            if outcome.discards_image() {
                self.provider.store.remove(&files.id)?;
                cx.removed("image", &files.id)?;
                state.record = None;
            }
        }
        Ok(())
    }
}

fn file_sha256(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

struct Validate<'a> {
    job: &'a BakeJob<'a>,
    provider: &'a LocalProvider,
}

#[async_trait]
impl Step<State> for Validate<'_> {
    fn name(&self) -> &str {
        "validate"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let validators = &self.job.recipe.validators;
        let logs = state.logs.clone();
        let timeout = self.provider.settings.step_timeout;
        let agent = state.agent(Role::Canary)?;
        let dir = "/var/lib/bake-validators";
        sh(agent, cx, self.name(), &format!("mkdir -p {dir}"), timeout).await?;
        let prepare = format!("{dir}/.prepare-canary");
        agent
            .write_file(&prepare, crate::canary::PREPARE_SCRIPT.as_bytes())
            .await
            .map_err(|e| {
                step_err(
                    cx,
                    self.name(),
                    format!("uploading the prepare script: {e}"),
                )
            })?;
        let devices = [format!(
            "/dev/disk/by-id/virtio-{}",
            crate::canary::LOCAL_IMAGE_SERIAL
        )];
        let prepared = crate::canary::Prepared::parse(
            &sh(
                agent,
                cx,
                self.name(),
                &crate::canary::prepare_command(&prepare, &devices),
                timeout,
            )
            .await?,
        );
        tracing::info!(recipe = cx.recipe, arch = %cx.arch, os = %prepared.os(), image_root = ?prepared.image_root, "canary prepared");
        let planned = crate::canary::plan(
            validators,
            &prepared,
            Some("needs a joined cluster node; the local provider has no cluster"),
        );
        let mut results = Vec::new();
        for (i, p) in planned.into_iter().enumerate() {
            let (v, extra) = match p {
                crate::canary::Planned::Settled(r) => {
                    r.log(cx.recipe, cx.arch);
                    results.push(r);
                    continue;
                }
                crate::canary::Planned::Run(v, extra) => (v, extra),
            };
            cx.phase(&format!(
                "validator {}/{} {}",
                i + 1,
                validators.len(),
                v.name
            ));
            let path = format!("{dir}/{}", v.name);
            // A validator that could not run (the agent failed) fails the bake, which retries
            // next time; only the validator's own verdict may reject the image.
            agent.write_file(&path, &v.content).await.map_err(|e| {
                step_err(
                    cx,
                    self.name(),
                    format!("validator {}: could not upload the script: {e}", v.name),
                )
            })?;
            let mut env = guest_env(cx);
            env.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
            let out = agent
                .exec(
                    "/bin/sh",
                    &["-c", &format!("chmod 0700 '{path}' && exec '{path}'")],
                    &env,
                    timeout,
                )
                .await
                .map_err(|e| {
                    step_err(
                        cx,
                        self.name(),
                        format!("validator {} could not run: {e}", v.name),
                    )
                })?;
            let result = crate::validate::judged(&v.name, out.exit_code, &out.stdout, &out.stderr)
                .map_err(|why| step_err(cx, self.name(), why))?;
            let _ = std::fs::write(
                logs.join(format!("validator-{}.log", v.name)),
                format!(
                    "# {} {:?} {}\n{}",
                    v.name,
                    result.status,
                    result.reason.clone().unwrap_or_default(),
                    result.output
                ),
            );
            result.log(cx.recipe, cx.arch);
            results.push(result);
        }
        let verdict = Verdict::decide(results);
        let files = state
            .image
            .clone()
            .ok_or_else(|| step_err(cx, self.name(), "no image"))?;
        let packages = state.packages.as_deref().map(|p| sha256_hex(p.as_bytes()));
        let record = ImageRecord {
            id: files.id.clone(),
            recipe: cx.recipe.to_string(),
            arch: cx.arch,
            key: self.job.key.clone(),
            base: self.job.base.id.clone(),
            status: if verdict.accepted {
                ImageStatus::Validated
            } else {
                ImageStatus::Rejected
            },
            run_id: self.job.run_id.to_string(),
            created_at: Utc::now(),
            verdict: verdict.clone(),
            packages_sha256: packages,
            copies: Default::default(),
        };
        self.provider.store.write_record(&record)?;
        if !verdict.accepted {
            cx.phase(&format!("rejected: {}", verdict.blockers().join("; ")));
        }
        state.verdict = Some(verdict);
        state.record = Some(record);
        Ok(())
    }
}
