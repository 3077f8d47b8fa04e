//! `bake sbom`: one image's software bill of materials, as CycloneDX 1.5 JSON on stdout (or
//! in a file), whatever `--output` says: the format is the output.

use super::{open, Global, RegistryArgs};
use crate::error::exit;
use crate::release::ReleaseId;
use crate::{Arch, Error, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct SbomArgs {
    pub recipe: String,
    pub release: ReleaseId,
    /// The image's arch (x86_64 or arm64): one BOM per image.
    #[arg(long)]
    pub arch: Arch,
    /// Write the BOM to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(args: &SbomArgs, g: &Global) -> Result<u8> {
    let pipeline = args.registry.load(&args.recipe)?;
    if !pipeline.bake(&args.recipe)?.arches.contains(&args.arch) {
        return Err(crate::ops::plan::no_such_arch(&pipeline, args.arch));
    }
    let (provider, reg) = open(&pipeline, &g.state_dir).await?;
    let bom = crate::ops::sbom::of_release(
        reg.as_ref(),
        provider.as_ref(),
        &args.recipe,
        &args.release,
        args.arch,
    )
    .await?;
    let mut out = Vec::new();
    bom.output_as_json_v1_5(&mut out)
        .map_err(|e| Error::Usage(format!("writing the CycloneDX BOM: {e}")))?;
    out.push(b'\n');
    match &args.write {
        Some(path) => std::fs::write(path, &out)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?,
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .write_all(&out)
                .map_err(|e| Error::io("writing the BOM to stdout", e))?
        }
    }
    Ok(exit::OK)
}
