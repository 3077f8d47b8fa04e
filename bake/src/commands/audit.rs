//! `bake audit`: are the running nodes still what their image was? Read-only.

use super::{json, open, RegistryArgs};
use super::{Global, Output};
use crate::input::pipeline::Pipeline;
use crate::ops::audit::{Audit, NodeAudit, Request};
use crate::report::{age, table};
use crate::verdict::Status;
use crate::{Error, Result};
use clap::Args;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only the nodes of this recipe.
    #[arg(long)]
    pub recipe: Option<String>,
    /// Only the nodes joined to this cluster of the pipeline (its EKS cluster, as the
    /// eks-node module tags its nodes `bake:cluster`). A node whose tags name no cluster may be
    /// in it: it is listed as not judged (exit 1), never left out.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Only this node (its name or instance ID).
    #[arg(long)]
    pub node: Option<String>,
    /// How long a node's agent may take to answer before the node is reported not judged.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    /// When a node drifted or could not be judged, run this shell command with the JSON
    /// report on stdin and BAKE_EXIT_CODE set (e.g. to page or post to chat). Its failure is
    /// logged and does not change bake's exit code.
    #[arg(long, value_name = "COMMAND")]
    pub notify: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(args: &AuditArgs, g: &Global) -> Result<u8> {
    let pipeline = Pipeline::load(&args.registry.pipeline)?;
    if let Some(r) = &args.recipe {
        pipeline.bake(r)?;
    }
    let (provider, reg) = open(&pipeline, &g.state_dir).await?;
    let fleet = provider.fleet().ok_or_else(|| {
        Error::Usage(format!(
            "{}: the {} provider has no running nodes to audit; `bake audit` reaches the nodes of an aws pipeline",
            pipeline.file.display(),
            provider.name()
        ))
    })?;
    let req = Request {
        recipe: args.recipe.as_deref(),
        cluster: args.cluster.as_deref(),
        node: args.node.as_deref(),
        wait: args.wait,
    };
    let quiet = g.quiet;
    let progress = move |n: usize, total: usize, a: &NodeAudit| {
        if !quiet {
            eprintln!(
                "audit: {n}/{total} {} ({}): {}",
                a.node,
                a.instance,
                verdict(a)
            );
        }
    };
    let audit = crate::ops::audit::audit(reg.as_ref(), fleet, &pipeline, &req, &progress).await?;
    match g.output {
        Output::Json => json(&audit),
        Output::Human => print_human(&audit),
    }
    let code = audit.exit_code();
    if let Some(command) = args
        .notify
        .as_deref()
        .filter(|_| code != crate::error::exit::OK)
    {
        let body = serde_json::to_value(&audit).expect("the audit serializes");
        super::notify(command, &body, code).await;
    }
    Ok(code)
}

fn verdict(a: &NodeAudit) -> &'static str {
    if a.drifted() {
        "drifted"
    } else if a.not_judged.is_some() {
        "not judged"
    } else {
        "as baked"
    }
}

fn print_human(audit: &Audit) {
    if audit.nodes.is_empty() {
        println!("no running node runs an image of these releases");
        return;
    }
    let rows: Vec<Vec<String>> = audit
        .nodes
        .iter()
        .map(|a| {
            vec![
                a.node.clone(),
                match &a.region {
                    Some(region) => format!("{} ({region})", a.instance),
                    None => a.instance.clone(),
                },
                format!("{} {}", a.recipe, a.arch),
                a.release.to_string(),
                a.channels.join(","),
                a.launched.map(age).unwrap_or_default(),
                verdict(a).to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["NODE", "INSTANCE", "RECIPE", "RELEASE", "CHANNELS", "AGE", "VERDICT"],
            &rows
        )
    );
    for a in &audit.nodes {
        let failed: Vec<_> = a
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .collect();
        if failed.is_empty() && a.changed.is_empty() && a.not_judged.is_none() {
            continue;
        }
        println!("\n{} ({}):", a.node, a.instance);
        if let Some(why) = &a.not_judged {
            println!("  not judged: {why}");
        }
        for c in failed {
            println!(
                "  {} failed: {}",
                c.name,
                c.reason.as_deref().unwrap_or("no reason given")
            );
        }
        for p in &a.changed {
            println!("  package changed since bake: {p}");
        }
    }
}
