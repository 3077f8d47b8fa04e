//! `bake sweep`: what dead runs left behind, from journals and bake's tags. Plans by default.

use super::{json, open, RegistryArgs};
use super::{Global, Output};
use crate::error::exit;
use crate::input::pipeline::Pipeline;
use crate::ops::sweep;
use crate::provider::Leftover;
use crate::report::table;
use crate::Result;
use clap::Args;
use serde::Serialize;

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Remove what the plan lists.
    #[arg(long)]
    pub apply: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(args: &SweepArgs, g: &Global) -> Result<u8> {
    let pipeline = Pipeline::load(&args.registry.pipeline)?;
    let (provider, reg) = open(&pipeline, &g.state_dir).await?;
    let live = sweep::live_runs(&g.state_dir, reg.as_ref(), &pipeline).await?;
    let leftovers = sweep::plan(reg.as_ref(), provider.as_ref(), &pipeline, &live).await?;
    if args.apply {
        sweep::apply(&g.state_dir, reg.as_ref(), provider.as_ref(), &leftovers).await?;
        sweep::release_dead_locks(reg.as_ref(), &pipeline, &live).await?;
    }
    print_sweep(g.output, &leftovers, args.apply);
    Ok(exit::OK)
}

fn print_sweep(output: Output, leftovers: &[Leftover], applied: bool) {
    if output == Output::Json {
        #[derive(Serialize)]
        struct Out<'a> {
            applied: bool,
            leftovers: &'a [Leftover],
        }
        return json(&Out { applied, leftovers });
    }
    if leftovers.is_empty() {
        println!("nothing left behind");
        return;
    }
    let rows: Vec<Vec<String>> = leftovers
        .iter()
        .map(|l| {
            vec![
                l.kind.to_string(),
                l.id.clone(),
                l.run_id.clone(),
                l.action.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["KIND", "ID", "RUN", if applied { "DONE" } else { "WOULD" }],
            &rows
        )
    );
    if !applied {
        println!("plan only; run again with --apply to remove these");
    }
}
