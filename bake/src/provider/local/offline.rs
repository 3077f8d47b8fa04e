//! The offline builder's steps (see `chroot` for how a call reaches the disk): a raw copy of
//! the base as the builder disk, then the chroot guest opened on it and proved to answer.

use super::chroot::ChrootGuest;
use super::cmd;
use super::machine::remove_disk;
use super::state::State;
use crate::guest::Guest;
use crate::journal::Kind;
use crate::provider::Role;
use crate::steps::{Outcome, Step, StepContext};
use crate::{Error, Result};
use async_trait::async_trait;
use std::time::Duration;

/// The builder disk of an offline bake: a raw copy of the base (a loop device mounts raw
/// files only), which the image store flattens into a qcow2 afterwards.
pub(super) struct RawBuilderDisk;

#[async_trait]
impl Step<State> for RawBuilderDisk {
    fn name(&self) -> &str {
        "builder-disk"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let base = state
            .base
            .as_ref()
            .map(|b| b.disk.clone())
            .ok_or_else(|| cx.error(self.name(), "no base"))?;
        let disk = state.work.join("builder.raw");
        // Journal first: the copy may exist even if qemu-img fails half way.
        cx.created(Kind::Overlay, &disk.display().to_string())?;
        *state.disks.slot(Role::Builder) = Some(disk.clone());
        cmd::run(
            "qemu-img",
            &[
                "convert".into(),
                "-f".into(),
                "qcow2".into(),
                "-O".into(),
                "raw".into(),
                base.display().to_string(),
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
        remove_disk(state, Role::Builder, cx)
    }
}

/// Opens the offline builder on the builder disk and proves it answers (a loop mount and a
/// chroot that runs the image's own shell), so a host that cannot fails here, not mid-recipe.
pub(super) struct OpenChroot {
    pub timeout: Duration,
}

#[async_trait]
impl Step<State> for OpenChroot {
    fn name(&self) -> &str {
        "open-builder"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        cx.phase("builder: offline, a chroot of the image (no VM boot)");
        let disk = state
            .disks
            .get(Role::Builder)
            .cloned()
            .ok_or_else(|| cx.error(self.name(), "no builder disk"))?;
        let root = state.work.join("builder-root");
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        let mut guest = ChrootGuest::new(disk, root, state.work.clone());
        let label = format!("{} {} builder", cx.recipe, cx.arch);
        let probe = guest
            .run(&label, b"#!/bin/sh\nuname -m\n", &[], self.timeout)
            .await
            .map_err(|e| cx.error(self.name(), e.to_string()))?;
        if probe.exit_code != 0 {
            return Err(cx.error(
                self.name(),
                format!(
                    "the image's shell does not run in a chroot on this host (for an arm64 image: is the qemu-user binfmt handler registered? scripts/setup-host does it): {}",
                    probe.tail(4)
                ),
            ));
        }
        state.chroot = Some(guest);
        Ok(())
    }
    async fn cleanup(
        &self,
        state: &mut State,
        _outcome: Outcome,
        _cx: &StepContext<'_>,
    ) -> Result<()> {
        state.chroot = None;
        let _ = std::fs::remove_dir(state.work.join("builder-root"));
        Ok(())
    }
}
