//! `bake pin`: the Terraform inputs that pin a node set to a release.

use super::{json, open, RegistryArgs};
use super::{Global, Output};
use crate::error::exit;
use crate::pin::{Pin, Target};
use crate::release::ReleaseId;
use crate::{Arch, Error, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;

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
            return Err(crate::plan::no_such_arch(&pipeline, a));
        }
    }
    let target = match (&args.release, &args.channel) {
        (Some(r), _) => Target::Release(r.clone()),
        (None, Some(c)) => Target::Channel(c.clone()),
        (None, None) => unreachable!("clap requires a release or --channel"),
    };
    let (_, reg) = open(&pipeline, &g.state_dir).await?;
    let pins = crate::pin::pins(reg.as_ref(), prefix, recipe, &target, args.arch).await?;
    print_pins(g.output, &pins, args.format);
    Ok(exit::OK)
}

fn print_pins(output: Output, pins: &[Pin], format: PinFormat) {
    let text = |p: &Pin| match format {
        PinFormat::Tfvars => p.tfvars(),
        PinFormat::Data => p.data_source(),
    };
    match output {
        Output::Json => {
            #[derive(Serialize)]
            struct Row<'a> {
                #[serde(flatten)]
                pin: &'a Pin,
                tfvars: String,
                data_source: String,
            }
            json(
                &pins
                    .iter()
                    .map(|p| Row {
                        pin: p,
                        tfvars: p.tfvars(),
                        data_source: p.data_source(),
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
