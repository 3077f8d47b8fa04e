//! Deregistration protection for what prod runs. The images (and their copies) that a prod
//! channel points at now or in its last `retention.history` entries are protected, so nothing —
//! not prune, not a person in the console, not another tool — can deregister them; bake lifts
//! the protection it set once an image leaves that window. Protection somebody else set is
//! never lifted: prune keeps such an image and says why.
//!
//! Reconciled when a prod channel moves (promote, rollback) and by prune.

use crate::input::pipeline::Pipeline;
use crate::provider::{Protection, Provider};
use crate::registry::Registry;
use crate::Result;
use std::collections::BTreeSet;

/// The home-region images of `recipe` that prod channels hold now or in their history window.
pub async fn wanted(
    registry: &dyn Registry,
    pipeline: &Pipeline,
    recipe: &str,
) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for (name, cluster) in &pipeline.clusters {
        if !cluster.prod {
            continue;
        }
        let history = registry.channel_history(recipe, name).await?;
        let window = history.len().saturating_sub(pipeline.retention.history + 1);
        for entry in history.iter().skip(window) {
            out.extend(entry.images.values().cloned());
        }
    }
    Ok(out)
}

/// Brings the protection of `recipe`'s images in line with what prod holds; with `apply`
/// false, only says what it would change.
pub async fn reconcile(
    registry: &dyn Registry,
    provider: &dyn Provider,
    pipeline: &Pipeline,
    recipe: &str,
    apply: bool,
) -> Result<Protection> {
    let wanted = wanted(registry, pipeline, recipe).await?;
    match provider.lifecycle() {
        Some(lifecycle) => lifecycle.protect_images(recipe, &wanted, apply).await,
        // No protection where images have none (the local provider).
        None => Ok(Default::default()),
    }
}
