//! `bake releases`: the releases of a recipe with their images and validation summary.

use super::{json, open, RegistryArgs};
use super::{Global, Output};
use crate::error::exit;
use crate::release::Manifest;
use crate::report::{age, table};
use crate::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct ReleasesArgs {
    pub recipe: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(args: &ReleasesArgs, g: &Global) -> Result<u8> {
    let pipeline = args.registry.load(&args.recipe)?;
    let (_, registry) = open(&pipeline, &g.state_dir).await?;
    let releases = registry.releases(&args.recipe).await?;
    print_releases(g.output, &releases);
    Ok(exit::OK)
}

fn print_releases(output: Output, releases: &[Manifest]) {
    if output == Output::Json {
        return json(&releases);
    }
    let mut rows = Vec::new();
    for m in releases.iter().rev() {
        for (arch, image) in &m.images {
            rows.push(vec![
                m.release.to_string(),
                arch.to_string(),
                image.image_id.clone(),
                crate::verdict::summarize(image.validators.values().copied()),
                image.key.short().to_string(),
                age(m.created_at),
            ]);
        }
    }
    print!(
        "{}",
        table(
            &["RELEASE", "ARCH", "IMAGE", "VALIDATORS", "KEY", "AGE"],
            &rows
        )
    );
}
