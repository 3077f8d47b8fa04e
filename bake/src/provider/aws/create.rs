//! The image of an AWS bake: made from the stopped builder (`ec2` engine) or by an Image
//! Builder build (`imagebuilder`), tagged with the validators' verdict, and deregistered with
//! its snapshots when the bake fails or is interrupted before a verdict validated it.

use super::state::State;
use super::{imagebuilder, tags, AwsProvider};
use crate::journal::Kind;
use crate::provider::aws::sdk::{err, Poll};
use crate::provider::{BakeJob, ImageRecord, Role};
use crate::steps::validators::RecordVerdict;
use crate::steps::{Outcome, Step, StepContext};
use crate::verdict::Verdict;
use crate::Result;
use async_trait::async_trait;
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};

pub(super) struct CreateImage<'a> {
    pub p: &'a AwsProvider,
    pub job: &'a BakeJob<'a>,
}

#[async_trait]
impl Step<State> for CreateImage<'_> {
    fn name(&self) -> &str {
        "create-image"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let p = self.p;
        let id = state
            .instances
            .get(Role::Builder)
            .cloned()
            .ok_or_else(|| cx.error(self.name(), "no builder"))?;
        cx.phase("creating the image");
        let name = format!(
            "bake-{}-{}-{}-{}",
            cx.recipe,
            cx.arch,
            self.job.key.short(),
            self.job.run_id
        );
        let mut tags = p.tags(self.job, "image");
        tags.push(Tag::builder().key("bake:status").value("pending").build());
        p.ec2_slot().await;
        // Image and snapshots are tagged at creation, so nothing of it is ever untagged (and
        // the IAM policy needs no right to tag what bake did not create).
        let r = p
            .ec2
            .create_image()
            .instance_id(&id)
            .name(&name)
            .description(format!(
                "bake {} {} key {}",
                cx.recipe,
                cx.arch,
                self.job.key.short()
            ))
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Image)
                    .set_tags(Some(tags))
                    .build(),
            )
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Snapshot)
                    .set_tags(Some(p.tags(self.job, "snapshot")))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                err(
                    format!("creating image {name} from {id} in {}", p.region),
                    e,
                )
            })?;
        let image = r.image_id().unwrap_or_default().to_string();
        cx.created(Kind::Image, &image)?;
        state.image = Some(image.clone());
        // Available several times in a row; fail fast on `failed`.
        state.snapshots = p
            .images()
            .wait_available(&image, p.image_wait())
            .await
            .map_err(|e| cx.error(self.name(), e.to_string()))?;
        for s in &state.snapshots {
            cx.created(Kind::Snapshot, s)?;
        }
        Ok(())
    }
    async fn cleanup(
        &self,
        state: &mut State,
        outcome: Outcome,
        cx: &StepContext<'_>,
    ) -> Result<()> {
        discard_image(self.p, state, outcome, cx).await
    }
}

/// Builds the image with Image Builder from the resources compiled from the recipe, then tags
/// the output AMI and its snapshots like the `ec2` engine's.
pub(super) struct ImageBuilderBuild<'a> {
    pub p: &'a AwsProvider,
    pub job: &'a BakeJob<'a>,
}

#[async_trait]
impl Step<State> for ImageBuilderBuild<'_> {
    fn name(&self) -> &str {
        "imagebuilder"
    }
    /// Long because the build's resources, its start, the watch over its states (with progress)
    /// and the tags on its output are one step: the build and the image go into the state as soon
    /// as they exist, for the cleanup.
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let p = self.p;
        let job = self.job;
        let root_volume = p.root_volume(&job.base.id).await?;
        let root = root_volume.device.clone();
        let size = job
            .recipe
            .volume_size_for(job.arch, &job.base.id, root_volume.size_gib)?;
        let res = imagebuilder::resources(
            job.recipe,
            job.arch,
            &job.base.id,
            &job.key,
            &root,
            size,
            &p.settings,
            &p.region,
        )?;
        let ib = p.image_builder();
        let tags: std::collections::BTreeMap<String, String> = [
            ("bake:recipe".to_string(), job.recipe.name.clone()),
            ("bake:arch".to_string(), job.arch.to_string()),
        ]
        .into();
        cx.phase("image builder: components, recipe, configurations");
        let (arns, done) = ib.ensure(&res, &tags).await?;
        for d in &done {
            tracing::info!(recipe = cx.recipe, arch = %cx.arch, kind = %d.kind, name = %d.name, action = %d.action, "image builder resource");
        }
        let mut run_tags = tags.clone();
        run_tags.insert("bake:run-id".into(), job.run_id.to_string());
        run_tags.insert("bake:key".into(), job.key.as_str().to_string());
        // What a sweep of this pipeline may end if the run dies; another pipeline's never.
        run_tags.insert(super::OWNER_TAG.into(), p.owner().to_string());
        let arn = ib
            .start(&arns, &run_tags, &format!("{}-{}", job.run_id, job.arch))
            .await?;
        cx.created(Kind::ImagebuilderBuild, &arn)?;
        state.build = Some(arn.clone());
        let poll = Poll::new(p.settings.poll_interval);
        let mut last = None;
        let built = loop {
            let (status, reason, ami) = ib.status(&arn).await?;
            let running = matches!(
                status,
                aws_sdk_imagebuilder::types::ImageStatus::Building
                    | aws_sdk_imagebuilder::types::ImageStatus::Testing
                    | aws_sdk_imagebuilder::types::ImageStatus::Distributing
            );
            let step = if running {
                ib.current_step(&arn).await
            } else {
                None
            };
            let shown = match &step {
                Some(s) => format!("image builder: {} ({s})", status.as_str()),
                None => format!("image builder: {}", status.as_str()),
            };
            if last.as_ref() != Some(&shown) {
                cx.phase(&shown);
                last = Some(shown);
            }
            if let Some(end) = imagebuilder::ended(&status, reason, ami, &p.region) {
                // Over, either way: nothing left to cancel.
                state.build_done = true;
                break end?;
            }
            if poll.elapsed() > p.settings.image_timeout {
                return Err(cx.error(
                    self.name(),
                    format!("build {arn} not done after {:?}", p.settings.image_timeout),
                ));
            }
            poll.tick().await;
        };
        let image = match built {
            imagebuilder::Built::Available(ami) => ami,
            imagebuilder::Built::Failed { status, reason } => {
                // A failure names its document ("Document arn:…:component/<name>/… failed!",
                // User Guide): each of bake's test components is one validator.
                let failed: Vec<&str> = res
                    .components
                    .iter()
                    .filter(|c| c.phase == "test" && reason.contains(&c.name.to_lowercase()))
                    .filter_map(|c| {
                        job.recipe.validators.iter().find(|v| {
                            let prefix = format!("bake-{}-validate-{}-", job.recipe.name, v.name);
                            c.name.strip_prefix(&prefix).is_some_and(|digest| {
                                digest.len() == 12 && digest.chars().all(|h| h.is_ascii_hexdigit())
                            })
                        })
                    })
                    .map(|v| v.name.as_str())
                    .collect();
                if !failed.is_empty() {
                    return Err(crate::Error::TestPhaseRejected {
                        recipe: job.recipe.name.clone(),
                        arch: job.arch.to_string(),
                        failed: failed.join(", "),
                        reason,
                    });
                }
                return Err(cx.error(
                    self.name(),
                    format!("Image Builder build {arn} ended {status}: {reason}"),
                ));
            }
        };
        cx.created(Kind::Image, &image)?;
        state.image = Some(image.clone());
        state.snapshots = p
            .images()
            .wait_available(&image, p.image_wait())
            .await
            .map_err(|e| cx.error(self.name(), e.to_string()))?;
        for s in &state.snapshots {
            cx.created(Kind::Snapshot, s)?;
        }
        let mut tags = p.tags(job, "image");
        tags.push(Tag::builder().key("bake:status").value("pending").build());
        p.images()
            .tag(
                &[std::slice::from_ref(&image), &state.snapshots[..]].concat(),
                tags,
            )
            .await?;
        Ok(())
    }
    async fn cleanup(
        &self,
        state: &mut State,
        outcome: Outcome,
        cx: &StepContext<'_>,
    ) -> Result<()> {
        if let Some(arn) = state.build.clone() {
            if outcome.discards_image() {
                // The AMI bake took from the build goes with discard_image below; any other it
                // made (a failed or cancelled build's) goes here.
                for ami in self.p.end_build(&arn, state.image.as_deref()).await? {
                    cx.removed(Kind::Image, &ami)?;
                }
                cx.removed(Kind::ImagebuilderBuild, &arn)?;
                state.build = None;
            } else if !state.build_done {
                self.p.image_builder().cancel(&arn).await?;
            }
        }
        discard_image(self.p, state, outcome, cx).await
    }
}

/// Tags the image with the verdict (`bake:status`, the validator summary, the package
/// manifest's digest): what `find_image` reads back when a later run reuses it.
pub(super) struct TagVerdict<'a> {
    pub p: &'a AwsProvider,
    pub job: &'a BakeJob<'a>,
}

#[async_trait]
impl RecordVerdict<State> for TagVerdict<'_> {
    async fn record(
        &self,
        state: &mut State,
        verdict: &Verdict,
        cx: &StepContext<'_>,
    ) -> Result<()> {
        let image = state
            .image
            .clone()
            .ok_or_else(|| cx.error("validate", "no image"))?;
        let packages = state.made.packages_sha256();
        let summary: Vec<(String, crate::verdict::Status)> = verdict
            .results
            .iter()
            .map(|r| (r.name.clone(), r.verdict()))
            .collect();
        let status = if verdict.accepted {
            "validated"
        } else {
            "rejected"
        };
        let mut tags = vec![Tag::builder().key("bake:status").value(status).build()];
        tags.extend(tags::encode_summary(&summary)?);
        if let Some(d) = &packages {
            tags.push(Tag::builder().key("bake:packages").value(d).build());
        }
        if let Some(k) = state.made.kubelet() {
            tags.push(Tag::builder().key("bake:kubelet").value(k).build());
        }
        self.p
            .images()
            .tag(std::slice::from_ref(&image), tags)
            .await?;
        state.record = Some(ImageRecord::judged(self.job, image, verdict, &state.made));
        Ok(())
    }
}

/// Deregisters the image a step made, with its snapshots, when the outcome discards it (the
/// cleanup of the steps that create the image, whichever engine). A validated image stays
/// whatever happens after its verdict (a failed copy or share): it is tagged, and the next run
/// or `resume` reuses it.
async fn discard_image(
    p: &AwsProvider,
    state: &mut State,
    outcome: Outcome,
    cx: &StepContext<'_>,
) -> Result<()> {
    if !outcome.discards_image() || state.made.validated() {
        return Ok(());
    }
    if let Some(image) = state.image.take() {
        p.images().deregister(&image).await?;
        for s in state.snapshots.drain(..) {
            cx.removed(Kind::Snapshot, &s)?;
        }
        cx.removed(Kind::Image, &image)?;
        state.record = None;
    }
    Ok(())
}
