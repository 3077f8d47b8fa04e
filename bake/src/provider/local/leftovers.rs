//! What dead local runs left (by their journals and work dirs), and its removal.

use super::{store, LocalProvider};
use crate::journal::{Journal, Kind};
use crate::provider::{ImageStatus, Leftover};
use crate::state_dir::StateDir;
use crate::{Error, Result};
use std::collections::BTreeSet;
use std::path::Path;

/// The pid in a journal `vm` entry (`<socket> pid <pid>`).
fn vm_pid(id: &str) -> Option<u32> {
    id.rsplit(" pid ").next()?.trim().parse().ok()
}

/// True if `pid` is a QEMU started for this VM (its command line names the socket).
fn qemu_running(pid: u32, id: &str) -> bool {
    let socket = id.split(" pid ").next().unwrap_or_default();
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let c = String::from_utf8_lossy(&c);
            c.contains("qemu-system") && c.contains(socket)
        })
        .unwrap_or(false)
}

impl LocalProvider {
    /// What runs not in `live` left behind; never an image in `published`.
    pub(super) fn find_leftovers(
        &self,
        live: &BTreeSet<String>,
        published: &BTreeSet<String>,
    ) -> Result<Vec<Leftover>> {
        let mut out = Vec::new();
        let validated: std::collections::BTreeSet<String> = self
            .store
            .records()?
            .into_iter()
            .filter(|i| i.status == ImageStatus::Validated)
            .map(|i| i.id)
            .collect();
        for (run_id, entries) in crate::journal::Journal::all(&self.state_dir)? {
            if live.contains(&run_id) {
                continue;
            }
            for r in Journal::outstanding(&entries) {
                let gone = "already gone; recorded as removed";
                let action = match r.kind {
                    Kind::Overlay | Kind::File if Path::new(&r.id).exists() => {
                        "delete the file".to_string()
                    }
                    Kind::Vm => match vm_pid(&r.id) {
                        Some(pid) if qemu_running(pid, &r.id) => format!("kill QEMU (pid {pid})"),
                        _ => gone.to_string(),
                    },
                    Kind::Image if published.contains(&r.id) => continue,
                    Kind::Image if self.store.files(&r.id).disk.exists() => {
                        "delete the unpublished image".to_string()
                    }
                    _ => gone.to_string(),
                };
                let reusable = r.kind == Kind::Image && validated.contains(&r.id);
                out.push(Leftover {
                    kind: r.kind,
                    id: r.id,
                    run_id: run_id.clone(),
                    recipe: r.recipe,
                    arch: Some(r.arch),
                    action,
                    reusable,
                });
            }
            let work = StateDir(&self.state_dir).work_of(&run_id);
            if work.exists() {
                out.push(Leftover {
                    kind: Kind::WorkDir,
                    id: work.display().to_string(),
                    run_id: run_id.clone(),
                    recipe: String::new(),
                    arch: None,
                    action: "delete the directory".into(),
                    reusable: false,
                });
            }
        }
        Ok(out)
    }

    /// Removes one leftover.
    pub(super) fn remove(&self, l: &Leftover) -> Result<()> {
        match l.kind {
            Kind::Overlay | Kind::File | Kind::WorkDir => store::remove_path(Path::new(&l.id)),
            Kind::Vm => {
                if let Some(pid) = vm_pid(&l.id) {
                    if qemu_running(pid, &l.id) {
                        unsafe {
                            libc::kill(pid as i32, libc::SIGKILL);
                        }
                    }
                }
                if let Some(socket) = l.id.split(" pid ").next() {
                    let _ = std::fs::remove_file(socket);
                }
                Ok(())
            }
            Kind::Image => self.store.remove(&l.id),
            other @ (Kind::Snapshot
            | Kind::ImageCopy
            | Kind::Instance
            | Kind::SecurityGroup
            | Kind::Volume
            | Kind::ImagebuilderBuild
            | Kind::IncompleteRelease) => Err(Error::provider(
                "local",
                format!(
                    "the local provider does not remove {other} leftovers ({})",
                    l.id
                ),
            )),
        }
    }
}
