//! `bake pin`: the Terraform inputs that pin a node set to a release.

use super::{json, open, RegistryArgs};
use super::{Global, Output};
use crate::error::exit;
use crate::ops::pin::{Pin, Target};
use crate::ops::pins_file::{check_node_name, Change, PinsFile};
use crate::release::ReleaseId;
use crate::{Arch, Error, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PinFormat {
    Tfvars,
    Data,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    pub recipe: String,
    /// Release ID, e.g. 2026.11.25-1 (or --channel).
    #[arg(required_unless_present = "channel", conflicts_with = "channel")]
    pub release: Option<ReleaseId>,
    /// Pin the version of this cluster's channel that is current now (it stays pinned when
    /// the channel moves on).
    #[arg(long)]
    pub channel: Option<String>,
    /// Only this arch (x86_64 or arm64); one node set runs one arch.
    #[arg(long)]
    pub arch: Option<Arch>,
    /// `tfvars` for the eks-node module, or `data` for a bare `data "aws_ssm_parameter"`.
    #[arg(long, value_enum, default_value_t = PinFormat::Tfvars)]
    pub format: PinFormat,
    /// The node(s) to pin: prints each node's line of the module's `pins` map (repeatable).
    /// Pin one node at a time to roll a node set one node per `terraform apply`.
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,
    /// Change the named nodes' lines in this pins file (one node set's .tfvars; created if
    /// missing) and keep every other line as it is. Needs --node and --arch.
    #[arg(long, value_name = "FILE", requires = "nodes", requires = "arch")]
    pub write: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(args: &PinArgs, g: &Global) -> Result<u8> {
    let recipe = &args.recipe;
    let pipeline = args.registry.load(recipe)?;
    let prefix = pipeline.ssm_prefix().ok_or_else(|| {
        Error::Usage(format!(
            "{} publishes to the local registry, which Terraform cannot read; pin a release of an AWS pipeline (-p pipelines/aws.toml)",
            pipeline.file.display()
        ))
    })?;
    if let Some(a) = args.arch {
        if !pipeline.bake(recipe)?.arches.contains(&a) {
            return Err(crate::ops::plan::no_such_arch(&pipeline, a));
        }
    }
    let target = match (&args.release, &args.channel) {
        (Some(r), _) => Target::Release(r.clone()),
        (None, Some(c)) => Target::Channel(c.clone()),
        (None, None) => unreachable!("clap requires a release or --channel"),
    };
    for n in &args.nodes {
        check_node_name(n)?;
    }
    if let Some(file) = &args.write {
        if !file.to_string_lossy().ends_with(".tfvars") {
            return Err(Error::Usage(format!(
                "--write {}: a pins file is a .tfvars file (e.g. pins.auto.tfvars)",
                file.display()
            )));
        }
    }
    let (_, reg) = open(&pipeline, &g.state_dir).await?;
    let pins = crate::ops::pin::pins(reg.as_ref(), prefix, recipe, &target, args.arch).await?;
    match &args.write {
        Some(file) => {
            let pin = &pins[0];
            let mut pf = PinsFile::read(file, recipe, pin.arch)?;
            let changes: Vec<Change> = args.nodes.iter().filter_map(|n| pf.set(n, pin)).collect();
            if !changes.is_empty() {
                pf.write()?;
            }
            print_changes(g.output, file, pin, &args.nodes, &changes);
        }
        None => print_pins(g.output, &pins, args.format, &args.nodes),
    }
    Ok(exit::OK)
}

fn print_changes(
    output: Output,
    file: &std::path::Path,
    pin: &Pin,
    nodes: &[String],
    changes: &[Change],
) {
    match output {
        Output::Json => {
            #[derive(Serialize)]
            struct Written<'a> {
                file: &'a std::path::Path,
                #[serde(flatten)]
                pin: &'a Pin,
                changes: &'a [Change],
            }
            json(&Written { file, pin, changes })
        }
        Output::Human => {
            for n in nodes {
                match changes.iter().find(|c| &c.node == n) {
                    Some(Change {
                        from: Some(from),
                        to,
                        ..
                    }) => {
                        println!("{n}: {from} -> {to} ({})", pin.image_id)
                    }
                    Some(Change { from: None, to, .. }) => {
                        println!(
                            "{n}: pinned to {to} ({}), new in {}",
                            pin.image_id,
                            file.display()
                        )
                    }
                    None => println!("{n}: already release {}", pin.release),
                }
            }
            if changes.is_empty() {
                println!("{} unchanged", file.display());
            } else {
                println!(
                    "{} written; `terraform plan` replaces exactly {} node(s): {}",
                    file.display(),
                    changes.len(),
                    changes
                        .iter()
                        .map(|c| c.node.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
}

fn print_pins(output: Output, pins: &[Pin], format: PinFormat, nodes: &[String]) {
    let text = |p: &Pin| match (format, nodes.is_empty()) {
        (PinFormat::Data, _) => p.data_source(),
        (PinFormat::Tfvars, true) => p.tfvars(),
        (PinFormat::Tfvars, false) => p.node_entries(nodes),
    };
    match output {
        Output::Json => {
            #[derive(Serialize)]
            struct Row<'a> {
                #[serde(flatten)]
                pin: &'a Pin,
                tfvars: String,
                data_source: String,
                /// node => its line of the `pins` map.
                nodes: std::collections::BTreeMap<&'a str, String>,
            }
            json(
                &pins
                    .iter()
                    .map(|p| Row {
                        pin: p,
                        tfvars: p.tfvars(),
                        data_source: p.data_source(),
                        nodes: nodes
                            .iter()
                            .map(|n| (n.as_str(), p.node_entry(n)))
                            .collect(),
                    })
                    .collect::<Vec<_>>(),
            )
        }
        Output::Human => {
            let blocks: Vec<String> = pins.iter().map(text).collect();
            print!("{}", blocks.join("\n"));
        }
    }
}
