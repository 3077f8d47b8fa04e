//! The registry: releases, channels with history, and the per-recipe lock — the contract
//! Terraform reads. The embedded implementation (SQLite, one file) has the same semantics
//! as the SSM parameters in DESIGN.md: a release is written once and never changes; a
//! channel move appends to its history; the lock is create-if-absent with an expiry.

mod sqlite;
mod ssm;

pub use sqlite::SqliteRegistry;
pub use ssm::SsmRegistry;

use crate::release::{ChannelEntry, ChannelMove, Manifest, ReleaseId};
use crate::Result;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Who holds a recipe's lock, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockInfo {
    pub recipe: String,
    pub owner: String,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[async_trait]
pub trait Registry: Send + Sync {
    /// Where it lives, for messages ("sqlite .bake/registry.db", "ssm /bake in us-east-1").
    fn describe(&self) -> String;

    /// Complete releases of a recipe, oldest first.
    async fn releases(&self, recipe: &str) -> Result<Vec<Manifest>>;

    async fn release(&self, recipe: &str, id: &ReleaseId) -> Result<Option<Manifest>> {
        Ok(self
            .releases(recipe)
            .await?
            .into_iter()
            .find(|m| &m.release == id))
    }

    /// Publishes a release under the next free ID of `manifest.created_at`'s date (the ID in
    /// `manifest.release` is replaced). All arches become visible together or not at all. A
    /// half-written release whose written arch parameters are images of this manifest (the
    /// run that wrote them died) is finished under its own ID, leaving what it wrote as is.
    async fn publish(&self, manifest: Manifest) -> Result<Manifest>;

    /// Releases some of whose parameters were written but not the manifest (a run died while
    /// publishing). Readers never see them; `resume` or the next run finishes them, and
    /// `sweep --apply` removes them once no live run holds the lock.
    async fn incomplete_releases(&self, recipe: &str) -> Result<Vec<ReleaseId>>;

    /// Removes a release (prune only; its images must already be gone or kept elsewhere).
    async fn delete_release(&self, recipe: &str, id: &ReleaseId) -> Result<()>;

    /// A channel's history, oldest first.
    async fn channel_history(&self, recipe: &str, cluster: &str) -> Result<Vec<ChannelEntry>>;

    /// Where each channel of a recipe points now.
    async fn channels(&self, recipe: &str) -> Result<BTreeMap<String, ChannelEntry>>;

    /// Moves a channel, appending to its history.
    async fn move_channel(
        &self,
        recipe: &str,
        cluster: &str,
        change: ChannelMove,
    ) -> Result<ChannelEntry>;

    /// Takes the recipe's lock for `ttl`, or fails with `Error::LockHeld`. An expired lock is
    /// taken over; `break_lock` takes a live one (and says so in the log).
    async fn lock(
        &self,
        recipe: &str,
        owner: &str,
        ttl: Duration,
        break_lock: bool,
    ) -> Result<LockInfo>;

    /// Who holds the recipe's lock now (expired or not), if anyone.
    async fn lock_holder(&self, recipe: &str) -> Result<Option<LockInfo>>;

    /// Extends a lock this owner holds.
    async fn refresh_lock(&self, recipe: &str, owner: &str, ttl: Duration) -> Result<LockInfo>;

    /// Releases a lock this owner holds (no-op if someone broke it since).
    async fn unlock(&self, recipe: &str, owner: &str) -> Result<()>;
}
