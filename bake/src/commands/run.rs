//! `bake run`: bake → validate on a canary → publish what needs it, then auto-promote to
//! the pipeline's non-prod channels; `--notify` hands the summary to a command.

use super::{json, open, Select};
use super::{Global, Output};
use crate::error::exit;
use crate::input::pipeline::Pipeline;
use crate::ops::run::{self, RunContext, RunOptions, RunSummary};
use crate::report::{table, LogReporter, Reporter, TermReporter};
use crate::signals::watch_signals;
use crate::{Error, Result};
use clap::Args;
use serde::Serialize;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pipeline file, e.g. pipelines/local.toml.
    pub pipeline: PathBuf,
    #[command(flatten)]
    pub select: Select,
    /// Take the recipe's lock even if another run holds it. Only when that run is dead.
    #[arg(long)]
    pub break_lock: bool,
    /// When something was published, rejected or failed (not when up to date), run this
    /// shell command with the JSON summary on stdin and BAKE_EXIT_CODE set, e.g. to post
    /// to chat. Its failure is logged and does not change bake's exit code.
    #[arg(long, value_name = "COMMAND")]
    pub notify: Option<String>,
}

pub async fn run(args: &RunArgs, g: &Global) -> Result<u8> {
    let pipeline = Pipeline::load(&args.pipeline)?;
    args.select.check(&pipeline)?;
    let (provider, registry) = open(&pipeline, &g.state_dir).await?;
    let reporter: Box<dyn Reporter> =
        if g.output == Output::Json && !std::io::stderr().is_terminal() {
            Box::new(LogReporter)
        } else {
            Box::new(TermReporter::new(g.quiet, g.verbose > 0))
        };
    let cx = RunContext {
        pipeline: &pipeline,
        provider: provider.as_ref(),
        registry: registry.as_ref(),
        reporter: reporter.as_ref(),
        state_dir: &g.state_dir,
        cancel: watch_signals(&g.state_dir),
    };
    let opts = RunOptions {
        filter: args.select.filter(),
        break_lock: args.break_lock,
        ..RunOptions::default()
    };
    let (summary, result) = run::run(&cx, &opts).await;
    print_run(g.output, &summary, result.as_ref().err());
    if let Some(command) = &args.notify {
        if !summary.up_to_date {
            notify_hook(command, &summary, result.as_ref().err()).await;
        }
    }
    result.map(|()| exit::OK)
}

/// Runs the `--notify` command with the run's JSON summary on stdin.
async fn notify_hook(command: &str, summary: &RunSummary, error: Option<&Error>) {
    let code = error.map(Error::exit_code).unwrap_or(exit::OK);
    let body = serde_json::json!({
        "summary": summary,
        "error": error.map(|e| e.to_string()),
        "exit_code": code,
    });
    super::notify(command, &body, code).await;
}

pub(super) fn print_run(output: Output, summary: &RunSummary, error: Option<&Error>) {
    if output == Output::Json {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            summary: &'a RunSummary,
            error: Option<String>,
            exit_code: u8,
        }
        return json(&Out {
            summary,
            error: error.map(|e| e.to_string()),
            exit_code: error.map(Error::exit_code).unwrap_or(exit::OK),
        });
    }
    if summary.results.is_empty() && error.is_some() {
        // Refused before anything ran (bad input found at plan): the error on stderr says it.
        return;
    }
    if summary.up_to_date {
        let what: Vec<String> = summary
            .results
            .iter()
            .map(|r| format!("{}/{}", r.recipe, r.arch))
            .collect();
        println!("up to date: {}", what.join(", "));
        return;
    }
    let rows: Vec<Vec<String>> = summary
        .results
        .iter()
        .map(|r| {
            vec![
                r.recipe.clone(),
                r.arch.to_string(),
                r.decision.clone(),
                r.outcome.to_string(),
                r.image.clone().unwrap_or_else(|| "-".into()),
                r.validators
                    .clone()
                    .or_else(|| r.error.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["RECIPE", "ARCH", "WHY", "OUTCOME", "IMAGE", "VALIDATORS"],
            &rows
        )
    );
    for r in &summary.results {
        for note in &r.notes {
            println!("{}/{}: {note}", r.recipe, r.arch);
        }
    }
    for p in &summary.published {
        let promoted = if p.promoted_to.is_empty() {
            String::new()
        } else {
            format!("; promoted to {}", p.promoted_to.join(", "))
        };
        println!("published {} {}{promoted}", p.recipe, p.release);
    }
    if let Some(j) = &summary.journal {
        println!("journal: {}", j.display());
    }
}
