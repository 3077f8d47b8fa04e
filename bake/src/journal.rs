//! The run journal (`<state>/runs/<run-id>.jsonl`): one JSON line per event, fsynced before
//! the call that follows it. Every resource ID is written here before the next call that can
//! fail, so even a SIGKILL leaves a list of what to clean up (`bake sweep`, `bake resume`).

use crate::{Arch, Error, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What kind of resource a journal entry or a leftover is. Written as its kebab-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A QEMU process (`<socket> pid <pid>`).
    Vm,
    /// A qcow2 overlay a VM boots from.
    Overlay,
    /// A file being written into the local image store.
    File,
    /// An image: a local store image or an AMI.
    Image,
    /// An EBS snapshot of an AMI.
    Snapshot,
    /// A copy of an AMI in another region (`<region>/<ami>`).
    ImageCopy,
    Instance,
    /// An EBS volume (the canary's copy of its image, attached after boot).
    Volume,
    SecurityGroup,
    /// An EC2 Image Builder image build (its ARN).
    ImagebuilderBuild,
    /// A run's local work directory.
    WorkDir,
    /// A release a dead run began to publish and did not finish.
    IncompleteRelease,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Vm => "vm",
            Kind::Overlay => "overlay",
            Kind::File => "file",
            Kind::Image => "image",
            Kind::Snapshot => "snapshot",
            Kind::ImageCopy => "image-copy",
            Kind::Instance => "instance",
            Kind::Volume => "volume",
            Kind::SecurityGroup => "security-group",
            Kind::ImagebuilderBuild => "imagebuilder-build",
            Kind::WorkDir => "work-dir",
            Kind::IncompleteRelease => "incomplete-release",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Entry {
    Started {
        run_id: String,
        pid: u32,
        pipeline: String,
        at: DateTime<Utc>,
    },
    /// A resource now exists (a VM, an overlay, an instance, an image...).
    Created {
        recipe: String,
        arch: Arch,
        kind: Kind,
        id: String,
        at: DateTime<Utc>,
    },
    /// A resource is gone.
    Removed {
        kind: Kind,
        id: String,
        at: DateTime<Utc>,
    },
    Step {
        recipe: String,
        arch: Arch,
        step: String,
        status: StepStatus,
        at: DateTime<Utc>,
    },
    Finished {
        outcome: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Started,
    Ok,
    Failed,
    Cleaned,
    CleanupFailed,
}

/// A resource the journal says was created and not removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resource {
    pub recipe: String,
    pub arch: Arch,
    pub kind: Kind,
    pub id: String,
}

/// An open journal of one run.
#[derive(Debug)]
pub struct Journal {
    run_id: String,
    path: PathBuf,
    file: Mutex<File>,
}

impl Journal {
    /// Where a state dir keeps its runs: `<state_dir>/runs/` (journals, and per run its logs).
    pub fn runs_dir(state_dir: &Path) -> PathBuf {
        crate::state_dir::StateDir(state_dir).runs()
    }

    /// The journal of `run_id`: `<state_dir>/runs/<run_id>.jsonl`.
    pub fn path_of(state_dir: &Path, run_id: &str) -> PathBuf {
        crate::state_dir::StateDir(state_dir).journal(run_id)
    }

    /// Every journal under the runs dir, by run ID, oldest first.
    pub fn all(state_dir: &Path) -> Result<Vec<(String, Vec<Entry>)>> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(Self::runs_dir(state_dir)) else {
            return Ok(out);
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        paths.sort();
        for p in paths {
            let run_id = p
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            out.push((run_id, Journal::read(&p)?));
        }
        Ok(out)
    }

    /// Creates `<state_dir>/runs/<run_id>.jsonl` (refusing to reuse an existing one).
    pub fn create(state_dir: &Path, run_id: &str) -> Result<Journal> {
        let dir = Self::runs_dir(state_dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let path = Self::path_of(state_dir, run_id);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(format!("creating journal {}", path.display()), e))?;
        // The directory entry must survive a crash as well as the contents.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(Journal {
            run_id: run_id.to_string(),
            path,
            file: Mutex::new(file),
        })
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where this run's logs go: `<state_dir>/runs/<run_id>/`.
    pub fn logs_dir(&self) -> PathBuf {
        self.path.with_extension("")
    }

    /// Appends one entry and fsyncs it before returning.
    pub fn record(&self, entry: &Entry) -> Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        write_entry(&mut file, &self.path, entry)
    }

    pub fn created(&self, recipe: &str, arch: Arch, kind: Kind, id: &str) -> Result<()> {
        self.record(&Entry::Created {
            recipe: recipe.to_string(),
            arch,
            kind,
            id: id.to_string(),
            at: Utc::now(),
        })
    }

    pub fn removed(&self, kind: Kind, id: &str) -> Result<()> {
        self.record(&Entry::Removed {
            kind,
            id: id.to_string(),
            at: Utc::now(),
        })
    }

    /// Appends one entry to an existing journal (sweep records what it removed for a dead run).
    pub fn append_to(path: &Path, entry: &Entry) -> Result<()> {
        let mut file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening journal {}", path.display()), e))?;
        write_entry(&mut file, path, entry)
    }

    /// Reads a journal, tolerating a last line cut short by a crash.
    pub fn read(path: &Path) -> Result<Vec<Entry>> {
        let file = File::open(path)
            .map_err(|e| Error::io(format!("reading journal {}", path.display()), e))?;
        let mut entries = Vec::new();
        for line in BufReader::new(file).lines() {
            let line =
                line.map_err(|e| Error::io(format!("reading journal {}", path.display()), e))?;
            match serde_json::from_str(&line) {
                Ok(entry) => entries.push(entry),
                Err(_) => break,
            }
        }
        Ok(entries)
    }

    /// Resources created and not removed, in creation order.
    pub fn outstanding(entries: &[Entry]) -> Vec<Resource> {
        let mut live: Vec<Resource> = Vec::new();
        for e in entries {
            match e {
                Entry::Created {
                    recipe,
                    arch,
                    kind,
                    id,
                    ..
                } => live.push(Resource {
                    recipe: recipe.clone(),
                    arch: *arch,
                    kind: *kind,
                    id: id.clone(),
                }),
                Entry::Removed { kind, id, .. } => {
                    live.retain(|r| !(r.kind == *kind && r.id == *id))
                }
                _ => {}
            }
        }
        live
    }
}

/// Appends one entry as a JSON line and fsyncs it.
fn write_entry(file: &mut File, path: &Path, entry: &Entry) -> Result<()> {
    let mut line = serde_json::to_vec(entry).expect("journal entries serialize");
    line.push(b'\n');
    file.write_all(&line)
        .and_then(|_| file.sync_data())
        .map_err(|e| Error::io(format!("writing journal {}", path.display()), e))
}

/// A new run ID: UTC time plus random hex, sortable and unique enough for one state dir.
pub fn new_run_id() -> String {
    format!(
        "{}-{:06x}",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        rand::random::<u32>() & 0xff_ffff
    )
}
