//! The tail of every AWS chain, after validation: copy the validated image to each of
//! `copy_regions` (encrypted, with its `bake:*` tags and `bake:source-image`) and give
//! `share_accounts` launch permission on it and every copy. A reused image runs this tail
//! too. A failure or interrupt removes the copies this run made; the validated image stays,
//! and the next run or `resume` distributes it again.

use super::state::State;
use super::{client_token, image, AwsProvider};
use crate::journal::Kind;
use crate::provider::ImageStatus;
use crate::steps::{Outcome, Step, StepContext};
use crate::Result;
use async_trait::async_trait;
use aws_sdk_ec2::types::Tag;

/// Copies the validated image to each region of `copy_regions` that lacks a copy, all
/// regions at once.
pub(super) struct CopyToRegions<'a> {
    pub p: &'a AwsProvider,
}

#[async_trait]
impl Step<State> for CopyToRegions<'_> {
    fn name(&self) -> &str {
        "copy"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let p = self.p;
        let Some(record) = state.record.as_mut() else {
            return Err(cx.error(self.name(), "no image record to copy"));
        };
        if record.status != ImageStatus::Validated {
            return Ok(());
        }
        let mut tags: Option<Vec<Tag>> = None;
        let mut started = Vec::new();
        for images in p.copy_regions() {
            let region = images.region().to_string();
            if let Some(copy) = images.copies_of(&record.id).await?.into_iter().next() {
                record.copies.insert(region, copy);
                continue;
            }
            cx.phase(&format!("copying {} to {region}", record.id));
            let name = format!(
                "bake-{}-{}-{}-{}",
                record.recipe,
                record.arch,
                record.key.short(),
                record.id
            );
            if tags.is_none() {
                let mut t = p.bake_tags_of(&record.id).await?;
                t.push(
                    Tag::builder()
                        .key("bake:source-image")
                        .value(&record.id)
                        .build(),
                );
                tags = Some(t);
            }
            let copy = images
                .copy_here(image::CopyRequest {
                    source: &record.id,
                    source_region: &p.region,
                    name: &name,
                    kms_key_id: p.settings.kms_key_id.as_deref(),
                    tags: tags.clone().unwrap_or_default(),
                    client_token: client_token(&[cx.journal.run_id(), &record.id, &region]),
                })
                .await?;
            cx.created(Kind::ImageCopy, &format!("{region}/{copy}"))?;
            state.copies_made.push((region.clone(), copy.clone()));
            started.push((images, region, copy));
        }
        // Every copy is under way before the first wait: the regions copy side by side.
        for (images, region, copy) in started {
            cx.phase(&format!("waiting for copy {copy} in {region}"));
            images.wait_available(&copy, p.image_wait()).await?;
            record.copies.insert(region, copy);
        }
        Ok(())
    }
    async fn cleanup(
        &self,
        state: &mut State,
        outcome: Outcome,
        cx: &StepContext<'_>,
    ) -> Result<()> {
        if !outcome.discards_image() {
            return Ok(());
        }
        for (region, copy) in std::mem::take(&mut state.copies_made) {
            if let Some(images) = self.p.copy_regions().find(|i| i.region() == region) {
                images.deregister(&copy).await?;
                cx.removed(Kind::ImageCopy, &format!("{region}/{copy}"))?;
            }
            if let Some(record) = state.record.as_mut() {
                record.copies.remove(&region);
            }
        }
        Ok(())
    }
}

/// Gives `share_accounts` launch permission on the validated image and its copies (never
/// public: only the listed accounts).
pub(super) struct Share<'a> {
    pub p: &'a AwsProvider,
}

#[async_trait]
impl Step<State> for Share<'_> {
    fn name(&self) -> &str {
        "share"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let accounts = &self.p.settings.share_accounts;
        let Some(record) = state.record.as_ref() else {
            return Err(cx.error(self.name(), "no image record to share"));
        };
        if record.status != ImageStatus::Validated || accounts.is_empty() {
            return Ok(());
        }
        cx.phase(&format!("sharing with {}", accounts.join(", ")));
        self.p.images().share(&record.id, accounts).await?;
        for images in self.p.copy_regions() {
            if let Some(copy) = record.copies.get(images.region()) {
                images.share(copy, accounts).await?;
            }
        }
        Ok(())
    }
}
