//! What the steps of one local bake share: work and log dirs, the base, the disks and VMs
//! of builder and canary, the boot files, the stored image, and what the provider-neutral
//! steps produced.

use super::base::Base;
use super::chroot::ChrootGuest;
use super::qemu::{Accel, Vm};
use super::qga::Agent;
use super::store::ImageFiles;
use crate::guest::Guest;
use crate::provider::{ByRole, ImageRecord, Role};
use crate::steps::{Machines, Made};
use crate::{Error, Result};
use std::path::PathBuf;

/// What the steps of one local bake share.
#[derive(Default)]
pub(super) struct State {
    /// Sockets, overlays and seeds of this bake; removed when it ends.
    pub work: PathBuf,
    /// Serial consoles and QEMU's own output; kept with the run's logs.
    pub logs: PathBuf,
    pub base: Option<Base>,
    pub accel: Option<Accel>,
    /// The qcow2 overlays builder and canary boot from.
    pub disks: ByRole<PathBuf>,
    /// Their VMs, with the guest agent once it answers.
    pub vms: ByRole<(Vm, Option<Agent>)>,
    /// The offline builder, when the recipe is applied without booting a builder VM.
    pub chroot: Option<ChrootGuest>,
    pub kernel: Option<Vec<u8>>,
    pub initrd: Option<Vec<u8>>,
    pub image: Option<ImageFiles>,
    pub made: Made,
    pub record: Option<ImageRecord>,
}

impl Machines for State {
    fn guest(&mut self, role: Role) -> Result<&mut dyn Guest> {
        if role == Role::Builder {
            if let Some(chroot) = self.chroot.as_mut() {
                return Ok(chroot);
            }
        }
        self.vms
            .slot(role)
            .as_mut()
            .and_then(|(_, a)| a.as_mut())
            .map(|a| a as &mut dyn Guest)
            .ok_or_else(|| {
                Error::provider("local", format!("the {} VM is not running", role.as_str()))
            })
    }

    /// The image's qcow2 is a read-only virtio drive with a known serial.
    fn image_devices(&self) -> Vec<String> {
        vec![format!(
            "/dev/disk/by-id/virtio-{}",
            crate::canary::LOCAL_IMAGE_SERIAL
        )]
    }

    fn made(&mut self) -> &mut Made {
        &mut self.made
    }
}
