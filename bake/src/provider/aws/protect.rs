//! Deregistration protection of a recipe's images in every region the pipeline uses: what
//! prod holds gets it; what bake protected and prod let go loses it (see crate::ops::protection).

use super::AwsProvider;
use crate::provider::Protection;
use crate::Result;
use std::collections::BTreeSet;

impl AwsProvider {
    /// Protects the `wanted` home images and their copies, lifts bake's protection from the
    /// rest of `recipe`'s images; with `apply` false only says so.
    pub(super) async fn reconcile_protection(
        &self,
        recipe: &str,
        wanted: &BTreeSet<String>,
        apply: bool,
    ) -> Result<Protection> {
        let mut out = Protection::default();
        let home = self.images();
        let mut regions = vec![(home, wanted.clone())];
        for copies in self.copy_regions() {
            let mut here = BTreeSet::new();
            for image in wanted {
                here.extend(copies.copies_of(image).await?);
            }
            regions.push((copies, here));
        }
        for (images, want) in regions {
            let have: BTreeSet<String> = images
                .protected_by_bake(self.owner(), recipe)
                .await?
                .into_iter()
                .collect();
            for image in want.difference(&have) {
                if apply {
                    images.protect(image).await?;
                }
                out.protect.push(image.clone());
            }
            for image in have.difference(&want) {
                if apply {
                    images.unprotect(image).await?;
                }
                out.lift.push(image.clone());
            }
        }
        Ok(out)
    }
}
