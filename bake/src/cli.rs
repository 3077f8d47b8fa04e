//! The command line: parses, sets up logging and signals, runs one command, and maps its
//! error to the documented exit codes. Data goes to stdout (tables or `--output json`);
//! progress and logs go to stderr.

use crate::error::exit;
use crate::lock::{RecipeLock, DEFAULT_TTL};
use crate::pipeline::{Pipeline, ProviderKind};
use crate::plan::{self, Filter, PlanItem};
use crate::provider::{aws::AwsProvider, local::LocalProvider, Provider};
use crate::registry::{Registry, SqliteRegistry, SsmRegistry};
use crate::release::{ChannelEntry, Manifest, ReleaseId};
use crate::report::{age, table, LogReporter, Reporter, TermReporter};
use crate::run::{self, RunContext, RunOptions, RunSummary};
use crate::{diff, promote, prune, sweep};
use crate::{Arch, Error, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what `run` would do for each recipe × arch, and why
    /// (new, base changed, recipe changed, up to date). Changes nothing.
    Plan {
        /// Pipeline file, e.g. pipelines/local.toml.
        pipeline: PathBuf,
        #[command(flatten)]
        select: Select,
    },
    /// Bake → validate on a canary → publish every recipe × arch that needs it (arches in
    /// parallel), then auto-promote to the pipeline's non-prod channels. Up to date is exit 0
    /// with nothing created.
    Run {
        /// Pipeline file, e.g. pipelines/local.toml.
        pipeline: PathBuf,
        #[command(flatten)]
        select: Select,
        /// Take the recipe's lock even if another run holds it. Only when that run is dead.
        #[arg(long)]
        break_lock: bool,
        /// When something was published, rejected or failed (not when up to date), run this
        /// shell command with the JSON summary on stdin and BAKE_EXIT_CODE set, e.g. to post
        /// to chat. Its failure is logged and does not change bake's exit code.
        #[arg(long, value_name = "COMMAND")]
        notify: Option<String>,
    },
    /// List the releases of a recipe with their images and validation summary.
    Releases {
        recipe: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Move a cluster's channel to a release. Refuses an unknown release, one without an
    /// image for an arch the cluster uses, and with --from one that has not soaked on that
    /// channel for the pipeline's soak time. The only way prod channels move.
    Promote {
        recipe: String,
        /// Release ID, e.g. 2026.11.25-1.
        release: ReleaseId,
        /// Target cluster (channel).
        #[arg(long)]
        to: String,
        /// Source channel the release must have soaked on.
        #[arg(long)]
        from: Option<String>,
        /// Why, recorded in the channel history.
        #[arg(long)]
        reason: Option<String>,
        /// Show the change without making it.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        break_lock: bool,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Point a cluster's channel back at the previous distinct release in its history (or at
    /// --to, which must be in that history).
    Rollback {
        recipe: String,
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        to: Option<ReleaseId>,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        break_lock: bool,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// The audit trail of a cluster's channel: every move, who, when, from where, why.
    History {
        recipe: String,
        #[arg(long)]
        cluster: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Print the Terraform inputs that pin a node set to a release, or to the current version
    /// of a cluster's channel: the exact SSM parameter bake published (terraform/modules/eks-node
    /// reads it). One block per arch; write each to that node set's `image.auto.tfvars`.
    ///
    /// Example: bake pin eks-node 2026.11.25-1 --arch arm64 -p pipelines/aws.toml > arm64/image.auto.tfvars
    Pin {
        recipe: String,
        /// Release ID, e.g. 2026.11.25-1 (or --channel).
        #[arg(required_unless_present = "channel", conflicts_with = "channel")]
        release: Option<ReleaseId>,
        /// Pin the version of this cluster's channel that is current now (it stays pinned when
        /// the channel moves on).
        #[arg(long)]
        channel: Option<String>,
        /// Only this arch (x86_64 or arm64); one node set runs one arch.
        #[arg(long)]
        arch: Option<Arch>,
        /// `tfvars` for the eks-node module, or `data` for a bare `data "aws_ssm_parameter"`.
        #[arg(long, value_enum, default_value_t = PinFormat::Tfvars)]
        format: PinFormat,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Packages, kernel, kubelet/containerd, base and key that changed between two releases.
    Diff {
        recipe: String,
        from: ReleaseId,
        to: ReleaseId,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Delete old releases and their images, keeping the newest N and anything a channel
    /// points at now or in its recent history, or that is in use. Plans by default.
    Prune {
        recipe: String,
        /// Releases to keep (default: the pipeline's retention.keep).
        #[arg(long)]
        keep: Option<usize>,
        /// Delete for real.
        #[arg(long)]
        apply: bool,
        #[arg(long)]
        break_lock: bool,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Find what runs that are no longer alive left behind (VMs, overlays, instances, security
    /// groups, unpublished images and their snapshots) from journals and bake:run-id tags.
    /// Plans by default; never touches a published image or anything without bake's tags.
    Sweep {
        /// Remove what the plan lists.
        #[arg(long)]
        apply: bool,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Continue a run that died: clean up what it left (keeping validated images, which are
    /// reused by key), then run its pipeline again so it finishes what is missing.
    Resume {
        /// The run ID (the journal's name under <state>/runs/).
        run_id: String,
        #[arg(long)]
        break_lock: bool,
    },
    /// Print the least-privilege IAM policy (JSON) for what an aws pipeline does.
    IamPolicy {
        /// Pipeline file, e.g. pipelines/aws.toml.
        pipeline: PathBuf,
    },
    /// Recipes × arches × channels: which release each cluster runs, validated when, age.
    Status {
        /// Only this recipe.
        recipe: Option<String>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PinFormat {
    Tfvars,
    Data,
}

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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},aws_config=warn,aws_smithy_runtime=warn,hyper=warn"
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

/// Cancels the token on Ctrl-C or SIGTERM; a second one says that cleanups are running.
fn watch_signals(state_dir: &Path) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    let runs = crate::journal::Journal::runs_dir(state_dir);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot watch SIGTERM: {e}");
                    return;
                }
            };
        let mut count = 0;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            count += 1;
            if count == 1 {
                eprintln!("interrupted: running the cleanups of the steps that ran (interrupt again for status)");
                t.cancel();
            } else {
                eprintln!("{}", still_cleaning(&runs));
            }
        }
    });
    token
}

/// What a second interrupt prints: what this process's run still holds, and its journal.
fn still_cleaning(runs: &Path) -> String {
    let state_dir = runs.parent().unwrap_or(runs);
    let mine = crate::journal::Journal::all(state_dir).ok().and_then(|all| {
        all.into_iter().find(|(_, entries)| {
            entries.iter().any(|e| {
                matches!(e, crate::journal::Entry::Started { pid, .. } if *pid == std::process::id())
            })
        })
    });
    let Some((run_id, entries)) = mine else {
        return format!(
            "still cleaning up; nothing was created yet (journals: {})",
            runs.display()
        );
    };
    let left = crate::journal::Journal::outstanding(&entries);
    let journal = runs.join(format!("{run_id}.jsonl"));
    let mut out = format!(
        "still cleaning up run {run_id}; {} resource(s) not yet removed:",
        left.len()
    );
    for r in &left {
        out.push_str(&format!(
            "\n  {} {} ({} {})",
            r.kind, r.id, r.recipe, r.arch
        ));
    }
    out.push_str(&format!(
        "\nif bake is killed now they stay listed in {}; `bake sweep --apply` removes them, `bake resume {run_id}` finishes the run",
        journal.display()
    ));
    out
}

async fn dispatch(cli: Cli) -> Result<u8> {
    let g = &cli.global;
    match &cli.command {
        Command::Plan { pipeline, select } => {
            let pipeline = Pipeline::load(pipeline)?;
            select.check(&pipeline)?;
            let (provider, registry) = open(&pipeline, &g.state_dir).await?;
            let mut items = plan::plan(
                &pipeline,
                provider.as_ref(),
                registry.as_ref(),
                &select.filter(),
            )
            .await?;
            plan::with_resources(&mut items, &pipeline, provider.as_ref()).await?;
            print_plan(g.output, &items);
            Ok(exit::OK)
        }
        Command::Run {
            pipeline,
            select,
            break_lock,
            notify,
        } => {
            let pipeline = Pipeline::load(pipeline)?;
            select.check(&pipeline)?;
            let (provider, registry) = open(&pipeline, &g.state_dir).await?;
            let reporter: Box<dyn Reporter> =
                if g.output == Output::Json && !std::io::stderr().is_terminal() {
                    Box::new(LogReporter)
                } else {
                    Box::new(TermReporter::new(g.quiet, g.verbose > 0))
                };
            let cx = RunContext {
                pipeline: &pipeline,
                provider: provider.as_ref(),
                registry: registry.as_ref(),
                reporter: reporter.as_ref(),
                state_dir: &g.state_dir,
                cancel: watch_signals(&g.state_dir),
            };
            let opts = RunOptions {
                filter: select.filter(),
                break_lock: *break_lock,
                ..RunOptions::default()
            };
            let (summary, result) = run::run(&cx, &opts).await;
            print_run(g.output, &summary, result.as_ref().err());
            if let Some(command) = notify {
                if !summary.up_to_date {
                    notify_hook(command, &summary, result.as_ref().err()).await;
                }
            }
            match result {
                Ok(()) => Ok(exit::OK),
                Err(e) => Err(e),
            }
        }
        Command::Releases { recipe, registry } => {
            let pipeline = registry.load(recipe)?;
            let (_, registry) = open(&pipeline, &g.state_dir).await?;
            let releases = registry.releases(recipe).await?;
            print_releases(g.output, &releases);
            Ok(exit::OK)
        }
        Command::Promote {
            recipe,
            release,
            to,
            from,
            reason,
            dry_run,
            break_lock,
            registry,
        } => {
            let pipeline = registry.load(recipe)?;
            let (_, reg) = open(&pipeline, &g.state_dir).await?;
            let who = promote::who();
            let req = promote::Request {
                recipe,
                release,
                to,
                from: from.as_deref(),
                reason: reason.as_deref(),
                who: &who,
                dry_run: *dry_run,
            };
            let result = locked(
                reg.as_ref(),
                recipe,
                &who,
                *break_lock,
                *dry_run,
                promote::promote(reg.as_ref(), &pipeline, &req),
            )
            .await?;
            print_promotion(g.output, recipe, &result);
            Ok(exit::OK)
        }
        Command::Rollback {
            recipe,
            cluster,
            to,
            reason,
            dry_run,
            break_lock,
            registry,
        } => {
            let pipeline = registry.load(recipe)?;
            let (_, reg) = open(&pipeline, &g.state_dir).await?;
            let who = promote::who();
            let req = promote::Rollback {
                recipe,
                cluster,
                to: to.as_ref(),
                reason: reason.as_deref(),
                who: &who,
                dry_run: *dry_run,
            };
            let work = promote::rollback(reg.as_ref(), &pipeline, &req);
            let result = locked(reg.as_ref(), recipe, &who, *break_lock, *dry_run, work).await?;
            print_promotion(g.output, recipe, &result);
            Ok(exit::OK)
        }
        Command::History {
            recipe,
            cluster,
            registry,
        } => {
            let pipeline = registry.load(recipe)?;
            let (_, reg) = open(&pipeline, &g.state_dir).await?;
            let history = reg.channel_history(recipe, cluster).await?;
            if history.is_empty() && !pipeline.clusters.contains_key(cluster) {
                return Err(Error::Usage(format!(
                    "cluster `{cluster}` is not defined in {} and has no history",
                    pipeline.file.display()
                )));
            }
            print_history(g.output, &history);
            Ok(exit::OK)
        }
        Command::Pin {
            recipe,
            release,
            channel,
            arch,
            format,
            registry,
        } => {
            let pipeline = registry.load(recipe)?;
            let prefix = pipeline.ssm_prefix().ok_or_else(|| {
                Error::Usage(format!(
                    "{} publishes to the local registry, which Terraform cannot read; pin a release of an AWS pipeline (-p pipelines/aws.toml)",
                    pipeline.file.display()
                ))
            })?;
            if let Some(a) = arch {
                if !pipeline.bake(recipe)?.arches.contains(a) {
                    return Err(plan::no_such_arch(&pipeline, *a));
                }
            }
            let target = match (release, channel) {
                (Some(r), _) => crate::pin::Target::Release(r.clone()),
                (None, Some(c)) => crate::pin::Target::Channel(c.clone()),
                (None, None) => unreachable!("clap requires a release or --channel"),
            };
            let (_, reg) = open(&pipeline, &g.state_dir).await?;
            let pins = crate::pin::pins(reg.as_ref(), prefix, recipe, &target, *arch).await?;
            print_pins(g.output, &pins, *format);
            Ok(exit::OK)
        }
        Command::Diff {
            recipe,
            from,
            to,
            registry,
        } => {
            let pipeline = registry.load(recipe)?;
            let (provider, reg) = open(&pipeline, &g.state_dir).await?;
            let d = diff::diff(reg.as_ref(), provider.as_ref(), recipe, from, to).await?;
            print_diff(g.output, &d);
            Ok(exit::OK)
        }
        Command::Prune {
            recipe,
            keep,
            apply,
            break_lock,
            registry,
        } => {
            let pipeline = registry.load(recipe)?;
            let keep = keep.unwrap_or(pipeline.retention.keep);
            if keep == 0 {
                return Err(Error::Usage(
                    "--keep 0 would leave no release; keep at least 1".into(),
                ));
            }
            let (provider, reg) = open(&pipeline, &g.state_dir).await?;
            let who = promote::who();
            let work = async {
                let inputs = prune::inputs(
                    reg.as_ref(),
                    provider.as_ref(),
                    recipe,
                    pipeline.clusters.keys(),
                    keep,
                    pipeline.retention.history,
                )
                .await?;
                let plan = prune::plan(&inputs);
                if *apply {
                    prune::apply(reg.as_ref(), provider.as_ref(), recipe, &plan).await?;
                }
                Ok(plan)
            };
            let plan = locked(reg.as_ref(), recipe, &who, *break_lock, !*apply, work).await?;
            print_prune(g.output, &plan, *apply);
            Ok(exit::OK)
        }
        Command::Sweep { apply, registry } => {
            let pipeline = Pipeline::load(&registry.pipeline)?;
            let (provider, reg) = open(&pipeline, &g.state_dir).await?;
            let live = sweep::live_runs(&g.state_dir, reg.as_ref(), &pipeline).await?;
            let leftovers = sweep::plan(reg.as_ref(), provider.as_ref(), &pipeline, &live).await?;
            if *apply {
                sweep::apply(&g.state_dir, reg.as_ref(), provider.as_ref(), &leftovers).await?;
                sweep::release_dead_locks(reg.as_ref(), &pipeline, &live).await?;
            }
            print_sweep(g.output, &leftovers, *apply);
            Ok(exit::OK)
        }
        Command::Resume { run_id, break_lock } => {
            let journal = crate::journal::Journal::path_of(&g.state_dir, run_id);
            if !journal.exists() {
                return Err(Error::Usage(format!(
                    "no journal {} (see the runs under {})",
                    journal.display(),
                    crate::journal::Journal::runs_dir(&g.state_dir).display()
                )));
            }
            let entries = crate::journal::Journal::read(&journal)?;
            let file = sweep::pipeline_of(&entries).ok_or_else(|| {
                Error::Usage(format!("{} does not say which pipeline it ran; it cannot be resumed — use `bake sweep --apply`", journal.display()))
            })?;
            let pipeline = Pipeline::load(&file)?;
            let (provider, reg) = open(&pipeline, &g.state_dir).await?;
            let live = sweep::live_runs(&g.state_dir, reg.as_ref(), &pipeline).await?;
            if live.contains(run_id) {
                return Err(Error::Conflict(format!("run {run_id} is still alive (its process runs or it holds a lock); nothing to resume")));
            }
            let left: Vec<_> = sweep::plan(reg.as_ref(), provider.as_ref(), &pipeline, &live)
                .await?
                .into_iter()
                .filter(|l| &l.run_id == run_id && !l.reusable)
                .collect();
            sweep::apply(&g.state_dir, reg.as_ref(), provider.as_ref(), &left).await?;
            sweep::release_dead_locks(reg.as_ref(), &pipeline, &live).await?;
            eprintln!("resume {run_id}: cleaned {} leftover(s); running {} again (validated images are reused)", left.len(), file.display());
            let reporter = TermReporter::new(g.quiet, g.verbose > 0);
            let cx = RunContext {
                pipeline: &pipeline,
                provider: provider.as_ref(),
                registry: reg.as_ref(),
                reporter: &reporter,
                state_dir: &g.state_dir,
                cancel: watch_signals(&g.state_dir),
            };
            let opts = RunOptions {
                break_lock: *break_lock,
                ..RunOptions::default()
            };
            let (summary, result) = run::run(&cx, &opts).await;
            print_run(g.output, &summary, result.as_ref().err());
            result.map(|()| exit::OK)
        }
        Command::IamPolicy { pipeline } => {
            let pipeline = Pipeline::load(pipeline)?;
            json(&crate::iam::policy(&pipeline)?);
            Ok(exit::OK)
        }
        Command::Status { recipe, registry } => {
            let pipeline = Pipeline::load(&registry.pipeline)?;
            if let Some(r) = recipe {
                pipeline.bake(r)?;
            }
            let (_, reg) = open(&pipeline, &g.state_dir).await?;
            let rows = status_rows(&pipeline, reg.as_ref(), recipe.as_deref()).await?;
            print_status(g.output, &rows);
            Ok(exit::OK)
        }
    }
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
        let bakes: Vec<&crate::pipeline::Bake> = match &self.recipe {
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
    match pipeline.provider {
        ProviderKind::Local => Ok((
            Box::new(LocalProvider::new(
                pipeline.local.clone(),
                state_dir,
                pipeline.bakes.iter().map(|b| b.arches.len()).sum(),
            )?),
            Box::new(SqliteRegistry::open(state_dir)?),
        )),
        ProviderKind::Aws => {
            let settings = pipeline
                .aws
                .as_ref()
                .expect("checked when the pipeline was loaded");
            let config =
                crate::aws::sdk_config(settings.region.as_deref(), settings.retry_max_backoff)
                    .await;
            let limits = crate::aws::Limits::default();
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

fn json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("output serializes")
    );
}

/// Runs the `--notify` command with the run's JSON summary on stdin.
async fn notify_hook(command: &str, summary: &RunSummary, error: Option<&Error>) {
    use tokio::io::AsyncWriteExt;
    let code = error.map(Error::exit_code).unwrap_or(exit::OK);
    let body = serde_json::json!({
        "summary": summary,
        "error": error.map(|e| e.to_string()),
        "exit_code": code,
    });
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

fn print_plan(output: Output, items: &[PlanItem]) {
    if output == Output::Json {
        return json(&items);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            let why = match &i.decision {
                plan::Decision::BaseChanged { from, to } => {
                    format!("base changed ({} → {})", short(from), short(to))
                }
                plan::Decision::UpToDate { release } => format!("up to date ({release})"),
                plan::Decision::Forced { release } => format!("forced (same key as {release})"),
                d => d.label(),
            };
            vec![
                i.recipe.clone(),
                i.arch.to_string(),
                why,
                i.key.short().to_string(),
                i.base.source.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["RECIPE", "ARCH", "ACTION", "KEY", "BASE"], &rows)
    );
    for i in items.iter().filter(|i| !i.resources.is_empty()) {
        println!("\n{} {}: Image Builder resources", i.recipe, i.arch);
        for r in &i.resources {
            println!("  {:<7} {:<29} {}", r.action, r.kind, r.name);
        }
    }
}

fn short(s: &str) -> &str {
    if s.len() > 16 && !s.starts_with("ami-") {
        &s[..12]
    } else {
        s
    }
}

fn print_run(output: Output, summary: &RunSummary, error: Option<&Error>) {
    if output == Output::Json {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            summary: &'a RunSummary,
            error: Option<String>,
            exit_code: u8,
        }
        return json(&Out {
            summary,
            error: error.map(|e| e.to_string()),
            exit_code: error.map(Error::exit_code).unwrap_or(exit::OK),
        });
    }
    if summary.results.is_empty() && error.is_some() {
        // Refused before anything ran (bad input found at plan): the error on stderr says it.
        return;
    }
    if summary.up_to_date {
        let what: Vec<String> = summary
            .results
            .iter()
            .map(|r| format!("{}/{}", r.recipe, r.arch))
            .collect();
        println!("up to date: {}", what.join(", "));
        return;
    }
    let rows: Vec<Vec<String>> = summary
        .results
        .iter()
        .map(|r| {
            vec![
                r.recipe.clone(),
                r.arch.to_string(),
                r.decision.clone(),
                r.outcome.to_string(),
                r.image.clone().unwrap_or_else(|| "-".into()),
                r.validators
                    .clone()
                    .or_else(|| r.error.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["RECIPE", "ARCH", "WHY", "OUTCOME", "IMAGE", "VALIDATORS"],
            &rows
        )
    );
    for p in &summary.published {
        let promoted = if p.promoted_to.is_empty() {
            String::new()
        } else {
            format!("; promoted to {}", p.promoted_to.join(", "))
        };
        println!("published {} {}{promoted}", p.recipe, p.release);
    }
    if let Some(j) = &summary.journal {
        println!("journal: {}", j.display());
    }
}

fn print_releases(output: Output, releases: &[Manifest]) {
    if output == Output::Json {
        return json(&releases);
    }
    let mut rows = Vec::new();
    for m in releases.iter().rev() {
        for (arch, image) in &m.images {
            let count = |st| image.validators.values().filter(|s| **s == st).count();
            let passed = count(crate::validate::Status::Pass);
            let skipped = count(crate::validate::Status::Skipped);
            rows.push(vec![
                m.release.to_string(),
                arch.to_string(),
                image.image_id.clone(),
                format!("{passed} pass, {skipped} skipped"),
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

#[derive(Debug, Serialize)]
struct StatusRow {
    recipe: String,
    arch: Arch,
    channel: String,
    release: Option<String>,
    image: Option<String>,
    validated_at: Option<chrono::DateTime<chrono::Utc>>,
    promoted_at: Option<chrono::DateTime<chrono::Utc>>,
    latest_release: Option<String>,
}

async fn status_rows(
    pipeline: &Pipeline,
    registry: &dyn Registry,
    only: Option<&str>,
) -> Result<Vec<StatusRow>> {
    let mut rows = Vec::new();
    for bake in &pipeline.bakes {
        if only.is_some_and(|r| r != bake.recipe.name) {
            continue;
        }
        let releases = registry.releases(&bake.recipe.name).await?;
        let channels = registry.channels(&bake.recipe.name).await?;
        let latest = releases.last();
        for &arch in &bake.arches {
            // The newest release first, then each cluster's channel.
            rows.push(StatusRow {
                recipe: bake.recipe.name.clone(),
                arch,
                channel: "(latest)".into(),
                release: latest.map(|m| m.release.to_string()),
                image: latest
                    .and_then(|m| m.images.get(&arch))
                    .map(|i| i.image_id.clone()),
                validated_at: latest
                    .and_then(|m| m.images.get(&arch))
                    .map(|i| i.validated_at),
                promoted_at: None,
                latest_release: latest.map(|m| m.release.to_string()),
            });
            for (cluster, c) in &pipeline.clusters {
                if !c.arches.contains(&arch) {
                    continue;
                }
                let entry = channels.get(cluster);
                let release = entry.and_then(|e| releases.iter().find(|m| m.release == e.release));
                rows.push(StatusRow {
                    recipe: bake.recipe.name.clone(),
                    arch,
                    channel: cluster.clone(),
                    release: entry.map(|e| e.release.to_string()),
                    image: entry.and_then(|e| e.images.get(&arch).cloned()),
                    validated_at: release
                        .and_then(|m| m.images.get(&arch))
                        .map(|i| i.validated_at),
                    promoted_at: entry.map(|e| e.at),
                    latest_release: latest.map(|m| m.release.to_string()),
                });
            }
        }
    }
    Ok(rows)
}

fn print_status(output: Output, rows: &[StatusRow]) {
    if output == Output::Json {
        return json(&rows);
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let pending = match (&r.release, &r.latest_release) {
                (Some(a), Some(b)) if a != b && r.channel != "(latest)" => format!("{b} pending"),
                (None, Some(b)) if r.channel != "(latest)" => format!("{b} pending"),
                _ => String::new(),
            };
            vec![
                r.recipe.clone(),
                r.arch.to_string(),
                r.channel.clone(),
                r.release.clone().unwrap_or_else(|| "-".into()),
                r.image.clone().unwrap_or_else(|| "-".into()),
                r.validated_at.map(age).unwrap_or_else(|| "-".into()),
                pending,
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "RECIPE",
                "ARCH",
                "CHANNEL",
                "RELEASE",
                "IMAGE",
                "VALIDATED",
                "PROMOTION"
            ],
            &table_rows
        )
    );
}

fn print_promotion(output: Output, recipe: &str, p: &promote::Promotion) {
    if output == Output::Json {
        return json(p);
    }
    match p {
        promote::Promotion::Moved { cluster, entry } => println!(
            "{recipe}: channel `{cluster}` moved to {} (version {}): {}",
            entry.release,
            entry.version,
            entry
                .images
                .iter()
                .map(|(a, i)| format!("{a}={i}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        promote::Promotion::WouldMove { change } => println!(
            "dry run: {recipe} channel `{}` would move {} → {}: {}",
            change.cluster,
            change
                .from_release
                .as_ref()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "(nothing)".into()),
            change.to_release,
            change
                .images
                .iter()
                .map(|(a, i)| format!("{a}={i}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        promote::Promotion::AlreadyThere { cluster, entry } => println!(
            "{recipe}: channel `{cluster}` is already on {} (version {}); nothing changed",
            entry.release, entry.version
        ),
    }
}

fn print_pins(output: Output, pins: &[crate::pin::Pin], format: PinFormat) {
    let text = |p: &crate::pin::Pin| match format {
        PinFormat::Tfvars => p.tfvars(),
        PinFormat::Data => p.data_source(),
    };
    match output {
        Output::Json => {
            #[derive(Serialize)]
            struct Row<'a> {
                #[serde(flatten)]
                pin: &'a crate::pin::Pin,
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

fn print_history(output: Output, history: &[ChannelEntry]) {
    if output == Output::Json {
        return json(&history);
    }
    let rows: Vec<Vec<String>> = history
        .iter()
        .rev()
        .map(|e| {
            vec![
                e.version.to_string(),
                e.release.to_string(),
                e.at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                e.who.clone(),
                e.from.clone().unwrap_or_else(|| "-".into()),
                e.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["VERSION", "RELEASE", "WHEN", "WHO", "FROM", "WHY"], &rows)
    );
}

fn print_diff(output: Output, d: &diff::Diff) {
    if output == Output::Json {
        return json(d);
    }
    println!("{} {} → {}", d.recipe, d.from, d.to);
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    for a in &d.arches {
        println!(
            "\n{}: image {} → {}, base {} → {}{}",
            a.arch,
            opt(&a.image.0),
            opt(&a.image.1),
            opt(&a.base.0),
            opt(&a.base.1),
            if a.key_changed { "" } else { " (same key)" }
        );
        if let Some(note) = &a.note {
            println!("  {note}");
        }
        let mut rows = Vec::new();
        for c in &a.highlights {
            rows.push(vec![
                "*".into(),
                c.package.clone(),
                opt(&c.from),
                opt(&c.to),
            ]);
        }
        for (mark, list) in [
            ("~", &a.packages.changed),
            ("+", &a.packages.added),
            ("-", &a.packages.removed),
        ] {
            for c in list {
                rows.push(vec![
                    mark.into(),
                    c.package.clone(),
                    opt(&c.from),
                    opt(&c.to),
                ]);
            }
        }
        if rows.is_empty() && a.note.is_none() {
            println!("  no package changes");
        } else if !rows.is_empty() {
            for line in table(&["", "PACKAGE", "FROM", "TO"], &rows).lines() {
                println!("  {line}");
            }
        }
    }
}

fn print_prune(output: Output, plan: &prune::PrunePlan, applied: bool) {
    if output == Output::Json {
        #[derive(Serialize)]
        struct Out<'a> {
            applied: bool,
            #[serde(flatten)]
            plan: &'a prune::PrunePlan,
        }
        return json(&Out { applied, plan });
    }
    let verb = if applied { "deleted" } else { "would delete" };
    for d in &plan.delete {
        let images = if d.images.is_empty() {
            "(images kept: still referenced)".to_string()
        } else {
            d.images
                .iter()
                .map(|(a, i)| format!("{a}={i}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!("{verb} {} {images}", d.release);
    }
    for k in &plan.kept {
        println!("keep {}: {}", k.release, k.reasons.join("; "));
    }
    if !applied && !plan.delete.is_empty() {
        println!("plan only; run again with --apply to delete");
    }
}

fn print_sweep(output: Output, leftovers: &[crate::provider::Leftover], applied: bool) {
    if output == Output::Json {
        #[derive(Serialize)]
        struct Out<'a> {
            applied: bool,
            leftovers: &'a [crate::provider::Leftover],
        }
        return json(&Out { applied, leftovers });
    }
    if leftovers.is_empty() {
        println!("nothing left behind");
        return;
    }
    let rows: Vec<Vec<String>> = leftovers
        .iter()
        .map(|l| {
            vec![
                l.kind.clone(),
                l.id.clone(),
                l.run_id.clone(),
                l.action.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["KIND", "ID", "RUN", if applied { "DONE" } else { "WOULD" }],
            &rows
        )
    );
    if !applied {
        println!("plan only; run again with --apply to remove these");
    }
}
