//! `bake audit` on the local provider. Local images have no long-lived nodes, so each image a
//! channel points at now is booted as its node would boot — the canary's way: a qcow2 overlay
//! of the stored image, the NoCloud seed with a fresh instance ID and the dead-man's timer, the
//! same VM and guest agent — audited, and killed when the audit lets go of its guest. QEMU dies
//! with bake (its parent-death signal), and the overlay lives in the state dir's `work/`, which
//! the node's guest removes.

use super::machine::{boot_vm, new_instance_id, node_seed, overlay};
use super::qemu::{Accel, Vm, VmSpec};
use super::qga::Agent;
use super::LocalProvider;
use crate::guest::audit::{AuditProgram, GuestProbe, NodeProbe};
use crate::guest::{Guest, Ran};
use crate::provider::{Fleet, FleetNode};
use crate::state_dir::StateDir;
use crate::{Arch, Error, Result};
use async_trait::async_trait;
use std::path::PathBuf;
use std::time::Duration;

/// How long an audited node may live before its dead-man's timer powers it off.
const NODE_LIFETIME: Duration = Duration::from_secs(3600);

#[async_trait]
impl Fleet for LocalProvider {
    async fn nodes(&self, _images: &[String], current: &[String]) -> Result<Vec<FleetNode>> {
        let mut out = Vec::new();
        for image in current {
            if !self.store.files(image).disk.is_file() {
                tracing::warn!("image {image} of a channel is not in the local image store");
                continue;
            }
            out.push(FleetNode {
                name: format!("node-of-{image}"),
                instance: new_instance_id(),
                image: image.clone(),
                launched: None,
                cluster: None,
                region: None,
                copy: None,
            });
        }
        Ok(out)
    }

    async fn probe(
        &self,
        node: &FleetNode,
        program: &AuditProgram,
        arch: Arch,
        wait: Duration,
    ) -> Result<Box<dyn NodeProbe>> {
        let guest = self.node_guest(node, wait).await?;
        Ok(Box::new(GuestProbe {
            guest,
            program: program.clone(),
            arch,
            label: format!("{} {arch} audit {}", program.recipe, node.instance),
        }))
    }
}

impl LocalProvider {
    /// The node booted the canary's way, once its guest agent answers (within `wait`, or the
    /// pipeline's boot timeout if longer).
    async fn node_guest(&self, node: &FleetNode, wait: Duration) -> Result<Box<dyn Guest>> {
        let files = self.store.files(&node.image);
        let arch = self
            .store
            .record(&node.image)?
            .map(|r| r.arch)
            .ok_or_else(|| {
                Error::provider("local", format!("image {} has no record", node.image))
            })?;
        let work = StateDir(&self.state_dir).work_of(&format!("audit-{}", node.instance));
        std::fs::create_dir_all(&work)
            .map_err(|e| Error::io(format!("creating {}", work.display()), e))?;
        let mut booting = NodeVm {
            agent: None,
            vm: None,
            work: work.clone(),
        };
        let disk = work.join("node.qcow2");
        overlay(&files.disk, &disk).await?;
        let seed = node_seed(&work, "node", &node.instance, NODE_LIFETIME).await?;
        let spec = VmSpec {
            name: "node".into(),
            arch,
            accel: self.audit_accel(arch),
            memory_mib: self.settings.memory_mib,
            cpus: self.vcpus(),
            kernel: files.kernel,
            initrd: files.initrd,
            disk,
            dir: work.clone(),
            log_dir: work.clone(),
            drives: vec![seed],
        };
        let timeout = wait.max(self.settings.boot_timeout);
        let (vm, agent) = boot_vm(&spec, timeout, |_| Ok(())).await?;
        booting.vm = Some(vm);
        booting.agent = Some(agent?);
        Ok(Box::new(booting))
    }

    /// The accelerator a node boots with: what this host is known to support, else TCG (an
    /// audit does not probe KVM; a bake does, and remembers it).
    fn audit_accel(&self, arch: Arch) -> Accel {
        self.known_accel(arch).unwrap_or(Accel::Tcg)
    }
}

/// A node booted for an audit: its guest agent, its VM (killed when this is dropped) and its
/// work dir (removed then).
struct NodeVm {
    agent: Option<Agent>,
    vm: Option<Vm>,
    work: PathBuf,
}

impl NodeVm {
    fn agent(&mut self) -> &mut Agent {
        self.agent
            .as_mut()
            .expect("a node's guest is handed out booted")
    }
}

impl Drop for NodeVm {
    fn drop(&mut self) {
        self.agent.take();
        // Dropping the VM kills QEMU (kill_on_drop); its overlay and seed go with the dir.
        self.vm.take();
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

#[async_trait]
impl Guest for NodeVm {
    fn transport(&self) -> &'static str {
        self.agent.as_ref().map_or("guest agent", |a| a.transport())
    }

    fn stdout_limit(&self) -> Option<usize> {
        self.agent.as_ref().and_then(|a| a.stdout_limit())
    }

    async fn put(
        &mut self,
        label: &str,
        path: &str,
        content: &[u8],
        mode: u32,
        timeout: Duration,
    ) -> Result<()> {
        self.agent().put(label, path, content, mode, timeout).await
    }

    async fn run(
        &mut self,
        label: &str,
        script: &[u8],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Ran> {
        self.agent().run(label, script, env, timeout).await
    }
}
