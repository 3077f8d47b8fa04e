//! One module per subcommand (Bottlerocket pubsys style): each owns its clap arguments, its
//! `run()` and its printer. `cli` only parses, sets up logging and signals, dispatches, and maps
//! errors to exit codes. What several commands share is here: the pipeline/registry arguments,
//! opening a pipeline's provider and registry, the recipe lock around a write, JSON output.

pub mod audit;
pub mod audit_document;
pub mod diff;
pub mod history;
pub mod iam_policy;
pub mod pin;
pub mod plan;
pub mod promote;
pub mod prune;
pub mod releases;
pub mod resume;
pub mod revoke;
pub mod rollback;
pub mod run;
pub mod sbom;
pub mod status;
pub mod sweep;

use crate::input::pipeline::{Pipeline, Settings};
use crate::lock::{RecipeLock, DEFAULT_TTL};
use crate::ops::plan::Filter;
#[cfg(feature = "aws")]
use crate::provider::aws::AwsProvider;
use crate::provider::{local::LocalProvider, Provider};
#[cfg(feature = "aws")]
use crate::registry::SsmRegistry;
use crate::registry::{Registry, SqliteRegistry};
use crate::{Arch, Error, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct Global {
    /// Where runs, journals, the local registry and local images live.
    #[arg(long, global = true, env = "BAKE_STATE_DIR", default_value = ".bake")]
    pub state_dir: PathBuf,
    /// `human` tables on stdout, or `json` for machines (stdout carries data only).
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Human)]
    pub output: Output,
    /// More logs on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress on stderr, only errors.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Human,
    Json,
}

/// Which recipes and arches a pipeline command works on.
#[derive(Debug, Args)]
pub struct Select {
    /// Only this recipe.
    #[arg(long)]
    pub recipe: Option<String>,
    /// Only this arch (x86_64 or arm64).
    #[arg(long)]
    pub arch: Option<Arch>,
    /// Bake even if the key says up to date.
    #[arg(long)]
    pub force: bool,
}

/// The pipeline whose registry and clusters a registry command reads.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Pipeline whose registry and clusters to read.
    #[arg(
        long,
        short = 'p',
        env = "BAKE_PIPELINE",
        default_value = "pipelines/local.toml"
    )]
    pub pipeline: PathBuf,
}

/// Runs `work` under the recipe's lock (unless `read_only`), refreshed while it runs and
/// released afterwards.
async fn locked<T>(
    registry: &dyn Registry,
    recipe: &str,
    who: &str,
    break_lock: bool,
    read_only: bool,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    if read_only {
        return work.await;
    }
    let owner = format!("{who} pid {}", std::process::id());
    let lock = RecipeLock::take(registry, recipe, &owner, DEFAULT_TTL, break_lock).await?;
    lock.hold(work).await
}

impl RegistryArgs {
    /// Loads the pipeline and refuses a recipe it does not bake, before anything is opened.
    fn load(&self, recipe: &str) -> Result<Pipeline> {
        let pipeline = Pipeline::load(&self.pipeline)?;
        pipeline.bake(recipe)?;
        Ok(pipeline)
    }
}

impl Select {
    /// Refuses a recipe or arch the pipeline does not bake, before anything is opened.
    fn check(&self, pipeline: &Pipeline) -> Result<()> {
        let bakes: Vec<&crate::input::pipeline::Bake> = match &self.recipe {
            Some(r) => vec![pipeline.bake(r)?],
            None => pipeline.bakes.iter().collect(),
        };
        if let Some(a) = self.arch {
            if !bakes.iter().any(|b| b.arches.contains(&a)) {
                return Err(Error::Usage(format!(
                    "pipeline {} bakes nothing for {a}",
                    pipeline.file.display()
                )));
            }
        }
        Ok(())
    }

    fn filter(&self) -> Filter {
        Filter {
            recipe: self.recipe.clone(),
            arch: self.arch,
            force: self.force,
        }
    }
}

/// The provider and registry a pipeline names. AWS settings come from the standard chain
/// (`AWS_PROFILE`, `AWS_REGION`, `AWS_ENDPOINT_URL`); the pipeline's region overrides.
async fn open(
    pipeline: &Pipeline,
    state_dir: &Path,
) -> Result<(Box<dyn Provider>, Box<dyn Registry>)> {
    match &pipeline.settings {
        Settings::Local(local) => Ok((
            Box::new(LocalProvider::new(local.clone(), state_dir)?),
            Box::new(SqliteRegistry::open(state_dir)?),
        )),
        #[cfg(not(feature = "aws"))]
        Settings::Aws(_) => Err(crate::Error::Usage(format!(
            "{}: provider = \"aws\", but this bake was built without the AWS provider \
             (`cargo build --no-default-features`, as scripts/quickstart builds it); \
             build it with `cargo build`",
            pipeline.file.display()
        ))),
        #[cfg(feature = "aws")]
        Settings::Aws(settings) => {
            let config = crate::provider::aws::sdk::sdk_config(
                settings.region.as_deref(),
                settings.retry_max_backoff,
            )
            .await;
            if config.region().is_none() {
                return Err(Error::Usage(format!(
                    "no AWS region: none in AWS_REGION, the profile, or [aws] region of {}; set one of them",
                    pipeline.file.display()
                )));
            }
            let limits = crate::provider::aws::sdk::Limits::default();
            Ok((
                Box::new(AwsProvider::new(&config, pipeline, limits.clone())?),
                Box::new(
                    SsmRegistry::new(&config, settings.ssm_prefix.clone(), limits)
                        .with_replicas(&config, &settings.copy_regions),
                ),
            ))
        }
    }
}

/// Runs a `--notify` command: `body` as JSON on its stdin, `BAKE_EXIT_CODE` set. Its failure
/// (or more than 60 s) is logged and changes nothing else.
async fn notify(command: &str, body: &serde_json::Value, code: u8) {
    use tokio::io::AsyncWriteExt;
    let child = tokio::process::Command::new("/bin/sh")
        .args(["-c", command])
        .env("BAKE_EXIT_CODE", code.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("--notify: cannot run `{command}`: {e}");
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(body.to_string().as_bytes()).await;
    }
    match tokio::time::timeout(std::time::Duration::from_secs(60), child.wait()).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => tracing::warn!("--notify: `{command}` exited {status}"),
        Ok(Err(e)) => tracing::warn!("--notify: `{command}`: {e}"),
        Err(_) => {
            let _ = child.kill().await;
            tracing::warn!("--notify: `{command}` took longer than 60 s and was stopped");
        }
    }
}

fn json<T: Serialize + ?Sized>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("output serializes")
    );
}

/// A long digest shortened for a table (AMI IDs stay whole).
fn short(s: &str) -> &str {
    if s.len() > 16 && !s.starts_with("ami-") {
        &s[..12]
    } else {
        s
    }
}
