//! AMIs in one region: waiting for a new image to be usable (several `available` answers in
//! a row, riding out `InvalidAMIID.NotFound` right after it was created, failing fast on
//! `failed`), its snapshots, and deregistering it with them.

use crate::aws::{code, err, Limits};
use crate::{Error, Result};
use aws_sdk_ec2::types::ImageState;
use std::time::{Duration, Instant};

/// The AMIs of one region, through one EC2 client.
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
        let start = Instant::now();
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
            if start.elapsed() > wait.timeout {
                return Err(Error::provider(
                    "aws",
                    format!(
                        "image {image} in {} not available after {:?}",
                        self.region, wait.timeout
                    ),
                ));
            }
            // Confirmations come quickly; waiting for `available` polls at the interval.
            tokio::time::sleep(if in_a_row > 0 {
                wait.poll_interval / 4
            } else {
                wait.poll_interval
            })
            .await;
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
            self.limits.ec2.until_ready().await;
            match self.ec2.delete_snapshot().snapshot_id(&s).send().await {
                Ok(_) => {}
                Err(e) if code(&e) == Some("InvalidSnapshot.NotFound") => {}
                Err(e) => {
                    return Err(err(
                        format!("deleting snapshot {s} of {image} in {}", self.region),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }
}
