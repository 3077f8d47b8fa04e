//! `bake run`: bake → validate → publish for every recipe × arch that needs it, arches in
//! parallel, one recipe at a time under its lock; then auto-promote to non-prod channels.
//! A run with nothing to do creates nothing (no journal, no lock) and says `up to date`.

mod summary;
use summary::up_to_date;
pub use summary::{ArchOutcome, ArchResult, Published, RunSummary};

use crate::input::pipeline::{Bake, Pipeline};
use crate::journal::{new_run_id, Entry, Journal};
use crate::lock::RecipeLock;
use crate::ops::plan::{self, Decision, Filter, PlanItem};
use crate::ops::promote;
use crate::provider::{BakeJob, ImageRecord, ImageStatus, Provider};
use crate::registry::Registry;
use crate::release::{Manifest, ReleaseId, ReleaseImage};
use crate::report::Reporter;
use crate::steps::StepContext;
use crate::{Arch, Error, Result};
use chrono::Utc;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Everything a run works with.
pub struct RunContext<'a> {
    pub pipeline: &'a Pipeline,
    pub provider: &'a dyn Provider,
    pub registry: &'a dyn Registry,
    pub reporter: &'a dyn Reporter,
    pub state_dir: &'a Path,
    pub cancel: CancellationToken,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub filter: Filter,
    pub break_lock: bool,
    /// How long the recipe lock lives without a heartbeat.
    pub lock_ttl: Duration,
    pub who: String,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            filter: Filter::default(),
            break_lock: false,
            lock_ttl: crate::lock::DEFAULT_TTL,
            who: promote::who(),
        }
    }
}

/// Runs the pipeline. The summary is filled in even when the result is an error.
pub async fn run(cx: &RunContext<'_>, opts: &RunOptions) -> (RunSummary, Result<()>) {
    let mut summary = RunSummary {
        run_id: None,
        journal: None,
        up_to_date: false,
        results: Vec::new(),
        published: Vec::new(),
    };
    let items = match planned(cx, opts).await {
        Ok(items) => items,
        Err(e) => return (summary, Err(e)),
    };
    if !items
        .iter()
        .any(|i| opts.filter.selects(i.arch) && i.decision.needs_bake())
    {
        summary.up_to_date = true;
        summary.results = items
            .iter()
            .filter(|i| opts.filter.selects(i.arch))
            .map(up_to_date)
            .collect();
        return (summary, Ok(()));
    }
    let run_id = new_run_id();
    let journal = match Journal::create(cx.state_dir, &run_id) {
        Ok(j) => j,
        Err(e) => return (summary, Err(e)),
    };
    summary.run_id = Some(run_id.clone());
    summary.journal = Some(journal.path().to_path_buf());
    let _ = journal.record(&Entry::Started {
        run_id: run_id.clone(),
        pid: std::process::id(),
        pipeline: cx.pipeline.file.display().to_string(),
        at: Utc::now(),
    });
    let mut errors = Vec::new();
    for bake in &cx.pipeline.bakes {
        let mine: Vec<&PlanItem> = items
            .iter()
            .filter(|i| i.recipe == bake.recipe.name)
            .collect();
        if cx.cancel.is_cancelled()
            && mine
                .iter()
                .any(|i| opts.filter.selects(i.arch) && i.decision.needs_bake())
        {
            errors.push(Error::Interrupted {
                journal: journal.path().display().to_string(),
            });
            break;
        }
        if let Err(e) = bake_recipe(cx, opts, bake, &mine, &journal, &mut summary).await {
            errors.push(e);
        }
    }
    let result = match errors.len() {
        0 => Ok(()),
        1 => Err(errors.pop().expect("one error")),
        _ => Err(Error::Many(errors)),
    };
    let outcome = match &result {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("exit {}", e.exit_code()),
    };
    let _ = journal.record(&Entry::Finished {
        outcome,
        at: Utc::now(),
    });
    (summary, result)
}

/// Every arch of the pipeline planned (a release holds them all; `--arch` only limits what is
/// baked), refusing an `--arch` no recipe bakes.
async fn planned(cx: &RunContext<'_>, opts: &RunOptions) -> Result<Vec<PlanItem>> {
    let all_arches = Filter {
        arch: None,
        ..opts.filter.clone()
    };
    let items = plan::plan(cx.pipeline, cx.provider, cx.registry, &all_arches).await?;
    if let Some(a) = opts.filter.arch {
        if !items.iter().any(|i| i.arch == a) {
            return Err(plan::no_such_arch(cx.pipeline, a));
        }
    }
    Ok(items)
}

/// One recipe of the run: up to date (said so), or baked under its lock; a lock another run
/// holds is this recipe's error, and the run goes on to the next.
async fn bake_recipe(
    cx: &RunContext<'_>,
    opts: &RunOptions,
    bake: &Bake,
    mine: &[&PlanItem],
    journal: &Journal,
    summary: &mut RunSummary,
) -> Result<()> {
    if mine.is_empty() {
        return Ok(());
    }
    let selected = |i: &PlanItem| opts.filter.selects(i.arch);
    if !mine.iter().any(|i| selected(i) && i.decision.needs_bake()) {
        summary
            .results
            .extend(mine.iter().filter(|i| selected(i)).map(|i| up_to_date(i)));
        return Ok(());
    }
    let run_id = summary.run_id.clone().unwrap_or_default();
    let owner = format!("{} pid {} run {run_id}", opts.who, std::process::id());
    let lock = match RecipeLock::take(
        cx.registry,
        &bake.recipe.name,
        &owner,
        opts.lock_ttl,
        opts.break_lock,
    )
    .await
    {
        Ok(lock) => lock,
        Err(e) => {
            summary.results.extend(mine.iter().map(|i| ArchResult {
                outcome: ArchOutcome::Locked,
                error: Some(e.to_string()),
                ..up_to_date(i)
            }));
            return Err(e);
        }
    };
    lock.hold(run_recipe(cx, opts, bake, mine, journal, summary))
        .await
}

/// What a run does for one recipe, decided again under its lock.
struct Decided<'a> {
    /// The recipe's releases as the registry holds them now.
    releases: Vec<Manifest>,
    /// Arches to bake (selected, and their key has no up-to-date image).
    todo: Vec<(&'a PlanItem, Decision)>,
    /// Arches whose latest release is up to date: carried into a new release as they are.
    carried: Vec<(&'a PlanItem, Decision)>,
    /// Arches that need a bake but were not selected (`--arch`).
    missing: Vec<String>,
}

/// Bakes the arches of one recipe that need it (in parallel), then publishes one release
/// holding every arch and auto-promotes it. All or nothing: one arch failed or rejected, no
/// release.
async fn run_recipe(
    cx: &RunContext<'_>,
    opts: &RunOptions,
    bake: &Bake,
    items: &[&PlanItem],
    journal: &Journal,
    summary: &mut RunSummary,
) -> Result<()> {
    let decided = decide_again(cx, opts, bake, items).await?;
    let selected = |i: &PlanItem| opts.filter.selects(i.arch);
    if decided.todo.is_empty() {
        summary
            .results
            .extend(items.iter().filter(|i| selected(i)).map(|i| up_to_date(i)));
        return Ok(());
    }
    let bakes = decided
        .todo
        .iter()
        .map(|(item, decision)| bake_arch(cx, opts, bake, item, decision, journal));
    let outcomes = futures::future::join_all(bakes).await;
    let tallied = tally(cx, bake, &decided.todo, outcomes, summary);
    summary.results.extend(
        decided
            .carried
            .iter()
            .filter(|(i, _)| selected(i))
            .map(|(i, _)| up_to_date(i)),
    );
    let images = tallied?;
    if !decided.missing.is_empty() {
        // Validated images stay in the provider's store and are reused by key next time.
        cx.reporter.note(&format!(
            "{}: validated, not published: a release needs every arch and {} has no up-to-date image; run without --arch to complete it (validated images are reused)",
            bake.recipe.name,
            decided.missing.join(", ")
        ));
        return Ok(());
    }
    let manifest = assemble(cx, bake, &decided, &images).await?;
    for arch in images.keys() {
        cx.reporter.phase(&bake.recipe.name, *arch, "publish");
    }
    let published = publish(cx, manifest).await?;
    let promoted_to = auto_promote(cx, opts, bake, &published, journal).await?;
    summary.published.push(Published {
        recipe: published.recipe.clone(),
        release: published.release.clone(),
        images: published
            .images
            .iter()
            .map(|(a, i)| (*a, i.image_id.clone()))
            .collect(),
        promoted_to,
    });
    Ok(())
}

/// Another run may have published while this one waited for the lock: decide each arch
/// again against the releases the registry holds now.
async fn decide_again<'a>(
    cx: &RunContext<'_>,
    opts: &RunOptions,
    bake: &Bake,
    items: &[&'a PlanItem],
) -> Result<Decided<'a>> {
    let releases = cx.registry.releases(&bake.recipe.name).await?;
    let (mut todo, mut carried, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    for item in items {
        let selected = opts.filter.selects(item.arch);
        let (decision, _) = plan::decide(
            &releases,
            item.arch,
            &item.key,
            &item.base.id,
            opts.filter.force && selected,
        );
        if !decision.needs_bake() {
            carried.push((*item, decision));
        } else if selected {
            todo.push((*item, decision));
        } else {
            missing.push(item.arch.to_string());
        }
    }
    Ok(Decided {
        releases,
        todo,
        carried,
        missing,
    })
}

/// Records each baked arch's result in the summary and returns the validated images; an error
/// if any arch failed or was rejected (all of them, when several did).
fn tally(
    cx: &RunContext<'_>,
    bake: &Bake,
    todo: &[(&PlanItem, Decision)],
    outcomes: Vec<Result<(ImageRecord, bool)>>,
    summary: &mut RunSummary,
) -> Result<BTreeMap<Arch, ImageRecord>> {
    let mut images: BTreeMap<Arch, ImageRecord> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut rejected = Vec::new();
    for ((item, decision), outcome) in todo.iter().zip(outcomes) {
        let mut result = ArchResult {
            decision: decision.label(),
            ..up_to_date(item)
        };
        match outcome {
            Ok((image, reused)) => {
                result.image = Some(image.id.clone());
                result.validators = Some(image.verdict.summary());
                result.notes = image.verdict.notes();
                result.outcome = match (image.status, reused) {
                    (ImageStatus::Rejected, _) => {
                        rejected.push(item.arch.to_string());
                        result.error = Some(image.verdict.blockers().join("; "));
                        ArchOutcome::Rejected
                    }
                    (ImageStatus::Validated, true) => ArchOutcome::Reused,
                    (ImageStatus::Validated, false) => ArchOutcome::Validated,
                };
                cx.reporter.finish(
                    &item.recipe,
                    item.arch,
                    &format!("{}: {}", result.outcome, image.verdict.summary()),
                );
                images.insert(item.arch, image);
            }
            Err(e @ Error::TestPhaseRejected { .. }) => {
                // Rejected before any canary: counted with the validators' rejections.
                rejected.push(item.arch.to_string());
                result.outcome = ArchOutcome::Rejected;
                result.error = Some(e.to_string());
                cx.reporter
                    .finish(&item.recipe, item.arch, &format!("rejected: {e}"));
            }
            Err(e) => {
                result.outcome = if matches!(e, Error::Interrupted { .. }) {
                    ArchOutcome::Interrupted
                } else {
                    ArchOutcome::Failed
                };
                result.error = Some(e.to_string());
                cx.reporter
                    .finish(&item.recipe, item.arch, &format!("failed: {e}"));
                errors.push(e);
            }
        }
        summary.results.push(result);
    }
    if !rejected.is_empty() {
        errors.push(Error::Rejected {
            recipe: bake.recipe.name.clone(),
            arches: rejected.join(", "),
        });
    }
    match errors.len() {
        0 => Ok(images),
        1 => Err(errors.pop().expect("one error")),
        _ => Err(Error::Many(errors)),
    }
}

/// The release to publish: every arch of the pipeline, the freshly validated images and, for
/// arches whose key did not change, the image of the latest release that holds that key.
async fn assemble(
    cx: &RunContext<'_>,
    bake: &Bake,
    decided: &Decided<'_>,
    images: &BTreeMap<Arch, ImageRecord>,
) -> Result<Manifest> {
    let mut release_images = BTreeMap::new();
    for (arch, image) in images {
        release_images.insert(*arch, release_image(image));
    }
    for (item, _) in &decided.carried {
        let latest = decided
            .releases
            .iter()
            .rev()
            .find(|m| m.images.get(&item.arch).is_some_and(|i| i.key == item.key))
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "{} {}: no release holds key {}",
                    item.recipe,
                    item.arch,
                    item.key.short()
                ))
            })?;
        // The image's package manifest goes with it into the new release (a registry that
        // keeps manifests per release, as SSM does, would otherwise leave this arch without).
        let mut image = latest.images[&item.arch].clone();
        image.packages = cx
            .registry
            .package_manifest(&item.recipe, &latest.release, item.arch)
            .await?;
        release_images.insert(item.arch, image);
    }
    Ok(Manifest {
        recipe: bake.recipe.name.clone(),
        release: ReleaseId::next(Utc::now().date_naive(), std::iter::empty()),
        provider: cx.provider.name().to_string(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: Utc::now(),
        images: release_images,
    })
}

/// Publishes the release, then tags its images with it. The tag is for people and other
/// pipelines (bake's own sweep and prune read the registry), so a failure to write it is
/// reported, not fatal: the release is out.
async fn publish(cx: &RunContext<'_>, manifest: Manifest) -> Result<Manifest> {
    let published = cx.registry.publish(manifest).await?;
    tracing::info!(recipe = %published.recipe, release = %published.release, "published");
    let images: Vec<ReleaseImage> = published.images.values().cloned().collect();
    if let Err(e) = cx
        .provider
        .mark_published(&published.release.to_string(), &images)
        .await
    {
        tracing::warn!(recipe = %published.recipe, release = %published.release, "published, but tagging its images with the release failed: {e}");
    }
    Ok(published)
}

/// Promotes the new release to the recipe's `auto_promote` clusters, each checked as `bake
/// promote` checks it. The release was published under this run's lock, which `bake revoke`
/// also takes: it cannot have been revoked yet.
async fn auto_promote(
    cx: &RunContext<'_>,
    opts: &RunOptions,
    bake: &Bake,
    published: &Manifest,
    journal: &Journal,
) -> Result<Vec<String>> {
    let mut promoted_to = Vec::new();
    for target in &bake.auto_promote {
        let mut cluster = cx.pipeline.clusters[target].clone();
        cluster.kubernetes_version = promote::kubernetes_version(cx.provider, &cluster).await?;
        let reason = format!("auto-promotion by run {}", journal.run_id());
        promote::check_release(published, target, &cluster)?;
        promote::apply(
            cx.registry,
            published,
            target,
            &cluster,
            &promote::Meta {
                from: None,
                who: &opts.who,
                reason: Some(&reason),
                dry_run: false,
            },
        )
        .await?;
        promoted_to.push(target.clone());
    }
    Ok(promoted_to)
}

fn release_image(image: &ImageRecord) -> ReleaseImage {
    ReleaseImage {
        image_id: image.id.clone(),
        key: image.key.clone(),
        base: image.base.clone(),
        validated_at: image.created_at,
        validators: image
            .verdict
            .results
            .iter()
            .map(|r| (r.name.clone(), r.verdict()))
            .collect(),
        packages_sha256: image.packages_sha256.clone(),
        kubelet: image.kubelet.clone(),
        packages: image.packages.clone(),
        run_id: image.run_id.clone(),
        copies: image.copies.clone(),
    }
}

/// Bakes one arch, or reuses an image already baked with the same key. Returns the image
/// and whether it was reused.
async fn bake_arch(
    cx: &RunContext<'_>,
    opts: &RunOptions,
    bake: &Bake,
    item: &PlanItem,
    decision: &Decision,
    journal: &Journal,
) -> Result<(ImageRecord, bool)> {
    let step_cx = StepContext {
        recipe: &bake.recipe.name,
        arch: item.arch,
        journal,
        reporter: cx.reporter,
        cancel: cx.cancel.child_token(),
    };
    if !opts.filter.force {
        if let Some(image) = cx
            .provider
            .find_image(&bake.recipe.name, item.arch, &item.key)
            .await?
        {
            match image.status {
                ImageStatus::Validated => {
                    step_cx.phase(&format!("reusing validated image {} (same key)", image.id));
                    let image = cx.provider.reuse(image, &step_cx).await?;
                    return Ok((image, true));
                }
                ImageStatus::Rejected => {
                    step_cx.phase(&format!(
                        "image {} with this key was rejected by run {}; change the recipe or use --force",
                        image.id, image.run_id
                    ));
                    return Ok((image, true));
                }
            }
        }
    }
    step_cx.phase(&format!("{}: baking", decision.label()));
    let job = BakeJob {
        recipe: &bake.recipe,
        arch: item.arch,
        base: item.base.clone(),
        key: item.key.clone(),
        run_id: journal.run_id(),
    };
    let image = cx.provider.bake(&job, &step_cx).await?;
    Ok((image, false))
}
