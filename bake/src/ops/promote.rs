//! Promotion and rollback: moving a cluster's channel to a release. Only published releases
//! exist in the registry and only validated images are published; promotion adds the checks
//! that depend on the target: every arch the cluster uses, and with `--from`, that the
//! release soaked on the source channel long enough. Prod channels move only through here.

use crate::input::pipeline::{Cluster, Pipeline};
use crate::registry::Registry;
use crate::release::{ChannelEntry, ChannelMove, Manifest, ReleaseId};
use crate::verdict::Status;
use crate::{Error, Result};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Who is acting, for channel history: `user@host`.
pub fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(passwd_name)
        .unwrap_or_else(|| format!("uid{}", unsafe { libc::getuid() }));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}

/// The login name of the current uid from /etc/passwd.
fn passwd_name() -> Option<String> {
    let uid = unsafe { libc::getuid() }.to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == uid).then(|| f[0].to_string())
    })
}

/// What a promotion or rollback did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Promotion {
    Moved {
        cluster: String,
        entry: ChannelEntry,
    },
    /// `--dry-run`: the move that would be recorded.
    WouldMove { change: PlannedMove },
    /// The channel already points at this release; nothing was written.
    AlreadyThere {
        cluster: String,
        entry: ChannelEntry,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlannedMove {
    pub cluster: String,
    pub from_release: Option<ReleaseId>,
    pub to_release: ReleaseId,
    pub images: std::collections::BTreeMap<crate::Arch, String>,
}

/// The Kubernetes version promotion holds `cluster` to: the pipeline's `kubernetes_version`, or
/// else what the control plane of its `eks_cluster` reports now (`eks:DescribeCluster` on AWS).
/// A cluster naming neither is not checked for skew.
pub async fn kubernetes_version(
    provider: &dyn crate::provider::Provider,
    cluster: &Cluster,
) -> Result<Option<crate::kube::KubeVersion>> {
    match (&cluster.kubernetes_version, &cluster.eks_cluster) {
        (Some(v), _) => Ok(Some(*v)),
        (None, Some(eks)) => provider.kubernetes_version(eks).await,
        (None, None) => Ok(None),
    }
}

/// Checks that `release` can go to `cluster`: validated images for every arch it uses.
pub fn check_release(release: &Manifest, cluster_name: &str, cluster: &Cluster) -> Result<()> {
    let missing: Vec<String> = cluster
        .arches
        .iter()
        .filter(|a| !release.images.contains_key(a))
        .map(|a| a.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Usage(format!(
            "release {} of `{}` has no image for {}, which cluster `{cluster_name}` uses",
            release.release,
            release.recipe,
            missing.join(", ")
        )));
    }
    for (arch, image) in &release.images {
        if let Some((name, status)) = image.validators.iter().find(|(_, s)| **s == Status::Fail) {
            return Err(Error::Usage(format!(
                "release {} of `{}`: the {arch} image failed validator `{name}` ({status}); it cannot be promoted",
                release.release, release.recipe
            )));
        }
    }
    if let Some(k8s) = cluster.kubernetes_version {
        for arch in &cluster.arches {
            let image = &release.images[arch];
            let refuse = |why: String| {
                Error::Usage(format!(
                    "release {} of `{}` cannot go to cluster `{cluster_name}` (Kubernetes {k8s}): its {arch} image {why}",
                    release.release, release.recipe
                ))
            };
            let Some(found) = &image.kubelet else {
                return Err(refuse(
                    "records no kubelet version, so the version skew cannot be checked".into(),
                ));
            };
            let Some(kubelet) = crate::kube::KubeVersion::of_package(found) else {
                return Err(refuse(format!(
                    "has kubelet `{found}`, which is not a version"
                )));
            };
            if let Some(why) = crate::kube::skew(kubelet, k8s) {
                return Err(refuse(format!("has kubelet {found}: {why}")));
            }
        }
    }
    Ok(())
}

/// With `--from`: the release must have stayed on the source channel at least `soak`, in its
/// current stint (up to `now`) or an earlier one. Returns a message saying why not.
pub fn check_soak(
    history: &[ChannelEntry],
    from: &str,
    release: &ReleaseId,
    soak: Duration,
    now: DateTime<Utc>,
) -> std::result::Result<(), String> {
    let soak_c = chrono::Duration::from_std(soak).unwrap_or(chrono::Duration::MAX);
    let mut longest = None;
    for (i, entry) in history.iter().enumerate() {
        if &entry.release != release {
            continue;
        }
        let end = history.get(i + 1).map(|n| n.at).unwrap_or(now);
        let stint = end - entry.at;
        if longest.is_none_or(|l| stint > l) {
            longest = Some(stint);
        }
    }
    match longest {
        None => Err(format!("release {release} has never been on channel `{from}`")),
        Some(stint) if stint >= soak_c => Ok(()),
        Some(stint) => Err(format!(
            "release {release} has been on `{from}` for {} at most; the pipeline's soak time is {} ({} to go)",
            humantime::format_duration(round(stint)),
            humantime::format_duration(soak),
            humantime::format_duration(round(soak_c - stint)),
        )),
    }
}

fn round(d: chrono::Duration) -> Duration {
    Duration::from_secs(d.num_seconds().max(0) as u64)
}

/// A request to move a channel.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub recipe: &'a str,
    pub release: &'a ReleaseId,
    pub to: &'a str,
    pub from: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub who: &'a str,
    pub dry_run: bool,
}

/// `bake promote`: every rule checked, then one history entry appended (unless dry run).
pub async fn promote(
    registry: &dyn Registry,
    pipeline: &Pipeline,
    req: &Request<'_>,
) -> Result<Promotion> {
    let cluster = pipeline.cluster(req.to)?;
    let release = registry.usable_release(req.recipe, req.release).await?;
    check_release(&release, req.to, cluster)?;
    if let Some(from) = req.from {
        pipeline.cluster(from)?;
        if from == req.to {
            return Err(Error::Usage(format!("--from and --to are both `{from}`")));
        }
        let history = registry.channel_history(req.recipe, from).await?;
        check_soak(&history, from, req.release, pipeline.soak, Utc::now()).map_err(Error::Usage)?;
    }
    let meta = Meta {
        from: req.from,
        who: req.who,
        reason: req.reason,
        dry_run: req.dry_run,
    };
    apply(registry, &release, req.to, cluster, &meta).await
}

/// A request to roll a channel back.
#[derive(Debug, Clone)]
pub struct Rollback<'a> {
    pub recipe: &'a str,
    pub cluster: &'a str,
    /// A release from the channel's history; the previous distinct one when None.
    pub to: Option<&'a ReleaseId>,
    pub reason: Option<&'a str>,
    pub who: &'a str,
    pub dry_run: bool,
}

/// `bake rollback`: back to the previous distinct release in the channel's history, or to
/// `to`, which must be in that history.
pub async fn rollback(
    registry: &dyn Registry,
    pipeline: &Pipeline,
    req: &Rollback<'_>,
) -> Result<Promotion> {
    let (recipe, cluster_name, to) = (req.recipe, req.cluster, req.to);
    let cluster = pipeline.cluster(cluster_name)?;
    let history = registry.channel_history(recipe, cluster_name).await?;
    let current = history.last().ok_or_else(|| {
        Error::Usage(format!("channel `{cluster_name}` of `{recipe}` has never pointed anywhere; nothing to roll back"))
    })?;
    let target = match to {
        Some(t) => {
            if !history.iter().any(|e| &e.release == t) {
                return Err(Error::Usage(format!(
                    "release {t} was never on channel `{cluster_name}` of `{recipe}`; rollback only goes back to a release from its history (see `bake history {recipe} --cluster {cluster_name}`)"
                )));
            }
            t.clone()
        }
        None => history
            .iter()
            .rev()
            .find(|e| e.release != current.release)
            .map(|e| e.release.clone())
            .ok_or_else(|| {
                Error::Usage(format!(
                    "channel `{cluster_name}` of `{recipe}` has only ever pointed at {}; there is nothing to roll back to",
                    current.release
                ))
            })?,
    };
    let release = registry.release(recipe, &target).await?.ok_or_else(|| {
        Error::Conflict(format!("release {target} of `{recipe}` is in the history of `{cluster_name}` but no longer exists (pruned?)"))
    })?;
    // Never back onto a withdrawn release; --to names another one from the history.
    registry.usable_release(recipe, &target).await?;
    check_release(&release, cluster_name, cluster)?;
    let why = match req.reason {
        Some(r) => format!("rollback from {}: {r}", current.release),
        None => format!("rollback from {}", current.release),
    };
    let meta = Meta {
        from: None,
        who: req.who,
        reason: Some(&why),
        dry_run: req.dry_run,
    };
    apply(registry, &release, cluster_name, cluster, &meta).await
}

/// What a channel move records besides the release: where from, who, why; or a dry run.
#[derive(Debug, Clone, Copy)]
pub struct Meta<'a> {
    pub from: Option<&'a str>,
    pub who: &'a str,
    pub reason: Option<&'a str>,
    pub dry_run: bool,
}

/// Moves `cluster_name`'s channel to `release` (checked by the caller), or says it is there.
pub async fn apply(
    registry: &dyn Registry,
    release: &Manifest,
    cluster_name: &str,
    cluster: &Cluster,
    meta: &Meta<'_>,
) -> Result<Promotion> {
    let Meta {
        from,
        who,
        reason,
        dry_run,
    } = *meta;
    let current = registry.channel(&release.recipe, cluster_name).await?;
    if let Some(entry) = &current {
        if entry.release == release.release {
            return Ok(Promotion::AlreadyThere {
                cluster: cluster_name.to_string(),
                entry: entry.clone(),
            });
        }
    }
    let images: std::collections::BTreeMap<_, _> = cluster
        .arches
        .iter()
        .map(|a| (*a, release.images[a].image_id.clone()))
        .collect();
    if dry_run {
        return Ok(Promotion::WouldMove {
            change: PlannedMove {
                cluster: cluster_name.to_string(),
                from_release: current.map(|c| c.release),
                to_release: release.release.clone(),
                images,
            },
        });
    }
    let entry = registry
        .move_channel(
            &release.recipe,
            cluster_name,
            ChannelMove {
                release: release.release.clone(),
                images,
                from: from.map(str::to_string),
                who: who.to_string(),
                reason: reason.map(str::to_string),
            },
        )
        .await?;
    Ok(Promotion::Moved {
        cluster: cluster_name.to_string(),
        entry,
    })
}
