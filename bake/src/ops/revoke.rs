//! Revoking a release: it stays as published (immutable); a revocation is written once beside
//! it. Its images (and copies) are deprecated first where the provider deprecates images, so a
//! failure leaves nothing half-revoked: the revocation is written only once they are.

use crate::provider::Provider;
use crate::registry::Registry;
use crate::release::{ReleaseId, Revocation};
use crate::Result;

/// What a revocation did.
pub struct Revoked {
    /// The channels that still point at the release: a person has to move each.
    pub holding: Vec<String>,
    /// The images (and copies) deprecated from the revocation's deprecation time on.
    pub deprecated: Vec<String>,
}

/// Revokes `release` of `recipe`, its images deprecated from `deprecate_at`; refused if it
/// is not published or already revoked. The caller holds the recipe's lock.
pub async fn revoke(
    registry: &dyn Registry,
    provider: &dyn Provider,
    recipe: &str,
    release: &ReleaseId,
    revocation: &Revocation,
    deprecate_at: chrono::DateTime<chrono::Utc>,
) -> Result<Revoked> {
    let manifest = registry.existing_release(recipe, release).await?;
    if let Some(first) = registry.revocation(recipe, release).await? {
        return Err(crate::registry::already_revoked(
            recipe,
            release,
            Some(first),
        ));
    }
    let images: Vec<String> = manifest.images.into_values().map(|i| i.image_id).collect();
    let deprecated = match provider.lifecycle() {
        Some(lifecycle) => lifecycle.deprecate_images(&images, deprecate_at).await?,
        None => Vec::new(),
    };
    registry.revoke(recipe, release, revocation).await?;
    let holding = registry
        .channels(recipe)
        .await?
        .into_iter()
        .filter(|(_, e)| &e.release == release)
        .map(|(c, _)| c)
        .collect();
    Ok(Revoked {
        holding,
        deprecated,
    })
}
