//! The registry on SSM Parameter Store, exactly the contract in the README:
//! `<prefix>/<recipe>/releases/<release>/<arch>` (AMI ID, `aws:ec2:image`, written once and
//! read back), `.../manifest` (written last, so readers only see complete releases),
//! `<prefix>/<recipe>/channels/<cluster>/<arch>` and `.../release` (one parameter version per
//! move; the history is the parameter history), and `<prefix>/<recipe>/lock`.
//!
//! Listing releases reads one parameter per release, not every part of every one: beside its
//! `manifest`, each release has an index entry, `<prefix>/<recipe>/releases/<release>` itself
//! (the same manifest), written right after it. A listing of `releases/` one level deep
//! returns exactly those, ten to a page. `<prefix>/<recipe>/indexed` says every complete
//! release has its entry: a registry written before the index existed is listed part by part
//! until its next publish writes the missing entries (and the marker), under the recipe's lock.
//! Channels likewise: `<prefix>/<recipe>/channels/<cluster>` names a channel that moved
//! (`channels-indexed` once all have one), and where a channel points now is its `release`
//! parameter and that move's durable entry — two reads, however long its history.

use super::{already_revoked, ChannelImage, LockInfo, Registry};
use crate::input::names::SsmPath;
use crate::provider::aws::sdk::{code, err, Limits};
use crate::release::{ChannelEntry, ChannelMove, Manifest, ReleaseId, Revocation};
use crate::{Arch, Error, Result};
use async_trait::async_trait;
use aws_sdk_ssm::types::{ParameterTier, ParameterType};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

mod lock;

/// What a parameter holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Data {
    Text,
    /// An AMI ID: `DataType=aws:ec2:image`, validated by AWS and read back.
    Image,
}

/// Whether a write may replace an existing value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Create only (`Overwrite=false`): releases, manifests, history entries, locks.
    Once,
    /// A new version of a parameter that moves (channels, a lock refresh).
    Overwrite,
}

pub struct SsmRegistry {
    client: aws_sdk_ssm::Client,
    prefix: SsmPath,
    region: String,
    limits: Limits,
    /// The same prefix in each of the pipeline's copy regions: release parameters there hold
    /// that region's copy, so Terraform in any region reads its own AMI ID.
    replicas: Vec<SsmRegistry>,
}

/// What a channel move stores in the description of its `release` parameter version.
#[derive(Debug, Serialize, Deserialize)]
struct MoveNote {
    images: BTreeMap<Arch, String>,
    from: Option<String>,
    who: String,
    reason: Option<String>,
}

/// `<prefix>/<recipe>/newest`: a copy of the newest release's manifest, overwritten by each
/// publish, so a run with nothing to do reads one parameter instead of every release.
const NEWEST: &str = "newest";

/// `<prefix>/<recipe>/indexed`: present once every complete release has its index entry.
const INDEXED: &str = "indexed";

/// The leaf name [`SsmRegistry::release_parts`] gives a release's index entry (the parameter
/// named after the release itself).
const INDEX_ENTRY: &str = "";

/// `<prefix>/<recipe>/channels-indexed`: present once every channel that ever moved has its
/// index entry, `<prefix>/<recipe>/channels/<cluster>` (its name), so the channels are found by
/// a one-level listing instead of every history entry of every channel.
const CHANNELS_INDEXED: &str = "channels-indexed";

/// How many moves back a move looks for ones whose history entry a killed run did not write
/// (GetParameters takes at most 10 names).
const BACKFILL: u64 = 10;

impl SsmRegistry {
    pub fn new(config: &aws_config::SdkConfig, prefix: SsmPath, limits: Limits) -> SsmRegistry {
        SsmRegistry {
            client: aws_sdk_ssm::Client::new(config),
            prefix,
            region: config
                .region()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "(no region)".into()),
            limits,
            replicas: Vec::new(),
        }
    }

    /// Also writes release parameters (with each region's copy) in `regions`.
    pub fn with_replicas(mut self, config: &aws_config::SdkConfig, regions: &[String]) -> Self {
        self.replicas = regions
            .iter()
            .map(|r| {
                let conf = config
                    .to_builder()
                    .region(aws_config::Region::new(r.clone()))
                    .build();
                SsmRegistry::new(&conf, self.prefix.clone(), self.limits.clone())
            })
            .collect();
        self
    }

    /// Writes `value` at `name` unless it is there already with that value (a run finishing a
    /// release it started); a different value is a conflict.
    async fn put_once(&self, name: &str, value: &str) -> Result<()> {
        self.put_once_as(name, value, Data::Image).await
    }

    async fn put_once_as(&self, name: &str, value: &str, data: Data) -> Result<()> {
        match self.get(name).await? {
            Some(p) if p.value() == Some(value) => Ok(()),
            Some(p) => Err(Error::Conflict(format!(
                "{name} in {} holds {} but this release has {value}; published parameters are never overwritten",
                self.region,
                p.value().unwrap_or_default()
            ))),
            None => self.put(name, value, data, Write::Once, None).await.map(|_| ()),
        }
    }

    /// The moves SSM still remembers: the channel parameter's history (its last 100 versions).
    async fn parameter_history(&self, recipe: &str, cluster: &str) -> Result<Vec<ChannelEntry>> {
        let name = self.path(recipe, &format!("channels/{cluster}/release"));
        let mut out = Vec::new();
        let mut token = None;
        loop {
            self.wait().await;
            let page = match self
                .client
                .get_parameter_history()
                .name(&name)
                .set_next_token(token)
                .send()
                .await
            {
                Ok(p) => p,
                Err(e) if code(&e) == Some("ParameterNotFound") => return Ok(out),
                Err(e) => {
                    return Err(err(
                        format!("reading the history of {name} in {}", self.region),
                        e,
                    ))
                }
            };
            for h in page.parameters() {
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
            token = page.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        out.sort_by_key(|e| e.version);
        Ok(out)
    }

    /// Every move as written once under `channels/<cluster>/history/<version>`.
    async fn durable_history(
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

    fn history_entry(&self, recipe: &str, cluster: &str, version: u64) -> String {
        self.path(recipe, &format!("channels/{cluster}/history/{version:010}"))
    }

    /// Writes the durable history entry of a move (once; an entry already there is kept).
    async fn record_move(&self, recipe: &str, cluster: &str, entry: &ChannelEntry) -> Result<()> {
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
    async fn index_channel(&self, recipe: &str, cluster: &str) -> Result<()> {
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
    async fn history_entries(
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

    fn path(&self, recipe: &str, rest: &str) -> String {
        super::under(&self.prefix, recipe, rest)
    }

    async fn wait(&self) {
        self.limits.ssm.until_ready().await;
    }

    /// Every parameter under `path`, recursively.
    async fn list(&self, path: &str) -> Result<Vec<aws_sdk_ssm::types::Parameter>> {
        self.list_at(path, true).await
    }

    /// Every parameter under `path`: one level down, or (`recursive`) at any depth.
    async fn list_at(
        &self,
        path: &str,
        recursive: bool,
    ) -> Result<Vec<aws_sdk_ssm::types::Parameter>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            self.wait().await;
            let page = self
                .client
                .get_parameters_by_path()
                .path(path)
                .recursive(recursive)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| err(format!("listing {path} in {}", self.region), e))?;
            out.extend(page.parameters().iter().cloned());
            token = page.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// `text` (a parameter's value or description) as JSON; what bake cannot read is named
    /// with the parameter and region it came from.
    fn json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        text: &str,
        what: &str,
    ) -> Result<T> {
        serde_json::from_str(text).map_err(|source| Error::Corrupt {
            location: format!("{name} in {}", self.region),
            what: what.into(),
            source,
        })
    }

    async fn get(&self, name: &str) -> Result<Option<aws_sdk_ssm::types::Parameter>> {
        self.wait().await;
        match self.client.get_parameter().name(name).send().await {
            Ok(r) => Ok(r.parameter().cloned()),
            Err(e) if code(&e) == Some("ParameterNotFound") => Ok(None),
            Err(e) => Err(err(format!("reading {name} in {}", self.region), e)),
        }
    }

    /// Writes a parameter. An image ID gets the data type `aws:ec2:image` and is read back
    /// (AWS validates the AMI asynchronously).
    async fn put(
        &self,
        name: &str,
        value: &str,
        data: Data,
        write: Write,
        description: Option<String>,
    ) -> Result<i64> {
        self.wait().await;
        let mut req = self
            .client
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(ParameterType::String)
            .overwrite(write == Write::Overwrite)
            .set_description(description);
        if data == Data::Image {
            req = req.data_type("aws:ec2:image");
        }
        if value.len() > 4096 {
            req = req.tier(ParameterTier::Advanced);
        }
        let version = match req.send().await {
            Ok(r) => r.version(),
            Err(e) if code(&e) == Some("ParameterAlreadyExists") => {
                return Err(Error::Conflict(format!(
                    "{name} already exists in {}; published parameters are never overwritten",
                    self.region
                )))
            }
            Err(e) => return Err(err(format!("writing {name} in {}", self.region), e)),
        };
        if data == Data::Image {
            // Read back: the data type is validated asynchronously.
            let mut delay = Duration::from_millis(200);
            for _ in 0..8 {
                match self.get(name).await? {
                    Some(p) if p.value() == Some(value) => return Ok(version),
                    _ => {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
            return Err(Error::provider(
                "aws",
                format!(
                    "{name} in {}: wrote {value} but could not read it back",
                    self.region
                ),
            ));
        }
        Ok(version)
    }

    /// Every release that has at least one parameter, complete or not: ID → leaf name
    /// (`x86_64`, `arm64`, `manifest`) → value.
    async fn release_parts(
        &self,
        recipe: &str,
    ) -> Result<BTreeMap<ReleaseId, BTreeMap<String, String>>> {
        let base = self.path(recipe, "releases");
        let mut out: BTreeMap<ReleaseId, BTreeMap<String, String>> = BTreeMap::new();
        for p in self.list(&base).await? {
            let name = p.name().unwrap_or_default();
            let Some(rest) = name.strip_prefix(&format!("{base}/")) else {
                continue;
            };
            let (id, leaf) = rest.split_once('/').unwrap_or((rest, INDEX_ENTRY));
            if let Ok(id) = id.parse::<ReleaseId>() {
                out.entry(id)
                    .or_default()
                    .insert(leaf.to_string(), p.value().unwrap_or_default().to_string());
            }
        }
        Ok(out)
    }

    /// Deletes every parameter under `path`.
    async fn delete_under(&self, path: &str) -> Result<()> {
        let names: Vec<String> = self
            .list(path)
            .await?
            .iter()
            .filter_map(|p| p.name().map(str::to_string))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        self.delete(&names).await
    }

    async fn delete(&self, names: &[String]) -> Result<()> {
        for chunk in names.chunks(10) {
            self.wait().await;
            self.client
                .delete_parameters()
                .set_names(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| {
                    err(
                        format!("deleting {} in {}", chunk.join(", "), self.region),
                        e,
                    )
                })?;
        }
        Ok(())
    }
}

#[async_trait]
impl Registry for SsmRegistry {
    fn describe(&self) -> String {
        format!("ssm {} in {}", self.prefix, self.region)
    }

    async fn releases(&self, recipe: &str) -> Result<Vec<Manifest>> {
        let base = self.path(recipe, "releases");
        let indexed = self.get(&self.path(recipe, INDEXED)).await?.is_some();
        let mut out = Vec::new();
        // Indexed: the entries one level down, one per release. Not yet: every part of every
        // release, keeping the manifests.
        for p in self.list_at(&base, !indexed).await? {
            let name = p.name().unwrap_or_default();
            if !indexed && !name.ends_with("/manifest") {
                continue;
            }
            let manifest: Manifest =
                self.json(name, p.value().unwrap_or_default(), "release manifest")?;
            out.push(manifest);
        }
        out.sort_by(|a, b| a.release.cmp(&b.release));
        Ok(out)
    }

    async fn publish(&self, mut manifest: Manifest) -> Result<Manifest> {
        let recipe = manifest.recipe.clone();
        let written = self.release_parts(&recipe).await?;
        // A half-written release (a run died between its parameters) whose arch parameters
        // are exactly images of this manifest is finished under its own ID: what was written
        // stays as it is. Otherwise the next ID that no parameter uses, complete or not.
        let unfinished = written.iter().rev().find(|(_, parts)| {
            !parts.contains_key("manifest")
                && !parts.is_empty()
                && parts
                    .iter()
                    .filter(|(leaf, _)| !leaf.starts_with("packages/") && *leaf != INDEX_ENTRY)
                    .all(|(leaf, value)| {
                        leaf.parse::<Arch>()
                            .ok()
                            .and_then(|a| manifest.images.get(&a))
                            .is_some_and(|i| &i.image_id == value)
                    })
        });
        let existing: BTreeMap<String, String> = match unfinished {
            Some((id, parts)) => {
                tracing::info!(recipe = %recipe, release = %id, "finishing a half-written release");
                manifest.release = id.clone();
                parts.clone()
            }
            None => {
                manifest.release =
                    ReleaseId::next(manifest.created_at.date_naive(), written.keys());
                BTreeMap::new()
            }
        };
        // Copy regions first: the primary's manifest, written last, is what makes the release
        // exist; a rerun finishes whatever a dead run left.
        for replica in &self.replicas {
            for (arch, image) in &manifest.images {
                let copy = image.copies.get(&replica.region).ok_or_else(|| {
                    Error::Conflict(format!(
                        "{recipe} {arch}: image {} has no copy in {}, a copy region of this pipeline",
                        image.image_id, replica.region
                    ))
                })?;
                let name =
                    super::release_parameter(&self.prefix, &recipe, &manifest.release, *arch);
                replica.put_once(&name, copy).await?;
            }
        }
        let dir = super::release_dir(&self.prefix, &recipe, &manifest.release);
        for (arch, image) in &manifest.images {
            if existing.contains_key(&arch.to_string()) {
                continue;
            }
            let name = super::release_parameter(&self.prefix, &recipe, &manifest.release, *arch);
            self.put(&name, &image.image_id, Data::Image, Write::Once, None)
                .await?;
        }
        // The package manifests, gzipped in standard-tier chunks (what `bake sbom` and `bake
        // diff` read); written once like the rest, and before the manifest that makes the
        // release exist.
        for (arch, text) in crate::packages::kept(&manifest.images) {
            for (n, chunk) in crate::packages::encode(text).iter().enumerate() {
                let name = format!("{dir}/packages/{arch}/{n:02}");
                if existing.get(&format!("packages/{arch}/{n:02}")) == Some(chunk) {
                    continue;
                }
                self.put(&name, chunk, Data::Text, Write::Once, None)
                    .await?;
            }
        }
        let json = serde_json::to_string(&manifest).expect("manifests serialize");
        self.put(
            &format!("{dir}/manifest"),
            &json,
            Data::Text,
            Write::Once,
            Some(format!("bake release {}", manifest.release)),
        )
        .await?;
        // The index entry, and those of complete releases that lack one (written before the
        // index existed, or by a run that died between the two); then the marker.
        self.put_once_as(&dir, &json, Data::Text).await?;
        for (id, parts) in &written {
            if let (Some(m), false) = (parts.get("manifest"), parts.contains_key(INDEX_ENTRY)) {
                if id != &manifest.release {
                    let entry = super::release_dir(&self.prefix, &recipe, id);
                    self.put_once_as(&entry, m, Data::Text).await?;
                }
            }
        }
        let marker = self.path(&recipe, INDEXED);
        if self.get(&marker).await?.is_none() {
            self.put(
                &marker,
                "every complete release has its index entry",
                Data::Text,
                Write::Overwrite,
                Some("bake: releases are listed from their index entries (<prefix>/<recipe>/releases/<release>)".into()),
            )
            .await?;
        }
        // Then the copy a scheduled run reads, unless a newer release is already complete.
        let newer = written
            .iter()
            .any(|(id, parts)| id > &manifest.release && parts.contains_key("manifest"));
        if !newer {
            self.put(
                &self.path(&recipe, NEWEST),
                &json,
                Data::Text,
                Write::Overwrite,
                Some(format!(
                    "bake: a copy of the manifest of the newest release ({}), what scheduled runs read; pin releases or channels, never this",
                    manifest.release
                )),
            )
            .await?;
        }
        Ok(manifest)
    }

    /// One release by its manifest parameter: one call, however many releases there are.
    async fn release(&self, recipe: &str, id: &ReleaseId) -> Result<Option<Manifest>> {
        let name = format!("{}/manifest", super::release_dir(&self.prefix, recipe, id));
        let Some(p) = self.get(&name).await? else {
            return Ok(None);
        };
        self.json(&name, p.value().unwrap_or_default(), "release manifest")
            .map(Some)
    }

    async fn newest_release(&self, recipe: &str) -> Result<Option<Manifest>> {
        let name = self.path(recipe, NEWEST);
        let Some(p) = self.get(&name).await? else {
            return Ok(None);
        };
        self.json(
            &name,
            p.value().unwrap_or_default(),
            "newest release manifest",
        )
        .map(Some)
    }

    async fn package_manifest(
        &self,
        recipe: &str,
        id: &ReleaseId,
        arch: Arch,
    ) -> Result<Option<String>> {
        let dir = format!(
            "{}/packages/{arch}",
            super::release_dir(&self.prefix, recipe, id)
        );
        let mut parts: Vec<(String, String)> = self
            .list(&dir)
            .await?
            .iter()
            .filter_map(|p| Some((p.name()?.to_string(), p.value()?.to_string())))
            .collect();
        if parts.is_empty() {
            return Ok(None);
        }
        // In chunk order: the number after the last `/` (not the name's text order).
        parts.sort_by_key(|(name, _)| {
            name.rsplit('/')
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(u32::MAX)
        });
        let chunks: Vec<String> = parts.into_iter().map(|(_, v)| v).collect();
        crate::packages::decode(&chunks)
            .map(Some)
            .map_err(|e| Error::Conflict(format!("{dir} in {}: {e}", self.region)))
    }

    async fn incomplete_releases(&self, recipe: &str) -> Result<Vec<ReleaseId>> {
        Ok(self
            .release_parts(recipe)
            .await?
            .into_iter()
            .filter(|(_, parts)| !parts.contains_key("manifest"))
            .map(|(id, _)| id)
            .collect())
    }

    async fn delete_release(&self, recipe: &str, id: &ReleaseId) -> Result<()> {
        let dir = super::release_dir(&self.prefix, recipe, id);
        // The index entry and the manifest first, in one call: the release stops being visible
        // (to either listing) before its parts go.
        self.delete(&[dir.clone(), format!("{dir}/manifest")])
            .await?;
        self.delete_under(&dir).await?;
        for replica in &self.replicas {
            replica.delete_under(&dir).await?;
        }
        Ok(())
    }

    /// `<release>/revoked`, written once (Overwrite=false).
    async fn revoke(&self, recipe: &str, id: &ReleaseId, revocation: &Revocation) -> Result<()> {
        let name = super::revocation_parameter(&self.prefix, recipe, id);
        let json = serde_json::to_string(revocation).expect("revocations serialize");
        let description = Some(format!("bake revoke {recipe} {id}"));
        match self
            .put(&name, &json, Data::Text, Write::Once, description)
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::Conflict(_)) => Err(already_revoked(
                recipe,
                id,
                self.revocation(recipe, id).await?,
            )),
            Err(e) => Err(e),
        }
    }

    async fn revocation(&self, recipe: &str, id: &ReleaseId) -> Result<Option<Revocation>> {
        let name = super::revocation_parameter(&self.prefix, recipe, id);
        let Some(p) = self.get(&name).await? else {
            return Ok(None);
        };
        self.json(&name, p.value().unwrap_or_default(), "revocation")
            .map(Some)
    }

    async fn channel_history(&self, recipe: &str, cluster: &str) -> Result<Vec<ChannelEntry>> {
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
    async fn channel_names(&self, recipe: &str) -> Result<Vec<String>> {
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

    async fn channels(&self, recipe: &str) -> Result<BTreeMap<String, ChannelEntry>> {
        let mut out = BTreeMap::new();
        for c in self.channel_names(recipe).await? {
            if let Some(current) = self.channel(recipe, &c).await? {
                out.insert(c, current);
            }
        }
        Ok(out)
    }

    async fn move_channel(
        &self,
        recipe: &str,
        cluster: &str,
        change: ChannelMove,
    ) -> Result<ChannelEntry> {
        for (arch, image) in &change.images {
            let name = super::channel_parameter(&self.prefix, recipe, cluster, *arch);
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
        let entry = ChannelEntry {
            version: version as u64,
            release: change.release,
            images: change.images,
            from: change.from,
            who: change.who,
            reason: change.reason,
            at: Utc::now(),
        };
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
    async fn channel(&self, recipe: &str, cluster: &str) -> Result<Option<ChannelEntry>> {
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
    async fn recent_moves(
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
            return Ok(super::last_moves(history, n));
        }
        out.push(current);
        Ok(out)
    }

    async fn channel_image(
        &self,
        recipe: &str,
        cluster: &str,
        arch: Arch,
    ) -> Result<Option<ChannelImage>> {
        // The parameter itself is the truth Terraform reads, whatever the history says.
        let name = super::channel_parameter(&self.prefix, recipe, cluster, arch);
        Ok(self.get(&name).await?.map(|p| ChannelImage {
            version: p.version() as u64,
            image_id: p.value().unwrap_or_default().to_string(),
        }))
    }
    async fn lock(
        &self,
        recipe: &str,
        owner: &str,
        ttl: Duration,
        break_lock: bool,
    ) -> Result<LockInfo> {
        self.take_lock(recipe, owner, ttl, break_lock).await
    }

    async fn lock_holder(&self, recipe: &str) -> Result<Option<LockInfo>> {
        Ok(self.held(recipe).await?.map(|h| h.info(recipe)))
    }

    async fn refresh_lock(&self, recipe: &str, owner: &str, ttl: Duration) -> Result<LockInfo> {
        match self.held(recipe).await? {
            Some(h) if h.owner == owner => self.take_lock(recipe, owner, ttl, false).await,
            _ => Err(Error::Conflict(format!(
                "lost the lock on recipe `{recipe}`: someone broke it or it expired and was taken over"
            ))),
        }
    }

    async fn unlock(&self, recipe: &str, owner: &str) -> Result<()> {
        if self.held(recipe).await?.is_some_and(|h| h.owner == owner) {
            self.delete(&[self.path(recipe, "lock")]).await?;
        }
        Ok(())
    }
}
