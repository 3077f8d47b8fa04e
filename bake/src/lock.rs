//! The recipe lock as every writing command holds it: taken once, refreshed while the work runs
//! (so a long bake, prune or promotion never outlives its lock), released when the work ends,
//! whether it succeeded or not. A run killed with SIGKILL leaves it to expire after its TTL.

use crate::registry::Registry;
use crate::Result;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a lock lives without a heartbeat: long enough that a stalled heartbeat (a slow
/// registry) does not lose it, short enough that a killed run's lock frees itself soon.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);

/// A recipe lock this process holds.
pub struct RecipeLock<'a> {
    registry: &'a dyn Registry,
    recipe: String,
    owner: String,
    ttl: Duration,
}

impl<'a> RecipeLock<'a> {
    /// Takes the lock on `recipe` for `owner` (or breaks a held one with `break_lock`).
    pub async fn take(
        registry: &'a dyn Registry,
        recipe: &str,
        owner: &str,
        ttl: Duration,
        break_lock: bool,
    ) -> Result<RecipeLock<'a>> {
        registry.lock(recipe, owner, ttl, break_lock).await?;
        Ok(RecipeLock {
            registry,
            recipe: recipe.to_string(),
            owner: owner.to_string(),
            ttl,
        })
    }

    /// Runs `work` with the lock refreshed every third of its TTL, then releases it.
    pub async fn hold<T>(self, work: impl std::future::Future<Output = T>) -> T {
        let done = CancellationToken::new();
        let beat = async {
            loop {
                tokio::select! {
                    _ = done.cancelled() => break,
                    _ = tokio::time::sleep(self.ttl / 3) => {
                        if let Err(e) = self
                            .registry
                            .refresh_lock(&self.recipe, &self.owner, self.ttl)
                            .await
                        {
                            tracing::error!("{e}");
                        }
                    }
                }
            }
        };
        let (out, ()) = tokio::join!(
            async {
                let out = work.await;
                done.cancel();
                out
            },
            beat
        );
        if let Err(e) = self.registry.unlock(&self.recipe, &self.owner).await {
            tracing::error!("releasing the lock on `{}`: {e}", self.recipe);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::SqliteRegistry;
    use crate::Error;

    #[tokio::test]
    async fn the_lock_outlives_its_ttl_while_work_runs_and_is_free_after() {
        let dir = tempfile::tempdir().unwrap();
        let registry = SqliteRegistry::open(dir.path()).unwrap();
        // A heartbeat every ~0.7 s against a 2 s TTL: a busy machine (the whole suite on two
        // cores) can delay a beat by a second and the lock still holds, as it must.
        let ttl = Duration::from_secs(2);
        let lock = RecipeLock::take(&registry, "eks-node", "one", ttl, false)
            .await
            .unwrap();
        let work = async {
            // Well past the TTL: only the heartbeat keeps the lock.
            tokio::time::sleep(Duration::from_millis(5000)).await;
            RecipeLock::take(&registry, "eks-node", "two", ttl, false)
                .await
                .map(|_| ())
        };
        let during = lock.hold(work).await;
        assert!(
            matches!(during, Err(Error::LockHeld { ref owner, .. }) if owner == "one"),
            "{during:?}"
        );
        // Released when the work ended: the next owner takes it at once.
        RecipeLock::take(&registry, "eks-node", "three", ttl, false)
            .await
            .unwrap();
    }
}
