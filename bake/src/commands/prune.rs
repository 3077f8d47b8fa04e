//! `bake prune`: delete old releases and their images, keeping what anything still uses.
//! Plans by default.

use super::{json, locked, open, RegistryArgs};
use super::{Global, Output};
use crate::error::exit;
use crate::ops::{promote, prune};
use crate::{Error, Result};
use clap::Args;
use serde::Serialize;

#[derive(Debug, Args)]
pub struct PruneArgs {
    pub recipe: String,
    /// Releases to keep (default: the pipeline's retention.keep).
    #[arg(long)]
    pub keep: Option<usize>,
    /// Delete for real.
    #[arg(long)]
    pub apply: bool,
    #[arg(long)]
    pub break_lock: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(args: &PruneArgs, g: &Global) -> Result<u8> {
    let recipe = &args.recipe;
    let pipeline = args.registry.load(recipe)?;
    let keep = args.keep.unwrap_or(pipeline.retention.keep);
    if keep == 0 {
        return Err(Error::Usage(
            "--keep 0 would leave no release; keep at least 1".into(),
        ));
    }
    let (provider, reg) = open(&pipeline, &g.state_dir).await?;
    let who = promote::who();
    let work = async {
        // Protection first: what left prod's window loses the protection bake gave it, so
        // prune can judge it like any other image (planned only, without --apply).
        let protection = crate::ops::protection::reconcile(
            reg.as_ref(),
            provider.as_ref(),
            &pipeline,
            recipe,
            args.apply,
        )
        .await?;
        let mut inputs = prune::inputs(
            reg.as_ref(),
            provider.as_ref(),
            recipe,
            pipeline.clusters.keys(),
            &pipeline.retention,
            keep,
        )
        .await?;
        if !args.apply {
            // As it will be once the planned lifts are applied.
            inputs.in_use.retain(|image, why| {
                !(why.contains("has deregistration protection")
                    && protection
                        .lift
                        .iter()
                        .any(|l| l == image || why.contains(l.as_str())))
            });
        }
        let plan = prune::plan(&inputs);
        if args.apply {
            prune::apply(reg.as_ref(), provider.as_ref(), recipe, &plan).await?;
        }
        Ok((plan, protection))
    };
    let (plan, protection) = locked(
        reg.as_ref(),
        recipe,
        &who,
        args.break_lock,
        !args.apply,
        work,
    )
    .await?;
    print_prune(g.output, &plan, &protection, args.apply);
    Ok(exit::OK)
}

fn print_prune(
    output: Output,
    plan: &prune::PrunePlan,
    protection: &crate::provider::Protection,
    applied: bool,
) {
    if output == Output::Json {
        #[derive(Serialize)]
        struct Out<'a> {
            applied: bool,
            #[serde(flatten)]
            plan: &'a prune::PrunePlan,
            protection: &'a crate::provider::Protection,
        }
        return json(&Out {
            applied,
            plan,
            protection,
        });
    }
    super::promote::print_protection(protection, applied);
    let verb = if applied { "deleted" } else { "would delete" };
    for d in &plan.delete {
        let images = if d.images.is_empty() {
            "(images kept: still referenced)".to_string()
        } else {
            d.images
                .iter()
                .map(|(a, i)| format!("{a}={i}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!("{verb} {} {images}", d.release);
    }
    for r in &plan.retire {
        let images = r
            .images
            .iter()
            .map(|(a, i)| format!("{a}={i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let deprecating = match (r.deprecate.is_empty(), applied) {
            (true, _) => "images deprecated".to_string(),
            (false, true) => format!("deprecated {}", r.deprecate.join(", ")),
            (false, false) => format!("would deprecate {}", r.deprecate.join(", ")),
        };
        println!(
            "retire {} {images}: {deprecating}; deleted by the first prune after {}",
            r.release,
            r.deletable_after.format("%Y-%m-%d %H:%M UTC")
        );
    }
    for k in &plan.kept {
        println!("keep {}: {}", k.release, k.reasons.join("; "));
    }
    if !applied && (!plan.delete.is_empty() || plan.retire.iter().any(|r| !r.deprecate.is_empty()))
    {
        println!("plan only; run again with --apply to act");
    }
}
