//! `bake sweep` and `bake resume`: find what runs that are no longer alive left behind —
//! VMs, overlays and unpublished images (local), instances, security groups and unpublished
//! or rejected images with their snapshots (AWS) — from journals and `bake:run-id` tags.
//! A run is alive while its process runs on this host or while it holds a recipe lock.
//! Published images and anything without our tags are never touched.

use crate::input::pipeline::Pipeline;
use crate::journal::{Entry, Journal};
use crate::provider::{Leftover, Provider};
use crate::registry::Registry;
use crate::{Error, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The runs that are alive. A run with a journal here is alive while its process runs (the
/// local evidence wins over its lock, which a killed run leaves behind); a run from another
/// host (CI) is alive while it holds an unexpired recipe lock.
pub async fn live_runs(
    state_dir: &Path,
    registry: &dyn Registry,
    pipeline: &Pipeline,
) -> Result<BTreeSet<String>> {
    let mut live = BTreeSet::new();
    let local = Journal::all(state_dir)?;
    let known: BTreeSet<String> = local.iter().map(|(id, _)| id.clone()).collect();
    for (run_id, entries) in local {
        let finished = entries.iter().any(|e| matches!(e, Entry::Finished { .. }));
        let pid = entries.iter().find_map(|e| match e {
            Entry::Started { pid, .. } => Some(*pid),
            _ => None,
        });
        if !finished && pid.is_some_and(bake_is_running) {
            live.insert(run_id);
        }
    }
    for bake in &pipeline.bakes {
        if let Some(lock) = registry.lock_holder(&bake.recipe.name).await? {
            if lock.expires_at > chrono::Utc::now() {
                if let Some(id) = run_of(&lock.owner) {
                    if !known.contains(&id) {
                        live.insert(id);
                    }
                }
            }
        }
    }
    Ok(live)
}

/// The run ID in a lock owner (`user@host pid N run <id>`).
pub fn run_of(owner: &str) -> Option<String> {
    owner.split(" run ").nth(1).map(|s| s.trim().to_string())
}

/// Releases recipe locks held by runs that are not alive, so the next run can start.
pub async fn release_dead_locks(
    registry: &dyn Registry,
    pipeline: &Pipeline,
    live: &BTreeSet<String>,
) -> Result<Vec<String>> {
    let mut released = Vec::new();
    for bake in &pipeline.bakes {
        if let Some(lock) = registry.lock_holder(&bake.recipe.name).await? {
            if let Some(id) = run_of(&lock.owner) {
                if !live.contains(&id) {
                    tracing::warn!(recipe = %bake.recipe.name, owner = %lock.owner, "releasing the lock of a dead run");
                    registry.unlock(&bake.recipe.name, &lock.owner).await?;
                    released.push(bake.recipe.name.clone());
                }
            }
        }
    }
    Ok(released)
}

/// True if `pid` is a running bake process on this host.
fn bake_is_running(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("bake"))
        .unwrap_or(false)
}

/// Image IDs the registry publishes for the pipeline's recipes (never swept).
pub async fn published(registry: &dyn Registry, pipeline: &Pipeline) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for bake in &pipeline.bakes {
        for m in registry.releases(&bake.recipe.name).await? {
            for i in m.images.values() {
                out.insert(i.image_id.clone());
                out.extend(i.copies.values().cloned());
            }
        }
        for (_, entry) in registry.channels(&bake.recipe.name).await? {
            out.extend(entry.images.values().cloned());
        }
    }
    Ok(out)
}

/// What sweep would remove, given the runs that are alive (`live_runs`).
pub async fn plan(
    registry: &dyn Registry,
    provider: &dyn Provider,
    pipeline: &Pipeline,
    live: &BTreeSet<String>,
) -> Result<Vec<Leftover>> {
    let published = published(registry, pipeline).await?;
    let mut out = Vec::new();
    // Half-written releases, unless a live run is publishing them right now.
    for bake in &pipeline.bakes {
        let holder = registry.lock_holder(&bake.recipe.name).await?;
        let holder_run = holder.as_ref().and_then(|h| run_of(&h.owner));
        let busy = holder.as_ref().is_some_and(|h| {
            h.expires_at > chrono::Utc::now()
                && holder_run.as_ref().is_some_and(|id| live.contains(id))
        });
        if busy {
            continue;
        }
        for id in registry.incomplete_releases(&bake.recipe.name).await? {
            out.push(Leftover {
                kind: crate::journal::Kind::IncompleteRelease,
                id: format!("{}/{id}", bake.recipe.name),
                run_id: holder_run.clone().unwrap_or_default(),
                recipe: bake.recipe.name.clone(),
                arch: None,
                action: "delete the release parameters written before the manifest (resume would finish it instead)".into(),
                // `resume` finishes it under the same ID instead.
                reusable: true,
            });
        }
    }
    out.extend(provider.leftovers(live, &published).await?);
    Ok(out)
}

/// Removes leftovers, recording each removal in its run's journal so the next sweep is clean.
pub async fn apply(
    state_dir: &Path,
    registry: &dyn Registry,
    provider: &dyn Provider,
    leftovers: &[Leftover],
) -> Result<()> {
    for l in leftovers {
        if l.kind == crate::journal::Kind::IncompleteRelease {
            let (recipe, id) = l.id.split_once('/').unwrap_or_default();
            let id: crate::release::ReleaseId = id.parse().map_err(crate::Error::Conflict)?;
            registry.delete_release(recipe, &id).await?;
            continue;
        }
        provider.remove_leftover(l).await?;
        let journal = Journal::path_of(state_dir, &l.run_id);
        if journal.exists() {
            Journal::append_to(
                &journal,
                &Entry::Removed {
                    kind: l.kind,
                    id: l.id.clone(),
                    at: chrono::Utc::now(),
                },
            )?;
        }
    }
    Ok(())
}

/// The pipeline a journal's run used, for `bake resume`.
pub fn pipeline_of(entries: &[Entry]) -> Option<PathBuf> {
    entries.iter().find_map(|e| match e {
        Entry::Started { pipeline, .. } => Some(PathBuf::from(pipeline)),
        _ => None,
    })
}

/// The pipeline a run ran, from its journal: what `resume` runs again.
pub fn pipeline_of_run(state_dir: &Path, run_id: &str) -> Result<Pipeline> {
    let journal = Journal::path_of(state_dir, run_id);
    if !journal.exists() {
        return Err(Error::Usage(format!(
            "no journal {} (see the runs under {})",
            journal.display(),
            Journal::runs_dir(state_dir).display()
        )));
    }
    let entries = Journal::read(&journal)?;
    let file = pipeline_of(&entries).ok_or_else(|| {
        Error::Usage(format!(
            "{} does not say which pipeline it ran; it cannot be resumed — use `bake sweep --apply`",
            journal.display()
        ))
    })?;
    Ok(Pipeline::load(&file)?)
}

/// Before `resume` runs a dead run's pipeline again: removes what that run left, except the
/// validated images the rerun reuses by key, and releases the locks of dead runs. Refuses a
/// run that is still alive. Returns how many leftovers it removed.
pub async fn clean_dead_run(
    state_dir: &Path,
    registry: &dyn Registry,
    provider: &dyn Provider,
    pipeline: &Pipeline,
    run_id: &str,
) -> Result<usize> {
    let live = live_runs(state_dir, registry, pipeline).await?;
    if live.contains(run_id) {
        return Err(Error::Conflict(format!(
            "run {run_id} is still alive (its process runs or it holds a lock); nothing to resume"
        )));
    }
    let left: Vec<Leftover> = plan(registry, provider, pipeline, &live)
        .await?
        .into_iter()
        .filter(|l| l.run_id == run_id && !l.reusable)
        .collect();
    apply(state_dir, registry, provider, &left).await?;
    release_dead_locks(registry, pipeline, &live).await?;
    Ok(left.len())
}
