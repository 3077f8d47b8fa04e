//! `bake revoke`: withdraw a bad release (`ops::revoke`). From then on `promote`, `pin` and
//! the channel pins that still hold it refuse it, `status` flags every channel that points at
//! it, and Terraform fails the plan of a node pinned to it.

use super::{json, locked, open, RegistryArgs};
use super::{Global, Output};
use crate::error::exit;
use crate::ops::{self, promote};
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
    let work = ops::revoke::revoke(
        reg.as_ref(),
        provider.as_ref(),
        recipe,
        &args.release,
        &revocation,
        deprecate_at,
    );
    let ops::revoke::Revoked {
        holding,
        deprecated,
    } = locked(reg.as_ref(), recipe, &who, args.break_lock, false, work).await?;
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
