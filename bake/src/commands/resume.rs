//! `bake resume`: finish a run that died. Its leftovers are cleaned (validated images kept, to
//! be reused by key) by `sweep::clean_dead_run`, then its pipeline runs again.

use super::open;
use super::run::print_run;
use super::Global;
use crate::error::exit;
use crate::ops::run::{self, RunContext, RunOptions};
use crate::ops::sweep;
use crate::report::TermReporter;
use crate::signals::watch_signals;
use crate::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The run ID (the journal's name under the state directory's runs/).
    pub run_id: String,
    #[arg(long)]
    pub break_lock: bool,
}

pub async fn run(args: &ResumeArgs, g: &Global) -> Result<u8> {
    let run_id = &args.run_id;
    let pipeline = sweep::pipeline_of_run(&g.state_dir, run_id)?;
    let (provider, reg) = open(&pipeline, &g.state_dir).await?;
    let cleaned = sweep::clean_dead_run(
        &g.state_dir,
        reg.as_ref(),
        provider.as_ref(),
        &pipeline,
        run_id,
    )
    .await?;
    eprintln!(
        "resume {run_id}: cleaned {cleaned} leftover(s); running {} again (validated images are reused)",
        pipeline.file.display()
    );
    let reporter = TermReporter::new(g.quiet, g.verbose > 0);
    let cx = RunContext {
        pipeline: &pipeline,
        provider: provider.as_ref(),
        registry: reg.as_ref(),
        reporter: &reporter,
        state_dir: &g.state_dir,
        cancel: watch_signals(&g.state_dir),
    };
    let opts = RunOptions {
        break_lock: args.break_lock,
        ..RunOptions::default()
    };
    let (summary, result) = run::run(&cx, &opts).await;
    print_run(g.output, &summary, result.as_ref().err());
    result.map(|()| exit::OK)
}
