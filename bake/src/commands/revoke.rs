//! `bake revoke`: withdraw a bad release. It stays as published (immutable); a revocation is
//! written once beside it, and from then on `promote`, `pin` and the channel pins that still
//! hold it refuse it, `status` flags every channel that points at it, and Terraform fails the
//! plan of a node pinned to it. On AWS its images (and copies) are deprecated first, so that a
//! failure leaves nothing half-revoked: the revocation is written only once they are.

use super::{json, locked, open, RegistryArgs};
use super::{Global, Output};
use crate::error::exit;
use crate::ops::promote;
use crate::release::{ReleaseId, Revocation};
use crate::Result;
use clap::Args;
use serde::Serialize;

#[derive(Debug, Args)]
pub struct RevokeArgs {
    pub recipe: String,
    /// Release ID, e.g. 2026.11.25-1.
    pub release: ReleaseId,
    /// Why, recorded with the revocation (required: the next reader needs it).
    #[arg(long)]
    pub reason: String,
    /// Take the recipe's lock even if another run holds it. Only when that run is dead.
    #[arg(long)]
    pub break_lock: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(args: &RevokeArgs, g: &Global) -> Result<u8> {
    let recipe = &args.recipe;
    let pipeline = args.registry.load(recipe)?;
    if args.reason.trim().is_empty() {
        return Err(crate::Error::Usage(
            "--reason must say why the release is revoked".into(),
        ));
    }
    let (provider, reg) = open(&pipeline, &g.state_dir).await?;
    let who = promote::who();
    let revocation = Revocation {
        reason: args.reason.trim().to_string(),
        who: who.clone(),
        at: chrono::Utc::now(),
    };
    let deprecate_at = crate::provider::deprecation_start(chrono::Utc::now());
    let work = async {
        let release = reg.existing_release(recipe, &args.release).await?;
        if let Some(first) = reg.revocation(recipe, &args.release).await? {
            return Err(crate::registry::already_revoked(
                recipe,
                &args.release,
                Some(first),
            ));
        }
        let images: Vec<String> = release.images.into_values().map(|i| i.image_id).collect();
        let deprecated = match provider.lifecycle() {
            Some(lifecycle) => lifecycle.deprecate_images(&images, deprecate_at).await?,
            None => Vec::new(),
        };
        reg.revoke(recipe, &args.release, &revocation).await?;
        // The channels that still point at it: a person has to move each.
        let channels = reg.channels(recipe).await?;
        let holding = channels
            .into_iter()
            .filter(|(_, e)| e.release == args.release)
            .map(|(c, _)| c)
            .collect::<Vec<_>>();
        Ok((holding, deprecated))
    };
    let (holding, deprecated) =
        locked(reg.as_ref(), recipe, &who, args.break_lock, false, work).await?;
    #[derive(Serialize)]
    struct Out<'a> {
        recipe: &'a str,
        release: &'a ReleaseId,
        #[serde(flatten)]
        revocation: &'a Revocation,
        /// Channels that still point at it.
        channels: &'a [String],
        /// Images (and copies) deprecated, from `deprecated_at` on (AWS).
        deprecated_images: &'a [String],
        #[serde(skip_serializing_if = "Option::is_none")]
        deprecated_at: Option<chrono::DateTime<chrono::Utc>>,
    }
    let out = Out {
        recipe,
        release: &args.release,
        revocation: &revocation,
        channels: &holding,
        deprecated_images: &deprecated,
        deprecated_at: (!deprecated.is_empty()).then_some(deprecate_at),
    };
    match g.output {
        Output::Json => json(&out),
        Output::Human => {
            println!(
                "{recipe}: release {} revoked: {}",
                args.release, revocation.reason
            );
            if !deprecated.is_empty() {
                println!(
                    "images deprecated from {}: {}",
                    deprecate_at.format("%Y-%m-%d %H:%M UTC"),
                    deprecated.join(", ")
                );
            }
            for c in &holding {
                println!("channel `{c}` still points at it: move it with `bake promote` or `bake rollback`");
            }
        }
    }
    Ok(exit::OK)
}
