//! `bake audit-document`: the SSM document `bake audit` sends each recipe's nodes, shown, checked
//! against what is installed, and installed with `--apply`.

use super::{json, open, RegistryArgs};
use super::{Global, Output};
use crate::guest::audit::{DocumentState, Installed};
use crate::input::pipeline::Pipeline;
use crate::report::table;
use crate::{Error, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct AuditDocumentArgs {
    /// Only this recipe's document.
    #[arg(long)]
    pub recipe: Option<String>,
    /// Create the documents that are missing and give the stale ones this pipeline's content as
    /// their new default version, in the pipeline's region and each copy region.
    #[arg(long)]
    pub apply: bool,
    /// Print the document's content (the JSON SSM keeps) instead of where it stands: to
    /// review it, or to install it another way (e.g. Terraform's aws_ssm_document). Needs
    /// --recipe when the pipeline bakes more than one recipe.
    #[arg(long, conflicts_with = "apply")]
    pub content: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(args: &AuditDocumentArgs, g: &Global) -> Result<u8> {
    let pipeline = Pipeline::load(&args.registry.pipeline)?;
    if let Some(r) = &args.recipe {
        pipeline.bake(r)?;
    }
    if args.content && args.recipe.is_none() && pipeline.bakes.len() > 1 {
        return Err(Error::Usage(format!(
            "{} bakes {} recipes: say which document to print with --recipe",
            pipeline.file.display(),
            pipeline.bakes.len()
        )));
    }
    let (provider, _reg) = open(&pipeline, &g.state_dir).await?;
    let fleet = provider.fleet().ok_or_else(|| {
        Error::Usage(format!(
            "{}: the {} provider has no nodes to audit",
            pipeline.file.display(),
            provider.name()
        ))
    })?;
    let apply = args.apply && !args.content;
    let (programs, installed) =
        crate::ops::audit::documents(fleet, &pipeline, args.recipe.as_deref(), apply).await?;
    if args.content {
        let program = &programs[0];
        print!("{}", program.document().map_err(Error::Usage)?);
        println!();
        return Ok(crate::error::exit::OK);
    }
    match g.output {
        Output::Json => json(&serde_json::json!({ "documents": installed })),
        Output::Human => print_human(&installed, provider.name()),
    }
    Ok(crate::error::exit::OK)
}

fn print_human(installed: &[Installed], provider: &str) {
    if installed.is_empty() {
        println!(
            "the {provider} provider runs the audit program straight through each node's guest agent: nothing to install"
        );
        return;
    }
    let rows: Vec<Vec<String>> = installed
        .iter()
        .map(|d| {
            vec![
                d.recipe.clone(),
                d.region.clone(),
                d.name.clone(),
                serde_json::to_value(&d.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                d.hash[..12].to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["RECIPE", "REGION", "DOCUMENT", "STATE", "SHA256"], &rows)
    );
    if installed
        .iter()
        .any(|d| matches!(d.state, DocumentState::Missing | DocumentState::Stale))
    {
        println!("\n`bake audit` refuses to run until these are installed: run again with --apply");
    }
}
