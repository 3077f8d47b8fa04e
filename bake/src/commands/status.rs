//! `bake status`: recipes × arches × channels — which release each cluster runs, validated
//! when, and what is pending promotion.

use super::{json, open, RegistryArgs};
use super::{Global, Output};
use crate::error::exit;
use crate::input::pipeline::Pipeline;
use crate::registry::Registry;
use crate::release::{Manifest, ReleaseId};
use crate::report::{age, table};
use crate::{Arch, Result};
use clap::Args;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this recipe.
    pub recipe: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(args: &StatusArgs, g: &Global) -> Result<u8> {
    let pipeline = Pipeline::load(&args.registry.pipeline)?;
    if let Some(r) = &args.recipe {
        pipeline.bake(r)?;
    }
    let (_, reg) = open(&pipeline, &g.state_dir).await?;
    let rows = status_rows(&pipeline, reg.as_ref(), args.recipe.as_deref()).await?;
    print_status(g.output, &rows);
    Ok(exit::OK)
}

#[derive(Debug, Serialize)]
struct StatusRow {
    recipe: String,
    arch: Arch,
    channel: String,
    release: Option<String>,
    image: Option<String>,
    validated_at: Option<chrono::DateTime<chrono::Utc>>,
    promoted_at: Option<chrono::DateTime<chrono::Utc>>,
    latest_release: Option<String>,
    /// Why the release this row shows was revoked, if it was.
    revoked: Option<String>,
}

/// One function because its reads (newest, each channel, those releases and their revocations,
/// each once) and the rows built from them are one plan: tests/reads.rs counts its calls, and a
/// reader sees them together.
async fn status_rows(
    pipeline: &Pipeline,
    registry: &dyn Registry,
    only: Option<&str>,
) -> Result<Vec<StatusRow>> {
    let mut rows = Vec::new();
    for bake in &pipeline.bakes {
        if only.is_some_and(|r| r != bake.recipe.name) {
            continue;
        }
        let recipe = bake.recipe.name.as_str();
        // What the rows show, each read once: the newest release (one parameter; the listing
        // only for a registry that has no copy of it yet), where each of the pipeline's
        // channels points, those releases' manifests and their revocations — never one read
        // per release or per move.
        let latest = match registry.newest_release(recipe).await? {
            Some(m) => Some(m),
            None => registry.releases(recipe).await?.pop(),
        };
        let mut channels = BTreeMap::new();
        for (cluster, c) in &pipeline.clusters {
            if bake.arches.iter().any(|a| c.arches.contains(a)) {
                if let Some(e) = registry.channel(recipe, cluster).await? {
                    channels.insert(cluster.clone(), e);
                }
            }
        }
        let mut shown: BTreeMap<ReleaseId, Option<Manifest>> = BTreeMap::new();
        if let Some(m) = &latest {
            shown.insert(m.release.clone(), Some(m.clone()));
        }
        for cluster in pipeline.clusters.keys() {
            if let Some(e) = channels.get(cluster) {
                if !shown.contains_key(&e.release) {
                    let m = registry.release(recipe, &e.release).await?;
                    shown.insert(e.release.clone(), m);
                }
            }
        }
        let mut revoked = BTreeMap::new();
        for id in shown.keys() {
            if let Some(r) = registry.revocation(recipe, id).await? {
                revoked.insert(id.clone(), r.reason);
            }
        }
        let latest = latest.as_ref();
        for &arch in &bake.arches {
            // The newest release first, then each cluster's channel.
            rows.push(StatusRow {
                recipe: bake.recipe.name.clone(),
                arch,
                channel: "(latest)".into(),
                release: latest.map(|m| m.release.to_string()),
                image: latest
                    .and_then(|m| m.images.get(&arch))
                    .map(|i| i.image_id.clone()),
                validated_at: latest
                    .and_then(|m| m.images.get(&arch))
                    .map(|i| i.validated_at),
                promoted_at: None,
                latest_release: latest.map(|m| m.release.to_string()),
                revoked: latest.and_then(|m| revoked.get(&m.release).cloned()),
            });
            for (cluster, c) in &pipeline.clusters {
                if !c.arches.contains(&arch) {
                    continue;
                }
                let entry = channels.get(cluster);
                let release = entry
                    .and_then(|e| shown.get(&e.release))
                    .and_then(Option::as_ref);
                rows.push(StatusRow {
                    recipe: bake.recipe.name.clone(),
                    arch,
                    channel: cluster.clone(),
                    release: entry.map(|e| e.release.to_string()),
                    image: entry.and_then(|e| e.images.get(&arch).cloned()),
                    validated_at: release
                        .and_then(|m| m.images.get(&arch))
                        .map(|i| i.validated_at),
                    promoted_at: entry.map(|e| e.at),
                    latest_release: latest.map(|m| m.release.to_string()),
                    revoked: entry.and_then(|e| revoked.get(&e.release).cloned()),
                });
            }
        }
    }
    Ok(rows)
}

fn print_status(output: Output, rows: &[StatusRow]) {
    if output == Output::Json {
        return json(&rows);
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let pending = match (&r.release, &r.latest_release) {
                _ if r.revoked.is_some() && r.channel != "(latest)" => {
                    "REVOKED: move this channel".to_string()
                }
                _ if r.revoked.is_some() => "REVOKED".to_string(),
                (Some(a), Some(b)) if a != b && r.channel != "(latest)" => format!("{b} pending"),
                (None, Some(b)) if r.channel != "(latest)" => format!("{b} pending"),
                _ => String::new(),
            };
            vec![
                r.recipe.clone(),
                r.arch.to_string(),
                r.channel.clone(),
                r.release.clone().unwrap_or_else(|| "-".into()),
                r.image.clone().unwrap_or_else(|| "-".into()),
                r.validated_at.map(age).unwrap_or_else(|| "-".into()),
                pending,
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "RECIPE",
                "ARCH",
                "CHANNEL",
                "RELEASE",
                "IMAGE",
                "VALIDATED",
                "PROMOTION"
            ],
            &table_rows
        )
    );
}
