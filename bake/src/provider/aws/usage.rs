//! Which of many AMIs in one region may not be deleted, and which are deprecated — read in a
//! number of calls that does not grow with the number of images: images and instances by
//! `image-id` filter, at most [`FILTER_VALUES`] IDs a call (EC2's limit per filter), the
//! launch templates and their versions once, the deprecation times from the same images. Prune
//! asks this of every image of every release.

use super::image::{not_terminated, Images};
use super::list::tag;
use crate::provider::ImageUsage;
use crate::Result;
use aws_sdk_ec2::types::{Filter, Image};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// EC2 takes at most 200 values in one filter (`FilterLimitExceeded` beyond).
pub const FILTER_VALUES: usize = 200;

/// A filter on `name` for each run of at most [`FILTER_VALUES`] of `values`.
pub fn chunked_filters<'v>(
    name: &'v str,
    values: &'v [String],
) -> impl Iterator<Item = Filter> + 'v {
    values.chunks(FILTER_VALUES).map(move |chunk| {
        Filter::builder()
            .name(name)
            .set_values(Some(chunk.to_vec()))
            .build()
    })
}

impl Images<'_> {
    /// This account's images among `ids` (those that still exist), by ID.
    async fn described(&self, ids: &[String]) -> Result<BTreeMap<String, Image>> {
        let mut out = BTreeMap::new();
        for filter in chunked_filters("image-id", ids) {
            for i in self
                .lister()
                .own_images(&[filter], "the releases' images")
                .await?
            {
                if let Some(id) = i.image_id() {
                    out.insert(id.to_string(), i);
                }
            }
        }
        Ok(out)
    }

    /// For each of `ids` that the pipeline publishing under `owner` must not delete, why:
    /// another pipeline's `bake:prefix` is on it, an instance (running or stopped) or a launch
    /// template version uses it, or it has deregistration protection. Absent: free to go.
    /// Read with the images' deprecation times, which come from the same DescribeImages.
    pub async fn usage_many(&self, ids: &[String], owner: &str) -> Result<ImageUsage> {
        if ids.is_empty() {
            return Ok(ImageUsage::default());
        }
        let images = self.described(ids).await?;
        let list = self.lister();
        let mut instance_of: BTreeMap<String, String> = BTreeMap::new();
        for filter in chunked_filters("image-id", ids) {
            for i in list
                .instances(
                    &[filter, not_terminated()],
                    "instances of the releases' images",
                )
                .await?
            {
                if let (Some(image), Some(id)) = (i.image_id(), i.instance_id()) {
                    instance_of
                        .entry(image.to_string())
                        .or_insert_with(|| id.to_string());
                }
            }
        }
        let mut template_of: BTreeMap<String, String> = BTreeMap::new();
        for t in list.launch_templates().await? {
            let Some(id) = t.launch_template_id() else {
                continue;
            };
            for v in list.launch_template_versions(id).await? {
                if let Some(image) = v.launch_template_data().and_then(|d| d.image_id()) {
                    template_of.entry(image.to_string()).or_insert_with(|| {
                        format!(
                            "is used by launch template {} version {}",
                            t.launch_template_name().unwrap_or(id),
                            v.version_number().unwrap_or_default()
                        )
                    });
                }
            }
        }
        let mut in_use = BTreeMap::new();
        for id in ids {
            let image = images.get(id);
            let theirs = tag(
                image.map(|i| i.tags()).unwrap_or_default(),
                super::OWNER_TAG,
            );
            let why = if !theirs.is_empty() && theirs != owner {
                Some(format!(
                    "belongs to the pipeline that publishes under {theirs}, not {owner}"
                ))
            } else if let Some(instance) = instance_of.get(id) {
                Some(format!("is used by instance {instance}"))
            } else if let Some(template) = template_of.get(id) {
                Some(template.clone())
            } else {
                // enabled-with(out)-cooldown, or disabled-until <time> during a cooldown.
                image
                    .and_then(|i| i.deregistration_protection())
                    .filter(|p| p.starts_with("enabled") || p.starts_with("disabled-until"))
                    .map(|p| format!("has deregistration protection ({p})"))
            };
            if let Some(why) = why {
                in_use.insert(id.clone(), why);
            }
        }
        let deprecated = images
            .iter()
            .filter_map(|(id, i)| {
                let at = DateTime::parse_from_rfc3339(i.deprecation_time()?).ok()?;
                Some((id.clone(), at.with_timezone(&Utc)))
            })
            .collect();
        Ok(ImageUsage { in_use, deprecated })
    }

    /// [`Images::usage_many`]'s images in use, with why.
    pub async fn in_use_many(
        &self,
        ids: &[String],
        owner: &str,
    ) -> Result<BTreeMap<String, String>> {
        Ok(self.usage_many(ids, owner).await?.in_use)
    }

    /// The available copies in this region of each of `sources` (tagged `bake:source-image`).
    pub async fn copies_of_many(
        &self,
        sources: &[String],
    ) -> Result<BTreeMap<String, Vec<String>>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for filter in chunked_filters("tag:bake:source-image", sources) {
            for i in self
                .lister()
                .own_images(&[filter], "copies of the releases' images")
                .await?
            {
                if i.state() != Some(&aws_sdk_ec2::types::ImageState::Available) {
                    continue;
                }
                let source = tag(i.tags(), "bake:source-image");
                if let (false, Some(id)) = (source.is_empty(), i.image_id()) {
                    out.entry(source.to_string())
                        .or_default()
                        .push(id.to_string());
                }
            }
        }
        Ok(out)
    }
}
