//! One local bake as a list of steps that reads like a sentence, and the state they share.
//! The steps that work inside a VM are the provider-neutral ones (`crate::steps::provision`,
//! `crate::steps::validators`) over the QEMU guest agent.

use super::image::{BootFiles, StoreImage, StoreRecord};
use super::machine::{BootVm, CreateDisk, PrepareBase, Shutdown};
use super::offline::OpenChroot;
use super::state::State;
use super::LocalProvider;
use crate::input::pipeline::Builder;
use crate::provider::{BakeJob, ImageRecord, Role};
use crate::state_dir::StateDir;
use crate::steps::provision::{CapturePackages, InstallFiles, RunSteps};
use crate::steps::validators::{Software, Validate};
use crate::steps::{Runner, Step, StepContext};
use crate::{Error, Result};
use std::time::Duration;

impl LocalProvider {
    /// Bakes and proves one image: base → builder disk → open the builder (a chroot of the
    /// disk, or a booted VM) → install files → run steps → capture packages → boot files →
    /// (shut the VM down) → store the image → canary disk → boot → validate.
    ///
    /// Long because it is the one literal list of steps (as Packer's builder.go lists its own),
    /// each with its arguments in place: a reader sees the whole chain in one screen-full.
    pub(super) async fn bake_chain(
        &self,
        job: &BakeJob<'_>,
        cx: &StepContext<'_>,
    ) -> Result<ImageRecord> {
        let spec = self.base_spec(job.recipe, job.arch)?;
        let name = format!("{}-{}", job.recipe.name, job.arch);
        let mut state = State {
            work: StateDir(&self.state_dir).work_of(job.run_id).join(&name),
            logs: cx.log_dir(),
            ..State::default()
        };
        std::fs::create_dir_all(&state.work)
            .map_err(|e| Error::io(format!("creating {}", state.work.display()), e))?;
        let s = &self.settings;
        let recorder = StoreRecord {
            provider: self,
            job,
        };
        let validate = Validate {
            software: Software::AsBaked,
            validators: &job.recipe.validators,
            timeout: s.step_timeout,
            join_timeout: None,
            no_cluster: Some("needs a joined cluster node; the local provider has no cluster"),
            cluster: None,
            pods: None,
            poll_interval: Duration::from_secs(5),
            recorder: &recorder,
        };
        let (builder, canary) = (Role::Builder, Role::Canary);
        let timeout = s.step_timeout;
        // One step per line, in the order they run: the chain reads as the bake does.
        let offline = self.builder == Builder::Offline;
        let mut steps: Vec<Box<dyn Step<State> + '_>> = vec![Box::new(PrepareBase {
            spec,
            provider: self,
        })];
        steps.push(Box::new(CreateDisk {
            role: builder,
            raw: offline,
        }));
        if offline {
            steps.push(Box::new(OpenChroot { timeout }));
        } else {
            steps.push(Box::new(BootVm {
                role: builder,
                provider: self,
                job,
            }));
        }
        #[rustfmt::skip]
        steps.extend::<[Box<dyn Step<State> + '_>; 4]>([
            Box::new(InstallFiles { files: &job.recipe.files, timeout }),
            Box::new(RunSteps { steps: &job.recipe.steps, timeout }),
            Box::new(CapturePackages { role: builder, timeout }),
            Box::new(BootFiles),
        ]);
        if !offline {
            steps.push(Box::new(Shutdown { provider: self }));
        }
        #[rustfmt::skip]
        steps.extend::<[Box<dyn Step<State> + '_>; 4]>([
            Box::new(StoreImage { provider: self, job }),
            Box::new(CreateDisk { role: canary, raw: false }),
            Box::new(BootVm { role: canary, provider: self, job }),
            Box::new(validate),
        ]);
        let runner = Runner {
            cleanup_timeout: s.shutdown_timeout + Duration::from_secs(60),
        };
        let report = runner
            .run(&steps, &mut state, cx, |s| s.made.validated())
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
