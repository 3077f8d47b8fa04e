//! The base image a recipe names for an arch: a literal AMI (described; how its nodes join
//! a cluster told from its name and description) or an EKS base's public SSM parameter
//! (resolved to today's AMI), and the root volume an image boots from.

use super::AwsProvider;
use crate::input::names::{AmiId, AwsBaseRef, Join, SsmPath};
use crate::input::recipe::Recipe;
use crate::provider::aws::sdk::err;
use crate::provider::BaseImage;
use crate::{Arch, Error, Result};

impl AwsProvider {
    /// The AMI `recipe` bakes `arch` from today, and how nodes from it join a cluster.
    pub(super) async fn base_image(&self, recipe: &Recipe, arch: Arch) -> Result<BaseImage> {
        let source = recipe.aws.get(&arch).ok_or_else(|| {
            Error::Usage(format!(
                "recipe {} has no [base.aws] entry for {arch}",
                recipe.file.display()
            ))
        })?;
        let (id, join) = match source {
            AwsBaseRef::Ami(a) => self.literal_base(recipe, arch, a).await?,
            AwsBaseRef::Parameter(p) => self.parameter_base(recipe, arch, p).await?,
        };
        Ok(BaseImage {
            id,
            source: source.to_string(),
            join: Some(join),
        })
    }

    /// The image's root device and the snapshot and size its root volume is made from.
    pub(super) async fn root_volume(&self, image: &str) -> Result<RootVolume> {
        Ok(RootVolume::of(self.describe_image(image).await?.as_ref()))
    }

    /// A literal AMI says what it is only in its name and description.
    async fn literal_base(&self, recipe: &Recipe, arch: Arch, a: &AmiId) -> Result<(String, Join)> {
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
        let join = Join::for_image(name, description).ok_or_else(|| {
            Error::Usage(format!(
                "{}: base.aws.{arch}: cannot tell how nodes from {a} (`{name}`) join a cluster: its name and description name neither an Ubuntu EKS nor an EKS-optimized Amazon Linux image; use the base's public SSM parameter instead",
                recipe.file.display()
            ))
        })?;
        recipe.volume_size_for(arch, a.as_str(), RootVolume::of(Some(img)).size_gib)?;
        Ok((a.to_string(), join))
    }

    /// An EKS base's public parameter, resolved to the AMI it names today.
    async fn parameter_base(
        &self,
        recipe: &Recipe,
        arch: Arch,
        p: &SsmPath,
    ) -> Result<(String, Join)> {
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
        let id = AmiId::parse(value)
            .map_err(|m| Error::provider("aws", format!("{p} in {}: {m}", self.region)))?
            .to_string();
        // Known at load: the recipe refuses a parameter whose join it cannot tell.
        let join = Join::for_parameter(p.as_str()).ok_or_else(|| {
            Error::Usage(format!(
                "{}: base.aws.{arch}: {p} is not a known EKS base",
                recipe.file.display()
            ))
        })?;
        Ok((id, join))
    }
}

/// An image's root volume as DescribeImages tells it.
#[derive(Debug, Clone)]
pub(super) struct RootVolume {
    pub(super) device: String,
    pub(super) snapshot: Option<String>,
    pub(super) size_gib: Option<u32>,
}

impl RootVolume {
    /// Read from what DescribeImages said of an image (`/dev/xvda` if it names no root).
    pub(super) fn of(image: Option<&aws_sdk_ec2::types::Image>) -> RootVolume {
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
