//! AMIs in one region: waiting for a new image to be usable (several `available` answers in
//! a row, riding out `InvalidAMIID.NotFound` right after it was created, failing fast on
//! `failed`), its snapshots, deregistering it with them, whether something uses it, copies
//! from another region (tagged `bake:source-image`), and launch permissions for accounts.

use crate::provider::aws::sdk::{code, err, Limits, Poll};
use crate::{Error, Result};
use aws_sdk_ec2::types::{
    Filter, ImageState, LaunchPermission, LaunchPermissionModifications, ResourceType, Tag,
    TagSpecification,
};

/// What one CopyImage asks for.
pub struct CopyRequest<'a> {
    pub source: &'a str,
    pub source_region: &'a str,
    pub name: &'a str,
    pub kms_key_id: Option<&'a str>,
    /// The tags of the copy and its snapshots, applied by CopyImage itself.
    pub tags: Vec<Tag>,
    /// At most 64 ASCII characters; the same token for a retried request.
    pub client_token: String,
}
use std::time::Duration;

/// `InvalidSnapshot.InUse` right after DeregisterImage: retries, the first pause (doubling,
/// at most 10 s apart: about 70 s in all).
const SNAPSHOT_RETRIES: u32 = 10;
const SNAPSHOT_RETRY_FIRST: Duration = Duration::from_millis(250);

/// Marks deregistration protection bake set (1) and lifted (0); protection without it is
/// somebody else's and never lifted by bake.
pub const PROTECTED_TAG: &str = "bake:protected";

/// The AMIs of one region, through one EC2 client.
#[derive(Clone, Copy)]
pub struct Images<'a> {
    ec2: &'a aws_sdk_ec2::Client,
    limits: &'a Limits,
    region: &'a str,
}

/// How to wait for an image.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    pub poll_interval: Duration,
    pub timeout: Duration,
    /// `available` answers in a row before the image counts as usable.
    pub confirmations: u32,
}

impl<'a> Images<'a> {
    pub fn new(ec2: &'a aws_sdk_ec2::Client, limits: &'a Limits, region: &'a str) -> Self {
        Images {
            ec2,
            limits,
            region,
        }
    }

    pub fn region(&self) -> &'a str {
        self.region
    }

    /// Listings through the same client, every page.
    pub fn lister(&self) -> super::list::Lister<'a> {
        super::list::Lister {
            ec2: self.ec2,
            limits: self.limits,
            region: self.region,
        }
    }

    /// The image's state and snapshots; `(None, [])` while EC2 does not know it yet.
    pub async fn state(&self, image: &str) -> Result<(Option<ImageState>, Vec<String>)> {
        self.limits.ec2.until_ready().await;
        let r = match self.ec2.describe_images().image_ids(image).send().await {
            Ok(r) => r,
            // Eventual consistency right after CreateImage/CopyImage.
            Err(e) if code(&e) == Some("InvalidAMIID.NotFound") => return Ok((None, Vec::new())),
            Err(e) => return Err(err(format!("describing {image} in {}", self.region), e)),
        };
        let Some(img) = r.images().first() else {
            return Ok((None, Vec::new()));
        };
        let snaps = img
            .block_device_mappings()
            .iter()
            .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
            .collect();
        Ok((img.state().cloned(), snaps))
    }

    /// Waits until the image is `available` `confirmations` times in a row and returns its
    /// snapshots. Fails at once on `failed`/`error`/`invalid`/`deregistered`, and after the
    /// timeout.
    pub async fn wait_available(&self, image: &str, wait: Wait) -> Result<Vec<String>> {
        let poll = Poll::new(wait.poll_interval);
        let mut in_a_row = 0;
        loop {
            let (state, snaps) = self.state(image).await?;
            match state {
                Some(ImageState::Available) => {
                    in_a_row += 1;
                    if in_a_row >= wait.confirmations {
                        return Ok(snaps);
                    }
                }
                Some(
                    s @ (ImageState::Failed
                    | ImageState::Error
                    | ImageState::Invalid
                    | ImageState::Deregistered),
                ) => {
                    return Err(Error::provider(
                        "aws",
                        format!("image {image} in {} is {s}", self.region),
                    ))
                }
                _ => in_a_row = 0,
            }
            if poll.elapsed() > wait.timeout {
                return Err(Error::provider(
                    "aws",
                    format!(
                        "image {image} in {} not available after {:?}",
                        self.region, wait.timeout
                    ),
                ));
            }
            // Confirmations come quickly; waiting for `available` keeps the wait's pace.
            if in_a_row > 0 {
                tokio::time::sleep(wait.poll_interval / 4).await;
            } else {
                poll.tick().await;
            }
        }
    }

    /// Deregisters the image and deletes its snapshots; already gone is fine.
    pub async fn deregister(&self, image: &str) -> Result<()> {
        let (_, snapshots) = self.state(image).await?;
        self.limits.ec2.until_ready().await;
        match self.ec2.deregister_image().image_id(image).send().await {
            Ok(_) => {}
            Err(e)
                if code(&e) == Some("InvalidAMIID.NotFound")
                    || code(&e) == Some("InvalidAMIID.Unavailable") => {}
            Err(e) => return Err(err(format!("deregistering {image} in {}", self.region), e)),
        }
        for s in snapshots {
            self.delete_snapshot(&s, image).await?;
        }
        Ok(())
    }

    /// Deprecates the image from `at` on (EC2 takes whole minutes, never in the past): it still
    /// launches, but is hidden from other accounts' searches and flagged to its readers.
    pub async fn deprecate(&self, image: &str, at: chrono::DateTime<chrono::Utc>) -> Result<()> {
        self.limits.ec2.until_ready().await;
        self.ec2
            .enable_image_deprecation()
            .image_id(image)
            .deprecate_at(aws_smithy_types::DateTime::from_secs(at.timestamp()))
            .send()
            .await
            .map_err(|e| err(format!("deprecating {image} in {}", self.region), e))?;
        Ok(())
    }

    /// Turns deregistration protection on (no cooldown: bake lifts it the moment prod lets the
    /// image go) and marks it as bake's with `bake:protected = 1`.
    pub async fn protect(&self, image: &str) -> Result<()> {
        self.limits.ec2.until_ready().await;
        self.ec2
            .enable_image_deregistration_protection()
            .image_id(image)
            .with_cooldown(false)
            .send()
            .await
            .map_err(|e| err(format!("protecting {image} in {}", self.region), e))?;
        self.tag(
            &[image.to_string()],
            vec![Tag::builder().key(PROTECTED_TAG).value("1").build()],
        )
        .await
    }

    /// Lifts the protection bake set (`bake:protected` becomes 0).
    pub async fn unprotect(&self, image: &str) -> Result<()> {
        self.limits.ec2.until_ready().await;
        self.ec2
            .disable_image_deregistration_protection()
            .image_id(image)
            .send()
            .await
            .map_err(|e| {
                err(
                    format!("lifting the protection of {image} in {}", self.region),
                    e,
                )
            })?;
        self.tag(
            &[image.to_string()],
            vec![Tag::builder().key(PROTECTED_TAG).value("0").build()],
        )
        .await
    }

    /// The images of `recipe` under `owner` that bake protected.
    pub async fn protected_by_bake(&self, owner: &str, recipe: &str) -> Result<Vec<String>> {
        let tag = |k: &str, v: &str| Filter::builder().name(format!("tag:{k}")).values(v).build();
        Ok(self
            .lister()
            .own_images(
                &[
                    tag(super::OWNER_TAG, owner),
                    tag("bake:recipe", recipe),
                    tag(PROTECTED_TAG, "1"),
                ],
                &format!("images of {recipe} bake protected"),
            )
            .await?
            .iter()
            .filter_map(|i| i.image_id().map(str::to_string))
            .collect())
    }

    /// Deletes a snapshot of a just-deregistered image. EC2 is eventually consistent: right
    /// after DeregisterImage the snapshot may still count as in use by it
    /// (`InvalidSnapshot.InUse`), so that answer is retried with backoff, up to a limit.
    async fn delete_snapshot(&self, s: &str, image: &str) -> Result<()> {
        let mut pause = SNAPSHOT_RETRY_FIRST;
        let mut attempts = 0;
        loop {
            self.limits.ec2.until_ready().await;
            match self.ec2.delete_snapshot().snapshot_id(s).send().await {
                Ok(_) => return Ok(()),
                Err(e) if code(&e) == Some("InvalidSnapshot.NotFound") => return Ok(()),
                Err(e)
                    if code(&e) == Some("InvalidSnapshot.InUse") && attempts < SNAPSHOT_RETRIES =>
                {
                    attempts += 1;
                    tracing::debug!(
                        snapshot = s,
                        image,
                        attempts,
                        "snapshot still in use after deregistering its image; retrying"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    return Err(err(
                        format!(
                            "deleting snapshot {s} of {image} in {} (after {attempts} retries)",
                            self.region
                        ),
                        e,
                    ))
                }
            }
        }
    }

    /// Why the image must not be deleted by the pipeline that publishes under `owner` (see
    /// [`Images::in_use_many`]), or None.
    pub async fn in_use(&self, image_id: &str, owner: &str) -> Result<Option<String>> {
        Ok(self
            .in_use_many(&[image_id.to_string()], owner)
            .await?
            .remove(image_id))
    }

    /// Available copies of `source` in this region (tagged `bake:source-image`).
    pub async fn copies_of(&self, source: &str) -> Result<Vec<String>> {
        Ok(self
            .copies_of_many(&[source.to_string()])
            .await?
            .remove(source)
            .unwrap_or_default())
    }

    /// Starts an encrypted copy of `source` from `source_region` into this region, tagged at
    /// creation (image and snapshots) so a run that dies mid-copy leaves something sweep can
    /// find, with a client token so an SDK retry never starts a second copy. Returns its ID.
    pub async fn copy_here(&self, copy: CopyRequest<'_>) -> Result<String> {
        let CopyRequest {
            source,
            source_region,
            name,
            kms_key_id,
            tags,
            client_token,
        } = copy;
        let spec = |t: ResourceType| {
            TagSpecification::builder()
                .resource_type(t)
                .set_tags(Some(tags.clone()))
                .build()
        };
        self.limits.ec2.until_ready().await;
        let r = self
            .ec2
            .copy_image()
            .source_image_id(source)
            .source_region(source_region)
            .name(name)
            .description(format!("bake copy of {source} from {source_region}"))
            .encrypted(true)
            .set_kms_key_id(kms_key_id.map(str::to_string))
            .client_token(client_token)
            .tag_specifications(spec(ResourceType::Image))
            .tag_specifications(spec(ResourceType::Snapshot))
            .send()
            .await
            .map_err(|e| {
                err(
                    format!("copying {source} from {source_region} to {}", self.region),
                    e,
                )
            })?;
        r.image_id().map(str::to_string).ok_or_else(|| {
            Error::provider(
                "aws",
                format!(
                    "CopyImage of {source} into {} returned no image ID",
                    self.region
                ),
            )
        })
    }

    /// Tags images and snapshots (nothing to do for none).
    pub async fn tag(&self, ids: &[String], tags: Vec<Tag>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        super::tags::check(&tags, &ids.join(", "))?;
        self.limits.ec2.until_ready().await;
        self.ec2
            .create_tags()
            .set_resources(Some(ids.to_vec()))
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| err(format!("tagging {} in {}", ids.join(", "), self.region), e))?;
        Ok(())
    }

    /// Gives these accounts (never `all`) launch permission on the image; adding one that is
    /// already there is a no-op on EC2's side.
    pub async fn share(&self, image: &str, accounts: &[String]) -> Result<()> {
        if accounts.is_empty() {
            return Ok(());
        }
        let add = accounts
            .iter()
            .map(|a| LaunchPermission::builder().user_id(a).build())
            .collect();
        self.limits.ec2.until_ready().await;
        self.ec2
            .modify_image_attribute()
            .image_id(image)
            .launch_permission(
                LaunchPermissionModifications::builder()
                    .set_add(Some(add))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                err(
                    format!(
                        "sharing {image} in {} with {}",
                        self.region,
                        accounts.join(", ")
                    ),
                    e,
                )
            })?;
        Ok(())
    }
}

/// Instances that exist (pending, running, stopping or stopped), for DescribeInstances.
pub fn not_terminated() -> Filter {
    Filter::builder()
        .name("instance-state-name")
        .values("pending")
        .values("running")
        .values("stopping")
        .values("stopped")
        .build()
}
