//! `bake rollback`: a cluster's channel back to the previous distinct release in its history.

use super::promote::ChannelChange;
use super::Global;
use crate::ops::promote;
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
    #[command(flatten)]
    pub change: ChannelChange,
}

pub async fn run(args: &RollbackArgs, g: &Global) -> Result<u8> {
    let c = &args.change;
    args.change
        .apply(
            &args.recipe,
            &args.cluster,
            g,
            async |reg, pipeline, who| {
                let req = promote::Rollback {
                    recipe: &args.recipe,
                    cluster: &args.cluster,
                    to: args.to.as_ref(),
                    reason: c.reason.as_deref(),
                    who,
                    dry_run: c.dry_run,
                };
                promote::rollback(reg, pipeline, &req).await
            },
        )
        .await
}
