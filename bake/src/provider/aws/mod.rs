//! The AWS provider: EC2 + SSM. The `ec2` engine bakes on a builder instance driven through
//! SSM RunCommand and makes an AMI with tagged snapshots; the `imagebuilder` engine has EC2
//! Image Builder build it. Either way a canary instance (joined to the canary cluster with a
//! `NoSchedule` taint when the pipeline names one) runs the validators, and the validated image
//! is copied and shared. Every instance has IMDSv2 required, no key pair, a security group
//! with no inbound rules, and encrypted volumes; everything is tagged `bake:run-id` and
//! journalled before the next call that can fail. The chain of steps is in `chain`.

mod account;
mod audit_document;
mod base;
mod chain;
mod cluster_api;
mod create;
mod distribute;
mod eks;
mod eks_token;
pub mod fleet;
pub mod image;
mod image_copy;
pub mod imagebuilder;
mod instances;
mod launch;
mod leftovers;
mod lifecycle;
pub mod list;
mod protect;
pub mod sdk;
pub mod ssm;
mod state;
pub mod tags;
pub mod toe;
mod usage;

use super::{BakeJob, BaseImage, ImageRecord, ImageStatus, Provider};
use crate::input::names::AwsBaseRef;
use crate::input::pipeline::{AwsSettings, Pipeline};
use crate::input::recipe::Recipe;
use crate::key::BakeKey;
use crate::kube::KubeVersion;
use crate::provider::aws::sdk::{err, Limits};
use crate::provider::Leftover;
use crate::steps::StepContext;
use crate::verdict::{CheckResult, Verdict};
use crate::{Arch, Error, Result};
use async_trait::async_trait;
use aws_sdk_ec2::types::{Filter, ImageState, Tag};
use chrono::Utc;
use std::collections::BTreeMap;
use std::collections::BTreeSet;

pub struct AwsProvider {
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
    imagebuilder: aws_sdk_imagebuilder::Client,
    eks: aws_sdk_eks::Client,
    iam: aws_sdk_iam::Client,
    sts: aws_sdk_sts::Client,
    /// bake's own credentials, to sign the EKS token that reads the canary's node.
    credentials: Option<aws_credential_types::provider::SharedCredentialsProvider>,
    settings: AwsSettings,
    /// The EKS cluster canaries join.
    canary_cluster: Option<String>,
    /// The probe pod a joined canary runs.
    probe: crate::input::pipeline::PodProbeSettings,
    /// One EC2 client per `copy_regions` entry.
    copy_clients: Vec<(String, aws_sdk_ec2::Client)>,
    /// One SSM client per `copy_regions` entry (the audit of the nodes there).
    copy_ssm: Vec<(String, aws_sdk_ssm::Client)>,
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
        let settings = pipeline.settings.aws().cloned().ok_or_else(|| {
            Error::Usage(format!("{} has no [aws] section", pipeline.file.display()))
        })?;
        // EC2 (copies, their leftovers and nodes) and SSM (the audit of the nodes there) in
        // each copy region.
        let (copy_clients, copy_ssm) = settings
            .copy_regions
            .iter()
            .map(|r| {
                let regional = config
                    .to_builder()
                    .region(aws_config::Region::new(r.clone()))
                    .build();
                (
                    (r.clone(), aws_sdk_ec2::Client::new(&regional)),
                    (r.clone(), aws_sdk_ssm::Client::new(&regional)),
                )
            })
            .unzip();
        let canary_cluster = pipeline.canary_eks_cluster();
        Ok(AwsProvider {
            ec2: aws_sdk_ec2::Client::new(config),
            ssm: aws_sdk_ssm::Client::new(config),
            imagebuilder: aws_sdk_imagebuilder::Client::new(config),
            eks: aws_sdk_eks::Client::new(config),
            iam: aws_sdk_iam::Client::new(config),
            sts: aws_sdk_sts::Client::new(config),
            credentials: config.credentials_provider(),
            settings,
            canary_cluster,
            probe: pipeline.probe.clone(),
            copy_clients,
            copy_ssm,
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
                not_applicable: status == crate::verdict::Status::NotApplicable,
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
            kubelet: tag("bake:kubelet"),
            packages: None,
            copies: Default::default(),
        })
    }

    /// The instance as a guest reached through SSM RunCommand.
    fn guest(&self, instance: &str) -> ssm::SsmGuest {
        ssm::SsmGuest {
            ssm: self.ssm.clone(),
            limits: self.limits.clone(),
            region: self.region.clone(),
            instance: instance.to_string(),
            poll_interval: self.settings.poll_interval,
        }
    }

    /// The SSM guest of an instance in one of the copy regions.
    fn guest_in(&self, region: &str, instance: &str) -> Result<ssm::SsmGuest> {
        let (_, client) = self
            .copy_ssm
            .iter()
            .find(|(r, _)| r == region)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "{region} is not in copy_regions of this pipeline; cannot reach {instance} there"
                ))
            })?;
        Ok(ssm::SsmGuest {
            ssm: client.clone(),
            region: region.to_string(),
            ..self.guest(instance)
        })
    }
}

/// An idempotency token that is the same for the same parts: a UUID-shaped digest, 36
/// characters, within what both EC2 (64) and Image Builder (36, API Reference, CreateComponent
/// `clientToken`) take.
fn client_token(parts: &[&str]) -> String {
    use sha2::Digest as _;
    let digest: [u8; 32] = sha2::Sha256::digest(parts.join("\n").as_bytes()).into();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    crate::input::recipe::uuid_text(b, 8)
}

#[async_trait]
impl Provider for AwsProvider {
    fn lifecycle(&self) -> Option<&dyn crate::provider::Lifecycle> {
        Some(self)
    }

    fn fleet(&self) -> Option<&dyn crate::provider::Fleet> {
        Some(self)
    }

    fn name(&self) -> &'static str {
        "aws"
    }

    async fn resolve_base(&self, recipe: &Recipe, arch: Arch) -> Result<BaseImage> {
        self.base_image(recipe, arch).await
    }

    /// Refused at plan, not by RunInstances half way into a run. A literal AMI was described
    /// (and checked) when it was resolved.
    async fn check_base(&self, recipe: &Recipe, arch: Arch, base: &BaseImage) -> Result<()> {
        if let Some(AwsBaseRef::Parameter(_)) = recipe.aws.get(&arch) {
            let root = self.root_volume(&base.id).await?;
            recipe.volume_size_for(arch, &base.id, root.size_gib)?;
        }
        Ok(())
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
        // The image carries only the digest (tag bake:packages); the SSM registry keeps the
        // list itself beside the release (`Registry::package_manifest`).
        Ok(None)
    }

    async fn check_account(&self) -> Result<Vec<String>> {
        self.check_canary_account().await
    }

    async fn kubernetes_version(&self, eks_cluster: &str) -> Result<Option<KubeVersion>> {
        self.eks_slot().await;
        let region = &self.region;
        let r = self
            .eks
            .describe_cluster()
            .name(eks_cluster)
            .send()
            .await
            .map_err(|e| {
                crate::provider::aws::sdk::err(
                    format!(
                        "reading the Kubernetes version of EKS cluster {eks_cluster} in {region}"
                    ),
                    e,
                )
            })?;
        let Some(v) = r.cluster().and_then(|c| c.version()) else {
            return Err(Error::provider(
                "aws",
                format!("EKS cluster {eks_cluster} in {region} reports no Kubernetes version"),
            ));
        };
        v.parse().map(Some).map_err(|why| {
            Error::provider(
                "aws",
                format!("EKS cluster {eks_cluster} in {region}: {why}"),
            )
        })
    }

    async fn image_in_use(&self, image_id: &str) -> Result<Option<String>> {
        Ok(self
            .images_in_use(&[image_id.to_string()])
            .await?
            .remove(image_id))
    }

    async fn images_in_use(&self, images: &[String]) -> Result<BTreeMap<String, String>> {
        Ok(crate::provider::Lifecycle::usage(self, images)
            .await?
            .in_use)
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
        live: &BTreeSet<String>,
        published: &BTreeSet<String>,
    ) -> Result<Vec<Leftover>> {
        self.find_leftovers(live, published).await
    }

    async fn remove_leftover(&self, l: &Leftover) -> Result<()> {
        self.remove(l).await
    }

    async fn plan_resources(
        &self,
        recipe: &Recipe,
        arch: Arch,
        base: &BaseImage,
        key: &BakeKey,
    ) -> Result<Vec<super::PlannedResource>> {
        if self.settings.engine != crate::input::pipeline::Engine::Imagebuilder {
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

    async fn reuse(&self, image: ImageRecord, cx: &StepContext<'_>) -> Result<ImageRecord> {
        self.reuse_chain(image, cx).await
    }

    async fn bake(&self, job: &BakeJob<'_>, cx: &StepContext<'_>) -> Result<ImageRecord> {
        self.bake_chain(job, cx).await
    }
}
