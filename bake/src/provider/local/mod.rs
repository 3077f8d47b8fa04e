//! The local provider: bakes offline (the recipe applied in a chroot of the disk, no VM) or,
//! with `builder = "vm"`, in a QEMU VM driven through the guest agent; proves the image on a
//! separate canary VM; and keeps images in a local store. KVM when a probe boot shows it
//! works, TCG otherwise.

pub mod base;
mod chain;
mod chroot;
mod cmd;
mod fleet;
mod image;
mod leftovers;
mod machine;
mod native;
mod offline;
pub mod qemu;
pub mod qga;
mod seed;
mod state;
pub mod store;

use self::base::BaseSpec;
use self::qemu::Accel;
use self::store::Store;
use super::{BakeJob, BaseImage, ImageRecord, Provider};
use crate::input::pipeline::{self, LocalSettings};
use crate::input::recipe::Recipe;
use crate::key::BakeKey;
use crate::kube::KubeVersion;
use crate::provider::Leftover;
use crate::steps::StepContext;
use crate::{Arch, Error, Result};
use async_trait::async_trait;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

pub struct LocalProvider {
    settings: LocalSettings,
    /// The host's cores, which `cpus = "auto"` shares among the arches baking at the moment.
    host_cores: usize,
    /// Arches whose bake is under way in this process (see [`LocalProvider::vcpus`]).
    baking: AtomicUsize,
    /// Where recipes are applied, `settings.builder` resolved for this host.
    builder: pipeline::Builder,
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
    pub fn new(settings: LocalSettings, state_dir: &Path) -> Result<LocalProvider> {
        // Absolute, because qcow2 overlays record their backing file's path.
        let state_dir = std::path::absolute(state_dir)
            .map_err(|e| Error::io(format!("resolving state dir {}", state_dir.display()), e))?;
        Ok(LocalProvider {
            host_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            baking: AtomicUsize::new(0),
            builder: settings.builder.resolve(),
            settings,
            store: Store::new(&state_dir),
            state_dir,
            cache_dir: cache_dir(),
            accel: Mutex::new(Vec::new()),
        })
    }

    /// vCPUs for a VM booting now: `settings.cpus`, or for `auto` the host's cores shared
    /// among the arches baking now (an arch's VMs take turns), so a canary that boots after the
    /// other arch has finished — a cold arm64 base outlasts a whole x86_64 bake — gets them all.
    fn vcpus(&self) -> u32 {
        let baking = self.baking.load(Ordering::SeqCst);
        self.settings.cpus.resolve(self.host_cores, baking)
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
                .unwrap_or(crate::input::recipe::DEFAULT_SIZE_GIB),
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
    /// No long-lived nodes: `bake audit` boots the images channels point at (see fleet.rs).
    fn fleet(&self) -> Option<&dyn crate::provider::Fleet> {
        Some(self)
    }

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

    async fn kubernetes_version(&self, _eks_cluster: &str) -> Result<Option<KubeVersion>> {
        // Local clusters are names for channels; there is no control plane to ask.
        Ok(None)
    }

    async fn image_in_use(&self, image_id: &str) -> Result<Option<String>> {
        // A VM of a live run may be booted from it (a canary overlay backed by the image).
        let work = crate::state_dir::StateDir(&self.state_dir).work();
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
        self.find_leftovers(live, published)
    }

    async fn remove_leftover(&self, l: &Leftover) -> Result<()> {
        self.remove(l)
    }

    async fn bake(&self, job: &BakeJob<'_>, cx: &StepContext<'_>) -> Result<ImageRecord> {
        let _baking = Baking::start(&self.baking);
        self.bake_chain(job, cx).await
    }
}

/// One arch's bake counted in [`LocalProvider::baking`] for as long as it lasts, however it ends.
struct Baking<'a>(&'a AtomicUsize);

impl<'a> Baking<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Baking(count)
    }
}

impl Drop for Baking<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `auto` shares the cores among the arches baking when a VM boots: the arch that outlasts
    /// the other (a cold arm64 base) boots its VMs with every core.
    #[test]
    fn auto_vcpus_follow_the_arches_baking_now() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = LocalProvider::new(LocalSettings::default(), dir.path()).unwrap();
        p.host_cores = 2;
        let x86 = Baking::start(&p.baking);
        let arm = Baking::start(&p.baking);
        assert_eq!(p.vcpus(), 1, "two arches baking share two cores");
        drop(x86);
        assert_eq!(p.vcpus(), 2, "the arch left baking gets both");
        drop(arm);
        assert_eq!(p.baking.load(Ordering::SeqCst), 0);
        p.settings.cpus = crate::input::pipeline::Cpus::Count(3);
        let _one = Baking::start(&p.baking);
        assert_eq!(p.vcpus(), 3, "a count is a count");
    }
}
