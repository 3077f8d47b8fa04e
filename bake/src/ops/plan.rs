//! Planning: for each recipe × arch of a pipeline, what `run` would do and why.

use crate::input::pipeline::Pipeline;
use crate::key::{bake_key, BakeKey};
use crate::provider::{BaseImage, Provider};
use crate::registry::Registry;
use crate::release::{Manifest, ReleaseId};
use crate::{Arch, Result};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Decision {
    /// No release of this recipe has an image for this arch.
    New,
    /// The resolved base image differs from the latest release's.
    BaseChanged { from: String, to: String },
    /// Same base, but the recipe, its scripts/files or validators changed.
    RecipeChanged,
    /// The latest release was baked with this exact key.
    UpToDate { release: ReleaseId },
    /// `--force` asked to bake although the key matches.
    Forced { release: ReleaseId },
}

impl Decision {
    pub fn needs_bake(&self) -> bool {
        !matches!(self, Decision::UpToDate { .. })
    }

    pub fn label(&self) -> String {
        match self {
            Decision::New => "new".into(),
            Decision::BaseChanged { .. } => "base changed".into(),
            Decision::RecipeChanged => "recipe changed".into(),
            Decision::UpToDate { .. } => "up to date".into(),
            Decision::Forced { .. } => "forced".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanItem {
    pub recipe: String,
    pub arch: Arch,
    pub base: BaseImage,
    pub key: BakeKey,
    pub decision: Decision,
    /// The latest release with an image for this arch.
    pub latest: Option<ReleaseId>,
    /// Long-lived resources the bake would create or reuse (Image Builder); filled by
    /// `bake plan` for items that need a bake.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<crate::provider::PlannedResource>,
}

/// Which recipes and arches to consider.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub recipe: Option<String>,
    pub arch: Option<Arch>,
    pub force: bool,
}

impl Filter {
    /// True when `--arch` (if any) selects this arch.
    pub fn selects(&self, arch: Arch) -> bool {
        self.arch.is_none_or(|a| a == arch)
    }
}

/// The refusal for an `--arch` no recipe of the pipeline is baked for.
pub fn no_such_arch(pipeline: &Pipeline, arch: Arch) -> crate::Error {
    crate::Error::Usage(format!(
        "no recipe of pipeline {} is baked for {arch}",
        pipeline.file.display()
    ))
}

/// Decides for one recipe × arch, given the releases of the recipe (oldest first).
pub fn decide(
    releases: &[Manifest],
    arch: Arch,
    key: &BakeKey,
    base: &str,
    force: bool,
) -> (Decision, Option<ReleaseId>) {
    let latest = releases.iter().rev().find(|m| m.images.contains_key(&arch));
    let Some(latest) = latest else {
        return (Decision::New, None);
    };
    let image = &latest.images[&arch];
    let decision = if &image.key == key {
        if force {
            Decision::Forced {
                release: latest.release.clone(),
            }
        } else {
            Decision::UpToDate {
                release: latest.release.clone(),
            }
        }
    } else if image.base != base {
        Decision::BaseChanged {
            from: image.base.clone(),
            to: base.to_string(),
        }
    } else {
        Decision::RecipeChanged
    };
    (decision, Some(latest.release.clone()))
}

/// Plans every recipe × arch of the pipeline that the filter selects.
pub async fn plan(
    pipeline: &Pipeline,
    provider: &dyn Provider,
    registry: &dyn Registry,
    filter: &Filter,
) -> Result<Vec<PlanItem>> {
    if let Some(r) = &filter.recipe {
        pipeline.bake(r)?;
    }
    let mut items = Vec::new();
    for bake in &pipeline.bakes {
        if filter
            .recipe
            .as_ref()
            .is_some_and(|r| r != &bake.recipe.name)
        {
            continue;
        }
        let mut bases = Vec::new();
        for &arch in bake.arches.iter().filter(|a| filter.selects(**a)) {
            let base = provider.resolve_base(&bake.recipe, arch).await?;
            let key = bake_key(&bake.recipe, arch, &base.id);
            bases.push((arch, base, key));
        }
        // The newest release alone settles a run with nothing to do (one read, whatever the
        // registry holds); anything else is decided on every release.
        let newest: Vec<Manifest> = if filter.force || bases.is_empty() {
            Vec::new()
        } else {
            registry
                .newest_release(&bake.recipe.name)
                .await?
                .into_iter()
                .collect()
        };
        let settled = !newest.is_empty()
            && bases.iter().all(|(arch, base, key)| {
                matches!(
                    decide(&newest, *arch, key, &base.id, false).0,
                    Decision::UpToDate { .. }
                )
            });
        let releases = if settled {
            newest
        } else {
            registry.releases(&bake.recipe.name).await?
        };
        for (arch, base, key) in bases {
            let (decision, latest) = decide(&releases, arch, &key, &base.id, filter.force);
            if decision.needs_bake() {
                provider.check_base(&bake.recipe, arch, &base).await?;
            }
            items.push(PlanItem {
                recipe: bake.recipe.name.clone(),
                arch,
                base,
                key,
                decision,
                latest,
                resources: Vec::new(),
            });
        }
    }
    if let Some(a) = filter.arch {
        if items.is_empty() {
            return Err(no_such_arch(pipeline, a));
        }
    }
    // What the bakes' canaries need of the account, before anything is created (a run with
    // nothing to do asks nothing).
    if items.iter().any(|i| i.decision.needs_bake()) {
        for warning in provider.check_account().await? {
            tracing::warn!("{warning}");
        }
    }
    Ok(items)
}

/// Fills in, for the items that need a bake, the long-lived resources the provider would
/// create or reuse (read-only calls; Image Builder only).
pub async fn with_resources(
    items: &mut [PlanItem],
    pipeline: &Pipeline,
    provider: &dyn Provider,
) -> Result<()> {
    for item in items.iter_mut().filter(|i| i.decision.needs_bake()) {
        let recipe = &pipeline.bake(&item.recipe)?.recipe;
        item.resources = provider
            .plan_resources(recipe, item.arch, &item.base, &item.key)
            .await?;
    }
    Ok(())
}
