//! The embedded registry: one SQLite file (`<state>/registry.db`).

use super::{already_revoked, LockInfo, Registry};
use crate::release::{ChannelEntry, ChannelMove, Manifest, ReleaseId, Revocation};
use crate::{Error, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS releases (
    recipe     TEXT NOT NULL,
    release    TEXT NOT NULL,
    manifest   TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (recipe, release)
);
CREATE TABLE IF NOT EXISTS release_images (
    recipe   TEXT NOT NULL,
    release  TEXT NOT NULL,
    arch     TEXT NOT NULL,
    image_id TEXT NOT NULL,
    PRIMARY KEY (recipe, release, arch)
);
CREATE TABLE IF NOT EXISTS channel_history (
    recipe  TEXT NOT NULL,
    cluster TEXT NOT NULL,
    version INTEGER NOT NULL,
    entry   TEXT NOT NULL,
    PRIMARY KEY (recipe, cluster, version)
);
CREATE TABLE IF NOT EXISTS revocations (
    recipe     TEXT NOT NULL,
    release    TEXT NOT NULL,
    revocation TEXT NOT NULL,
    PRIMARY KEY (recipe, release)
);
CREATE TRIGGER IF NOT EXISTS revocations_immutable BEFORE UPDATE ON revocations
BEGIN SELECT RAISE(ABORT, 'revocations are written once'); END;
CREATE TABLE IF NOT EXISTS locks (
    recipe      TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    acquired_at TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS releases_immutable BEFORE UPDATE ON releases
BEGIN SELECT RAISE(ABORT, 'releases are immutable'); END;
CREATE TRIGGER IF NOT EXISTS release_images_immutable BEFORE UPDATE ON release_images
BEGIN SELECT RAISE(ABORT, 'releases are immutable'); END;
";

pub struct SqliteRegistry {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl SqliteRegistry {
    /// Opens (creating if needed) `<state_dir>/registry.db`.
    pub fn open(state_dir: &Path) -> Result<SqliteRegistry> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| Error::io(format!("creating state dir {}", state_dir.display()), e))?;
        let path = crate::state_dir::StateDir(state_dir).registry();
        let err = |source| Error::Registry {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(SqliteRegistry {
            path,
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(|source| Error::Registry {
            path: self.path.clone(),
            source,
        })
    }

    fn corrupt(&self, what: &str, source: serde_json::Error) -> Error {
        Error::Corrupt {
            location: format!("registry {}", self.path.display()),
            what: what.to_string(),
            source,
        }
    }
}

fn to_sql_err(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

#[async_trait]
impl Registry for SqliteRegistry {
    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }

    async fn releases(&self, recipe: &str) -> Result<Vec<Manifest>> {
        let rows: Vec<String> = self.with(|c| {
            let mut stmt = c.prepare("SELECT manifest FROM releases WHERE recipe = ?1")?;
            let rows = stmt
                .query_map([recipe], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(rows)
        })?;
        let mut out = Vec::new();
        for row in rows {
            out.push(
                serde_json::from_str::<Manifest>(&row)
                    .map_err(|e| self.corrupt("release manifest", e))?,
            );
        }
        out.sort_by(|a, b| a.release.cmp(&b.release));
        Ok(out)
    }

    async fn publish(&self, mut manifest: Manifest) -> Result<Manifest> {
        let recipe = manifest.recipe.clone();
        let date = manifest.created_at.date_naive();
        let published = self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing: Vec<String> = {
                let mut stmt = tx.prepare("SELECT release FROM releases WHERE recipe = ?1")?;
                let rows = stmt.query_map([&recipe], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
                rows
            };
            let ids: Vec<ReleaseId> = existing.iter().filter_map(|s| s.parse().ok()).collect();
            manifest.release = ReleaseId::next(date, &ids);
            let json = serde_json::to_string(&manifest).map_err(to_sql_err)?;
            tx.execute(
                "INSERT INTO releases (recipe, release, manifest, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![recipe, manifest.release.to_string(), json, manifest.created_at.to_rfc3339()],
            )?;
            for (arch, image) in &manifest.images {
                tx.execute(
                    "INSERT INTO release_images (recipe, release, arch, image_id) VALUES (?1, ?2, ?3, ?4)",
                    params![recipe, manifest.release.to_string(), arch.as_str(), image.image_id],
                )?;
            }
            tx.commit()?;
            Ok(manifest)
        })?;
        Ok(published)
    }

    async fn incomplete_releases(&self, _recipe: &str) -> Result<Vec<ReleaseId>> {
        // Every arch and the manifest are written in one transaction.
        Ok(Vec::new())
    }

    async fn delete_release(&self, recipe: &str, id: &ReleaseId) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM release_images WHERE recipe = ?1 AND release = ?2",
                params![recipe, id.to_string()],
            )?;
            tx.execute(
                "DELETE FROM releases WHERE recipe = ?1 AND release = ?2",
                params![recipe, id.to_string()],
            )?;
            tx.execute(
                "DELETE FROM revocations WHERE recipe = ?1 AND release = ?2",
                params![recipe, id.to_string()],
            )?;
            tx.commit()
        })
    }

    async fn revoke(&self, recipe: &str, id: &ReleaseId, revocation: &Revocation) -> Result<()> {
        let json = serde_json::to_string(revocation).expect("revocations serialize");
        let inserted = self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO revocations (recipe, release, revocation) VALUES (?1, ?2, ?3)",
                params![recipe, id.to_string(), json],
            )
        })?;
        if inserted == 0 {
            let first = self.revocation(recipe, id).await?;
            return Err(already_revoked(recipe, id, first));
        }
        Ok(())
    }

    async fn revocation(&self, recipe: &str, id: &ReleaseId) -> Result<Option<Revocation>> {
        let json: Option<String> = self.with(|c| {
            c.query_row(
                "SELECT revocation FROM revocations WHERE recipe = ?1 AND release = ?2",
                params![recipe, id.to_string()],
                |r| r.get(0),
            )
            .optional()
        })?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| self.corrupt("revocation", e)))
            .transpose()
    }

    async fn channel_history(&self, recipe: &str, cluster: &str) -> Result<Vec<ChannelEntry>> {
        let rows: Vec<String> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT entry FROM channel_history WHERE recipe = ?1 AND cluster = ?2 ORDER BY version",
            )?;
            let rows = stmt.query_map([recipe, cluster], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(rows)
        })?;
        rows.iter()
            .map(|r| serde_json::from_str(r).map_err(|e| self.corrupt("channel entry", e)))
            .collect()
    }

    async fn channels(&self, recipe: &str) -> Result<BTreeMap<String, ChannelEntry>> {
        let rows: Vec<(String, String)> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT h.cluster, h.entry FROM channel_history h
                 WHERE h.recipe = ?1 AND h.version = (
                   SELECT MAX(version) FROM channel_history WHERE recipe = h.recipe AND cluster = h.cluster)",
            )?;
            let rows = stmt
                .query_map([recipe], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
            Ok(rows)
        })?;
        let mut out = BTreeMap::new();
        for (cluster, entry) in rows {
            out.insert(
                cluster,
                serde_json::from_str(&entry).map_err(|e| self.corrupt("channel entry", e))?,
            );
        }
        Ok(out)
    }

    async fn move_channel(
        &self,
        recipe: &str,
        cluster: &str,
        change: ChannelMove,
    ) -> Result<ChannelEntry> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let last: Option<i64> = tx.query_row(
                "SELECT MAX(version) FROM channel_history WHERE recipe = ?1 AND cluster = ?2",
                [recipe, cluster],
                |r| r.get(0),
            )?;
            let entry = change.into_entry(last.unwrap_or(0) as u64 + 1);
            let json = serde_json::to_string(&entry).map_err(to_sql_err)?;
            tx.execute(
                "INSERT INTO channel_history (recipe, cluster, version, entry) VALUES (?1, ?2, ?3, ?4)",
                params![recipe, cluster, entry.version as i64, json],
            )?;
            tx.commit()?;
            Ok(entry)
        })
    }

    async fn lock(
        &self,
        recipe: &str,
        owner: &str,
        ttl: Duration,
        break_lock: bool,
    ) -> Result<LockInfo> {
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1));
        let held = self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: Option<(String, String, String)> = tx
                .query_row(
                    "SELECT owner, acquired_at, expires_at FROM locks WHERE recipe = ?1",
                    [recipe],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            if let Some((holder, acquired, expires_at)) = current {
                let live = DateTime::parse_from_rfc3339(&expires_at)
                    .map(|t| t.with_timezone(&Utc) > now)
                    .unwrap_or(false);
                if live && holder != owner {
                    if !break_lock {
                        return Ok(Err(LockInfo {
                            recipe: recipe.to_string(),
                            owner: holder,
                            acquired_at: parse_time(&acquired),
                            expires_at: parse_time(&expires_at),
                        }));
                    }
                    tracing::warn!(recipe, holder, "breaking a live lock (--break-lock)");
                } else if !live {
                    tracing::info!(recipe, holder, "taking over an expired lock");
                }
            }
            tx.execute(
                "INSERT OR REPLACE INTO locks (recipe, owner, acquired_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![recipe, owner, now.to_rfc3339(), expires.to_rfc3339()],
            )?;
            tx.commit()?;
            Ok(Ok(()))
        })?;
        match held {
            Err(info) => Err(Error::LockHeld {
                recipe: info.recipe,
                owner: info.owner,
                expires: info.expires_at.to_rfc3339(),
            }),
            Ok(()) => Ok(LockInfo {
                recipe: recipe.to_string(),
                owner: owner.to_string(),
                acquired_at: now,
                expires_at: expires,
            }),
        }
    }

    async fn lock_holder(&self, recipe: &str) -> Result<Option<LockInfo>> {
        let row: Option<(String, String, String)> = self.with(|c| {
            c.query_row(
                "SELECT owner, acquired_at, expires_at FROM locks WHERE recipe = ?1",
                [recipe],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
        })?;
        Ok(row.map(|(owner, acquired, expires)| LockInfo {
            recipe: recipe.to_string(),
            owner,
            acquired_at: parse_time(&acquired),
            expires_at: parse_time(&expires),
        }))
    }

    async fn refresh_lock(&self, recipe: &str, owner: &str, ttl: Duration) -> Result<LockInfo> {
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1));
        let changed = self.with(|c| {
            c.execute(
                "UPDATE locks SET expires_at = ?3 WHERE recipe = ?1 AND owner = ?2",
                params![recipe, owner, expires.to_rfc3339()],
            )
        })?;
        if changed == 0 {
            return Err(Error::Conflict(format!(
                "lost the lock on recipe `{recipe}`: someone broke it or it expired and was taken over"
            )));
        }
        Ok(LockInfo {
            recipe: recipe.to_string(),
            owner: owner.to_string(),
            acquired_at: now,
            expires_at: expires,
        })
    }

    async fn unlock(&self, recipe: &str, owner: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM locks WHERE recipe = ?1 AND owner = ?2",
                params![recipe, owner],
            )
        })?;
        Ok(())
    }
}

fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now())
}
