//! `bake rollback`: a cluster's channel back to the previous distinct release in its history.

use super::promote::print_promotion;
use super::{locked, open, RegistryArgs};
use crate::cli::Global;
use crate::error::exit;
use crate::promote;
use crate::release::ReleaseId;
use crate::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct RollbackArgs {
    pub recipe: String,
    #[arg(long)]
    pub cluster: String,
    /// The release to go back to (it must be in the channel's history).
    #[arg(long)]
    pub to: Option<ReleaseId>,
    /// Why, recorded in the channel history.
    #[arg(long)]
    pub reason: Option<String>,
    /// Show the change without making it.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub break_lock: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(args: &RollbackArgs, g: &Global) -> Result<u8> {
    let recipe = &args.recipe;
    let pipeline = args.registry.load(recipe)?;
    let (_, reg) = open(&pipeline, &g.state_dir).await?;
    let who = promote::who();
    let req = promote::Rollback {
        recipe,
        cluster: &args.cluster,
        to: args.to.as_ref(),
        reason: args.reason.as_deref(),
        who: &who,
        dry_run: args.dry_run,
    };
    let work = promote::rollback(reg.as_ref(), &pipeline, &req);
    let result = locked(
        reg.as_ref(),
        recipe,
        &who,
        args.break_lock,
        args.dry_run,
        work,
    )
    .await?;
    print_promotion(g.output, recipe, &result);
    Ok(exit::OK)
}
