//! The recipe lock on SSM: `<prefix>/<recipe>/lock`, created with `Overwrite=false`, holding
//! owner and expiry; an expired lock is taken over through a marker parameter so that exactly
//! one contender wins.

use super::{Data, SsmRegistry, Write};
use crate::registry::{LockInfo, Registry};
use crate::{Error, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct LockValue {
    pub owner: String,
    acquired_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl LockValue {
    pub(super) fn info(self, recipe: &str) -> LockInfo {
        LockInfo {
            recipe: recipe.to_string(),
            owner: self.owner,
            acquired_at: self.acquired_at,
            expires_at: self.expires_at,
        }
    }
}

impl SsmRegistry {
    /// The lock's value now, if there is one that parses.
    pub(super) async fn held(&self, recipe: &str) -> Result<Option<LockValue>> {
        Ok(self
            .get(&self.path(recipe, "lock"))
            .await?
            .and_then(|p| serde_json::from_str(p.value().unwrap_or_default()).ok()))
    }

    /// Takes the recipe's lock: create-if-absent, an expired one taken over by exactly one
    /// contender, a live one only with `break_lock`.
    pub(super) async fn take_lock(
        &self,
        recipe: &str,
        owner: &str,
        ttl: Duration,
        break_lock: bool,
    ) -> Result<LockInfo> {
        let name = self.path(recipe, "lock");
        let now = Utc::now();
        let value = LockValue {
            owner: owner.to_string(),
            acquired_at: now,
            expires_at: now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1)),
        };
        let json = serde_json::to_string(&value).expect("locks serialize");
        match self
            .put(
                &name,
                &json,
                Data::Text,
                Write::Once,
                Some("bake run lock".into()),
            )
            .await
        {
            Ok(_) => {}
            Err(Error::Conflict(_)) => {
                let raw = self
                    .get(&name)
                    .await?
                    .and_then(|p| p.value().map(str::to_string))
                    .unwrap_or_default();
                let held: Option<LockValue> = serde_json::from_str(&raw).ok();
                match held {
                    Some(h) if h.owner == owner => {}
                    Some(h) if h.expires_at > now && !break_lock => {
                        return Err(Error::LockHeld {
                            recipe: recipe.to_string(),
                            owner: h.owner,
                            expires: h.expires_at.to_rfc3339(),
                        })
                    }
                    Some(h) if h.expires_at > now => {
                        tracing::warn!(recipe, holder = %h.owner, "breaking a live lock (--break-lock)")
                    }
                    _ => return self.take_over(recipe, &raw, &json, value).await,
                }
                self.put(
                    &name,
                    &json,
                    Data::Text,
                    Write::Overwrite,
                    Some("bake run lock".into()),
                )
                .await?;
            }
            Err(e) => return Err(e),
        }
        Ok(LockInfo {
            recipe: recipe.to_string(),
            owner: owner.to_string(),
            acquired_at: value.acquired_at,
            expires_at: value.expires_at,
        })
    }

    /// Takes over an expired (or unreadable) lock whose raw value is `expired`. SSM has no
    /// compare-and-swap, so contenders race for a marker named after that exact value,
    /// created with `Overwrite=false`: one wins. The winner checks the lock still holds the
    /// expired value, overwrites it, and deletes the marker; a contender that arrives after the
    /// marker is gone finds the lock changed and loses too.
    async fn take_over(
        &self,
        recipe: &str,
        expired: &str,
        mine: &str,
        value: LockValue,
    ) -> Result<LockInfo> {
        let name = self.path(recipe, "lock");
        let marker = self.path(
            recipe,
            &format!(
                "lock-takeover/{}",
                &crate::input::recipe::sha256_hex(expired.as_bytes())[..16]
            ),
        );
        match self
            .put(
                &marker,
                &value.owner,
                Data::Text,
                Write::Once,
                Some("bake lock takeover".into()),
            )
            .await
        {
            Ok(_) => {}
            Err(Error::Conflict(_)) => return self.lost_takeover(recipe).await,
            Err(e) => return Err(e),
        }
        let still = self
            .get(&name)
            .await?
            .and_then(|p| p.value().map(str::to_string))
            .unwrap_or_default();
        let result = if still == expired {
            if let Ok(old) = serde_json::from_str::<LockValue>(expired) {
                tracing::info!(recipe, holder = %old.owner, "taking over an expired lock");
            }
            self.put(
                &name,
                mine,
                Data::Text,
                Write::Overwrite,
                Some("bake run lock".into()),
            )
            .await
            .map(|_| LockInfo {
                recipe: recipe.to_string(),
                owner: value.owner.clone(),
                acquired_at: value.acquired_at,
                expires_at: value.expires_at,
            })
        } else {
            self.lost_takeover(recipe).await
        };
        self.delete(&[marker]).await?;
        result
    }

    /// The error of a run that lost the race for an expired lock: who holds it now.
    async fn lost_takeover(&self, recipe: &str) -> Result<LockInfo> {
        let now = self.lock_holder(recipe).await?;
        Err(Error::LockHeld {
            recipe: recipe.to_string(),
            owner: now
                .as_ref()
                .map(|h| h.owner.clone())
                .unwrap_or_else(|| "another run taking over the expired lock".into()),
            expires: now
                .map(|h| h.expires_at.to_rfc3339())
                .unwrap_or_else(|| "unknown".into()),
        })
    }
}
