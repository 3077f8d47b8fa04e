//! Releases on SSM: publishing one (arch parameters, package manifests, the manifest written
//! last, its index entry), listing them by their index entries, reading one, revoking one.

use super::{Data, SsmRegistry, Write};
use crate::registry::already_revoked;
use crate::release::{Manifest, ReleaseId, ReleaseImages, Revocation};
use crate::{Arch, Error, Result};
use std::collections::BTreeMap;

/// `<prefix>/<recipe>/newest`: a copy of the newest release's manifest, overwritten by each
/// publish, so a run with nothing to do reads one parameter instead of every release.
pub(super) const NEWEST: &str = "newest";

/// `<prefix>/<recipe>/indexed`: present once every complete release has its index entry.
pub(super) const INDEXED: &str = "indexed";

/// The leaf name [`SsmRegistry::release_parts`] gives a release's index entry (the parameter
/// named after the release itself).
pub(super) const INDEX_ENTRY: &str = "";

impl SsmRegistry {
    /// Every release that has at least one parameter, complete or not: ID → leaf name
    /// (`x86_64`, `arm64`, `manifest`) → value.
    pub(super) async fn release_parts(
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

    pub(super) async fn releases(&self, recipe: &str) -> Result<Vec<Manifest>> {
        let indexed = self.get(&self.path(recipe, INDEXED)).await?.is_some();
        self.listed_manifests(recipe, indexed).await
    }

    /// The complete releases' manifests, from their index entries when the registry has them
    /// all (`indexed`, the marker already read), else found among every part.
    async fn listed_manifests(&self, recipe: &str, indexed: bool) -> Result<Vec<Manifest>> {
        let base = self.path(recipe, "releases");
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

    /// Each complete release and its images from the index entries' descriptions, fifty a
    /// call; an entry without one (written by a bake before descriptions) is read whole, ten
    /// a call. Before the index is complete, from the manifests.
    pub(super) async fn release_images(&self, recipe: &str) -> Result<Vec<ReleaseImages>> {
        if self.get(&self.path(recipe, INDEXED)).await?.is_none() {
            let manifests = self.listed_manifests(recipe, false).await?;
            return Ok(manifests.iter().map(ReleaseImages::from).collect());
        }
        let base = self.path(recipe, "releases");
        let mut out = Vec::new();
        let mut undescribed = Vec::new();
        for p in self.describe_level(&base).await? {
            let name = p.name().unwrap_or_default();
            let Some(Ok(id)) = name
                .strip_prefix(&format!("{base}/"))
                .map(str::parse::<ReleaseId>)
            else {
                continue;
            };
            match p
                .description()
                .and_then(|d| parse_entry_description(d, &id))
            {
                Some(release) => out.push(release),
                None => undescribed.push(name.to_string()),
            }
        }
        for p in self.get_many(&undescribed, "release index entries").await? {
            let name = p.name().unwrap_or_default();
            let manifest: Manifest =
                self.json(name, p.value().unwrap_or_default(), "release manifest")?;
            out.push(ReleaseImages::from(&manifest));
        }
        out.sort_by(|a, b| a.release.cmp(&b.release));
        Ok(out)
    }

    pub(super) async fn publish(&self, mut manifest: Manifest) -> Result<Manifest> {
        let recipe = manifest.recipe.clone();
        let written = self.release_parts(&recipe).await?;
        // A half-written release (a run died between its parameters) whose arch parameters
        // are exactly images of this manifest is finished under its own ID: what was written
        // stays as it is. Otherwise the next ID that no parameter uses, complete or not.
        let existing: BTreeMap<String, String> = match unfinished(&written, &manifest) {
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
        self.write_parts(&manifest, &existing).await?;
        let json = serde_json::to_string(&manifest).expect("manifests serialize");
        let dir = crate::registry::release_dir(&self.prefix, &recipe, &manifest.release);
        self.put(
            &format!("{dir}/manifest"),
            &json,
            Data::Text,
            Write::Once,
            Some(format!("bake release {}", manifest.release)),
        )
        .await?;
        self.write_index(&manifest, &json, &written).await?;
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

    /// Everything of a release before its manifest: the copy regions' arch parameters first
    /// (the primary's manifest, written last, is what makes the release exist; a rerun
    /// finishes whatever a dead run left), then the arch parameters and the package manifests
    /// (gzipped in standard-tier chunks, what `bake sbom` and `bake diff` read) not `existing`.
    async fn write_parts(
        &self,
        manifest: &Manifest,
        existing: &BTreeMap<String, String>,
    ) -> Result<()> {
        let recipe = &manifest.recipe;
        for replica in &self.replicas {
            for (arch, image) in &manifest.images {
                let copy = image.copies.get(&replica.region).ok_or_else(|| {
                    Error::Conflict(format!(
                        "{recipe} {arch}: image {} has no copy in {}, a copy region of this pipeline",
                        image.image_id, replica.region
                    ))
                })?;
                let name = crate::registry::release_parameter(
                    &self.prefix,
                    recipe,
                    &manifest.release,
                    *arch,
                );
                replica.put_once(&name, copy).await?;
            }
        }
        let dir = crate::registry::release_dir(&self.prefix, recipe, &manifest.release);
        for (arch, image) in &manifest.images {
            if existing.contains_key(&arch.to_string()) {
                continue;
            }
            let name =
                crate::registry::release_parameter(&self.prefix, recipe, &manifest.release, *arch);
            self.put(&name, &image.image_id, Data::Image, Write::Once, None)
                .await?;
        }
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
        Ok(())
    }

    /// The release's index entry (`json`, described with its images), those of complete
    /// releases among `written` that lack one (written before the index existed, or by a run
    /// that died between the two), then the marker.
    async fn write_index(
        &self,
        manifest: &Manifest,
        json: &str,
        written: &BTreeMap<ReleaseId, BTreeMap<String, String>>,
    ) -> Result<()> {
        let recipe = &manifest.recipe;
        let dir = crate::registry::release_dir(&self.prefix, recipe, &manifest.release);
        self.put_once_as(
            &dir,
            json,
            Data::Text,
            Some(entry_description(&ReleaseImages::from(manifest))),
        )
        .await?;
        for (id, parts) in written {
            if let (Some(m), false) = (parts.get("manifest"), parts.contains_key(INDEX_ENTRY)) {
                if id != &manifest.release {
                    let entry = crate::registry::release_dir(&self.prefix, recipe, id);
                    let description = serde_json::from_str::<Manifest>(m)
                        .ok()
                        .map(|m| entry_description(&ReleaseImages::from(&m)));
                    self.put_once_as(&entry, m, Data::Text, description).await?;
                }
            }
        }
        let marker = self.path(recipe, INDEXED);
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
        Ok(())
    }

    /// One release by its manifest parameter: one call, however many releases there are.
    pub(super) async fn release(&self, recipe: &str, id: &ReleaseId) -> Result<Option<Manifest>> {
        let name = format!(
            "{}/manifest",
            crate::registry::release_dir(&self.prefix, recipe, id)
        );
        let Some(p) = self.get(&name).await? else {
            return Ok(None);
        };
        self.json(&name, p.value().unwrap_or_default(), "release manifest")
            .map(Some)
    }

    pub(super) async fn newest_release(&self, recipe: &str) -> Result<Option<Manifest>> {
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

    pub(super) async fn package_manifest(
        &self,
        recipe: &str,
        id: &ReleaseId,
        arch: Arch,
    ) -> Result<Option<String>> {
        let dir = format!(
            "{}/packages/{arch}",
            crate::registry::release_dir(&self.prefix, recipe, id)
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

    pub(super) async fn incomplete_releases(&self, recipe: &str) -> Result<Vec<ReleaseId>> {
        Ok(self
            .release_parts(recipe)
            .await?
            .into_iter()
            .filter(|(_, parts)| !parts.contains_key("manifest"))
            .map(|(id, _)| id)
            .collect())
    }

    pub(super) async fn delete_release(&self, recipe: &str, id: &ReleaseId) -> Result<()> {
        let dir = crate::registry::release_dir(&self.prefix, recipe, id);
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
    pub(super) async fn revoke(
        &self,
        recipe: &str,
        id: &ReleaseId,
        revocation: &Revocation,
    ) -> Result<()> {
        let name = crate::registry::revocation_parameter(&self.prefix, recipe, id);
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

    pub(super) async fn revocation(
        &self,
        recipe: &str,
        id: &ReleaseId,
    ) -> Result<Option<Revocation>> {
        let name = crate::registry::revocation_parameter(&self.prefix, recipe, id);
        let Some(p) = self.get(&name).await? else {
            return Ok(None);
        };
        self.json(&name, p.value().unwrap_or_default(), "revocation")
            .map(Some)
    }
}

/// The newest half-written release (parameters but no manifest) whose arch parameters are
/// exactly images of `manifest`: a run of this manifest that died publishing it.
fn unfinished<'w>(
    written: &'w BTreeMap<ReleaseId, BTreeMap<String, String>>,
    manifest: &Manifest,
) -> Option<(&'w ReleaseId, &'w BTreeMap<String, String>)> {
    written.iter().rev().find(|(_, parts)| {
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
    })
}

/// An index entry's description: the release and its image of each arch, what prune reads of
/// a thousand releases in twenty DescribeParameters (e.g. `bake release 2026.01.02-1 images
/// x86_64=ami-0b arm64=ami-0a`). Well under SSM's 1,024 characters: one AMI ID per arch.
pub fn entry_description(release: &ReleaseImages) -> String {
    let images: Vec<String> = release
        .images
        .iter()
        .map(|(arch, image)| format!("{arch}={image}"))
        .collect();
    format!(
        "bake release {} images {}",
        release.release,
        images.join(" ")
    )
}

/// What [`entry_description`] wrote, for the release `id` the entry is named after; None for
/// anything else (an entry written before descriptions, or edited by hand): read it whole.
fn parse_entry_description(text: &str, id: &ReleaseId) -> Option<ReleaseImages> {
    let rest = text.strip_prefix("bake release ")?;
    let (named, images) = rest.split_once(" images ")?;
    if named != id.to_string() {
        return None;
    }
    let images = images
        .split_whitespace()
        .map(|pair| {
            let (arch, image) = pair.split_once('=')?;
            Some((arch.parse::<Arch>().ok()?, image.to_string()))
        })
        .collect::<Option<BTreeMap<Arch, String>>>()?;
    (!images.is_empty()).then(|| ReleaseImages {
        release: id.clone(),
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_entry_description_reads_back_as_what_it_was_written_from() {
        let id: ReleaseId = "2026.01.02-3".parse().unwrap();
        let release = ReleaseImages {
            release: id.clone(),
            images: [
                (Arch::X86_64, "ami-0123456789abcdef0".to_string()),
                (Arch::Arm64, "ami-0fedcba9876543210".to_string()),
            ]
            .into(),
        };
        let text = entry_description(&release);
        assert_eq!(
            text,
            "bake release 2026.01.02-3 images x86_64=ami-0123456789abcdef0 arm64=ami-0fedcba9876543210"
        );
        assert_eq!(parse_entry_description(&text, &id), Some(release));
    }

    #[test]
    fn a_description_bake_did_not_write_is_read_whole_instead() {
        let id: ReleaseId = "2026.01.02-3".parse().unwrap();
        for text in [
            "",
            "bake release 2026.01.02-3",
            "bake release 2026.01.02-4 images x86_64=ami-1",
            "bake release 2026.01.02-3 images ",
            "bake release 2026.01.02-3 images riscv=ami-1",
            "bake release 2026.01.02-3 images x86_64",
            "a note someone wrote",
        ] {
            assert_eq!(parse_entry_description(text, &id), None, "{text:?}");
        }
    }
}
