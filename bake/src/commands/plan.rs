//! `bake plan`: what `run` would do for each recipe × arch, and why. Changes nothing.

use super::{json, open, short, Select};
use super::{Global, Output};
use crate::error::exit;
use crate::input::pipeline::Pipeline;
use crate::ops::plan::{self, PlanItem};
use crate::report::table;
use crate::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Pipeline file, e.g. pipelines/local.toml.
    pub pipeline: PathBuf,
    #[command(flatten)]
    pub select: Select,
}

pub async fn run(args: &PlanArgs, g: &Global) -> Result<u8> {
    let pipeline = Pipeline::load(&args.pipeline)?;
    args.select.check(&pipeline)?;
    let (provider, registry) = open(&pipeline, &g.state_dir).await?;
    let mut items = plan::plan(
        &pipeline,
        provider.as_ref(),
        registry.as_ref(),
        &args.select.filter(),
    )
    .await?;
    plan::with_resources(&mut items, &pipeline, provider.as_ref()).await?;
    print_plan(g.output, &items);
    Ok(exit::OK)
}

fn print_plan(output: Output, items: &[PlanItem]) {
    if output == Output::Json {
        return json(&items);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            let why = match &i.decision {
                plan::Decision::BaseChanged { from, to } => {
                    format!("base changed ({} → {})", short(from), short(to))
                }
                plan::Decision::UpToDate { release } => format!("up to date ({release})"),
                plan::Decision::Forced { release } => format!("forced (same key as {release})"),
                d => d.label(),
            };
            vec![
                i.recipe.clone(),
                i.arch.to_string(),
                why,
                i.key.short().to_string(),
                i.base.source.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["RECIPE", "ARCH", "ACTION", "KEY", "BASE"], &rows)
    );
    for i in items.iter().filter(|i| !i.resources.is_empty()) {
        println!("\n{} {}: Image Builder resources", i.recipe, i.arch);
        for r in &i.resources {
            println!("  {:<7} {:<29} {}", r.action, r.kind, r.name);
        }
    }
}
