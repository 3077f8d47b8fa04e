//! One AWS bake as a list of steps that reads like a sentence, per engine, and the state the
//! steps share. The steps that work inside an instance are the provider-neutral ones
//! (`crate::steps::provision`, `crate::steps::validators`) over SSM RunCommand.

use super::create::{CreateImage, ImageBuilderBuild, TagVerdict};
use super::distribute::{CopyToRegions, Share};
use super::image_copy::AttachImageCopy;
use super::launch::{Agent, Launch, SecurityGroup, StopBuilder, Terminate};
use super::ssm::MAX_INLINE_FILE;
use super::state::State;
use super::AwsProvider;
use crate::input::pipeline::Engine;
use crate::provider::{BakeJob, ImageRecord, Role};
use crate::steps::provision::{CapturePackages, InstallFiles, RunSteps};
use crate::steps::validators::{Software, Validate};
use crate::steps::{Runner, Step, StepContext};
use crate::{Error, Result};
use std::time::Duration;

type Chain<'a> = Vec<Box<dyn Step<State> + 'a>>;

impl AwsProvider {
    /// Bakes, proves and distributes one image: the whole chain of the pipeline's engine.
    ///
    /// Long because it is the one literal list of steps (as Packer's builder.go lists its own),
    /// each with its arguments in place: a reader sees the whole chain in one screen-full.
    pub(super) async fn bake_chain(
        &self,
        job: &BakeJob<'_>,
        cx: &StepContext<'_>,
    ) -> Result<ImageRecord> {
        for f in &job.recipe.files {
            if f.content.len() > MAX_INLINE_FILE {
                return Err(Error::Usage(format!(
                    "{}: file {} is {} bytes; the AWS provider installs files through SSM commands, limited to {MAX_INLINE_FILE}",
                    job.recipe.file.display(),
                    f.source,
                    f.content.len()
                )));
            }
        }
        let s = &self.settings;
        let recorder = TagVerdict { p: self, job };
        let no_cluster = self
            .canary_cluster
            .is_none()
            .then_some("needs a joined cluster node; the pipeline names no [canary] cluster");
        let nodes = self
            .canary_cluster
            .as_deref()
            .map(|c| super::cluster_api::EksNodes::new(self, c));
        let validate = Validate {
            // Image Builder builds out of bake's reach: the manifest is read on the canary
            // itself, after its first boot, so there is nothing earlier to compare it with.
            software: match s.engine {
                Engine::Ec2 => Software::AsBaked,
                Engine::Imagebuilder => Software::NotApplicable(
                    "Image Builder built the image out of bake's reach: its package manifest is read on this canary",
                ),
            },
            validators: &job.recipe.validators,
            timeout: s.command_timeout,
            join_timeout: Some(s.join_timeout),
            no_cluster,
            cluster: nodes
                .as_ref()
                .map(|n| n as &dyn crate::steps::node_ready::ClusterNodes),
            pods: nodes
                .as_ref()
                .map(|n| (n as &dyn crate::steps::pod_network::ClusterPods, &self.probe)),
            poll_interval: s.poll_interval,
            recorder: &recorder,
        };
        let (builder, canary) = (Role::Builder, Role::Canary);
        let timeout = s.command_timeout;
        // One step per line, in the order they run: the chain reads as the bake does.
        #[rustfmt::skip]
        let steps: Chain<'_> = match s.engine {
            Engine::Ec2 => vec![
                Box::new(SecurityGroup { p: self, job }),
                Box::new(Launch { p: self, job, role: builder }),
                Box::new(Agent { p: self, role: builder }),
                Box::new(InstallFiles { files: &job.recipe.files, timeout }),
                Box::new(RunSteps { steps: &job.recipe.steps, timeout }),
                Box::new(CapturePackages { role: builder, timeout }),
                Box::new(StopBuilder { p: self }),
                Box::new(CreateImage { p: self, job }),
                Box::new(Terminate { p: self, role: builder }),
                Box::new(Launch { p: self, job, role: canary }),
                Box::new(Agent { p: self, role: canary }),
                Box::new(AttachImageCopy { p: self, job }),
                Box::new(validate),
                Box::new(Terminate { p: self, role: canary }),
                Box::new(CopyToRegions { p: self }),
                Box::new(Share { p: self }),
            ],
            // Image Builder builds out of bake's reach: the package manifest is the canary's.
            Engine::Imagebuilder => vec![
                Box::new(ImageBuilderBuild { p: self, job }),
                Box::new(SecurityGroup { p: self, job }),
                Box::new(Launch { p: self, job, role: canary }),
                Box::new(Agent { p: self, role: canary }),
                Box::new(AttachImageCopy { p: self, job }),
                Box::new(CapturePackages { role: canary, timeout }),
                Box::new(validate),
                Box::new(Terminate { p: self, role: canary }),
                Box::new(CopyToRegions { p: self }),
                Box::new(Share { p: self }),
            ],
        };
        self.run_chain(&steps, State::default(), cx).await
    }

    /// A validated image found by its key goes through the tail of the same chain, so a run
    /// that died after validation finishes the job.
    pub(super) async fn reuse_chain(
        &self,
        record: ImageRecord,
        cx: &StepContext<'_>,
    ) -> Result<ImageRecord> {
        let steps: Chain<'_> = vec![
            Box::new(CopyToRegions { p: self }),
            Box::new(Share { p: self }),
        ];
        self.run_chain(&steps, State::of_record(record), cx).await
    }

    /// Runs a chain and its cleanups; the image record the chain ended with.
    async fn run_chain(
        &self,
        steps: &Chain<'_>,
        mut state: State,
        cx: &StepContext<'_>,
    ) -> Result<ImageRecord> {
        let runner = Runner {
            cleanup_timeout: self.settings.instance_timeout + Duration::from_secs(60),
        };
        let report = runner
            .run(steps, &mut state, cx, |s| s.made.validated())
            .await;
        report.into_result()?;
        state.record.ok_or_else(|| {
            Error::provider(
                "aws",
                format!("{} {}: the bake ended without an image", cx.recipe, cx.arch),
            )
        })
    }
}
