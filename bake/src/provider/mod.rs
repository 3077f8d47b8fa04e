//! Providers: where the work happens. The pipeline code is written once against the
//! [`Provider`] trait, which every provider implements: `local` (an offline chroot builder or a
//! builder VM, canary VMs under QEMU reached through the guest agent) and `aws` (EC2 and Image
//! Builder, reached through SSM). Capabilities only some providers have are traits of their
//! own that a provider opts into: [`Lifecycle`] (deprecation, deregistration protection, what
//! uses many images; AWS) and [`Fleet`] (the running nodes `bake audit` judges; both).

#[cfg(feature = "aws")]
pub mod aws;
pub mod local;

use crate::input::recipe::Recipe;
use crate::key::BakeKey;
use crate::kube::KubeVersion;
use crate::steps::StepContext;
pub use crate::steps::{ByRole, Role};
use crate::verdict::Verdict;
use crate::{Arch, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A base image resolved to an exact ID for one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseImage {
    /// The exact ID (AMI ID, or the local base's input digest); part of the bake key.
    pub id: String,
    /// Where it came from, for people ("ssm:/aws/service/...", "mmdebstrap bookworm amd64").
    pub source: String,
    /// How a canary from it joins an EKS cluster (AWS bases; None for local ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<crate::input::names::Join>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageStatus {
    /// Every applicable validator passed on a canary.
    Validated,
    /// Validators rejected it; it is never published.
    Rejected,
}

/// An image a provider holds, with what it knows about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    pub recipe: String,
    pub arch: Arch,
    pub key: BakeKey,
    pub base: String,
    pub status: ImageStatus,
    pub run_id: String,
    pub created_at: DateTime<Utc>,
    pub verdict: Verdict,
    pub packages_sha256: Option<String>,
    /// The kubelet's version in the image (from its package manifest), if it has one.
    #[serde(default)]
    pub kubelet: Option<String>,
    /// The package manifest, while the run that captured it holds the record (not stored with
    /// it: the local provider keeps a file, AWS the registry's parameters).
    #[serde(skip)]
    pub packages: Option<String>,
    /// Copies in other regions (region → image ID), made after validation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub copies: BTreeMap<String, String>,
}

impl ImageRecord {
    /// The record of a judged image of `job`, made now.
    pub fn judged(
        job: &BakeJob<'_>,
        id: String,
        verdict: &Verdict,
        made: &crate::steps::Made,
    ) -> ImageRecord {
        ImageRecord {
            id,
            recipe: job.recipe.name.clone(),
            arch: job.arch,
            key: job.key.clone(),
            base: job.base.id.clone(),
            status: if verdict.accepted {
                ImageStatus::Validated
            } else {
                ImageStatus::Rejected
            },
            run_id: job.run_id.to_string(),
            created_at: Utc::now(),
            verdict: verdict.clone(),
            packages_sha256: made.packages_sha256(),
            kubelet: made.kubelet(),
            packages: made.packages.clone(),
            copies: BTreeMap::new(),
        }
    }
}

/// A resource a bake would create or reuse outside bake's own run (Image Builder's
/// components, recipes and configurations), for `bake plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedResource {
    pub kind: String,
    pub name: String,
    /// `create` or `reuse`.
    pub action: String,
}

/// One bake to do: a recipe on an arch from a resolved base.
#[derive(Debug, Clone)]
pub struct BakeJob<'a> {
    pub recipe: &'a Recipe,
    pub arch: Arch,
    pub base: BaseImage,
    pub key: BakeKey,
    pub run_id: &'a str,
}

/// Something a dead run left behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leftover {
    pub kind: crate::journal::Kind,
    pub id: String,
    pub run_id: String,
    pub recipe: String,
    pub arch: Option<Arch>,
    /// What removing it does, for the plan.
    pub action: String,
    /// Kept by `resume`, which reuses it (a validated image).
    #[serde(skip)]
    pub reusable: bool,
}

/// When a deprecation asked for now takes effect: EC2 takes whole minutes and refuses the
/// past, so the next minute but one.
pub fn deprecation_start(now: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    use chrono::{DurationRound, TimeDelta};
    now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now) + TimeDelta::minutes(2)
}

/// What a reconciliation of deregistration protection changes (or, planned, would change):
/// `protect_images`' answer, `protection::reconcile`'s result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Protection {
    /// Images protected now (copies included).
    pub protect: Vec<String>,
    /// Images whose protection (set by bake) is lifted.
    pub lift: Vec<String>,
}

impl Protection {
    pub fn is_empty(&self) -> bool {
        self.protect.is_empty() && self.lift.is_empty()
    }
}

/// The eks-node module's tag naming the EKS cluster a node joined (terraform/modules/eks-node;
/// modules before it did not tag it).
pub const CLUSTER_TAG: &str = "bake:cluster";

/// A running node built from one of bake's images, as `bake audit` finds it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetNode {
    /// The node's name (the eks-node module's `bake:node` tag, else `Name`, else its ID).
    pub name: String,
    pub instance: String,
    pub image: String,
    pub launched: Option<DateTime<Utc>>,
    /// The EKS cluster it was joined to, where its tags say (`bake:cluster`).
    pub cluster: Option<String>,
    /// Where it runs when not in the pipeline's own region (a copy region).
    pub region: Option<String>,
    /// The copy of `image` it runs there.
    pub copy: Option<String>,
}

/// What a provider whose images run as long-lived nodes offers `bake audit`: finding them and
/// reaching inside one. A capability: providers without a fleet to audit do not have it.
#[async_trait]
pub trait Fleet: Send + Sync {
    /// The running nodes whose image is one of `images` (every image of the recipe's
    /// releases), in calls that do not grow per node. A provider without long-lived nodes
    /// (local) offers one node per image of `current` (those a channel points at now: what a
    /// node made today would run), booted when its guest is asked for.
    async fn nodes(&self, images: &[String], current: &[String]) -> Result<Vec<FleetNode>>;

    /// How to ask the node `program`'s questions (its arch `arch`), once its agent answers
    /// (within `wait`); an error names why not. A node booted for the audit lives as long as
    /// its probe.
    async fn probe(
        &self,
        node: &FleetNode,
        program: &crate::guest::audit::AuditProgram,
        arch: crate::Arch,
        wait: std::time::Duration,
    ) -> Result<Box<dyn crate::guest::audit::NodeProbe>>;

    /// Where each program's installed form stands in each region the nodes may run in (AWS:
    /// the recipe's SSM document in the pipeline's region and each copy region); with `apply`,
    /// what is missing or stale is installed first. A provider that runs the program straight
    /// through a node's guest installs nothing (empty).
    async fn documents(
        &self,
        _programs: &[crate::guest::audit::AuditProgram],
        _apply: bool,
    ) -> Result<Vec<crate::guest::audit::Installed>> {
        Ok(Vec::new())
    }
}

/// A provider whose images have a lifecycle beyond existing: deprecation (prune deprecates
/// before it deletes; revoke deprecates at once) and deregistration protection (for what prod
/// may need). Only AWS has it (EC2's DeprecationTime and deregistration protection); a
/// provider without it deletes images outright, and nothing is protected.
#[async_trait]
pub trait Lifecycle: Send + Sync {
    /// Deprecates these images (and their copies) from `at` on; the IDs it deprecated.
    async fn deprecate_images(
        &self,
        images: &[String],
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>>;

    /// Deregistration protection on exactly the `wanted` images of `recipe` (and their copies)
    /// among those bake protects; with `apply` false, what it would change.
    async fn protect_images(
        &self,
        recipe: &str,
        wanted: &std::collections::BTreeSet<String>,
        apply: bool,
    ) -> Result<Protection>;

    /// [`Provider::images_in_use`] of these images and when each that is (or will be)
    /// deprecated is, from one read of them: what prune decides from.
    async fn usage(&self, images: &[String]) -> Result<ImageUsage>;
}

/// Of many images: those that must not be deleted (with why) and when those deprecated are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageUsage {
    pub in_use: BTreeMap<String, String>,
    pub deprecated: BTreeMap<String, chrono::DateTime<chrono::Utc>>,
}

#[async_trait]
pub trait Provider: Send + Sync {
    fn name(&self) -> &'static str;

    /// The running nodes of bake's images, where this provider has them (`bake audit`).
    fn fleet(&self) -> Option<&dyn Fleet> {
        None
    }

    /// Image deprecation and protection, where images have them (see `Lifecycle`).
    fn lifecycle(&self) -> Option<&dyn Lifecycle> {
        None
    }

    /// Resolves the recipe's base for `arch` to an exact ID, with no side effects.
    async fn resolve_base(&self, recipe: &Recipe, arch: Arch) -> Result<BaseImage>;

    /// Refuses, before anything is created, a base this recipe cannot be baked on (a volume
    /// smaller than the base's). Asked at plan only for what needs a bake, so a run with
    /// nothing to do makes no call for it.
    async fn check_base(&self, _recipe: &Recipe, _arch: Arch, _base: &BaseImage) -> Result<()> {
        Ok(())
    }

    /// Checks, read-only and before anything is created, what the account must hold for a
    /// bake's canary (AWS: the node role, its policies, its access to the canary cluster, the
    /// cluster security group). Missing pieces are an error naming each and its fix; what the
    /// provider cannot see for itself comes back as warnings. Asked at plan only when something
    /// needs a bake. Nothing to check by default.
    async fn check_account(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// An image already baked with this key, if the provider still has one (a rerun reuses a
    /// validated image instead of baking it again).
    async fn find_image(
        &self,
        recipe: &str,
        arch: Arch,
        key: &BakeKey,
    ) -> Result<Option<ImageRecord>>;

    /// Bakes the image, proves it on a canary and returns it with the validators' verdict
    /// (accepted or rejected). Everything it created is cleaned up before it returns, except
    /// the image itself when the bake was not a failure.
    async fn bake(&self, job: &BakeJob<'_>, cx: &StepContext<'_>) -> Result<ImageRecord>;

    /// The package manifest captured at bake time: `name<TAB>version<TAB>arch` lines.
    async fn package_manifest(&self, image_id: &str) -> Result<Option<String>>;

    /// The Kubernetes version an EKS cluster's control plane runs (`eks:DescribeCluster`), or
    /// None where the provider has no clusters to ask (local).
    async fn kubernetes_version(&self, eks_cluster: &str) -> Result<Option<KubeVersion>>;

    /// Why the image must not be deleted (a running or stopped instance or a launch template
    /// uses it, it has deregistration protection), or None.
    async fn image_in_use(&self, image_id: &str) -> Result<Option<String>>;

    /// [`Provider::image_in_use`] of many images: those that must not be deleted, with why.
    /// Providers that can read many at once (EC2 filters) do it in calls that do not grow
    /// with the number of images.
    async fn images_in_use(&self, images: &[String]) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for image in images {
            if let Some(why) = self.image_in_use(image).await? {
                out.insert(image.clone(), why);
            }
        }
        Ok(out)
    }

    /// The long-lived resources a bake of this recipe × arch would create or reuse (read-only).
    /// None for engines that create nothing beyond the run.
    async fn plan_resources(
        &self,
        _recipe: &crate::input::recipe::Recipe,
        _arch: Arch,
        _base: &BaseImage,
        _key: &crate::key::BakeKey,
    ) -> Result<Vec<PlannedResource>> {
        Ok(Vec::new())
    }

    /// Finishes a validated image found by its key (a rerun, or `resume` after a run that died
    /// after validation): the tail of the bake's own chain (AWS: copies and shares), so
    /// nothing is baked again. Nothing to do by default.
    async fn reuse(&self, image: ImageRecord, _cx: &StepContext<'_>) -> Result<ImageRecord> {
        Ok(image)
    }

    /// Marks published images (and their copies) with the release that now holds them, so a
    /// person and every other pipeline can tell an image is published. Nothing by default.
    async fn mark_published(
        &self,
        _release: &str,
        _images: &[crate::release::ReleaseImage],
    ) -> Result<()> {
        Ok(())
    }

    /// Deletes an image and what belongs to it (snapshots, files).
    async fn delete_image(&self, image_id: &str) -> Result<()>;

    /// What runs not in `live` left behind; never anything in `published` or untagged.
    async fn leftovers(
        &self,
        live: &std::collections::BTreeSet<String>,
        published: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<Leftover>>;

    /// Removes one leftover.
    async fn remove_leftover(&self, leftover: &Leftover) -> Result<()>;
}
