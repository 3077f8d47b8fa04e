//! `bake iam-policy`: the least-privilege IAM policy (JSON) for what an aws pipeline does.

use super::json;
use super::Global;
use crate::error::exit;
use crate::input::pipeline::Pipeline;
use crate::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct IamPolicyArgs {
    /// Pipeline file, e.g. pipelines/aws.toml.
    pub pipeline: PathBuf,
}

pub async fn run(args: &IamPolicyArgs, _g: &Global) -> Result<u8> {
    let pipeline = Pipeline::load(&args.pipeline)?;
    json(&crate::ops::iam::policy(&pipeline)?);
    Ok(exit::OK)
}
