//! `bake diff`: packages, kernel, kubelet/containerd, base and key that changed between two
//! releases.

use super::{json, open, RegistryArgs};
use super::{Global, Output};
use crate::error::exit;
use crate::ops::diff;
use crate::release::ReleaseId;
use crate::report::table;
use crate::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct DiffArgs {
    pub recipe: String,
    pub from: ReleaseId,
    pub to: ReleaseId,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(args: &DiffArgs, g: &Global) -> Result<u8> {
    let pipeline = args.registry.load(&args.recipe)?;
    let (provider, reg) = open(&pipeline, &g.state_dir).await?;
    let d = diff::diff(
        reg.as_ref(),
        provider.as_ref(),
        &args.recipe,
        &args.from,
        &args.to,
    )
    .await?;
    print_diff(g.output, &d);
    Ok(exit::OK)
}

fn print_diff(output: Output, d: &diff::Diff) {
    if output == Output::Json {
        return json(d);
    }
    println!("{} {} → {}", d.recipe, d.from, d.to);
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    for a in &d.arches {
        println!(
            "\n{}: image {} → {}, base {} → {}{}",
            a.arch,
            opt(&a.image.0),
            opt(&a.image.1),
            opt(&a.base.0),
            opt(&a.base.1),
            if a.key_changed { "" } else { " (same key)" }
        );
        if let Some(note) = &a.note {
            println!("  {note}");
        }
        let mut rows = Vec::new();
        for c in &a.highlights {
            rows.push(vec![
                if c.downgrade { "DOWNGRADE" } else { "*" }.into(),
                c.package.clone(),
                opt(&c.from),
                opt(&c.to),
            ]);
        }
        for (mark, list) in [
            ("~", &a.packages.changed),
            ("+", &a.packages.added),
            ("-", &a.packages.removed),
        ] {
            for c in list {
                rows.push(vec![
                    if c.downgrade { "DOWNGRADE" } else { mark }.into(),
                    c.package.clone(),
                    opt(&c.from),
                    opt(&c.to),
                ]);
            }
        }
        if rows.is_empty() && a.note.is_none() {
            println!("  no package changes");
        } else if !rows.is_empty() {
            for line in table(&["", "PACKAGE", "FROM", "TO"], &rows).lines() {
                println!("  {line}");
            }
        }
    }
}
