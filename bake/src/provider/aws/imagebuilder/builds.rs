//! The builds bake has started, as Image Builder lists them: what `bake sweep` looks through
//! for the builds of runs that died, and the wait a cleanup needs after cancelling one (a build
//! in progress cannot be deleted, and it may still be making an AMI).

use super::ImageBuilder;
use crate::provider::aws::list::all_pages;
use crate::provider::aws::sdk::err;
use crate::{Error, Result};
use aws_sdk_imagebuilder::types::{ImageStatus, Ownership};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// One build of one of bake's image recipes.
#[derive(Debug, Clone)]
pub struct BuildSummary {
    /// The image build version ARN (`…:image/bake-<recipe>-<arch>-<key>/1.0.0/<n>`).
    pub arn: String,
    pub status: ImageStatus,
    /// The tags bake gave it at CreateImage (recipe, arch, run ID, key, owner).
    pub tags: HashMap<String, String>,
}

impl BuildSummary {
    pub fn tag(&self, key: &str) -> &str {
        self.tags.get(key).map(String::as_str).unwrap_or_default()
    }

    /// Over: nothing runs any more (it may still be deleted).
    pub fn ended(&self) -> bool {
        is_over(&self.status)
    }
}

/// A build in this status runs no more.
pub fn is_over(status: &ImageStatus) -> bool {
    matches!(
        status,
        ImageStatus::Available
            | ImageStatus::Failed
            | ImageStatus::Cancelled
            | ImageStatus::Deleted
    )
}

impl ImageBuilder<'_> {
    /// Every build not deleted of the image recipes bake names `bake-<recipe>-…`, for these
    /// recipes (ListImages, then ListImageBuildVersions of each of bake's image versions).
    pub async fn builds_of(&self, recipes: &BTreeSet<String>) -> Result<Vec<BuildSummary>> {
        let ours = |name: &str| {
            recipes
                .iter()
                .any(|r| name.starts_with(&format!("bake-{r}-")))
        };
        let versions: Vec<String> = all_pages(|token| async move {
            self.slot().await;
            let r = self
                .client
                .list_images()
                .owner(Ownership::SelfValue)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| {
                    err(
                        format!("listing Image Builder images in {}", self.region),
                        e,
                    )
                })?;
            let arns = r
                .image_version_list()
                .iter()
                .filter(|v| v.name().is_some_and(ours))
                .filter_map(|v| v.arn().map(str::to_string))
                .collect();
            Ok((arns, r.next_token().map(str::to_string)))
        })
        .await?;
        let mut out = Vec::new();
        for version in &versions {
            let builds = all_pages(|token| async move {
                self.slot().await;
                let r = self
                    .client
                    .list_image_build_versions()
                    .image_version_arn(version)
                    .set_next_token(token)
                    .send()
                    .await
                    .map_err(|e| {
                        err(
                            format!("listing the builds of {version} in {}", self.region),
                            e,
                        )
                    })?;
                Ok((
                    r.image_summary_list().to_vec(),
                    r.next_token().map(str::to_string),
                ))
            })
            .await?;
            out.extend(builds.into_iter().filter_map(|b| {
                let status = b.state().and_then(|s| s.status().cloned())?;
                (status != ImageStatus::Deleted).then(|| BuildSummary {
                    arn: b.arn().unwrap_or_default().to_string(),
                    status,
                    tags: b.tags().cloned().unwrap_or_default(),
                })
            }));
        }
        Ok(out)
    }

    /// Waits until the build has ended (after a cancel: Image Builder stops its instances
    /// first); its last status.
    pub async fn wait_ended(
        &self,
        arn: &str,
        timeout: Duration,
        poll: Duration,
    ) -> Result<ImageStatus> {
        let start = std::time::Instant::now();
        loop {
            let (status, _, _) = self.status(arn).await?;
            if is_over(&status) {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                return Err(Error::provider(
                    "aws",
                    format!(
                        "build {arn} in {} is still {} after {timeout:?}",
                        self.region,
                        status.as_str()
                    ),
                ));
            }
            tokio::time::sleep(poll).await;
        }
    }
}
