//! The local image store (`<state>/images/`): each image is a standalone qcow2 named by an ID
//! derived from its sha256, with the kernel and initrd it boots, its package manifest, and a
//! JSON record (key, base, status, validator verdict).

use crate::key::BakeKey;
use crate::provider::ImageRecord;
use crate::{Arch, Error, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// The files of one stored image.
#[derive(Debug, Clone)]
pub struct ImageFiles {
    pub id: String,
    pub disk: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub packages: PathBuf,
    pub record: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Store {
        Store {
            dir: crate::state_dir::StateDir(state_dir).images(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn files(&self, id: &str) -> ImageFiles {
        ImageFiles {
            id: id.to_string(),
            disk: self.dir.join(format!("{id}.qcow2")),
            kernel: self.dir.join(format!("{id}.vmlinuz")),
            initrd: self.dir.join(format!("{id}.initrd")),
            packages: self.dir.join(format!("{id}.packages")),
            record: self.dir.join(format!("{id}.json")),
        }
    }

    /// An image ID from the sha256 of its disk.
    pub fn id_for(sha256_hex: &str) -> String {
        format!("img-{}", &sha256_hex[..17])
    }

    pub fn write_record(&self, record: &ImageRecord) -> Result<()> {
        let path = self.files(&record.id).record;
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(record).expect("records serialize");
        std::fs::write(&tmp, json)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Every image record in the store.
    pub fn records(&self) -> Result<Vec<ImageRecord>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(format!("reading {}", self.dir.display()), e)),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            out.extend(self.read_record(&path)?);
        }
        out.sort_by_key(|a| a.created_at);
        Ok(out)
    }

    /// The record at `path`, if it is there, readable, and its image's disk exists (an
    /// unreadable record is logged and left out).
    fn read_record(&self, path: &Path) -> Result<Option<ImageRecord>> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        match serde_json::from_slice::<ImageRecord>(&text) {
            Ok(r) if self.files(&r.id).disk.is_file() => Ok(Some(r)),
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::warn!("ignoring unreadable image record {}: {e}", path.display());
                Ok(None)
            }
        }
    }

    /// The record of image `id`, if the store has it (its record and its disk).
    pub fn record(&self, id: &str) -> Result<Option<ImageRecord>> {
        self.read_record(&self.files(id).record)
    }

    /// The newest image of recipe × arch baked with `key`.
    pub fn find(&self, recipe: &str, arch: Arch, key: &BakeKey) -> Result<Option<ImageRecord>> {
        Ok(self
            .records()?
            .into_iter()
            .rev()
            .find(|r| r.recipe == recipe && r.arch == arch && &r.key == key))
    }

    /// Deletes an image's files.
    pub fn remove(&self, id: &str) -> Result<()> {
        let f = self.files(id);
        for p in [&f.record, &f.disk, &f.kernel, &f.initrd, &f.packages] {
            remove_path(p)?;
        }
        Ok(())
    }
}

/// Removes a file or a directory tree; one that is already gone is fine.
pub fn remove_path(path: &Path) -> Result<()> {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}
