//! The canary's second volume: the image as shipped, made from the image's root snapshot, which
//! the checks that judge what the image ships mount read-only. It is attached only once the
//! canary has booted. Attached at launch, two disks would carry the same filesystem UUID, label
//! and partition UUID while the boot looks for its root by them — Ubuntu EKS images mount
//! `LABEL=cloudimg-rootfs` and boot `root=PARTUUID=…`, AL2023 mounts `UUID=…` — and AWS
//! documents that an instance can then boot from the wrong volume.

use super::state::{State, IMAGE_COPY_DEVICE};
use super::AwsProvider;
use crate::journal::Kind;
use crate::provider::aws::sdk::{code, err, Poll};
use crate::provider::{BakeJob, Role};
use crate::steps::{Outcome, Step, StepContext};
use crate::{Error, Result};
use async_trait::async_trait;
use aws_sdk_ec2::types::{
    EbsInstanceBlockDeviceSpecification, InstanceBlockDeviceMappingSpecification, ResourceType,
    TagSpecification, Volume, VolumeAttachmentState, VolumeState, VolumeType,
};

/// Makes a volume of the image's root snapshot and attaches it to the booted canary at
/// [`IMAGE_COPY_DEVICE`], deleted with the canary however the canary ends.
pub(super) struct AttachImageCopy<'a> {
    pub p: &'a AwsProvider,
    pub job: &'a BakeJob<'a>,
}

#[async_trait]
impl Step<State> for AttachImageCopy<'_> {
    fn name(&self) -> &str {
        "attach-image-copy"
    }

    /// Long because the snapshot, the zone, the volume made from it and its attachment are one
    /// step: each ID goes into the state (and the journal) as soon as it exists, for the cleanup.
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let p = self.p;
        let canary = state
            .instances
            .get(Role::Canary)
            .cloned()
            .ok_or_else(|| cx.error(self.name(), "no canary"))?;
        let image = state
            .image
            .clone()
            .ok_or_else(|| cx.error(self.name(), "no image"))?;
        let Some(snapshot) = p.root_volume(&image).await?.snapshot else {
            // No snapshot to copy: the checks that read the image say so and block.
            tracing::warn!(%image, "the image has no root snapshot: no copy for the canary");
            return Ok(());
        };
        let zone = state
            .canary_zone
            .clone()
            .ok_or_else(|| cx.error(self.name(), "the canary's availability zone is not known"))?;
        cx.phase(&format!(
            "attaching the image as shipped ({snapshot}) to {canary}"
        ));
        p.ec2_slot().await;
        let volume = p
            .ec2
            .create_volume()
            .snapshot_id(&snapshot)
            .availability_zone(&zone)
            .volume_type(VolumeType::from(
                self.job.recipe.volume.volume_type.as_str(),
            ))
            .encrypted(true)
            .set_kms_key_id(p.settings.kms_key_id.clone())
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Volume)
                    .set_tags(Some(p.tags(self.job, "canary-image-copy")))
                    .build(),
            )
            // Idempotent: a retried CreateVolume never makes a second volume.
            .client_token(
                format!("{}-{}-{}-copy", self.job.run_id, cx.recipe, cx.arch)
                    .chars()
                    .take(64)
                    .collect::<String>(),
            )
            .send()
            .await
            .map_err(|e| {
                err(
                    format!("making a volume of {snapshot} in {zone} for {canary}"),
                    e,
                )
            })?
            .volume_id()
            .ok_or_else(|| cx.error(self.name(), "CreateVolume returned no volume"))?
            .to_string();
        cx.created(Kind::Volume, &volume)?;
        state.image_copy = Some(volume.clone());
        p.wait_volume(&volume, |v| v.state() == Some(&VolumeState::Available))
            .await?;
        p.ec2_slot().await;
        p.ec2
            .attach_volume()
            .device(IMAGE_COPY_DEVICE)
            .instance_id(&canary)
            .volume_id(&volume)
            .send()
            .await
            .map_err(|e| err(format!("attaching {volume} to {canary}"), e))?;
        // Deleted with the canary: its terminate step, this run's cleanup, or the dead-man's
        // timer after a SIGKILL all take the volume with it.
        p.ec2_slot().await;
        p.ec2
            .modify_instance_attribute()
            .instance_id(&canary)
            .block_device_mappings(
                InstanceBlockDeviceMappingSpecification::builder()
                    .device_name(IMAGE_COPY_DEVICE)
                    .ebs(
                        EbsInstanceBlockDeviceSpecification::builder()
                            .volume_id(&volume)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .map_err(|e| err(format!("deleting {volume} with {canary} on termination"), e))?;
        p.wait_volume(&volume, |v| {
            v.attachments()
                .iter()
                .any(|a| a.state() == Some(&VolumeAttachmentState::Attached))
        })
        .await
    }

    /// The volume goes when the canary does (delete on termination); one the canary never got
    /// is deleted here. Either way the journal says it is gone only once EC2 does.
    async fn cleanup(
        &self,
        state: &mut State,
        _outcome: Outcome,
        cx: &StepContext<'_>,
    ) -> Result<()> {
        let Some(volume) = state.image_copy.take() else {
            return Ok(());
        };
        let p = self.p;
        // Still on a canary this run holds: it comes off first (the launch step's cleanup
        // terminates the canary after this one).
        let canary = state.instances.get(Role::Canary).map(String::as_str);
        if let Some(v) = p.describe_volume(&volume).await? {
            if v.attachments().iter().any(|a| {
                a.instance_id() == canary && a.state() == Some(&VolumeAttachmentState::Attached)
            }) {
                p.detach_volume(&volume).await?;
            }
        }
        p.delete_volume_when_free(&volume).await?;
        cx.removed(Kind::Volume, &volume)?;
        Ok(())
    }
}

impl AwsProvider {
    /// The availability zone an instance runs in (a volume attaches only within it), and its
    /// private DNS name (the node name nodeadm and Canonical's bootstrap register it under).
    pub(super) async fn placement(&self, instance: &str) -> Result<(String, Option<String>)> {
        self.ec2_slot().await;
        let r = self
            .ec2
            .describe_instances()
            .instance_ids(instance)
            .send()
            .await
            .map_err(|e| err(format!("describing {instance} in {}", self.region), e))?;
        let i = r
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(instance));
        let dns = i
            .and_then(|i| i.private_dns_name())
            .filter(|d| !d.is_empty())
            .map(str::to_string);
        i.and_then(|i| i.placement())
            .and_then(|p| p.availability_zone())
            .map(|zone| (zone.to_string(), dns))
            .ok_or_else(|| {
                Error::provider(
                    "aws",
                    format!("{instance} in {} has no availability zone", self.region),
                )
            })
    }

    /// One volume as EC2 describes it now (None once it is gone).
    pub(super) async fn describe_volume(&self, volume: &str) -> Result<Option<Volume>> {
        self.ec2_slot().await;
        match self.ec2.describe_volumes().volume_ids(volume).send().await {
            Ok(r) => Ok(r.volumes().first().cloned()),
            Err(e) if code(&e) == Some("InvalidVolume.NotFound") => Ok(None),
            Err(e) => Err(err(format!("describing {volume} in {}", self.region), e)),
        }
    }

    /// Polls until the volume satisfies `ready`; fails at once if it is gone or in error.
    async fn wait_volume(&self, volume: &str, ready: impl Fn(&Volume) -> bool) -> Result<()> {
        let poll = Poll::new(self.settings.poll_interval);
        loop {
            let v = self.describe_volume(volume).await?;
            match &v {
                Some(v) if ready(v) => return Ok(()),
                Some(v) if v.state() == Some(&VolumeState::Error) => {
                    return Err(Error::provider(
                        "aws",
                        format!("{volume} in {} is in error", self.region),
                    ))
                }
                None => {
                    return Err(Error::provider(
                        "aws",
                        format!("{volume} in {} is gone", self.region),
                    ))
                }
                _ => {}
            }
            if poll.elapsed() > self.settings.instance_timeout {
                return Err(Error::provider(
                    "aws",
                    format!(
                        "{volume} in {} is {:?}, not ready, after {:?}",
                        self.region,
                        v.and_then(|v| v.state().cloned()),
                        self.settings.instance_timeout
                    ),
                ));
            }
            poll.tick().await;
        }
    }

    /// Detaches a volume from the instance it is attached to.
    async fn detach_volume(&self, volume: &str) -> Result<()> {
        self.ec2_slot().await;
        match self.ec2.detach_volume().volume_id(volume).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    code(&e),
                    Some(
                        "InvalidVolume.NotFound" | "IncorrectState" | "InvalidAttachment.NotFound"
                    )
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(err(format!("detaching {volume} in {}", self.region), e)),
        }
    }

    /// Deletes a volume once nothing has it attached (a leftover whose instance sweep has
    /// just terminated lets go of it within moments).
    pub(super) async fn delete_volume_when_free(&self, volume: &str) -> Result<()> {
        let poll = Poll::new(self.settings.poll_interval);
        loop {
            match self.describe_volume(volume).await? {
                None => return Ok(()),
                Some(v) if v.state() == Some(&VolumeState::Deleted) => return Ok(()),
                Some(v) if v.state() == Some(&VolumeState::Available) => {
                    self.delete_volume(volume).await?
                }
                Some(_) => {}
            }
            if poll.elapsed() > self.settings.instance_timeout {
                return Err(Error::provider(
                    "aws",
                    format!(
                        "{volume} in {} is still in use after {:?}",
                        self.region, self.settings.instance_timeout
                    ),
                ));
            }
            poll.tick().await;
        }
    }

    /// Deletes a volume that is no longer attached.
    pub(super) async fn delete_volume(&self, volume: &str) -> Result<()> {
        self.ec2_slot().await;
        match self.ec2.delete_volume().volume_id(volume).send().await {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some("InvalidVolume.NotFound") => Ok(()),
            // Detaching takes a moment after the instance went: the next poll tries again.
            Err(e) if code(&e) == Some("VolumeInUse") => Ok(()),
            Err(e) => Err(err(format!("deleting {volume} in {}", self.region), e)),
        }
    }
}
