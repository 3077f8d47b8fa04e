//! The offline builder's step (see `chroot` for how a call reaches the disk): the chroot guest
//! opened on the raw builder disk (`CreateDisk { raw: true }`) and proved to answer.

use super::chroot::ChrootGuest;
use super::state::State;
use crate::guest::Guest;
use crate::provider::Role;
use crate::steps::{Outcome, Step, StepContext};
use crate::{Error, Result};
use async_trait::async_trait;
use std::time::Duration;

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
