//! `bake history`: the audit trail of a cluster's channel.

use super::{json, open, RegistryArgs};
use super::{Global, Output};
use crate::error::exit;
use crate::release::ChannelEntry;
use crate::report::table;
use crate::{Error, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct HistoryArgs {
    pub recipe: String,
    #[arg(long)]
    pub cluster: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(args: &HistoryArgs, g: &Global) -> Result<u8> {
    let pipeline = args.registry.load(&args.recipe)?;
    let (_, reg) = open(&pipeline, &g.state_dir).await?;
    let history = reg.channel_history(&args.recipe, &args.cluster).await?;
    if history.is_empty() && !pipeline.clusters.contains_key(&args.cluster) {
        return Err(Error::Usage(format!(
            "cluster `{}` is not defined in {} and has no history",
            args.cluster,
            pipeline.file.display()
        )));
    }
    print_history(g.output, &history);
    Ok(exit::OK)
}

fn print_history(output: Output, history: &[ChannelEntry]) {
    if output == Output::Json {
        return json(&history);
    }
    let rows: Vec<Vec<String>> = history
        .iter()
        .rev()
        .map(|e| {
            vec![
                e.version.to_string(),
                e.release.to_string(),
                e.at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                e.who.clone(),
                e.from.clone().unwrap_or_else(|| "-".into()),
                e.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["VERSION", "RELEASE", "WHEN", "WHO", "FROM", "WHY"], &rows)
    );
}
