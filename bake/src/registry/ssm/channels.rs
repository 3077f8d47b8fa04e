//! Channels on SSM: where each cluster's channel points (its `release` parameter and that
//! move's durable entry), every move it made (the parameter's history and the durable entries),
//! and the index that names them.

use super::{Data, SsmRegistry, Write};
use crate::provider::aws::list::all_pages;
use crate::provider::aws::sdk::{code, err};
use crate::registry::ChannelImage;
use crate::release::{ChannelEntry, ChannelMove, ReleaseId};
use crate::{Arch, Error, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a channel move stores in the description of its `release` parameter version.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct MoveNote {
    images: BTreeMap<Arch, String>,
    from: Option<String>,
    who: String,
    reason: Option<String>,
}

/// `<prefix>/<recipe>/channels-indexed`: present once every channel that ever moved has its
/// index entry, `<prefix>/<recipe>/channels/<cluster>` (its name), so the channels are found by
/// a one-level listing instead of every history entry of every channel.
pub(super) const CHANNELS_INDEXED: &str = "channels-indexed";

/// How many moves back a move looks for ones whose history entry a killed run did not write
/// (GetParameters takes at most 10 names).
pub(super) const BACKFILL: u64 = 10;

impl SsmRegistry {
    /// The moves SSM still remembers: the channel parameter's history (its last 100 versions).
    pub(super) async fn parameter_history(
        &self,
        recipe: &str,
        cluster: &str,
    ) -> Result<Vec<ChannelEntry>> {
        let name = self.path(recipe, &format!("channels/{cluster}/release"));
        let name = &name;
        let versions = all_pages(|token| async move {
            self.wait().await;
            match self
                .client
                .get_parameter_history()
                .name(name)
                .set_next_token(token)
                .send()
                .await
            {
                Ok(page) => Ok((
                    page.parameters().to_vec(),
                    page.next_token().map(str::to_string),
                )),
                // A channel that never moved has no history.
                Err(e) if code(&e) == Some("ParameterNotFound") => Ok((Vec::new(), None)),
                Err(e) => Err(err(
                    format!("reading the history of {name} in {}", self.region),
                    e,
                )),
            }
        })
        .await?;
        let mut out = Vec::new();
        for h in versions {
            let note: MoveNote = self.json(
                &format!("{name}:{}", h.version()),
                h.description().unwrap_or("{}"),
                "bake history note",
            )?;
            let release = h
                .value()
                .unwrap_or_default()
                .parse::<ReleaseId>()
                .map_err(Error::Conflict)?;
            let at = h
                .last_modified_date()
                .and_then(|d| DateTime::from_timestamp(d.secs(), d.subsec_nanos()))
                .unwrap_or_else(Utc::now);
            out.push(ChannelEntry {
                version: h.version() as u64,
                release,
                images: note.images,
                from: note.from,
                who: note.who,
                reason: note.reason,
                at,
            });
        }
        out.sort_by_key(|e| e.version);
        Ok(out)
    }

    /// Every move as written once under `channels/<cluster>/history/<version>`.
    pub(super) async fn durable_history(
        &self,
        recipe: &str,
        cluster: &str,
    ) -> Result<BTreeMap<u64, ChannelEntry>> {
        let dir = self.path(recipe, &format!("channels/{cluster}/history"));
        let mut out = BTreeMap::new();
        for p in self.list(&dir).await? {
            let name = p.name().unwrap_or_default();
            let entry: ChannelEntry =
                self.json(name, p.value().unwrap_or_default(), "channel history entry")?;
            out.insert(entry.version, entry);
        }
        Ok(out)
    }

    pub(super) fn history_entry(&self, recipe: &str, cluster: &str, version: u64) -> String {
        self.path(recipe, &format!("channels/{cluster}/history/{version:010}"))
    }

    /// Writes the durable history entry of a move (once; an entry already there is kept).
    pub(super) async fn record_move(
        &self,
        recipe: &str,
        cluster: &str,
        entry: &ChannelEntry,
    ) -> Result<()> {
        let name = self.history_entry(recipe, cluster, entry.version);
        let mut entry = entry.clone();
        let mut json = serde_json::to_string(&entry).expect("entries serialize");
        if json.len() > 4096 {
            entry.reason = entry
                .reason
                .map(|r| r.chars().take(1000).collect::<String>() + "…");
            json = serde_json::to_string(&entry).expect("entries serialize");
        }
        match self.put(&name, &json, Data::Text, Write::Once, None).await {
            Ok(_) | Err(Error::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes a moved channel's index entry (once), and, in a registry that has no marker yet,
    /// those of every channel that moved before the index existed, then the marker.
    pub(super) async fn index_channel(&self, recipe: &str, cluster: &str) -> Result<()> {
        let once = |c: String| async move {
            let name = self.path(recipe, &format!("channels/{c}"));
            match self.put(&name, &c, Data::Text, Write::Once, None).await {
                Ok(_) | Err(Error::Conflict(_)) => Ok(()),
                Err(e) => Err(e),
            }
        };
        once(cluster.to_string()).await?;
        let marker = self.path(recipe, CHANNELS_INDEXED);
        if self.get(&marker).await?.is_none() {
            for c in self.channel_names(recipe).await? {
                if c != cluster {
                    once(c).await?;
                }
            }
            self.put(
                &marker,
                "every channel that moved has its index entry",
                Data::Text,
                Write::Overwrite,
                Some("bake: channels are listed from their index entries (<prefix>/<recipe>/channels/<cluster>)".into()),
            )
            .await?;
        }
        Ok(())
    }

    /// Up to ten durable history entries of `cluster` by name, in one GetParameters.
    pub(super) async fn history_entries(
        &self,
        cluster: &str,
        names: &[String],
    ) -> Result<aws_sdk_ssm::operation::get_parameters::GetParametersOutput> {
        self.wait().await;
        self.client
            .get_parameters()
            .set_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| {
                err(
                    format!("reading the history of {cluster} in {}", self.region),
                    e,
                )
            })
    }

    pub(super) async fn channel_history(
        &self,
        recipe: &str,
        cluster: &str,
    ) -> Result<Vec<ChannelEntry>> {
        // SSM keeps only the last 100 versions of the channel parameter: the durable entries
        // hold every move, the parameter's own history covers a move whose entry a killed run
        // did not write yet.
        let mut merged = self.durable_history(recipe, cluster).await?;
        for e in self.parameter_history(recipe, cluster).await? {
            merged.entry(e.version).or_insert(e);
        }
        Ok(merged.into_values().collect())
    }

    /// The channels that ever moved: their index entries, one level under `channels/`, once the
    /// registry has them all; before that, found among every parameter under `channels/`.
    pub(super) async fn channel_names(&self, recipe: &str) -> Result<Vec<String>> {
        let base = self.path(recipe, "channels");
        let indexed = self
            .get(&self.path(recipe, CHANNELS_INDEXED))
            .await?
            .is_some();
        let mut names = std::collections::BTreeSet::new();
        for p in self.list_at(&base, !indexed).await? {
            let rest = p
                .name()
                .unwrap_or_default()
                .strip_prefix(&format!("{base}/"))
                .unwrap_or_default();
            let cluster = if indexed {
                Some(rest)
            } else {
                rest.strip_suffix("/release")
            };
            if let Some(c) = cluster.filter(|c| !c.is_empty() && !c.contains('/')) {
                names.insert(c.to_string());
            }
        }
        Ok(names.into_iter().collect())
    }

    pub(super) async fn channels(&self, recipe: &str) -> Result<BTreeMap<String, ChannelEntry>> {
        let mut out = BTreeMap::new();
        for c in self.channel_names(recipe).await? {
            if let Some(current) = self.channel(recipe, &c).await? {
                out.insert(c, current);
            }
        }
        Ok(out)
    }

    pub(super) async fn move_channel(
        &self,
        recipe: &str,
        cluster: &str,
        change: ChannelMove,
    ) -> Result<ChannelEntry> {
        for (arch, image) in &change.images {
            let name = crate::registry::channel_parameter(&self.prefix, recipe, cluster, *arch);
            self.put(
                &name,
                image,
                Data::Image,
                Write::Overwrite,
                Some(format!("bake release {}", change.release)),
            )
            .await?;
        }
        let mut note = MoveNote {
            images: change.images.clone(),
            from: change.from.clone(),
            who: change.who.clone(),
            reason: change.reason.clone(),
        };
        let mut description = serde_json::to_string(&note).expect("notes serialize");
        if description.len() > 1024 {
            note.reason = note
                .reason
                .map(|r| r.chars().take(200).collect::<String>() + "…");
            description = serde_json::to_string(&note).expect("notes serialize");
        }
        let name = self.path(recipe, &format!("channels/{cluster}/release"));
        let version = self
            .put(
                &name,
                &change.release.to_string(),
                Data::Text,
                Write::Overwrite,
                Some(description),
            )
            .await?;
        let entry = change.into_entry(version as u64);
        // A run killed between moving the channel and writing the entry left its move only in
        // the parameter's history (for 100 more moves): the moves just before this one get
        // their entries now if they lack them, then this one.
        let recent: Vec<ChannelEntry> = self
            .parameter_history(recipe, cluster)
            .await?
            .into_iter()
            .filter(|e| e.version < entry.version && e.version + BACKFILL > entry.version)
            .collect();
        if !recent.is_empty() {
            let names: Vec<String> = recent
                .iter()
                .map(|e| self.history_entry(recipe, cluster, e.version))
                .collect();
            let found = self.history_entries(cluster, &names).await?;
            for (e, name) in recent.iter().zip(&names) {
                if found.invalid_parameters().contains(name) {
                    self.record_move(recipe, cluster, e).await?;
                }
            }
        }
        self.record_move(recipe, cluster, &entry).await?;
        self.index_channel(recipe, cluster).await?;
        Ok(entry)
    }

    /// The channel's `release` parameter (its version is the move's) and that move's durable
    /// entry: two reads. A move whose entry a killed run did not write yet is read from the
    /// parameter's own history.
    pub(super) async fn channel(
        &self,
        recipe: &str,
        cluster: &str,
    ) -> Result<Option<ChannelEntry>> {
        let name = self.path(recipe, &format!("channels/{cluster}/release"));
        let Some(current) = self.get(&name).await? else {
            return Ok(None);
        };
        let version = current.version() as u64;
        let entry_name = self.history_entry(recipe, cluster, version);
        if let Some(p) = self.get(&entry_name).await? {
            let entry: ChannelEntry = self.json(
                &entry_name,
                p.value().unwrap_or_default(),
                "channel history entry",
            )?;
            if entry.version == version {
                return Ok(Some(entry));
            }
        }
        Ok(self.parameter_history(recipe, cluster).await?.pop())
    }

    /// The current move and the durable entries of the `n - 1` before it, ten a call; the
    /// whole history only if one of those entries is missing (a killed run's move).
    pub(super) async fn recent_moves(
        &self,
        recipe: &str,
        cluster: &str,
        n: usize,
    ) -> Result<Vec<ChannelEntry>> {
        let Some(current) = self.channel(recipe, cluster).await?.filter(|_| n > 0) else {
            return Ok(Vec::new());
        };
        let first = current.version.saturating_sub(n as u64 - 1).max(1);
        let names: Vec<String> = (first..current.version)
            .map(|v| self.history_entry(recipe, cluster, v))
            .collect();
        let mut out = Vec::new();
        for chunk in names.chunks(10) {
            let found = self.history_entries(cluster, chunk).await?;
            for p in found.parameters() {
                let name = p.name().unwrap_or_default();
                out.push(self.json::<ChannelEntry>(
                    name,
                    p.value().unwrap_or_default(),
                    "channel history entry",
                )?);
            }
        }
        out.sort_by_key(|e| e.version);
        let complete = out.iter().map(|e| e.version).eq(first..current.version);
        if !complete {
            let history = self.channel_history(recipe, cluster).await?;
            return Ok(crate::registry::last_moves(history, n));
        }
        out.push(current);
        Ok(out)
    }

    pub(super) async fn channel_image(
        &self,
        recipe: &str,
        cluster: &str,
        arch: Arch,
    ) -> Result<Option<ChannelImage>> {
        // The parameter itself is the truth Terraform reads, whatever the history says.
        let name = crate::registry::channel_parameter(&self.prefix, recipe, cluster, arch);
        Ok(self.get(&name).await?.map(|p| ChannelImage {
            version: p.version() as u64,
            image_id: p.value().unwrap_or_default().to_string(),
        }))
    }
}
