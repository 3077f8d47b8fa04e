//! `bake promote`: move a cluster's channel to a release. The only way prod channels move.

use super::{json, locked, open, RegistryArgs};
use super::{Global, Output};
use crate::error::exit;
use crate::ops::promote;
use crate::release::ReleaseId;
use crate::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct PromoteArgs {
    pub recipe: String,
    /// Release ID, e.g. 2026.11.25-1.
    pub release: ReleaseId,
    /// Target cluster (channel).
    #[arg(long)]
    pub to: String,
    /// Source channel the release must have soaked on.
    #[arg(long)]
    pub from: Option<String>,
    #[command(flatten)]
    pub change: ChannelChange,
}

/// What every move of a channel (promote, rollback) takes.
#[derive(Debug, Args)]
pub struct ChannelChange {
    /// Why, recorded in the channel history.
    #[arg(long)]
    pub reason: Option<String>,
    /// Show the change without making it.
    #[arg(long)]
    pub dry_run: bool,
    /// Take the recipe's lock even if another run holds it. Only when that run is dead.
    #[arg(long)]
    pub break_lock: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

impl ChannelChange {
    /// Opens the pipeline's registry, runs `work` under the recipe's lock (none on a dry run),
    /// and prints the move.
    pub(super) async fn apply(
        &self,
        recipe: &str,
        cluster: &str,
        g: &Global,
        work: impl AsyncFnOnce(
            &dyn crate::registry::Registry,
            &crate::input::pipeline::Pipeline,
            &str,
        ) -> Result<promote::Promotion>,
    ) -> Result<u8> {
        let mut pipeline = self.registry.load(recipe)?;
        let (provider, reg) = open(&pipeline, &g.state_dir).await?;
        // The version skew is checked against what the cluster runs: named in the pipeline,
        // or read from its EKS control plane.
        if let Some(c) = pipeline.clusters.get_mut(cluster) {
            c.kubernetes_version = promote::kubernetes_version(provider.as_ref(), c).await?;
        }
        let who = promote::who();
        let work = async {
            let moved = work(reg.as_ref(), &pipeline, &who).await?;
            // A prod channel moved: what it holds now gets deregistration protection, what
            // left its history window loses the protection bake gave it.
            let protection = match &moved {
                promote::Promotion::Moved { cluster, .. }
                    if pipeline.clusters.get(cluster).is_some_and(|c| c.prod) =>
                {
                    crate::ops::protection::reconcile(
                        reg.as_ref(),
                        provider.as_ref(),
                        &pipeline,
                        recipe,
                        true,
                    )
                    .await?
                }
                _ => Default::default(),
            };
            Ok((moved, protection))
        };
        let (result, protection) = locked(
            reg.as_ref(),
            recipe,
            &who,
            self.break_lock,
            self.dry_run,
            work,
        )
        .await?;
        print_promotion(g.output, recipe, &result, &protection);
        Ok(exit::OK)
    }
}

pub async fn run(args: &PromoteArgs, g: &Global) -> Result<u8> {
    let c = &args.change;
    args.change
        .apply(&args.recipe, &args.to, g, async |reg, pipeline, who| {
            let req = promote::Request {
                recipe: &args.recipe,
                release: &args.release,
                to: &args.to,
                from: args.from.as_deref(),
                reason: c.reason.as_deref(),
                who,
                dry_run: c.dry_run,
            };
            promote::promote(reg, pipeline, &req).await
        })
        .await
}

/// How a move of a channel (promote or rollback) is shown.
pub(super) fn print_promotion(
    output: Output,
    recipe: &str,
    p: &promote::Promotion,
    protection: &crate::provider::Protection,
) {
    if output == Output::Json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            promotion: &'a promote::Promotion,
            #[serde(skip_serializing_if = "crate::provider::Protection::is_empty")]
            protection: &'a crate::provider::Protection,
        }
        return json(&Out {
            promotion: p,
            protection,
        });
    }
    match p {
        promote::Promotion::Moved { cluster, entry } => println!(
            "{recipe}: channel `{cluster}` moved to {} (version {}): {}",
            entry.release,
            entry.version,
            entry
                .images
                .iter()
                .map(|(a, i)| format!("{a}={i}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        promote::Promotion::WouldMove { change } => println!(
            "dry run: {recipe} channel `{}` would move {} → {}: {}",
            change.cluster,
            change
                .from_release
                .as_ref()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "(nothing)".into()),
            change.to_release,
            change
                .images
                .iter()
                .map(|(a, i)| format!("{a}={i}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        promote::Promotion::AlreadyThere { cluster, entry } => println!(
            "{recipe}: channel `{cluster}` is already on {} (version {}); nothing changed",
            entry.release, entry.version
        ),
    }
    print_protection(protection, true);
}

/// What changed in deregistration protection, for people.
pub(super) fn print_protection(p: &crate::provider::Protection, applied: bool) {
    let (on, off) = if applied {
        (
            "deregistration protection on",
            "deregistration protection lifted",
        )
    } else {
        (
            "would turn deregistration protection on",
            "would lift deregistration protection",
        )
    };
    if !p.protect.is_empty() {
        println!("{on}: {}", p.protect.join(", "));
    }
    if !p.lift.is_empty() {
        println!("{off} (left prod's history window): {}", p.lift.join(", "));
    }
}
