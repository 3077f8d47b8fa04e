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
    /// The policy of an identity that only runs `bake audit`: the reads that find the nodes
    /// and their releases, and SendCommand of the pipeline's audit documents to its nodes —
    /// it cannot run anything else on a node, nor change anything (install the documents with
    /// the pipeline's own identity: `bake audit-document --apply`).
    #[arg(long)]
    pub audit_only: bool,
}

pub async fn run(args: &IamPolicyArgs, _g: &Global) -> Result<u8> {
    let pipeline = Pipeline::load(&args.pipeline)?;
    if args.audit_only {
        json(&crate::ops::iam::audit_policy(&pipeline)?);
    } else {
        json(&crate::ops::iam::policy(&pipeline)?);
    }
    Ok(exit::OK)
}
