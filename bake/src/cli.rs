//! The command line: parses, sets up logging and signals, hands the command to its module in
//! `commands`, and maps its error to the documented exit codes. Data goes to stdout (tables or `--output json`);
//! progress and logs go to stderr.

use crate::commands::{self, Global};
use crate::error::exit;
use crate::Result;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::process::ExitCode;

const EXIT_CODES: &str = "\
Exit codes:
  0    ok, or up to date
  1    failure (a step, a provider call, a cleanup)
  2    bad input or usage (nothing was created)
  3    validation rejected an image (nothing was published)
  4    lock held by another run, or a conflict with published state
  130  interrupted (the cleanups of the steps that ran have run)";

/// Bakes hardened, immutable EKS worker-node images per arch, proves each on a canary node,
/// and publishes versioned IDs that Terraform node modules pin to.
#[derive(Debug, Parser)]
#[command(name = "bake", version, after_help = EXIT_CODES, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what `run` would do for each recipe × arch, and why
    /// (new, base changed, recipe changed, up to date). Changes nothing.
    Plan(commands::plan::PlanArgs),
    /// Bake → validate on a canary → publish every recipe × arch that needs it (arches in
    /// parallel), then auto-promote to the pipeline's non-prod channels. Up to date is exit 0
    /// with nothing created.
    Run(commands::run::RunArgs),
    /// List the releases of a recipe with their images and validation summary.
    Releases(commands::releases::ReleasesArgs),
    /// Move a cluster's channel to a release. Refuses an unknown release, one without an
    /// image for an arch the cluster uses, and with --from one that has not soaked on that
    /// channel for the pipeline's soak time. The only way prod channels move.
    Promote(commands::promote::PromoteArgs),
    /// Withdraw a bad release: it stays as published, a revocation (reason, who, when) is
    /// written once beside it, and promote, pin and auto-promotion refuse it from then on.
    /// Prints the channels that still point at it; move them by hand.
    Revoke(commands::revoke::RevokeArgs),
    /// Point a cluster's channel back at the previous distinct release in its history (or at
    /// --to, which must be in that history).
    Rollback(commands::rollback::RollbackArgs),
    /// The audit trail of a cluster's channel: every move, who, when, from where, why.
    History(commands::history::HistoryArgs),
    /// Print the Terraform inputs that pin a node set to a release, or to the current version
    /// of a cluster's channel: the exact SSM parameter bake published (terraform/modules/eks-node
    /// reads it). One block per arch; write each to that node set's `image.auto.tfvars`.
    ///
    /// Example: bake pin eks-node 2026.11.25-1 --arch arm64 -p pipelines/aws.toml > arm64/image.auto.tfvars
    Pin(commands::pin::PinArgs),
    /// Packages, kernel, kubelet/containerd, base and key that changed between two releases.
    Diff(commands::diff::DiffArgs),
    /// The software bill of materials of one image of a release: CycloneDX 1.5 JSON naming
    /// every package (dpkg, rpm, snap) by its package URL, from the manifest captured on the
    /// builder and checked against the digest the release recorded.
    ///
    /// Example: bake sbom eks-node 2026.11.25-1 --arch arm64 -p pipelines/aws.toml > sbom.json
    Sbom(commands::sbom::SbomArgs),
    /// Delete old releases and their images, keeping the newest N and anything a channel
    /// points at now or in its recent history, or that is in use. Plans by default.
    Prune(commands::prune::PruneArgs),
    /// Find what runs that are no longer alive left behind (VMs, overlays, instances, security
    /// groups, unpublished images and their snapshots) from journals and bake:run-id tags.
    /// Plans by default; never touches a published image or anything without bake's tags.
    Sweep(commands::sweep::SweepArgs),
    /// Continue a run that died: clean up what it left (keeping validated images, which are
    /// reused by key), then run its pipeline again so it finishes what is missing.
    Resume(commands::resume::ResumeArgs),
    /// Print the least-privilege IAM policy (JSON) for what an aws pipeline does.
    IamPolicy(commands::iam_policy::IamPolicyArgs),
    /// Recipes × arches × channels: which release each cluster runs, validated when, age.
    Status(commands::status::StatusArgs),
    /// Are the running nodes still what their image was? Finds the nodes of the recipes'
    /// releases (on AWS: instances of their images, and of the copies in each copy region)
    /// and, through SSM in the node's region, runs on each the checks the catalog declares safe
    /// on a live node (`audit = true`) and compares its packages with the manifest captured at
    /// bake — on AWS through the recipe's audit document only (`bake audit-document`), which
    /// it refuses to do (exit 2) while one is missing or stale.
    /// Locally, where no node lives on, each image a channel points at is booted as its node
    /// would boot (the canary's way), audited and stopped.
    /// Read-only. Exit 0 all as baked, 3 drift found, 1 a node could not be judged.
    ///
    /// Example: bake audit -p pipelines/aws.toml --recipe eks-node --output json
    Audit(commands::audit::AuditArgs),
    /// The SSM document `bake audit` sends each recipe's nodes on AWS: the recipe's checks safe
    /// on a live node and the package listing, taking only an action, the node's arch and an
    /// offset — so the nodes' IAM grant names a reviewed document, never a script. Shows where
    /// each stands in the region and each copy region; `--apply` creates or updates them;
    /// `--content` prints one to review or install another way. `bake audit` refuses to run
    /// (exit 2) where one is missing or stale.
    ///
    /// Example: bake audit-document -p pipelines/aws.toml --apply
    AuditDocument(commands::audit_document::AuditDocumentArgs),
}

pub fn main() -> ExitCode {
    // Die quietly when stdout is closed early (`bake releases x | head`), like other CLIs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    exit::OK
                }
                _ => exit::BAD_INPUT,
            });
        }
    };
    init_logging(&cli.global);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_logging(global: &Global) {
    let level = match global.verbose {
        0 if global.quiet => "error",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // The SDK's own warnings (a region it could not read from IMDS on a laptop, say) are its
    // account of trying, not bake's: shown from -v on; an error that matters says it in one line.
    let sdk = if global.verbose == 0 { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},aws_config={sdk},aws_runtime={sdk},aws_credential_types={sdk},aws_smithy_runtime={sdk},aws_smithy_http_client={sdk},hyper=warn"
        ))
    });
    let ansi = std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(global.verbose >= 2)
        .try_init();
}

async fn dispatch(cli: Cli) -> Result<u8> {
    let g = &cli.global;
    match &cli.command {
        Command::Plan(a) => commands::plan::run(a, g).await,
        Command::Run(a) => commands::run::run(a, g).await,
        Command::Releases(a) => commands::releases::run(a, g).await,
        Command::Promote(a) => commands::promote::run(a, g).await,
        Command::Rollback(a) => commands::rollback::run(a, g).await,
        Command::Revoke(a) => commands::revoke::run(a, g).await,
        Command::History(a) => commands::history::run(a, g).await,
        Command::Pin(a) => commands::pin::run(a, g).await,
        Command::Diff(a) => commands::diff::run(a, g).await,
        Command::Sbom(a) => commands::sbom::run(a, g).await,
        Command::Prune(a) => commands::prune::run(a, g).await,
        Command::Sweep(a) => commands::sweep::run(a, g).await,
        Command::Resume(a) => commands::resume::run(a, g).await,
        Command::IamPolicy(a) => commands::iam_policy::run(a, g).await,
        Command::Status(a) => commands::status::run(a, g).await,
        Command::Audit(a) => commands::audit::run(a, g).await,
        Command::AuditDocument(a) => commands::audit_document::run(a, g).await,
    }
}
