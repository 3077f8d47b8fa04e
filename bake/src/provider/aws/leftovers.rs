//! What dead runs of this pipeline left behind, found by tag, and their removal.

use super::{image, list, AwsProvider, RELEASE_TAG};
use crate::journal::Kind;
use crate::provider::Leftover;
use crate::{Error, Result};
use aws_sdk_ec2::types::{Filter, Tag};
use chrono::Utc;
use std::collections::BTreeSet;

impl AwsProvider {
    /// What runs not in `live` left behind; never anything in `published` or untagged.
    pub(super) async fn find_leftovers(
        &self,
        live: &BTreeSet<String>,
        published: &BTreeSet<String>,
    ) -> Result<Vec<Leftover>> {
        // Only what this pipeline made: tagged with a run ID, our registry prefix and one of
        // our recipes. Another pipeline's runs (its own prefix) and anything untagged are
        // never looked at, let alone touched.
        let ours = || {
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
        };
        let tag = list::tag;
        let mut out = Vec::new();
        let mut push = |kind: Kind, id: &str, tags: &[Tag], action: &str, reusable: bool| {
            let run_id = tag(tags, "bake:run-id").to_string();
            if live.contains(&run_id) {
                return;
            }
            out.push(Leftover {
                kind,
                id: id.to_string(),
                run_id,
                recipe: tag(tags, "bake:recipe").to_string(),
                arch: tag(tags, "bake:arch").parse().ok(),
                action: action.to_string(),
                reusable,
            });
        };
        // An image is never a leftover once a registry published it: ours lists it, and any
        // registry's publish tags it with the release.
        let unpublished = |i: &aws_sdk_ec2::types::Image| -> bool {
            !published.contains(i.image_id().unwrap_or_default())
                && tag(i.tags(), RELEASE_TAG).is_empty()
        };
        let home = self.images().lister();
        let mut filters = ours();
        filters.push(image::not_terminated());
        for i in home.instances(&filters, "bake instances").await? {
            push(
                Kind::Instance,
                i.instance_id().unwrap_or_default(),
                i.tags(),
                "terminate",
                false,
            );
        }
        for i in home.own_images(&ours(), "bake images").await? {
            if !unpublished(&i) {
                continue;
            }
            let status = tag(i.tags(), "bake:status");
            push(
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
        // Image Builder outputs whose run died before tagging them (the distribution tags them
        // with recipe, prefix and bake:status=pending, but only the run adds bake:run-id). A
        // live run tags its output seconds after the build ends, so only old ones are orphans.
        if self.settings.engine == crate::input::pipeline::Engine::Imagebuilder {
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
            for i in home.own_images(&pending, "Image Builder outputs").await? {
                let created = i
                    .creation_date()
                    .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
                    .map(|d| d.with_timezone(&Utc));
                let untagged = !i.tags().iter().any(|t| t.key() == Some("bake:run-id"));
                if untagged
                    && unpublished(&i)
                    && self.recipes.contains(tag(i.tags(), "bake:recipe"))
                    && created.is_some_and(|c| c <= cutoff)
                {
                    push(
                        Kind::Image,
                        i.image_id().unwrap_or_default(),
                        i.tags(),
                        "deregister the Image Builder output of a run that died before tagging it, and its snapshots",
                        false,
                    );
                }
            }
        }
        for g in home
            .security_groups(&ours(), "bake security groups")
            .await?
        {
            push(
                Kind::SecurityGroup,
                g.group_id().unwrap_or_default(),
                g.tags(),
                "delete",
                false,
            );
        }
        // Canary copies of images (attached after boot): gone with their canary once attached,
        // left behind if the run died between making one and attaching it.
        for v in home.volumes(&ours(), "bake volumes").await? {
            push(
                Kind::Volume,
                v.volume_id().unwrap_or_default(),
                v.tags(),
                "delete (once its instance has let go of it)",
                false,
            );
        }
        // Copies a dead run made in other regions and no release publishes.
        for images in self.copy_regions() {
            let region = images.region();
            for i in images.lister().own_images(&ours(), "bake images").await? {
                if !unpublished(&i) {
                    continue;
                }
                let status = tag(i.tags(), "bake:status");
                push(
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
        // Instances first, then volumes and images, then groups (a volume or a group is in use
        // until its instances go).
        out.sort_by_key(|l| match l.kind {
            Kind::Instance => 0,
            Kind::Volume => 1,
            Kind::Image | Kind::ImageCopy => 2,
            _ => 3,
        });
        Ok(out)
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
            other @ (Kind::Snapshot
            | Kind::ImagebuilderBuild
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
