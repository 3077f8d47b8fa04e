//! Prune: remove old releases and their images, never one that is still wanted. A release is
//! kept when it is among the newest `keep`, when any channel points at it now or in its last
//! `history` entries before that, or when any of its images is in use (an instance or launch
//! template uses it, or it has deregistration protection). An image is deleted only when no
//! kept release and no protected channel entry refers to it. Registry entries go last.
//!
//! Where images can be deprecated (AWS), a release leaving `keep` retires first: its images are
//! deprecated, and only `deprecate_for` after their deprecation time does prune delete them
//! and the release. Until then the release stays in the registry, so pins keep resolving.

use crate::provider::Provider;
use crate::registry::Registry;
use crate::release::{ChannelEntry, ReleaseId, ReleaseImages};
use crate::{Arch, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What prune decides from.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Releases, oldest first.
    pub releases: Vec<ReleaseImages>,
    /// Channel histories, oldest first: at least their last `history + 1` moves.
    pub channels: BTreeMap<String, Vec<ChannelEntry>>,
    /// Images that must not be deleted, with why (in use, protected).
    pub in_use: BTreeMap<String, String>,
    pub keep: usize,
    /// Channel entries before the current one whose releases are protected.
    pub history: usize,
    /// Images deprecated (or to be), with when.
    pub deprecated: BTreeMap<String, DateTime<Utc>>,
    /// How long images stay deprecated before they are deleted; None: deleted at once (no
    /// deprecation where they live, or a zero grace).
    pub deprecate_for: Option<chrono::TimeDelta>,
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kept {
    pub release: ReleaseId,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Doomed {
    pub release: ReleaseId,
    /// Images deleted with it (those no kept release or channel entry still refers to).
    pub images: BTreeMap<Arch, String>,
}

/// A release on its way out: its images are deprecated (now, or already) and deleted with it
/// once `deletable_after` has passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retiring {
    pub release: ReleaseId,
    /// Its images that go with it.
    pub images: BTreeMap<Arch, String>,
    /// Those not deprecated yet (the plan deprecates them).
    pub deprecate: Vec<String>,
    pub deletable_after: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct PrunePlan {
    pub delete: Vec<Doomed>,
    pub retire: Vec<Retiring>,
    pub kept: Vec<Kept>,
}

/// Decides what to delete. Pure: the rules in one place, tested with random histories.
pub fn plan(inputs: &Inputs) -> PrunePlan {
    let (mut protected_releases, protected_images) = protected_by_channels(inputs);
    let mut result = PrunePlan::default();
    let mut doomed = Vec::new();
    let n = inputs.releases.len();
    for (i, release) in inputs.releases.iter().enumerate() {
        let mut reasons = protected_releases
            .remove(&release.release)
            .unwrap_or_default();
        if i + inputs.keep >= n {
            reasons.push(format!("among the newest {}", inputs.keep));
        }
        for image in release.images.values() {
            if let Some(why) = inputs.in_use.get(image) {
                reasons.push(format!("image {image} {why}"));
            }
        }
        if reasons.is_empty() {
            doomed.push(release);
        } else {
            reasons.dedup();
            result.kept.push(Kept {
                release: release.release.clone(),
                reasons,
            });
        }
    }
    // Images still referred to by a kept release (a carried-over arch) or a protected entry stay.
    let kept_ids: BTreeSet<&ReleaseId> = result.kept.iter().map(|k| &k.release).collect();
    let mut still_used: BTreeSet<String> = protected_images;
    for r in inputs
        .releases
        .iter()
        .filter(|r| kept_ids.contains(&r.release))
    {
        still_used.extend(r.images.values().cloned());
    }
    still_used.extend(inputs.in_use.keys().cloned());
    let (retire, ready) = retire_or_ready(inputs, doomed, &still_used);
    for r in &retire {
        still_used.extend(r.images.values().cloned());
    }
    result.retire = retire;
    result.delete = deletions(ready, &still_used);
    result
}

/// The releases a channel points at now or in its last `history` entries before that (each
/// with why), and every image those entries name.
fn protected_by_channels(inputs: &Inputs) -> (BTreeMap<ReleaseId, Vec<String>>, BTreeSet<String>) {
    let mut releases: BTreeMap<ReleaseId, Vec<String>> = BTreeMap::new();
    let mut images: BTreeSet<String> = BTreeSet::new();
    for (cluster, history) in &inputs.channels {
        let window = history.len().saturating_sub(inputs.history + 1);
        for (i, entry) in history.iter().enumerate().skip(window) {
            let why = if i + 1 == history.len() {
                format!("channel `{cluster}` points at it")
            } else {
                format!(
                    "in the last {} history entries of channel `{cluster}`",
                    inputs.history
                )
            };
            releases.entry(entry.release.clone()).or_default().push(why);
            images.extend(entry.images.values().cloned());
        }
    }
    (releases, images)
}

/// With deprecation, the doomed releases that must still wait (everything they hold stays, an
/// image shared with a deletable release too), and those ready to go.
fn retire_or_ready<'m>(
    inputs: &Inputs,
    doomed: Vec<&'m ReleaseImages>,
    still_used: &BTreeSet<String>,
) -> (Vec<Retiring>, Vec<&'m ReleaseImages>) {
    let mut retire = Vec::new();
    let mut ready = Vec::new();
    for release in doomed {
        let images = release
            .images
            .iter()
            .filter(|(_, i)| !still_used.contains(*i))
            .map(|(a, i)| (*a, i.clone()))
            .collect::<BTreeMap<Arch, String>>();
        let waiting = inputs.deprecate_for.and_then(|grace| {
            // Deletable when every image has been deprecated for the grace period.
            let start = crate::provider::deprecation_start(inputs.now);
            images
                .values()
                .map(|i| *inputs.deprecated.get(i).unwrap_or(&start) + grace)
                .max()
                .filter(|after| *after > inputs.now)
        });
        match waiting {
            Some(after) => {
                let deprecate = images
                    .values()
                    .filter(|i| !inputs.deprecated.contains_key(*i))
                    .cloned()
                    .collect();
                retire.push(Retiring {
                    release: release.release.clone(),
                    images,
                    deprecate,
                    deletable_after: after,
                });
            }
            None => ready.push(release),
        }
    }
    (retire, ready)
}

/// The releases deleted now, each with the images that go with it: those nothing else still
/// uses, each deleted once.
fn deletions(ready: Vec<&ReleaseImages>, still_used: &BTreeSet<String>) -> Vec<Doomed> {
    let mut deleted_images = BTreeSet::new();
    ready
        .into_iter()
        .map(|release| Doomed {
            release: release.release.clone(),
            images: release
                .images
                .iter()
                .filter(|(_, i)| !still_used.contains(*i) && deleted_images.insert((*i).clone()))
                .map(|(a, i)| (*a, i.clone()))
                .collect(),
        })
        .collect()
}

/// Gathers the inputs for `recipe` from the registry and provider.
pub async fn inputs(
    registry: &dyn Registry,
    provider: &dyn Provider,
    recipe: &str,
    clusters: impl IntoIterator<Item = &String>,
    retention: &crate::input::pipeline::Retention,
    keep: usize,
) -> Result<Inputs> {
    let history = retention.history;
    let releases = registry.release_images(recipe).await?;
    let mut channels = BTreeMap::new();
    // Every channel with history, including clusters no longer in the pipeline.
    let mut names: BTreeSet<String> = registry.channel_names(recipe).await?.into_iter().collect();
    names.extend(clusters.into_iter().cloned());
    for c in names {
        // Only the moves prune protects: the current one and `history` before it.
        channels.insert(
            c.clone(),
            registry.recent_moves(recipe, &c, history + 1).await?,
        );
    }
    // Deprecated first, deleted later, where images can be deprecated (see `Lifecycle`).
    let lifecycle = provider.lifecycle();
    let deprecate_for = (lifecycle.is_some() && !retention.deprecate_for.is_zero()).then(|| {
        chrono::TimeDelta::from_std(retention.deprecate_for).unwrap_or(chrono::TimeDelta::MAX)
    });
    // Every image once, in as few calls as the provider can: what uses them, and (only for
    // releases past `keep`, the only ones that can retire) when they were deprecated.
    let mut all: Vec<String> = Vec::new();
    let mut past_keep: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, r) in releases.iter().enumerate() {
        for image in r.images.values() {
            if seen.insert(image.clone()) {
                all.push(image.clone());
                if i + keep < releases.len() {
                    past_keep.push(image.clone());
                }
            }
        }
    }
    // What uses the images and (where they can be deprecated) since when, in one read.
    let (in_use, mut deprecated) = match lifecycle {
        Some(lifecycle) => {
            let usage = lifecycle.usage(&all).await?;
            (usage.in_use, usage.deprecated)
        }
        None => (provider.images_in_use(&all).await?, BTreeMap::new()),
    };
    // What the plan weighs: the deprecations of images past `keep` that nothing uses, when
    // prune deprecates at all.
    let free: BTreeSet<&String> = past_keep
        .iter()
        .filter(|i| !in_use.contains_key(*i))
        .collect();
    deprecated.retain(|image, _| deprecate_for.is_some() && free.contains(image));
    Ok(Inputs {
        releases,
        channels,
        in_use,
        keep,
        history,
        deprecated,
        deprecate_for,
        now: Utc::now(),
    })
}

/// Carries out a plan: deprecations of retiring releases' images; then, for the doomed, images
/// first (with their snapshots/files), then registry entries.
pub async fn apply(
    registry: &dyn Registry,
    provider: &dyn Provider,
    recipe: &str,
    plan: &PrunePlan,
) -> Result<()> {
    let start = crate::provider::deprecation_start(Utc::now());
    if let Some(lifecycle) = provider.lifecycle() {
        for r in plan.retire.iter().filter(|r| !r.deprecate.is_empty()) {
            lifecycle.deprecate_images(&r.deprecate, start).await?;
        }
    }
    for doomed in &plan.delete {
        for image in doomed.images.values() {
            // Re-check right before deleting: something may have started using it.
            if let Some(why) = provider.image_in_use(image).await? {
                return Err(crate::Error::Conflict(format!(
                    "image {image} of release {} {why} since the plan was made; nothing more was deleted",
                    doomed.release
                )));
            }
            provider.delete_image(image).await?;
        }
        registry.delete_release(recipe, &doomed.release).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use proptest::prelude::*;

    fn release(n: u32, images: &[(Arch, u32)]) -> ReleaseImages {
        ReleaseImages {
            release: ReleaseId::new(NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(), n),
            images: images
                .iter()
                .map(|(a, i)| (*a, format!("img-{i}")))
                .collect(),
        }
    }

    /// Random releases (images sometimes carried over from the previous release), random
    /// channel histories over them, random in-use images, random keep/history.
    fn inputs() -> impl Strategy<Value = Inputs> {
        (1usize..12, 1usize..5, 0usize..4).prop_flat_map(|(n, keep, history)| {
            (
                proptest::collection::vec((any::<bool>(), any::<bool>()), n),
                proptest::collection::vec(proptest::collection::vec(0..n, 0..8), 0..4),
                proptest::collection::vec(0..(2 * n as u32 + 2), 0..3),
                // Deprecated images, deprecated this many hours ago (negative: in the future),
                // and the grace in hours (None: no deprecation).
                proptest::collection::vec((0..(2 * n as u32 + 2), -48i64..400), 0..8),
                proptest::option::of(0i64..200),
            )
                .prop_map(move |(carry, channels, busy, deprecated, grace)| {
                    let now = Utc::now();
                    let mut releases = Vec::new();
                    let mut next = 0u32;
                    let mut last = (0u32, 0u32);
                    for (i, (cx, ca)) in carry.iter().enumerate() {
                        let x = if *cx && i > 0 {
                            last.0
                        } else {
                            next += 1;
                            next
                        };
                        let a = if *ca && i > 0 {
                            last.1
                        } else {
                            next += 1;
                            next
                        };
                        last = (x, a);
                        releases.push(release(
                            i as u32 + 1,
                            &[(Arch::X86_64, x), (Arch::Arm64, a)],
                        ));
                    }
                    let channels = channels
                        .iter()
                        .enumerate()
                        .map(|(c, picks)| {
                            let entries = picks
                                .iter()
                                .enumerate()
                                .map(|(v, &i)| ChannelEntry {
                                    version: v as u64 + 1,
                                    release: releases[i].release.clone(),
                                    images: releases[i].images.clone(),
                                    from: None,
                                    who: "w".into(),
                                    reason: None,
                                    at: Utc::now(),
                                })
                                .collect();
                            (format!("c{c}"), entries)
                        })
                        .collect();
                    let in_use = busy
                        .iter()
                        .map(|i| (format!("img-{i}"), "is in use".to_string()))
                        .collect();
                    Inputs {
                        releases,
                        channels,
                        in_use,
                        keep,
                        history,
                        deprecated: deprecated
                            .iter()
                            .map(|(i, ago)| {
                                (format!("img-{i}"), now - chrono::TimeDelta::hours(*ago))
                            })
                            .collect(),
                        deprecate_for: grace.filter(|g| *g > 0).map(chrono::TimeDelta::hours),
                        now,
                    }
                })
        })
    }

    proptest! {
        #[test]
        fn prune_never_selects_a_protected_or_referenced_image(inputs in inputs()) {
            let plan = plan(&inputs);
            let deleted_releases: BTreeSet<&ReleaseId> = plan.delete.iter().map(|d| &d.release).collect();
            let deleted_images: BTreeSet<&String> = plan.delete.iter().flat_map(|d| d.images.values()).collect();
            // Every release is decided exactly once.
            prop_assert_eq!(plan.delete.len() + plan.retire.len() + plan.kept.len(), inputs.releases.len());
            // With deprecation, an image is deleted only once it has been deprecated for the
            // grace period; a retiring release is not deletable yet, and its images that are not
            // deprecated are the ones the plan deprecates.
            if let Some(grace) = inputs.deprecate_for {
                for image in &deleted_images {
                    let at = inputs.deprecated.get(*image);
                    prop_assert!(at.is_some_and(|t| *t + grace <= inputs.now), "deleted {} deprecated at {:?}", image, at);
                }
                for r in &plan.retire {
                    prop_assert!(r.deletable_after > inputs.now);
                    for image in r.images.values() {
                        prop_assert_eq!(r.deprecate.contains(image), !inputs.deprecated.contains_key(image));
                    }
                }
            } else {
                prop_assert!(plan.retire.is_empty());
            }
            // A release retires or is deleted, never both in one plan.
            let retiring: BTreeSet<&ReleaseId> = plan.retire.iter().map(|r| &r.release).collect();
            prop_assert!(retiring.is_disjoint(&deleted_releases));
            // The newest `keep` stay.
            for r in inputs.releases.iter().rev().take(inputs.keep) {
                prop_assert!(!deleted_releases.contains(&r.release));
                prop_assert!(!plan.retire.iter().any(|x| x.release == r.release));
            }
            // Channel entries now and in the last `history` before it: releases and images stay.
            for history in inputs.channels.values() {
                for e in history.iter().rev().take(inputs.history + 1) {
                    prop_assert!(!deleted_releases.contains(&e.release), "deleted {} which a channel holds", e.release);
                    for image in e.images.values() {
                        prop_assert!(!deleted_images.contains(image), "deleted {} which a channel holds", image);
                    }
                }
            }
            // Images in use stay, and so do their releases.
            for image in inputs.in_use.keys() {
                prop_assert!(!deleted_images.contains(image));
            }
            // No kept or retiring release loses an image.
            for r in inputs.releases.iter().filter(|r| !deleted_releases.contains(&r.release)) {
                for image in r.images.values() {
                    prop_assert!(!deleted_images.contains(image), "kept {} lost {}", r.release, image);
                }
            }
            // Every kept release says why.
            for k in &plan.kept {
                prop_assert!(!k.reasons.is_empty());
            }
        }
    }
}
