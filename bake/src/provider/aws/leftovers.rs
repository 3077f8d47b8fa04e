//! What dead runs of this pipeline left behind, found by tag, and their removal.

use super::{image, list, AwsProvider, OWNER_TAG, RELEASE_TAG};
use crate::journal::Kind;
use crate::provider::Leftover;
use crate::{Error, Result};
use aws_sdk_ec2::types::{Filter, Image, Tag};
use chrono::Utc;
use list::tag;
use std::collections::BTreeSet;

/// What a sweep has found so far: the leftovers of runs not in `live`, never an image in
/// `published`.
struct Found<'a> {
    live: &'a BTreeSet<String>,
    published: &'a BTreeSet<String>,
    out: Vec<Leftover>,
}

impl Found<'_> {
    /// Notes a resource of a dead run (one in `live` is skipped).
    fn push(&mut self, kind: Kind, id: &str, tags: &[Tag], action: &str, reusable: bool) {
        let run_id = tag(tags, "bake:run-id").to_string();
        if self.live.contains(&run_id) {
            return;
        }
        self.out.push(Leftover {
            kind,
            id: id.to_string(),
            run_id,
            recipe: tag(tags, "bake:recipe").to_string(),
            arch: tag(tags, "bake:arch").parse().ok(),
            action: action.to_string(),
            reusable,
        });
    }

    /// An image is never a leftover once a registry published it: ours lists it, and any
    /// registry's publish tags it with the release.
    fn unpublished(&self, i: &Image) -> bool {
        !self.published.contains(i.image_id().unwrap_or_default())
            && tag(i.tags(), RELEASE_TAG).is_empty()
    }

    /// Image Builder builds first (cancelling one stops its instances and its making AMIs),
    /// then instances, then volumes and images, then groups (a volume or a group is in use
    /// until its instances go).
    fn in_removal_order(mut self) -> Vec<Leftover> {
        self.out.sort_by_key(|l| match l.kind {
            Kind::ImagebuilderBuild => 0,
            Kind::Instance => 1,
            Kind::Volume => 2,
            Kind::Image | Kind::ImageCopy => 3,
            _ => 4,
        });
        self.out
    }
}

impl AwsProvider {
    /// What runs not in `live` left behind; never anything in `published` or untagged.
    pub(super) async fn find_leftovers(
        &self,
        live: &BTreeSet<String>,
        published: &BTreeSet<String>,
    ) -> Result<Vec<Leftover>> {
        let mut found = Found {
            live,
            published,
            out: Vec::new(),
        };
        self.leftover_instances_and_images(&mut found).await?;
        if self.settings.engine == crate::input::pipeline::Engine::Imagebuilder {
            self.image_builder_builds(&mut found).await?;
            self.orphaned_image_builder_outputs(&mut found).await?;
        }
        self.leftover_groups_and_volumes(&mut found).await?;
        self.leftover_copies(&mut found).await?;
        Ok(found.in_removal_order())
    }

    /// Only what this pipeline's runs made: tagged with a run ID, our registry prefix and one
    /// of our recipes. Another pipeline's runs (its own prefix) and anything untagged are
    /// never looked at, let alone touched.
    fn made_by_runs(&self) -> Vec<Filter> {
        vec![
            Filter::builder()
                .name("tag-key")
                .values("bake:run-id")
                .build(),
            self.owned(),
            Filter::builder()
                .name("tag:bake:recipe")
                .set_values(Some(self.recipes.iter().cloned().collect()))
                .build(),
        ]
    }

    async fn leftover_instances_and_images(&self, found: &mut Found<'_>) -> Result<()> {
        let home = self.images().lister();
        let mut filters = self.made_by_runs();
        filters.push(image::not_terminated());
        for i in home.instances(&filters, "bake instances").await? {
            found.push(
                Kind::Instance,
                i.instance_id().unwrap_or_default(),
                i.tags(),
                "terminate",
                false,
            );
        }
        for i in home.own_images(&self.made_by_runs(), "bake images").await? {
            if !found.unpublished(&i) {
                continue;
            }
            let status = tag(i.tags(), "bake:status");
            found.push(
                Kind::Image,
                i.image_id().unwrap_or_default(),
                i.tags(),
                &format!(
                    "deregister the unpublished {} image and delete its snapshots",
                    if status.is_empty() { "pending" } else { status }
                ),
                status == "validated",
            );
        }
        Ok(())
    }

    /// The Image Builder builds of dead runs of this pipeline (tagged with its prefix, one of
    /// its recipes and a run ID), running or not, until their record is deleted.
    async fn image_builder_builds(&self, found: &mut Found<'_>) -> Result<()> {
        let recipes = self.recipes.iter().cloned().collect();
        for b in self.image_builder().builds_of(&recipes).await? {
            if b.tag(OWNER_TAG) != self.owner()
                || b.tag("bake:run-id").is_empty()
                || !self.recipes.contains(b.tag("bake:recipe"))
            {
                continue;
            }
            let tags: Vec<Tag> = b
                .tags
                .iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect();
            let action = if b.ended() {
                format!("delete the {} build's record and deregister the AMIs it made that no release publishes", b.status.as_str())
            } else {
                format!(
                    "cancel the {} build, then delete its record and deregister the AMIs it made",
                    b.status.as_str()
                )
            };
            found.push(Kind::ImagebuilderBuild, &b.arn, &tags, &action, false);
        }
        Ok(())
    }

    /// Ends an Image Builder build for good: cancels it if it still runs and waits until it has
    /// ended, deregisters each AMI it made (Image Builder tags them `Ec2ImageBuilderArn`; one of
    /// a failed or cancelled build may have no other tag) that no release publishes, except
    /// `keep`, and deletes the build's record. Returns the AMIs it deregistered.
    pub(super) async fn end_build(&self, arn: &str, keep: Option<&str>) -> Result<Vec<String>> {
        let ib = self.image_builder();
        let (status, _, _) = ib.status(arn).await?;
        if !super::imagebuilder::is_over(&status) {
            ib.cancel(arn).await?;
            ib.wait_ended(
                arn,
                self.settings.image_timeout,
                self.settings.poll_interval,
            )
            .await?;
        }
        let made_by = [Filter::builder()
            .name("tag:Ec2ImageBuilderArn")
            .values(arn)
            .build()];
        let mut gone = Vec::new();
        for i in self
            .images()
            .lister()
            .own_images(&made_by, &format!("the AMIs of build {arn}"))
            .await?
        {
            let id = i.image_id().unwrap_or_default().to_string();
            let owner = tag(i.tags(), OWNER_TAG);
            if Some(id.as_str()) == keep
                || !tag(i.tags(), RELEASE_TAG).is_empty()
                || !(owner.is_empty() || owner == self.owner())
            {
                continue;
            }
            if owner.is_empty() {
                // Bake may delete only what carries its prefix: it claims the build's AMI and
                // snapshots first (the policy lets it tag only Image Builder outputs of bake's
                // recipes that no pipeline owns yet).
                let snapshots = i
                    .block_device_mappings()
                    .iter()
                    .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string));
                let ids: Vec<String> = std::iter::once(id.clone()).chain(snapshots).collect();
                let claim = Tag::builder().key(OWNER_TAG).value(self.owner()).build();
                self.images().tag(&ids, vec![claim]).await?;
            }
            self.images().deregister(&id).await?;
            gone.push(id);
        }
        ib.delete(arn).await?;
        Ok(gone)
    }

    /// Image Builder outputs whose run died before tagging them (the distribution tags them
    /// with recipe, prefix and bake:status=pending, but only the run adds bake:run-id). A
    /// live run tags its output seconds after the build ends, so only old ones are orphans.
    async fn orphaned_image_builder_outputs(&self, found: &mut Found<'_>) -> Result<()> {
        let pending = [
            Filter::builder()
                .name("tag:bake:status")
                .values("pending")
                .build(),
            self.owned(),
        ];
        let cutoff = Utc::now()
            - chrono::Duration::from_std(self.settings.orphan_age)
                .unwrap_or(chrono::Duration::hours(1));
        let home = self.images().lister();
        for i in home.own_images(&pending, "Image Builder outputs").await? {
            let created = i
                .creation_date()
                .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
                .map(|d| d.with_timezone(&Utc));
            let untagged = !i.tags().iter().any(|t| t.key() == Some("bake:run-id"));
            if untagged
                && found.unpublished(&i)
                && self.recipes.contains(tag(i.tags(), "bake:recipe"))
                && created.is_some_and(|c| c <= cutoff)
            {
                found.push(
                    Kind::Image,
                    i.image_id().unwrap_or_default(),
                    i.tags(),
                    "deregister the Image Builder output of a run that died before tagging it, and its snapshots",
                    false,
                );
            }
        }
        Ok(())
    }

    async fn leftover_groups_and_volumes(&self, found: &mut Found<'_>) -> Result<()> {
        let home = self.images().lister();
        for g in home
            .security_groups(&self.made_by_runs(), "bake security groups")
            .await?
        {
            found.push(
                Kind::SecurityGroup,
                g.group_id().unwrap_or_default(),
                g.tags(),
                "delete",
                false,
            );
        }
        // Canary copies of images (attached after boot): gone with their canary once attached,
        // left behind if the run died between making one and attaching it.
        for v in home.volumes(&self.made_by_runs(), "bake volumes").await? {
            found.push(
                Kind::Volume,
                v.volume_id().unwrap_or_default(),
                v.tags(),
                "delete (once its instance has let go of it)",
                false,
            );
        }
        Ok(())
    }

    /// Copies a dead run made in other regions and no release publishes.
    async fn leftover_copies(&self, found: &mut Found<'_>) -> Result<()> {
        for images in self.copy_regions() {
            let region = images.region();
            for i in images
                .lister()
                .own_images(&self.made_by_runs(), "bake images")
                .await?
            {
                if !found.unpublished(&i) {
                    continue;
                }
                let status = tag(i.tags(), "bake:status");
                found.push(
                    Kind::ImageCopy,
                    &format!("{region}/{}", i.image_id().unwrap_or_default()),
                    i.tags(),
                    &format!(
                        "deregister the unpublished copy in {region} and delete its snapshots"
                    ),
                    status == "validated",
                );
            }
        }
        Ok(())
    }

    /// Removes one leftover.
    pub(super) async fn remove(&self, l: &Leftover) -> Result<()> {
        match l.kind {
            Kind::Instance => self.terminate(&l.id).await,
            Kind::Image => self.images().deregister(&l.id).await,
            Kind::ImageCopy => {
                let (region, id) = l.id.split_once('/').unwrap_or_default();
                match self.copy_regions().find(|i| i.region() == region) {
                    Some(images) => images.deregister(id).await,
                    None => Err(Error::Usage(format!(
                        "{region} is not in copy_regions of this pipeline; cannot remove {id} there"
                    ))),
                }
            }
            Kind::SecurityGroup => self.delete_security_group(&l.id).await,
            Kind::Volume => self.delete_volume_when_free(&l.id).await,
            // Snapshots go with their image; the rest are the local provider's or the registry's.
            Kind::ImagebuilderBuild => self.end_build(&l.id, None).await.map(|_| ()),
            other @ (Kind::Snapshot
            | Kind::Vm
            | Kind::Overlay
            | Kind::File
            | Kind::WorkDir
            | Kind::IncompleteRelease) => Err(Error::provider(
                "aws",
                format!(
                    "the aws provider does not remove {other} leftovers ({})",
                    l.id
                ),
            )),
        }
    }
}
