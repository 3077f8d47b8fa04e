//! What prune, revoke and protection ask of AWS images beyond existing: deprecation (with the
//! copies in the copy regions), deregistration protection, and what uses them.

use super::AwsProvider;
use crate::Result;
use async_trait::async_trait;
use std::collections::BTreeSet;

#[async_trait]
impl crate::provider::Lifecycle for AwsProvider {
    async fn deprecate_images(
        &self,
        images: &[String],
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for image in images {
            self.images().deprecate(image, at).await?;
            done.push(image.clone());
        }
        for copies in self.copy_regions() {
            for image in images {
                for copy in copies.copies_of(image).await? {
                    copies.deprecate(&copy, at).await?;
                    done.push(copy);
                }
            }
        }
        Ok(done)
    }

    async fn protect_images(
        &self,
        recipe: &str,
        wanted: &BTreeSet<String>,
        apply: bool,
    ) -> Result<crate::provider::Protection> {
        self.reconcile_protection(recipe, wanted, apply).await
    }

    async fn usage(&self, images: &[String]) -> Result<crate::provider::ImageUsage> {
        // Used, protected, or another pipeline's (whatever our registry says): never deleted.
        let mut usage = self.images().usage_many(images, self.owner()).await?;
        for copies in self.copy_regions() {
            let free: Vec<String> = images
                .iter()
                .filter(|i| !usage.in_use.contains_key(*i))
                .cloned()
                .collect();
            let copies_of = copies.copies_of_many(&free).await?;
            let all: Vec<String> = copies_of.values().flatten().cloned().collect();
            let used = copies.in_use_many(&all, self.owner()).await?;
            for (source, those) in copies_of {
                if let Some((copy, why)) = those.iter().find_map(|c| used.get(c).map(|w| (c, w))) {
                    let region = copies.region();
                    usage
                        .in_use
                        .insert(source, format!("its copy {copy} in {region} {why}"));
                }
            }
        }
        Ok(usage)
    }
}
