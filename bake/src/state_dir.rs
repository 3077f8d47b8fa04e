//! The layout of a state dir (`.bake/` by default; `--state-dir`, `BAKE_STATE_DIR`), named in
//! one place: every path under it is built here.

use std::path::{Path, PathBuf};

/// A state dir and the paths bake keeps under it.
#[derive(Debug, Clone, Copy)]
pub struct StateDir<'a>(pub &'a Path);

impl StateDir<'_> {
    /// `runs/`: one journal per run, and beside each its logs.
    pub fn runs(self) -> PathBuf {
        self.0.join("runs")
    }

    /// `runs/<run-id>.jsonl`: a run's journal.
    pub fn journal(self, run_id: &str) -> PathBuf {
        self.runs().join(format!("{run_id}.jsonl"))
    }

    /// `work/`: sockets, overlays and seeds of running local bakes.
    pub fn work(self) -> PathBuf {
        self.0.join("work")
    }

    /// `work/<run-id>/`: one run's.
    pub fn work_of(self, run_id: &str) -> PathBuf {
        self.work().join(run_id)
    }

    /// `images/`: the local image store.
    pub fn images(self) -> PathBuf {
        self.0.join("images")
    }

    /// `registry.db`: the local registry.
    pub fn registry(self) -> PathBuf {
        self.0.join("registry.db")
    }
}
