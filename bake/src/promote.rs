//! Promotion: moving a cluster's channel to a release. Only published releases exist in the
//! registry, and only validated images are published, so what can be promoted is validated
//! by construction; promotion adds the checks that depend on the target cluster.

use crate::pipeline::Cluster;
use crate::registry::Registry;
use crate::release::{ChannelEntry, ChannelMove, Manifest};
use crate::{Error, Result};

/// Who is acting, for channel history: `user@host`.
pub fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid{}", unsafe { libc::getuid() }));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}

/// What a promotion did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Promotion {
    Moved {
        entry: ChannelEntry,
    },
    /// The channel already points at this release.
    AlreadyThere {
        entry: ChannelEntry,
    },
}

/// Moves `cluster`'s channel of the release's recipe to `release`, refusing a release that
/// lacks an image for an arch the cluster uses.
pub async fn promote(
    registry: &dyn Registry,
    release: &Manifest,
    cluster_name: &str,
    cluster: &Cluster,
    from: Option<&str>,
    who: &str,
    reason: Option<&str>,
) -> Result<Promotion> {
    let missing: Vec<String> = cluster
        .arches
        .iter()
        .filter(|a| !release.images.contains_key(a))
        .map(|a| a.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Usage(format!(
            "release {} of `{}` has no image for {} which cluster `{cluster_name}` uses",
            release.release,
            release.recipe,
            missing.join(", ")
        )));
    }
    let current = registry
        .channels(&release.recipe)
        .await?
        .remove(cluster_name);
    if let Some(entry) = current {
        if entry.release == release.release {
            return Ok(Promotion::AlreadyThere { entry });
        }
    }
    let images = cluster
        .arches
        .iter()
        .map(|a| (*a, release.images[a].image_id.clone()))
        .collect();
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
    Ok(Promotion::Moved { entry })
}
