//! The AWS provider, `ec2` engine: a builder instance driven through SSM RunCommand, an AMI
//! with tagged snapshots, and a canary instance that joins the canary cluster with a
//! `NoSchedule` taint and runs the validators. Every instance has IMDSv2 required, no key
//! pair, a security group with no inbound rules, and encrypted volumes; everything is tagged
//! `bake:run-id` and journalled before the next call that can fail.

pub mod image;
pub mod imagebuilder;
pub mod list;
pub mod long_output;
pub mod tags;
pub mod toe;

use super::{BakeJob, BaseImage, ImageRecord, ImageStatus, Provider, Role};
use crate::aws::{code, err, Limits};
use crate::key::BakeKey;
use crate::names::AwsBaseRef;
use crate::pipeline::{AwsSettings, Pipeline};
use crate::provider::Leftover;
use crate::recipe::{sha256_hex, Recipe};
use crate::steps::{Outcome, Runner, Step, StepContext};
use crate::user_data;
use crate::validate::{CheckResult, Verdict};
use crate::{Arch, Error, Result};
use async_trait::async_trait;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    ImageState, InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceStateName,
    InstanceType, ResourceType, ShutdownBehavior, Tag, TagSpecification, VolumeType,
};
use aws_sdk_ssm::types::{CommandInvocationStatus, InstanceInformationStringFilter, PingStatus};
use base64::Engine as _;
use chrono::Utc;
use std::time::{Duration, Instant};

/// SSM RunCommand parameters are limited; larger files would need S3.
const MAX_INLINE_FILE: usize = 48 * 1024;

pub struct AwsProvider {
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
    imagebuilder: aws_sdk_imagebuilder::Client,
    eks: aws_sdk_eks::Client,
    settings: AwsSettings,
    /// The EKS cluster canaries join.
    canary_cluster: Option<String>,
    /// One EC2 client per `copy_regions` entry.
    copy_clients: Vec<(String, aws_sdk_ec2::Client)>,
    region: String,
    limits: Limits,
    /// The recipes of the pipeline: sweep looks only at their resources.
    recipes: std::collections::BTreeSet<String>,
}

/// The tag that says which registry (`ssm_prefix`) a resource belongs to. Sweep, prune and
/// reuse by key act only on resources that carry the pipeline's own value.
pub const OWNER_TAG: &str = "bake:prefix";
/// The tag a published image (and its copies) carries: the latest release that holds it.
pub const RELEASE_TAG: &str = "bake:release";

impl AwsProvider {
    pub fn new(
        config: &aws_config::SdkConfig,
        pipeline: &Pipeline,
        limits: Limits,
    ) -> Result<AwsProvider> {
        let settings = pipeline.aws.clone().ok_or_else(|| {
            Error::Usage(format!("{} has no [aws] section", pipeline.file.display()))
        })?;
        let copy_clients = settings
            .copy_regions
            .iter()
            .map(|r| {
                let conf = aws_sdk_ec2::config::Builder::from(config)
                    .region(aws_sdk_ec2::config::Region::new(r.clone()))
                    .build();
                (r.clone(), aws_sdk_ec2::Client::from_conf(conf))
            })
            .collect();
        let canary_cluster = pipeline.canary_cluster.as_ref().map(|c| {
            pipeline.clusters[c]
                .eks_cluster
                .clone()
                .unwrap_or_else(|| c.clone())
        });
        Ok(AwsProvider {
            ec2: aws_sdk_ec2::Client::new(config),
            ssm: aws_sdk_ssm::Client::new(config),
            imagebuilder: aws_sdk_imagebuilder::Client::new(config),
            eks: aws_sdk_eks::Client::new(config),
            settings,
            canary_cluster,
            copy_clients,
            region: config
                .region()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "(no region)".into()),
            limits,
            recipes: pipeline
                .bakes
                .iter()
                .map(|b| b.recipe.name.clone())
                .collect(),
        })
    }

    /// The registry prefix this pipeline publishes under, as its resources are tagged.
    fn owner(&self) -> &str {
        self.settings.ssm_prefix.as_str()
    }

    /// `tag:bake:prefix = <ours>`, for every scan of what belongs to this pipeline.
    fn owned(&self) -> Filter {
        Filter::builder()
            .name(format!("tag:{OWNER_TAG}"))
            .values(self.owner())
            .build()
    }

    fn image_wait(&self) -> image::Wait {
        image::Wait {
            poll_interval: self.settings.poll_interval,
            timeout: self.settings.image_timeout,
            confirmations: 3,
        }
    }

    async fn ec2_slot(&self) {
        self.limits.ec2.until_ready().await;
    }
    async fn ssm_slot(&self) {
        self.limits.ssm.until_ready().await;
    }
    async fn eks_slot(&self) {
        // DescribeCluster is a light read; EC2's bucket paces it well enough.
        self.limits.ec2.until_ready().await;
    }

    fn tags(&self, job: &BakeJob<'_>, role: &str) -> Vec<Tag> {
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        vec![
            tag(
                "Name",
                &format!("bake-{}-{}-{role}", job.recipe.name, job.arch),
            ),
            tag("bake:recipe", &job.recipe.name),
            tag("bake:arch", job.arch.as_str()),
            tag("bake:key", job.key.as_str()),
            tag("bake:base", &job.base.id),
            tag("bake:run-id", job.run_id),
            tag("bake:role", role),
            tag(OWNER_TAG, self.owner()),
        ]
    }

    async fn instance_state(&self, id: &str) -> Result<Option<InstanceStateName>> {
        self.ec2_slot().await;
        let r = self.ec2.describe_instances().instance_ids(id).send().await;
        match r {
            Ok(r) => Ok(r
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find(|i| i.instance_id() == Some(id))
                .and_then(|i| i.state())
                .and_then(|s| s.name())
                .cloned()),
            Err(e) if code(&e) == Some("InvalidInstanceID.NotFound") => Ok(None),
            Err(e) => Err(err(format!("describing {id} in {}", self.region), e)),
        }
    }

    /// Polls until the instance reaches `want`; fails at once on a state it cannot leave for it.
    async fn wait_instance(&self, id: &str, want: InstanceStateName) -> Result<()> {
        let start = Instant::now();
        loop {
            let state = self.instance_state(id).await?;
            match &state {
                Some(s) if *s == want => return Ok(()),
                None if want == InstanceStateName::Terminated => return Ok(()),
                Some(InstanceStateName::Terminated) => {
                    return Err(Error::provider(
                        "aws",
                        format!(
                            "{id} in {} terminated while waiting for {want}",
                            self.region
                        ),
                    ))
                }
                _ => {}
            }
            if start.elapsed() > self.settings.instance_timeout {
                return Err(Error::provider(
                    "aws",
                    format!(
                        "{id} in {} is {state:?}, not {want}, after {:?}",
                        self.region, self.settings.instance_timeout
                    ),
                ));
            }
            tokio::time::sleep(self.settings.poll_interval).await;
        }
    }

    async fn terminate(&self, id: &str) -> Result<()> {
        self.ec2_slot().await;
        match self.ec2.terminate_instances().instance_ids(id).send().await {
            Ok(_) => {}
            Err(e) if code(&e) == Some("InvalidInstanceID.NotFound") => return Ok(()),
            Err(e) => return Err(err(format!("terminating {id} in {}", self.region), e)),
        }
        self.wait_instance(id, InstanceStateName::Terminated).await
    }

    async fn wait_agent(&self, id: &str) -> Result<()> {
        let start = Instant::now();
        loop {
            self.ssm_slot().await;
            let filter = InstanceInformationStringFilter::builder()
                .key("InstanceIds")
                .values(id)
                .build()
                .map_err(|e| Error::provider("aws", e.to_string()))?;
            let r = self
                .ssm
                .describe_instance_information()
                .filters(filter)
                .send()
                .await
                .map_err(|e| err(format!("asking SSM about {id} in {}", self.region), e))?;
            let online = r.instance_information_list().iter().any(|i| {
                i.instance_id() == Some(id) && i.ping_status() == Some(&PingStatus::Online)
            });
            if online {
                return Ok(());
            }
            if start.elapsed() > self.settings.agent_timeout {
                return Err(Error::provider(
                    "aws",
                    format!(
                        "the SSM agent of {id} in {} did not come online within {:?} (instance profile with AmazonSSMManagedInstanceCore? route to SSM?)",
                        self.region, self.settings.agent_timeout
                    ),
                ));
            }
            tokio::time::sleep(self.settings.poll_interval).await;
        }
    }

    /// Runs a shell script on `instance` with AWS-RunShellScript; returns exit code and output.
    async fn run_command(
        &self,
        instance: &str,
        label: &str,
        script: &str,
        timeout: Duration,
    ) -> Result<(i32, String, String)> {
        let mut attempts = 0;
        let command_id = loop {
            self.ssm_slot().await;
            let sent = self
                .ssm
                .send_command()
                .document_name("AWS-RunShellScript")
                .instance_ids(instance)
                .parameters("commands", vec![script.to_string()])
                .parameters(
                    "executionTimeout",
                    vec![timeout.as_secs().max(1).to_string()],
                )
                .comment(label.chars().take(100).collect::<String>())
                .send()
                .await;
            match sent {
                Ok(r) => {
                    break r
                        .command()
                        .and_then(|c| c.command_id())
                        .unwrap_or_default()
                        .to_string()
                }
                // The agent may not be registered for commands yet, a moment after coming online.
                Err(e) if code(&e) == Some("InvalidInstanceId") && attempts < 10 => {
                    attempts += 1;
                    tokio::time::sleep(self.settings.poll_interval).await;
                }
                Err(e) => {
                    return Err(err(
                        format!(
                            "{label}: sending the command to {instance} in {}",
                            self.region
                        ),
                        e,
                    ))
                }
            }
        };
        let start = Instant::now();
        // Short commands finish in well under a poll interval: start fast, back off to it.
        let mut delay = Duration::from_millis(100).min(self.settings.poll_interval);
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.settings.poll_interval);
            self.ssm_slot().await;
            let r = self
                .ssm
                .get_command_invocation()
                .command_id(&command_id)
                .instance_id(instance)
                .send()
                .await;
            let inv = match r {
                Ok(inv) => inv,
                // Eventual consistency: the invocation is not visible right after SendCommand.
                Err(e) if code(&e) == Some("InvocationDoesNotExist") => continue,
                Err(e) => {
                    return Err(err(
                        format!("{label}: reading command {command_id} in {}", self.region),
                        e,
                    ))
                }
            };
            let out = || {
                (
                    inv.standard_output_content()
                        .unwrap_or_default()
                        .to_string(),
                    inv.standard_error_content().unwrap_or_default().to_string(),
                )
            };
            match inv.status() {
                Some(CommandInvocationStatus::Success) => {
                    let (o, e) = out();
                    return Ok((0, o, e));
                }
                Some(CommandInvocationStatus::Failed) => {
                    let (o, e) = out();
                    return Ok((inv.response_code(), o, e));
                }
                Some(
                    s @ (CommandInvocationStatus::TimedOut
                    | CommandInvocationStatus::Cancelled
                    | CommandInvocationStatus::Cancelling),
                ) => {
                    return Err(Error::provider(
                        "aws",
                        format!("{label}: command {command_id} on {instance} ended {s}"),
                    ))
                }
                _ => {}
            }
            if start.elapsed() > timeout + Duration::from_secs(60) {
                return Err(Error::provider("aws", format!("{label}: command {command_id} on {instance} did not finish within {timeout:?}")));
            }
        }
    }

    /// The installed packages of an instance, one `name\tversion\tarch` line each, read whole
    /// however long (SSM cuts a command's stdout at 24,000 characters).
    async fn package_manifest(&self, instance: &str, cx: &StepContext<'_>) -> Result<String> {
        cx.phase("package manifest");
        let label = format!("{} {} packages", cx.recipe, cx.arch);
        let producer = "# bake: package manifest\nif command -v dpkg-query >/dev/null; then dpkg-query -W -f='${Package}\\t${Version}\\t${Architecture}\\n' | sort; else rpm -qa --qf '%{NAME}\\t%{VERSION}-%{RELEASE}\\t%{ARCH}\\n' | sort; fi";
        let run = |script: String| {
            let label = &label;
            async move {
                self.run_command(instance, label, &script, self.settings.command_timeout)
                    .await
            }
        };
        long_output::read_whole(run, producer)
            .await
            .map_err(|why| cx.error("packages", why))
    }

    /// DescribeImages of one image in the home region (None if it is not there).
    async fn describe_image(&self, image: &str) -> Result<Option<aws_sdk_ec2::types::Image>> {
        self.ec2_slot().await;
        let r = self
            .ec2
            .describe_images()
            .image_ids(image)
            .send()
            .await
            .map_err(|e| err(format!("describing {image} in {}", self.region), e))?;
        Ok(r.images().first().cloned())
    }

    /// The ID of the EBS volume attached to `instance` at `device`, if any.
    async fn volume_at(&self, instance: &str, device: &str) -> Result<Option<String>> {
        self.ec2_slot().await;
        let r = self
            .ec2
            .describe_instances()
            .instance_ids(instance)
            .send()
            .await
            .map_err(|e| err(format!("describing {instance} in {}", self.region), e))?;
        Ok(r.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .flat_map(|i| i.block_device_mappings())
            .find(|m| m.device_name() == Some(device))
            .and_then(|m| m.ebs())
            .and_then(|e| e.volume_id())
            .map(str::to_string))
    }

    /// The image's root device and the snapshot and size its root volume is made from.
    async fn root_volume(&self, image: &str) -> Result<RootVolume> {
        Ok(RootVolume::of(self.describe_image(image).await?.as_ref()))
    }

    fn image_builder(&self) -> imagebuilder::ImageBuilder<'_> {
        imagebuilder::ImageBuilder {
            client: &self.imagebuilder,
            limits: &self.limits,
            region: &self.region,
        }
    }

    /// Uses this Image Builder client (tests hand in one answered by aws-smithy-mocks, as
    /// moto has no Image Builder).
    pub fn with_imagebuilder(mut self, client: aws_sdk_imagebuilder::Client) -> Self {
        self.imagebuilder = client;
        self
    }

    fn images(&self) -> image::Images<'_> {
        image::Images::new(&self.ec2, &self.limits, &self.region)
    }

    /// The AMIs of each of `copy_regions`.
    fn copy_regions(&self) -> impl Iterator<Item = image::Images<'_>> {
        self.copy_clients
            .iter()
            .map(|(region, ec2)| image::Images::new(ec2, &self.limits, region))
    }

    /// Deregisters the image a step made, with its snapshots, when the outcome discards it
    /// (the cleanup of the steps that create the image, whichever engine).
    async fn discard_image(
        &self,
        state: &mut State,
        outcome: Outcome,
        cx: &StepContext<'_>,
    ) -> Result<()> {
        if !outcome.discards_image() {
            return Ok(());
        }
        if let Some(image) = state.image.take() {
            self.images().deregister(&image).await?;
            for s in state.snapshots.drain(..) {
                cx.removed("snapshot", &s)?;
            }
            cx.removed("image", &image)?;
            state.record = None;
        }
        Ok(())
    }

    /// Deletes a security group, waiting out the ENIs of just-terminated instances.
    async fn delete_security_group(&self, id: &str) -> Result<()> {
        let mut attempt = 0;
        loop {
            self.ec2_slot().await;
            match self.ec2.delete_security_group().group_id(id).send().await {
                Ok(_) => return Ok(()),
                Err(e) if code(&e) == Some("InvalidGroup.NotFound") => return Ok(()),
                Err(e) if code(&e) == Some("DependencyViolation") && attempt < 30 => {
                    attempt += 1;
                    tokio::time::sleep(self.settings.poll_interval).await;
                }
                Err(e) => {
                    return Err(err(
                        format!("deleting security group {id} in {}", self.region),
                        e,
                    ))
                }
            }
        }
    }

    /// The `bake:*` tags of an image, for its copies.
    async fn bake_tags_of(&self, image: &str) -> Result<Vec<Tag>> {
        Ok(self
            .describe_image(image)
            .await?
            .as_ref()
            .map(|i| {
                i.tags()
                    .iter()
                    .filter(|t| t.key().is_some_and(|k| k.starts_with("bake:")))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    fn record_from(&self, img: &aws_sdk_ec2::types::Image) -> Option<ImageRecord> {
        let tag = |k: &str| {
            img.tags()
                .iter()
                .find(|t| t.key() == Some(k))
                .and_then(|t| t.value())
                .map(str::to_string)
        };
        let status = match tag("bake:status")?.as_str() {
            "validated" | "published" => ImageStatus::Validated,
            "rejected" => ImageStatus::Rejected,
            _ => return None,
        };
        // The validator summary the validate step tagged; the full output is in the run log.
        let results = tags::decode_summary(img.tags())
            .into_iter()
            .map(|(name, status)| CheckResult {
                name,
                status,
                reason: None,
                exit_code: None,
                output: String::new(),
                not_applicable: false,
            })
            .collect();
        let verdict = Verdict::decide(results);
        Some(ImageRecord {
            id: img.image_id()?.to_string(),
            recipe: tag("bake:recipe")?,
            arch: tag("bake:arch")?.parse().ok()?,
            key: BakeKey::from_hex(&tag("bake:key")?),
            base: tag("bake:base")?,
            status,
            run_id: tag("bake:run-id").unwrap_or_default(),
            created_at: img
                .creation_date()
                .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
                .map(|d| d.with_timezone(&Utc))
                .unwrap_or_else(Utc::now),
            verdict,
            packages_sha256: tag("bake:packages"),
            copies: Default::default(),
        })
    }
}

/// An idempotency token (at most 64 characters) that is the same for the same parts.
fn client_token(parts: &[&str]) -> String {
    let digest = sha256_hex(parts.join("\n").as_bytes());
    format!("bake-{}", &digest[..48])
}

fn step_err(cx: &StepContext<'_>, step: &str, message: impl Into<String>) -> Error {
    cx.error(step, message)
}

/// A shell script that writes `content` to a temp file and runs it (or, with `dest`, installs
/// it there with `mode`), so scripts need no quoting.
fn wrapped(label: &str, content: &[u8], env: &[(&str, &str)], dest: Option<(&str, u32)>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(content);
    let exports: String = env
        .iter()
        .map(|(k, v)| format!("export {k}='{v}'\n"))
        .collect();
    match dest {
        Some((path, mode)) => format!(
            "#!/bin/bash\n# bake: {label}\nset -eu\nmkdir -p \"$(dirname '{path}')\"\necho '{b64}' | base64 -d > '{path}'\nchmod {mode:o} '{path}'\nsha256sum '{path}'\n"
        ),
        None => format!(
            "#!/bin/bash\n# bake: {label}\n{exports}f=$(mktemp /var/tmp/bake-XXXXXX)\necho '{b64}' | base64 -d > \"$f\"\nchmod 0700 \"$f\"\n\"$f\"\nrc=$?\nrm -f \"$f\"\nexit $rc\n"
        ),
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn name(&self) -> &'static str {
        "aws"
    }

    async fn resolve_base(&self, recipe: &Recipe, arch: Arch) -> Result<BaseImage> {
        let source = recipe.aws.get(&arch).ok_or_else(|| {
            Error::Usage(format!(
                "recipe {} has no [base.aws] entry for {arch}",
                recipe.file.display()
            ))
        })?;
        let (id, join) = match source {
            AwsBaseRef::Ami(a) => {
                // A literal AMI says what it is only in its name and description.
                self.ec2_slot().await;
                let r = self
                    .ec2
                    .describe_images()
                    .image_ids(a.as_str())
                    .send()
                    .await
                    .map_err(|e| {
                        err(
                            format!(
                                "describing the {arch} base {a} of `{}` in {}",
                                recipe.name, self.region
                            ),
                            e,
                        )
                    })?;
                let img = r.images().first().ok_or_else(|| {
                    Error::Usage(format!(
                        "{}: base.aws.{arch}: {a} does not exist in {} (or this account cannot see it)",
                        recipe.file.display(),
                        self.region
                    ))
                })?;
                let (name, description) = (
                    img.name().unwrap_or_default(),
                    img.description().unwrap_or_default(),
                );
                let join = crate::names::Join::for_image(name, description).ok_or_else(|| {
                    Error::Usage(format!(
                        "{}: base.aws.{arch}: cannot tell how nodes from {a} (`{name}`) join a cluster: its name and description name neither an Ubuntu EKS nor an EKS-optimized Amazon Linux image; use the base's public SSM parameter instead",
                        recipe.file.display()
                    ))
                })?;
                recipe.volume_size_for(arch, a.as_str(), RootVolume::of(Some(img)).size_gib)?;
                (a.to_string(), join)
            }
            AwsBaseRef::Parameter(p) => {
                self.ssm_slot().await;
                let r = self
                    .ssm
                    .get_parameter()
                    .name(p.as_str())
                    .send()
                    .await
                    .map_err(|e| {
                        err(
                            format!(
                                "resolving the {arch} base of `{}` from {p} in {}",
                                recipe.name, self.region
                            ),
                            e,
                        )
                    })?;
                let value = r.parameter().and_then(|p| p.value()).unwrap_or_default();
                let id = crate::names::AmiId::parse(value)
                    .map_err(|m| Error::provider("aws", format!("{p} in {}: {m}", self.region)))?
                    .to_string();
                // Known at load: the recipe refuses a parameter whose join it cannot tell.
                let join = crate::names::Join::for_parameter(p.as_str()).ok_or_else(|| {
                    Error::Usage(format!(
                        "{}: base.aws.{arch}: {p} is not a known EKS base",
                        recipe.file.display()
                    ))
                })?;
                // Refused here, at plan, not by RunInstances half way into a run.
                let root = self.root_volume(&id).await?;
                recipe.volume_size_for(arch, &id, root.size_gib)?;
                (id, join)
            }
        };
        Ok(BaseImage {
            id,
            source: source.to_string(),
            join: Some(join),
        })
    }

    async fn find_image(
        &self,
        recipe: &str,
        arch: Arch,
        key: &BakeKey,
    ) -> Result<Option<ImageRecord>> {
        let f = |k: &str, v: &str| Filter::builder().name(k).values(v).build();
        let images = self
            .images()
            .lister()
            .own_images(
                &[
                    f("tag:bake:key", key.as_str()),
                    f("tag:bake:recipe", recipe),
                    f("tag:bake:arch", arch.as_str()),
                    self.owned(),
                ],
                &format!("images of `{recipe}` {arch}"),
            )
            .await?;
        let mut found: Vec<ImageRecord> = images
            .iter()
            .filter(|i| i.state() == Some(&ImageState::Available))
            .filter_map(|i| self.record_from(i))
            .collect();
        found.sort_by_key(|r| r.created_at);
        let Some(mut record) = found.pop() else {
            return Ok(None);
        };
        for images in self.copy_regions() {
            if let Some(copy) = images.copies_of(&record.id).await?.into_iter().next() {
                record.copies.insert(images.region().to_string(), copy);
            }
        }
        Ok(Some(record))
    }

    async fn package_manifest(&self, _image_id: &str) -> Result<Option<String>> {
        // Only its digest is kept on AWS (tag bake:packages); the list itself is in the run log.
        Ok(None)
    }

    async fn image_in_use(&self, image_id: &str) -> Result<Option<String>> {
        // Used, protected, or another pipeline's (whatever our registry says): never deleted.
        if let Some(why) = self.images().in_use(image_id, self.owner()).await? {
            return Ok(Some(why));
        }
        for images in self.copy_regions() {
            for copy in images.copies_of(image_id).await? {
                if let Some(why) = images.in_use(&copy, self.owner()).await? {
                    let region = images.region();
                    return Ok(Some(format!("its copy {copy} in {region} {why}")));
                }
            }
        }
        Ok(None)
    }

    async fn mark_published(
        &self,
        release: &str,
        images: &[crate::release::ReleaseImage],
    ) -> Result<()> {
        let tags = vec![Tag::builder().key(RELEASE_TAG).value(release).build()];
        let home: Vec<String> = images.iter().map(|i| i.image_id.clone()).collect();
        self.images().tag(&home, tags.clone()).await?;
        for copies in self.copy_regions() {
            let here: Vec<String> = images
                .iter()
                .filter_map(|i| i.copies.get(copies.region()).cloned())
                .collect();
            copies.tag(&here, tags.clone()).await?;
        }
        Ok(())
    }

    async fn delete_image(&self, image_id: &str) -> Result<()> {
        for images in self.copy_regions() {
            for copy in images.copies_of(image_id).await? {
                images.deregister(&copy).await?;
            }
        }
        self.images().deregister(image_id).await
    }

    async fn leftovers(
        &self,
        live: &std::collections::BTreeSet<String>,
        published: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<Leftover>> {
        // Only what this pipeline made: tagged with a run ID, our registry prefix and one of
        // our recipes. Another pipeline's runs (its own prefix) and anything untagged are
        // never looked at, let alone touched.
        let ours = || {
            vec![
                Filter::builder()
                    .name("tag-key")
                    .values("bake:run-id")
                    .build(),
                self.owned(),
                Filter::builder()
                    .name("tag:bake:recipe")
                    .set_values(Some(self.recipes.iter().cloned().collect()))
                    .build(),
            ]
        };
        let tag = list::tag;
        let mut out = Vec::new();
        let mut push = |kind: &str, id: &str, tags: &[Tag], action: &str, reusable: bool| {
            let run_id = tag(tags, "bake:run-id").to_string();
            if live.contains(&run_id) {
                return;
            }
            out.push(Leftover {
                kind: kind.to_string(),
                id: id.to_string(),
                run_id,
                recipe: tag(tags, "bake:recipe").to_string(),
                arch: tag(tags, "bake:arch").parse().ok(),
                action: action.to_string(),
                reusable,
            });
        };
        // An image is never a leftover once a registry published it: ours lists it, and any
        // registry's publish tags it with the release.
        let unpublished = |i: &aws_sdk_ec2::types::Image| -> bool {
            !published.contains(i.image_id().unwrap_or_default())
                && tag(i.tags(), RELEASE_TAG).is_empty()
        };
        let home = self.images().lister();
        let mut filters = ours();
        filters.push(image::not_terminated());
        for i in home.instances(&filters, "bake instances").await? {
            push(
                "instance",
                i.instance_id().unwrap_or_default(),
                i.tags(),
                "terminate",
                false,
            );
        }
        for i in home.own_images(&ours(), "bake images").await? {
            if !unpublished(&i) {
                continue;
            }
            let status = tag(i.tags(), "bake:status");
            push(
                "image",
                i.image_id().unwrap_or_default(),
                i.tags(),
                &format!(
                    "deregister the unpublished {} image and delete its snapshots",
                    if status.is_empty() { "pending" } else { status }
                ),
                status == "validated",
            );
        }
        // Image Builder outputs whose run died before tagging them (the distribution tags them
        // with recipe, prefix and bake:status=pending, but only the run adds bake:run-id). A
        // live run tags its output seconds after the build ends, so only old ones are orphans.
        if self.settings.engine == crate::pipeline::Engine::Imagebuilder {
            let pending = [
                Filter::builder()
                    .name("tag:bake:status")
                    .values("pending")
                    .build(),
                self.owned(),
            ];
            let cutoff = Utc::now()
                - chrono::Duration::from_std(self.settings.orphan_age)
                    .unwrap_or(chrono::Duration::hours(1));
            for i in home.own_images(&pending, "Image Builder outputs").await? {
                let created = i
                    .creation_date()
                    .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
                    .map(|d| d.with_timezone(&Utc));
                let untagged = !i.tags().iter().any(|t| t.key() == Some("bake:run-id"));
                if untagged
                    && unpublished(&i)
                    && self.recipes.contains(tag(i.tags(), "bake:recipe"))
                    && created.is_some_and(|c| c <= cutoff)
                {
                    push(
                        "image",
                        i.image_id().unwrap_or_default(),
                        i.tags(),
                        "deregister the Image Builder output of a run that died before tagging it, and its snapshots",
                        false,
                    );
                }
            }
        }
        for g in home
            .security_groups(&ours(), "bake security groups")
            .await?
        {
            push(
                "security-group",
                g.group_id().unwrap_or_default(),
                g.tags(),
                "delete",
                false,
            );
        }
        // Copies a dead run made in other regions and no release publishes.
        for images in self.copy_regions() {
            let region = images.region();
            for i in images.lister().own_images(&ours(), "bake images").await? {
                if !unpublished(&i) {
                    continue;
                }
                let status = tag(i.tags(), "bake:status");
                push(
                    "image-copy",
                    &format!("{region}/{}", i.image_id().unwrap_or_default()),
                    i.tags(),
                    &format!(
                        "deregister the unpublished copy in {region} and delete its snapshots"
                    ),
                    status == "validated",
                );
            }
        }
        // Instances first, then images, then groups (a group is in use until its instances go).
        out.sort_by_key(|l| match l.kind.as_str() {
            "instance" => 0,
            "image" | "image-copy" => 1,
            _ => 2,
        });
        Ok(out)
    }

    async fn remove_leftover(&self, l: &Leftover) -> Result<()> {
        match l.kind.as_str() {
            "instance" => self.terminate(&l.id).await,
            "image" => self.images().deregister(&l.id).await,
            "image-copy" => {
                let (region, id) = l.id.split_once('/').unwrap_or_default();
                match self.copy_regions().find(|i| i.region() == region) {
                    Some(images) => images.deregister(id).await,
                    None => Err(Error::Usage(format!(
                        "{region} is not in copy_regions of this pipeline; cannot remove {id} there"
                    ))),
                }
            }
            "security-group" => self.delete_security_group(&l.id).await,
            other => Err(Error::provider(
                "aws",
                format!("unknown leftover kind `{other}`"),
            )),
        }
    }

    async fn plan_resources(
        &self,
        recipe: &Recipe,
        arch: Arch,
        base: &BaseImage,
        key: &BakeKey,
    ) -> Result<Vec<super::PlannedResource>> {
        if self.settings.engine != crate::pipeline::Engine::Imagebuilder {
            return Ok(Vec::new());
        }
        let root_volume = self.root_volume(&base.id).await?;
        let root = root_volume.device.clone();
        let size = recipe.volume_size_for(arch, &base.id, root_volume.size_gib)?;
        let res = imagebuilder::resources(
            recipe,
            arch,
            &base.id,
            key,
            &root,
            size,
            &self.settings,
            &self.region,
        )?;
        self.image_builder().plan(&res).await
    }

    /// Copies a validated image to each of `copy_regions` that lacks one (encrypted, with the
    /// image's `bake:*` tags and `bake:source-image`) and gives `share_accounts` launch
    /// permission on the image and every copy. A failure removes the copies this call made;
    /// the validated image stays and the next run or `resume` distributes it again.
    async fn distribute(
        &self,
        mut image: ImageRecord,
        cx: &StepContext<'_>,
    ) -> Result<ImageRecord> {
        if image.status != ImageStatus::Validated
            || (self.copy_clients.is_empty() && self.settings.share_accounts.is_empty())
        {
            return Ok(image);
        }
        // The copies this call made, in order: removed again if a later copy or share fails.
        let mut made: Vec<(image::Images<'_>, String)> = Vec::new();
        let result = async {
            let mut tags: Option<Vec<Tag>> = None;
            for images in self.copy_regions() {
                let region = images.region();
                if let Some(copy) = images.copies_of(&image.id).await?.into_iter().next() {
                    image.copies.insert(region.to_string(), copy);
                    continue;
                }
                cx.phase(&format!("copying {} to {region}", image.id));
                let name = format!(
                    "bake-{}-{}-{}-{}",
                    image.recipe,
                    image.arch,
                    image.key.short(),
                    image.id
                );
                if tags.is_none() {
                    let mut t = self.bake_tags_of(&image.id).await?;
                    t.push(
                        Tag::builder()
                            .key("bake:source-image")
                            .value(&image.id)
                            .build(),
                    );
                    tags = Some(t);
                }
                let copy = images
                    .copy_here(image::CopyRequest {
                        source: &image.id,
                        source_region: &self.region,
                        name: &name,
                        kms_key_id: self.settings.kms_key_id.as_deref(),
                        tags: tags.clone().unwrap_or_default(),
                        client_token: client_token(&[cx.journal.run_id(), &image.id, region]),
                    })
                    .await?;
                cx.created("image-copy", &format!("{region}/{copy}"))?;
                made.push((images, copy.clone()));
                images.wait_available(&copy, self.image_wait()).await?;
                image.copies.insert(region.to_string(), copy);
            }
            let accounts = &self.settings.share_accounts;
            if !accounts.is_empty() {
                cx.phase(&format!("sharing with {}", accounts.join(", ")));
                self.images().share(&image.id, accounts).await?;
                for images in self.copy_regions() {
                    if let Some(copy) = image.copies.get(images.region()) {
                        images.share(copy, accounts).await?;
                    }
                }
            }
            Ok::<(), Error>(())
        }
        .await;
        if let Err(e) = result {
            for (images, copy) in made {
                let region = images.region();
                match images.deregister(&copy).await {
                    Ok(()) => {
                        let _ = cx.removed("image-copy", &format!("{region}/{copy}"));
                    }
                    Err(c) => tracing::error!(
                        "removing the copy {copy} in {region}: {c} (`bake sweep` finds it)"
                    ),
                }
            }
            return Err(cx.error("distribute", e.to_string()));
        }
        Ok(image)
    }

    async fn bake(&self, job: &BakeJob<'_>, cx: &StepContext<'_>) -> Result<ImageRecord> {
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
        let canary: Vec<Box<dyn Step<State> + '_>> = vec![
            Box::new(Launch {
                p: self,
                job,
                role: Role::Canary,
            }),
            Box::new(Agent {
                p: self,
                role: Role::Canary,
            }),
        ];
        let mut steps: Vec<Box<dyn Step<State> + '_>> = match self.settings.engine {
            crate::pipeline::Engine::Ec2 => vec![
                Box::new(SecurityGroup { p: self, job }),
                Box::new(Launch {
                    p: self,
                    job,
                    role: Role::Builder,
                }),
                Box::new(Agent {
                    p: self,
                    role: Role::Builder,
                }),
                Box::new(Provision { p: self, job }),
                Box::new(StopBuilder { p: self }),
                Box::new(CreateImage { p: self, job }),
                Box::new(TerminateBuilder { p: self }),
            ],
            crate::pipeline::Engine::Imagebuilder => vec![
                Box::new(ImageBuilderBuild { p: self, job }),
                Box::new(SecurityGroup { p: self, job }),
            ],
        };
        steps.extend(canary);
        if self.settings.engine == crate::pipeline::Engine::Imagebuilder {
            steps.push(Box::new(CanaryPackages { p: self }));
        }
        steps.push(Box::new(Validate { p: self, job }));
        let mut state = State::default();
        let runner = Runner {
            cleanup_timeout: self.settings.instance_timeout + Duration::from_secs(60),
        };
        let report = runner
            .run(&steps, &mut state, cx, |s| {
                s.verdict.as_ref().is_some_and(|v| v.accepted)
            })
            .await;
        report.into_result()?;
        let record = state.record.ok_or_else(|| {
            Error::provider(
                "aws",
                format!(
                    "{} {}: the bake ended without an image",
                    job.recipe.name, job.arch
                ),
            )
        })?;
        self.distribute(record, cx).await
    }
}

/// An image's root volume as DescribeImages tells it.
#[derive(Debug, Clone)]
struct RootVolume {
    device: String,
    snapshot: Option<String>,
    size_gib: Option<u32>,
}

impl RootVolume {
    /// Read from what DescribeImages said of an image (`/dev/xvda` if it names no root).
    fn of(image: Option<&aws_sdk_ec2::types::Image>) -> RootVolume {
        let device = image
            .and_then(|i| i.root_device_name())
            .unwrap_or("/dev/xvda")
            .to_string();
        let ebs = image.and_then(|i| {
            i.block_device_mappings()
                .iter()
                .find(|m| m.device_name() == Some(device.as_str()))
                .and_then(|m| m.ebs())
        });
        RootVolume {
            snapshot: ebs.and_then(|e| e.snapshot_id()).map(str::to_string),
            size_gib: ebs.and_then(|e| e.volume_size()).map(|s| s.max(0) as u32),
            device,
        }
    }
}

/// Where the canary gets a second volume made from its image's root snapshot: the image as
/// shipped, which the validators that read the image mount read-only (first boot changes the
/// root volume). Deleted with the instance.
const IMAGE_COPY_DEVICE: &str = "/dev/sdf";

#[derive(Default)]
struct State {
    security_group: Option<String>,
    created_group: bool,
    builder: Option<String>,
    canary: Option<String>,
    /// The canary's volume made from the image's root snapshot (see IMAGE_COPY_DEVICE).
    image_copy: Option<String>,
    image: Option<String>,
    snapshots: Vec<String>,
    packages: Option<String>,
    /// The Image Builder build (`imagebuilder` engine) and whether it has ended.
    build: Option<String>,
    build_done: bool,
    verdict: Option<Verdict>,
    record: Option<ImageRecord>,
}

struct SecurityGroup<'a> {
    p: &'a AwsProvider,
    job: &'a BakeJob<'a>,
}

#[async_trait]
impl Step<State> for SecurityGroup<'_> {
    fn name(&self) -> &str {
        "security-group"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        if let Some(sg) = &self.p.settings.security_group_id {
            state.security_group = Some(sg.clone());
            return Ok(());
        }
        cx.phase("security group (no inbound rules)");
        let p = self.p;
        let vpc = match &p.settings.subnet_id {
            Some(subnet) => {
                p.ec2_slot().await;
                let r = p
                    .ec2
                    .describe_subnets()
                    .subnet_ids(subnet)
                    .send()
                    .await
                    .map_err(|e| err(format!("describing subnet {subnet} in {}", p.region), e))?;
                r.subnets()
                    .first()
                    .and_then(|s| s.vpc_id())
                    .map(str::to_string)
            }
            None => {
                p.ec2_slot().await;
                let r = p
                    .ec2
                    .describe_vpcs()
                    .filters(Filter::builder().name("is-default").values("true").build())
                    .send()
                    .await
                    .map_err(|e| err(format!("looking for the default VPC in {}", p.region), e))?;
                r.vpcs()
                    .first()
                    .and_then(|v| v.vpc_id())
                    .map(str::to_string)
            }
        };
        let name = format!("bake-{}-{}-{}", self.job.run_id, cx.recipe, cx.arch);
        p.ec2_slot().await;
        let r = p
            .ec2
            .create_security_group()
            .group_name(&name)
            .description("bake builder and canary: no inbound rules")
            .set_vpc_id(vpc)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::SecurityGroup)
                    .set_tags(Some(p.tags(self.job, "security-group")))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| err(format!("creating security group {name} in {}", p.region), e))?;
        let id = r.group_id().unwrap_or_default().to_string();
        cx.created("security-group", &id)?;
        state.security_group = Some(id);
        state.created_group = true;
        Ok(())
    }
    async fn cleanup(
        &self,
        state: &mut State,
        _outcome: Outcome,
        cx: &StepContext<'_>,
    ) -> Result<()> {
        if !state.created_group {
            return Ok(());
        }
        if let Some(id) = state.security_group.take() {
            self.p.delete_security_group(&id).await?;
            cx.removed("security-group", &id)?;
        }
        Ok(())
    }
}

struct Launch<'a> {
    p: &'a AwsProvider,
    job: &'a BakeJob<'a>,
    role: Role,
}

#[async_trait]
impl Step<State> for Launch<'_> {
    fn name(&self) -> &str {
        match self.role {
            Role::Builder => "launch-builder",
            Role::Canary => "launch-canary",
        }
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let p = self.p;
        let image = match self.role {
            Role::Builder => self.job.base.id.clone(),
            Role::Canary => state
                .image
                .clone()
                .ok_or_else(|| step_err(cx, self.name(), "no image to launch"))?,
        };
        cx.phase(&format!("launch {} from {image}", self.role.as_str()));
        let root_volume = p.root_volume(&image).await?;
        let root = root_volume.device.clone();
        // The builder's volume: what the recipe asks (checked at plan) or the base's own size;
        // the canary's: its image's, which is the builder's.
        let size = match self.role {
            Role::Builder => {
                self.job
                    .recipe
                    .volume_size_for(cx.arch, &image, root_volume.size_gib)?
            }
            Role::Canary => root_volume
                .size_gib
                .unwrap_or(crate::recipe::DEFAULT_SIZE_GIB),
        };
        let instance_type = p
            .settings
            .instance_type
            .get(&cx.arch)
            .cloned()
            .unwrap_or_else(|| match cx.arch {
                Arch::X86_64 => "m6i.large".into(),
                Arch::Arm64 => "m7g.large".into(),
            });
        let volume = &self.job.recipe.volume;
        let mut req = p
            .ec2
            .run_instances()
            .image_id(&image)
            .instance_type(InstanceType::from(instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            // Idempotent: a retried RunInstances never starts a second instance.
            .client_token(
                format!(
                    "{}-{}-{}-{}",
                    self.job.run_id,
                    cx.recipe,
                    cx.arch,
                    self.role.as_str()
                )
                .chars()
                .take(64)
                .collect::<String>(),
            )
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .build(),
            )
            .set_security_group_ids(state.security_group.clone().map(|s| vec![s]))
            .set_subnet_id(p.settings.subnet_id.clone())
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(root)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(size as i32)
                            .volume_type(VolumeType::from(volume.volume_type.as_str()))
                            .encrypted(true)
                            .set_kms_key_id(p.settings.kms_key_id.clone())
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(p.tags(self.job, self.role.as_str())))
                    .build(),
            )
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Volume)
                    .set_tags(Some(p.tags(self.job, self.role.as_str())))
                    .build(),
            );
        if let (Role::Canary, Some(snapshot)) = (self.role, &root_volume.snapshot) {
            // The canary also gets the image as shipped, on a second volume.
            req = req.block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(IMAGE_COPY_DEVICE)
                    .ebs(
                        EbsBlockDevice::builder()
                            .snapshot_id(snapshot)
                            .volume_type(VolumeType::from(volume.volume_type.as_str()))
                            .encrypted(true)
                            .set_kms_key_id(p.settings.kms_key_id.clone())
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            );
        }
        if let Some(profile) = &p.settings.instance_profile {
            req = req.iam_instance_profile(
                IamInstanceProfileSpecification::builder()
                    .name(profile)
                    .build(),
            );
        }
        // The dead-man's switch: an instance that powers itself off terminates, and its
        // timer outlives every wait of this run.
        req = req.instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate);
        let timeout = p.settings.command_timeout;
        let recipe = self.job.recipe;
        req = match self.role {
            Role::Builder => {
                let limits: Vec<Duration> = recipe
                    .files
                    .iter()
                    .map(|_| timeout)
                    .chain(recipe.steps.iter().map(|s| s.timeout.unwrap_or(timeout)))
                    .chain([timeout])
                    .collect();
                req.user_data(user_data::builder(user_data::lifetime(
                    &p.settings,
                    &limits,
                )))
            }
            Role::Canary => {
                let limits: Vec<Duration> = recipe
                    .validators
                    .iter()
                    .map(|_| timeout)
                    .chain([timeout])
                    .collect();
                let lifetime = user_data::lifetime(&p.settings, &limits);
                match p.canary_cluster.clone() {
                    // A pipeline that names no canary cluster (a rehearsal) boots the canary
                    // with the dead-man's timer only; its cluster checks are skipped and say so.
                    None => req.user_data(user_data::unjoined_canary(lifetime)),
                    Some(name) => {
                        let join = self.job.base.join.ok_or_else(|| {
                            step_err(
                                cx,
                                self.name(),
                                "the base does not say how its nodes join a cluster",
                            )
                        })?;
                        p.eks_slot().await;
                        let cluster =
                            user_data::Cluster::describe(&p.eks, &name, &p.region).await?;
                        req.user_data(user_data::canary(join, &cluster, lifetime)?)
                    }
                }
            }
        };
        let r = req.send().await.map_err(|e| {
            err(
                format!(
                    "launching the {} from {image} in {}",
                    self.role.as_str(),
                    p.region
                ),
                e,
            )
        })?;
        let id = r
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .ok_or_else(|| step_err(cx, self.name(), "RunInstances returned no instance"))?
            .to_string();
        cx.created("instance", &id)?;
        match self.role {
            Role::Builder => state.builder = Some(id.clone()),
            Role::Canary => state.canary = Some(id.clone()),
        }
        p.wait_instance(&id, InstanceStateName::Running).await?;
        if self.role == Role::Canary {
            state.image_copy = p.volume_at(&id, IMAGE_COPY_DEVICE).await?;
        }
        Ok(())
    }
    async fn cleanup(
        &self,
        state: &mut State,
        _outcome: Outcome,
        cx: &StepContext<'_>,
    ) -> Result<()> {
        let id = match self.role {
            Role::Builder => state.builder.take(),
            Role::Canary => state.canary.take(),
        };
        if let Some(id) = id {
            self.p.terminate(&id).await?;
            cx.removed("instance", &id)?;
        }
        Ok(())
    }
}

struct Agent<'a> {
    p: &'a AwsProvider,
    role: Role,
}

#[async_trait]
impl Step<State> for Agent<'_> {
    fn name(&self) -> &str {
        match self.role {
            Role::Builder => "builder-agent",
            Role::Canary => "canary-agent",
        }
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let id = match self.role {
            Role::Builder => state.builder.clone(),
            Role::Canary => state.canary.clone(),
        }
        .ok_or_else(|| step_err(cx, self.name(), "no instance"))?;
        cx.phase(&format!("waiting for the SSM agent on {id}"));
        self.p.wait_agent(&id).await
    }
}

struct Provision<'a> {
    p: &'a AwsProvider,
    job: &'a BakeJob<'a>,
}

#[async_trait]
impl Step<State> for Provision<'_> {
    fn name(&self) -> &str {
        "provision"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let p = self.p;
        let id = state
            .builder
            .clone()
            .ok_or_else(|| step_err(cx, self.name(), "no builder"))?;
        let timeout = p.settings.command_timeout;
        let env = [
            ("DEBIAN_FRONTEND", "noninteractive"),
            ("BAKE_RECIPE", cx.recipe),
            ("BAKE_ARCH", cx.arch.as_str()),
        ];
        for (i, f) in self.job.recipe.files.iter().enumerate() {
            cx.phase(&format!(
                "file {}/{} {}",
                i + 1,
                self.job.recipe.files.len(),
                f.dest
            ));
            let label = format!("{} {} file {}", cx.recipe, cx.arch, f.dest);
            let script = wrapped(&label, &f.content, &[], Some((&f.dest, f.mode)));
            let (rc, out, errs) = p.run_command(&id, &label, &script, timeout).await?;
            if rc != 0 {
                return Err(step_err(
                    cx,
                    "install-files",
                    format!("{} exited {rc}: {}{}", f.dest, out.trim(), errs.trim()),
                ));
            }
        }
        for (i, step) in self.job.recipe.steps.iter().enumerate() {
            cx.phase(&format!(
                "step {}/{} {}",
                i + 1,
                self.job.recipe.steps.len(),
                step.name
            ));
            let label = format!("{} {} step {}", cx.recipe, cx.arch, step.name);
            let script = wrapped(&label, &step.content, &env, None);
            let (rc, out, errs) = p
                .run_command(&id, &label, &script, step.timeout.unwrap_or(timeout))
                .await?;
            tracing::info!(recipe = cx.recipe, arch = %cx.arch, step = %step.name, rc, "step output:\n{out}{errs}");
            if rc != 0 {
                let tail: Vec<&str> = errs.lines().chain(out.lines()).rev().take(8).collect();
                return Err(step_err(
                    cx,
                    &step.name,
                    format!(
                        "{} exited {rc}:\n{}",
                        step.script,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ),
                ));
            }
        }
        state.packages = Some(p.package_manifest(&id, cx).await?);
        Ok(())
    }
}

/// The package manifest of the canary (the `imagebuilder` engine builds out of bake's reach).
struct CanaryPackages<'a> {
    p: &'a AwsProvider,
}

#[async_trait]
impl Step<State> for CanaryPackages<'_> {
    fn name(&self) -> &str {
        "packages"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let id = state
            .canary
            .clone()
            .ok_or_else(|| step_err(cx, self.name(), "no canary"))?;
        state.packages = Some(self.p.package_manifest(&id, cx).await?);
        Ok(())
    }
}

/// Builds the image with Image Builder from the resources compiled from the recipe, then tags
/// the output AMI and its snapshots like the `ec2` engine's.
struct ImageBuilderBuild<'a> {
    p: &'a AwsProvider,
    job: &'a BakeJob<'a>,
}

#[async_trait]
impl Step<State> for ImageBuilderBuild<'_> {
    fn name(&self) -> &str {
        "imagebuilder"
    }
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
        let arn = ib
            .start(&arns, &run_tags, &format!("{}-{}", job.run_id, job.arch))
            .await?;
        cx.created("imagebuilder-build", &arn)?;
        state.build = Some(arn.clone());
        let start = Instant::now();
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
            if start.elapsed() > p.settings.image_timeout {
                return Err(step_err(
                    cx,
                    self.name(),
                    format!("build {arn} not done after {:?}", p.settings.image_timeout),
                ));
            }
            tokio::time::sleep(p.settings.poll_interval).await;
        };
        let image = match built {
            imagebuilder::Built::Available(ami) => ami,
            imagebuilder::Built::Failed { status, reason } => {
                return Err(step_err(
                    cx,
                    self.name(),
                    format!("Image Builder build {arn} ended {status}: {reason}"),
                ))
            }
        };
        cx.created("image", &image)?;
        state.image = Some(image.clone());
        state.snapshots = p
            .images()
            .wait_available(&image, p.image_wait())
            .await
            .map_err(|e| step_err(cx, self.name(), e.to_string()))?;
        for s in &state.snapshots {
            cx.created("snapshot", s)?;
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
        let ib = self.p.image_builder();
        if let Some(arn) = state.build.clone() {
            if !state.build_done {
                ib.cancel(&arn).await?;
            }
            if outcome.discards_image() {
                ib.delete(&arn).await?;
                cx.removed("imagebuilder-build", &arn)?;
                state.build = None;
            }
        }
        self.p.discard_image(state, outcome, cx).await
    }
}

struct StopBuilder<'a> {
    p: &'a AwsProvider,
}

#[async_trait]
impl Step<State> for StopBuilder<'_> {
    fn name(&self) -> &str {
        "stop-builder"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let id = state
            .builder
            .clone()
            .ok_or_else(|| step_err(cx, self.name(), "no builder"))?;
        cx.phase(&format!("stopping builder {id}"));
        self.p.ec2_slot().await;
        self.p
            .ec2
            .stop_instances()
            .instance_ids(&id)
            .send()
            .await
            .map_err(|e| err(format!("stopping {id} in {}", self.p.region), e))?;
        self.p.wait_instance(&id, InstanceStateName::Stopped).await
    }
}

struct CreateImage<'a> {
    p: &'a AwsProvider,
    job: &'a BakeJob<'a>,
}

#[async_trait]
impl Step<State> for CreateImage<'_> {
    fn name(&self) -> &str {
        "create-image"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let p = self.p;
        let id = state
            .builder
            .clone()
            .ok_or_else(|| step_err(cx, self.name(), "no builder"))?;
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
        cx.created("image", &image)?;
        state.image = Some(image.clone());
        // Available several times in a row; fail fast on `failed`.
        state.snapshots = p
            .images()
            .wait_available(&image, p.image_wait())
            .await
            .map_err(|e| step_err(cx, self.name(), e.to_string()))?;
        for s in &state.snapshots {
            cx.created("snapshot", s)?;
        }
        Ok(())
    }
    async fn cleanup(
        &self,
        state: &mut State,
        outcome: Outcome,
        cx: &StepContext<'_>,
    ) -> Result<()> {
        self.p.discard_image(state, outcome, cx).await
    }
}

struct TerminateBuilder<'a> {
    p: &'a AwsProvider,
}

#[async_trait]
impl Step<State> for TerminateBuilder<'_> {
    fn name(&self) -> &str {
        "terminate-builder"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        if let Some(id) = state.builder.take() {
            cx.phase(&format!("terminating builder {id}"));
            // Put it back if terminating fails, so the launch step's cleanup tries again.
            if let Err(e) = self.p.terminate(&id).await {
                state.builder = Some(id);
                return Err(e);
            }
            cx.removed("instance", &id)?;
        }
        Ok(())
    }
}

struct Validate<'a> {
    p: &'a AwsProvider,
    job: &'a BakeJob<'a>,
}

#[async_trait]
impl Step<State> for Validate<'_> {
    fn name(&self) -> &str {
        "validate"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let p = self.p;
        let id = state
            .canary
            .clone()
            .ok_or_else(|| step_err(cx, self.name(), "no canary"))?;
        let image = state
            .image
            .clone()
            .ok_or_else(|| step_err(cx, self.name(), "no image"))?;
        let env = [("BAKE_RECIPE", cx.recipe), ("BAKE_ARCH", cx.arch.as_str())];
        let mut results = Vec::new();
        let validators = &self.job.recipe.validators;
        // The image as shipped is the second volume: on Nitro an NVMe disk named after its
        // volume ID, on Xen the device name itself.
        let mut devices: Vec<String> = state
            .image_copy
            .iter()
            .map(|v| {
                format!(
                    "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{}",
                    v.replace('-', "")
                )
            })
            .collect();
        devices.extend([IMAGE_COPY_DEVICE.to_string(), "/dev/xvdf".to_string()]);
        let devices = devices.join(" ");
        let label = format!("{} {} prepare canary", cx.recipe, cx.arch);
        let prepare = wrapped(
            &label,
            crate::canary::PREPARE_SCRIPT.as_bytes(),
            &[
                ("BAKE_IMAGE_ROOT", crate::canary::IMAGE_ROOT),
                ("BAKE_IMAGE_DEVICES", &devices),
            ],
            None,
        );
        let (rc, out, errs) = p
            .run_command(&id, &label, &prepare, p.settings.command_timeout)
            .await
            .map_err(|e| step_err(cx, self.name(), format!("preparing the canary: {e}")))?;
        if rc != 0 {
            return Err(step_err(
                cx,
                self.name(),
                format!(
                    "preparing the canary exited {rc}: {}{}",
                    out.trim(),
                    errs.trim()
                ),
            ));
        }
        let prepared = crate::canary::Prepared::parse(&out);
        tracing::info!(recipe = cx.recipe, arch = %cx.arch, os = %prepared.os(), image_root = ?prepared.image_root, "canary prepared");
        let no_cluster = p
            .canary_cluster
            .is_none()
            .then_some("needs a joined cluster node; the pipeline names no [canary] cluster");
        for (i, planned) in crate::canary::plan(validators, &prepared, no_cluster)
            .into_iter()
            .enumerate()
        {
            let (v, extra) = match planned {
                crate::canary::Planned::Settled(r) => {
                    r.log(cx.recipe, cx.arch);
                    results.push(r);
                    continue;
                }
                crate::canary::Planned::Run(v, extra) => (v, extra),
            };
            let label = format!("{} {} validator {}", cx.recipe, cx.arch, v.name);
            // A cluster check waits for the canary to join, up to join_timeout; its command
            // may take that long and a minute more.
            let join = p.settings.join_timeout.as_secs().to_string();
            let mut venv = env.to_vec();
            venv.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
            let mut limit = p.settings.command_timeout;
            let mut waits = String::new();
            if v.needs_cluster {
                venv.push(("BAKE_JOIN_TIMEOUT", join.as_str()));
                limit = limit.max(p.settings.join_timeout + Duration::from_secs(60));
                waits = format!(
                    " (waiting up to {} for the canary to join)",
                    humantime::format_duration(p.settings.join_timeout)
                );
            }
            cx.phase(&format!(
                "validator {}/{} {}{waits}",
                i + 1,
                validators.len(),
                v.name
            ));
            let script = wrapped(&label, &v.content, &venv, None);
            // A validator that could not run (an API or agent error) fails the bake, which
            // retries next time; only the validator's own verdict may reject the image.
            let (rc, out, errs) =
                p.run_command(&id, &label, &script, limit)
                    .await
                    .map_err(|e| {
                        step_err(
                            cx,
                            self.name(),
                            format!("validator {} could not run: {e}", v.name),
                        )
                    })?;
            let result = crate::validate::judged(&v.name, rc, &out, &errs)
                .map_err(|why| step_err(cx, self.name(), why))?;
            result.log(cx.recipe, cx.arch);
            results.push(result);
        }
        let verdict = Verdict::decide(results);
        let status = if verdict.accepted {
            ImageStatus::Validated
        } else {
            ImageStatus::Rejected
        };
        let packages = state.packages.as_deref().map(|s| sha256_hex(s.as_bytes()));
        let summary: Vec<(String, crate::validate::Status)> = verdict
            .results
            .iter()
            .map(|r| (r.name.clone(), r.status))
            .collect();
        let mut tags = vec![Tag::builder()
            .key("bake:status")
            .value(if verdict.accepted {
                "validated"
            } else {
                "rejected"
            })
            .build()];
        tags.extend(tags::encode_summary(&summary)?);
        if let Some(d) = &packages {
            tags.push(Tag::builder().key("bake:packages").value(d).build());
        }
        p.images().tag(std::slice::from_ref(&image), tags).await?;
        if !verdict.accepted {
            cx.phase(&format!("rejected: {}", verdict.blockers().join("; ")));
        }
        state.record = Some(ImageRecord {
            id: image,
            recipe: cx.recipe.to_string(),
            arch: cx.arch,
            key: self.job.key.clone(),
            base: self.job.base.id.clone(),
            status,
            run_id: self.job.run_id.to_string(),
            created_at: Utc::now(),
            verdict: verdict.clone(),
            packages_sha256: packages,
            copies: Default::default(),
        });
        state.verdict = Some(verdict);
        Ok(())
    }
}
