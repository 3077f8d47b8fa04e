//! Shared test helpers: a throwaway copy of the project's recipes, validators and pipelines
//! that a test may break on purpose, and a deterministic in-process provider (a test double
//! of bake's own `Provider` trait, not a fake of AWS or QEMU).

#![allow(dead_code)]

pub mod fake;
pub mod moto;
pub mod standin;

use std::path::{Path, PathBuf};

/// How pod-network says a pod lost its network: udev gave the host-side veth a new MAC.
pub const POD_LOST: (&str, &str) = ("pod-network", "udev rewrote the host veth's MAC");

/// The command lines of QEMU processes whose arguments mention `dir` (their disks are there).
pub fn qemu_running_under(dir: &Path) -> Vec<String> {
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains("qemu-system") && l.contains(&*dir.to_string_lossy()))
        .map(str::to_string)
        .collect()
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A temp copy of recipes/, validators/ and pipelines/.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["recipes", "validators", "pipelines"] {
            copy_dir(&repo().join(sub), &dir.path().join(sub));
        }
        Project { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// Removes the MAC drop-in (the recipe's `[[files]]` entry) from the eks-node recipe: the
    /// seed's incident.
    pub fn without_mac_dropin(&self) {
        self.without_file("eks-node", "99-bake-mac-policy.conf");
    }

    /// Removes the networkd drop-in from the eks-node recipe: a networkd restart then removes
    /// the routes and rules a CNI added.
    pub fn without_networkd_dropin(&self) {
        self.without_file("eks-node", "99-bake-keep-foreign-routes.conf");
    }

    /// Removes `recipe`'s `[[files]]` entry whose source is `steps/files/{name}`.
    pub fn without_file(&self, recipe: &str, name: &str) {
        let file = format!("recipes/{recipe}.toml");
        let text = self.read(&file);
        let entry = format!("[[files]]\nsource = \"steps/files/{name}\"");
        let start = text
            .find(&entry)
            .unwrap_or_else(|| panic!("{recipe} has no {entry}"));
        let end = start + text[start..].find("\n\n").unwrap() + 2;
        self.write(&file, format!("{}{}", &text[..start], &text[end..]));
    }

    /// Adds an executable step script `recipes/{recipe}/{name}.sh` (`body` after `set -eu`)
    /// and a step running it before the step `before` (or at the end).
    pub fn add_step(&self, recipe: &str, name: &str, body: &str, before: Option<&str>) {
        let file = format!("recipes/{recipe}/{name}.sh");
        self.write(&file, format!("#!/bin/sh\nset -eu\n{body}"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.path(&file), std::fs::Permissions::from_mode(0o755)).unwrap();
        let toml = format!("recipes/{recipe}.toml");
        let step = format!("[[steps]]\nname = \"{name}\"\nscript = \"{recipe}/{name}.sh\"\n");
        match before {
            Some(b) => self.edit(
                &toml,
                &format!("[[steps]]\nname = \"{b}\""),
                &format!("{step}\n[[steps]]\nname = \"{b}\""),
            ),
            None => {
                let text = self.read(&toml);
                self.write(&toml, format!("{text}\n{step}"));
            }
        }
    }

    /// Replaces `from` with `to` in a file, failing the test if `from` is not there.
    pub fn edit(&self, rel: &str, from: &str, to: &str) {
        let s = self.read(rel);
        assert!(s.contains(from), "{rel} does not contain {from:?}");
        self.write(rel, s.replacen(from, to, 1));
    }

    /// The AWS access key this project's `bake` runs with: each project signs with its own, so
    /// the calls of two pipelines in one test can be told apart (moto accepts any key).
    pub fn access_key(&self) -> String {
        let name = self.dir.path().file_name().unwrap().to_string_lossy();
        let id: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        format!("AKIABAKE{}", id.to_ascii_uppercase())
    }

    pub fn state(&self) -> PathBuf {
        self.path(".bake")
    }

    /// The run IDs that have a journal, oldest first.
    pub fn run_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.state().join("runs"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|f| f.extension().is_some_and(|e| e == "jsonl"))
                    .filter_map(|f| f.file_stem().map(|s| s.to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// 1-based line of the first occurrence of `needle` in `text`.
pub fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not found"));
    text[..at].matches('\n').count() + 1
}
