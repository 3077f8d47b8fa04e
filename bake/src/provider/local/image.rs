//! The image of a local bake: the builder's kernel and initrd (its boot files), the builder
//! disk flattened into the image store under the ID of its sha256, and the verdict recorded
//! beside it. An image is removed again when the bake fails or is interrupted before a
//! verdict validated it.

use super::state::State;
use super::store::Store;
use super::{cmd, LocalProvider};
use crate::journal::Kind;
use crate::provider::{BakeJob, ImageRecord, Role};
use crate::steps::validators::RecordVerdict;
use crate::steps::{Outcome, Step, StepContext};
use crate::verdict::Verdict;
use crate::{Error, Result};
use async_trait::async_trait;
use std::path::Path;

/// Reads the builder's kernel and initrd, which the canary boots directly: from the image's
/// filesystem for the offline builder, through the guest agent from a builder VM.
pub(super) struct BootFiles;

#[async_trait]
impl Step<State> for BootFiles {
    fn name(&self) -> &str {
        "boot-files"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        cx.phase("kernel and initrd");
        let mut files = Vec::new();
        if let Some(chroot) = &state.chroot {
            let label = format!("{} {} boot files", cx.recipe, cx.arch);
            for path in ["/vmlinuz", "/initrd.img"] {
                files.push(
                    chroot
                        .read_file(&label, path)
                        .await
                        .map_err(|e| cx.error(self.name(), e.to_string()))?,
                );
            }
        } else {
            let (_, agent) = state
                .vms
                .slot(Role::Builder)
                .as_mut()
                .ok_or_else(|| cx.error(self.name(), "the builder is not running"))?;
            let agent = agent
                .as_mut()
                .ok_or_else(|| cx.error(self.name(), "the builder's agent is gone"))?;
            for path in ["/vmlinuz", "/initrd.img"] {
                files.push(
                    agent
                        .read_file(path)
                        .await
                        .map_err(|e| cx.error(self.name(), format!("reading {path}: {e}")))?,
                );
            }
        }
        state.initrd = files.pop();
        state.kernel = files.pop();
        Ok(())
    }
}

/// Flattens the builder's disk (the stopped VM's overlay, or the offline builder's raw disk)
/// into the image store, named by its sha256.
pub(super) struct StoreImage<'a> {
    pub provider: &'a LocalProvider,
    pub job: &'a BakeJob<'a>,
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
            .disks
            .get(Role::Builder)
            .cloned()
            .ok_or_else(|| cx.error(self.name(), "no builder disk"))?;
        let tmp = store.dir().join(format!(
            "tmp-{}-{}-{}.qcow2",
            self.job.run_id, cx.recipe, cx.arch
        ));
        cx.created(Kind::File, &tmp.display().to_string())?;
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
            cx.removed(Kind::File, &tmp.display().to_string())?;
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
        cx.created(Kind::Image, &files.id)?;
        state.image = Some(files.clone());
        let write = |p: &Path, b: &[u8]| {
            std::fs::write(p, b).map_err(|e| Error::io(format!("writing {}", p.display()), e))
        };
        write(&files.kernel, state.kernel.as_deref().unwrap_or_default())?;
        write(&files.initrd, state.initrd.as_deref().unwrap_or_default())?;
        write(
            &files.packages,
            state
                .made
                .packages
                .as_deref()
                .unwrap_or_default()
                .as_bytes(),
        )?;
        std::fs::rename(&tmp, &files.disk)
            .map_err(|e| Error::io(format!("moving {} into the store", tmp.display()), e))?;
        cx.removed(Kind::File, &tmp.display().to_string())?;
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
            if outcome.discards_image() && !state.made.validated() {
                self.provider.store.remove(&files.id)?;
                cx.removed(Kind::Image, &files.id)?;
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

/// Writes the verdict into the image's record in the store: what `find_image` reads back.
pub(super) struct StoreRecord<'a> {
    pub provider: &'a LocalProvider,
    pub job: &'a BakeJob<'a>,
}

#[async_trait]
impl RecordVerdict<State> for StoreRecord<'_> {
    async fn record(
        &self,
        state: &mut State,
        verdict: &Verdict,
        cx: &StepContext<'_>,
    ) -> Result<()> {
        let files = state
            .image
            .as_ref()
            .ok_or_else(|| cx.error("validate", "no image"))?;
        let record = ImageRecord::judged(self.job, files.id.clone(), verdict, &state.made);
        self.provider.store.write_record(&record)?;
        state.record = Some(record);
        Ok(())
    }
}
