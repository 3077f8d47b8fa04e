//! What the steps of one AWS bake share: the instances and their agents, the image and its
//! snapshots, the copies this run made, and what the provider-neutral steps produced.

use super::ssm::SsmGuest;
use crate::guest::Guest;
use crate::provider::{ByRole, ImageRecord, Role};
use crate::steps::{Machines, Made};
use crate::{Error, Result};

/// Where the canary gets a second volume made from its image's root snapshot once it has
/// booted (see `image_copy`): the image as shipped, which the validators that read the image
/// mount read-only (first boot changes the root volume). Deleted with the instance.
pub(super) const IMAGE_COPY_DEVICE: &str = "/dev/sdf";

/// What the steps of one AWS bake share.
#[derive(Default)]
pub(super) struct State {
    pub security_group: Option<String>,
    pub created_group: bool,
    /// The builder and canary instances.
    pub instances: ByRole<String>,
    /// Their agents, once online.
    pub guests: ByRole<SsmGuest>,
    /// Where the canary runs, read once it is running: its availability zone (its image copy
    /// is made there) and its private DNS name (the node name it registers under).
    pub canary_zone: Option<String>,
    pub canary_dns: Option<String>,
    /// The canary's volume made from the image's root snapshot (see IMAGE_COPY_DEVICE).
    pub image_copy: Option<String>,
    pub image: Option<String>,
    pub snapshots: Vec<String>,
    /// The Image Builder build (`imagebuilder` engine) and whether it has ended.
    pub build: Option<String>,
    pub build_done: bool,
    /// Copies this run made (region, image ID): removed again if the bake fails after them.
    pub copies_made: Vec<(String, String)>,
    pub made: Made,
    pub record: Option<ImageRecord>,
}

impl State {
    /// The state of a reused image: only the tail of the chain (copy, share) runs on it.
    pub(super) fn of_record(record: ImageRecord) -> State {
        State {
            image: Some(record.id.clone()),
            made: Made {
                packages: None,
                verdict: Some(record.verdict.clone()),
            },
            record: Some(record),
            ..State::default()
        }
    }
}

impl Machines for State {
    fn guest(&mut self, role: Role) -> Result<&mut dyn Guest> {
        self.guests
            .slot(role)
            .as_mut()
            .map(|g| g as &mut dyn Guest)
            .ok_or_else(|| {
                Error::provider(
                    "aws",
                    format!("the {}'s SSM agent is not online", role.as_str()),
                )
            })
    }

    /// On Nitro an NVMe disk named after its volume ID; on Xen the device name itself.
    fn image_devices(&self) -> Vec<String> {
        let mut devices: Vec<String> = self
            .image_copy
            .iter()
            .map(|v| {
                format!(
                    "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{}",
                    v.replace('-', "")
                )
            })
            .collect();
        devices.extend([IMAGE_COPY_DEVICE.to_string(), "/dev/xvdf".to_string()]);
        devices
    }

    fn made(&mut self) -> &mut Made {
        &mut self.made
    }

    fn node_name(&self) -> Option<String> {
        self.canary_dns.clone()
    }
}
