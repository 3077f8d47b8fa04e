//! What a run reports: each recipe × arch's outcome, the releases it published, and the
//! summary `--output json` prints (filled in even when the run fails).

use crate::key::BakeKey;
use crate::ops::plan::PlanItem;
use crate::release::ReleaseId;
use crate::Arch;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchOutcome {
    UpToDate,
    /// A validated image with this key already existed and was reused.
    Reused,
    Validated,
    Rejected,
    Failed,
    Interrupted,
    /// Not attempted: the recipe's lock is held by another run.
    Locked,
}

impl std::fmt::Display for ArchOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArchOutcome::UpToDate => "up to date",
            ArchOutcome::Reused => "reused",
            ArchOutcome::Validated => "validated",
            ArchOutcome::Rejected => "rejected",
            ArchOutcome::Failed => "failed",
            ArchOutcome::Interrupted => "interrupted",
            ArchOutcome::Locked => "locked",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ArchResult {
    pub recipe: String,
    pub arch: Arch,
    pub decision: String,
    pub outcome: ArchOutcome,
    pub key: BakeKey,
    pub image: Option<String>,
    pub validators: Option<String>,
    /// What passing validators noted (`<check>: <note>`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub recipe: String,
    pub release: ReleaseId,
    pub images: BTreeMap<Arch, String>,
    pub promoted_to: Vec<String>,
}

/// The machine-readable result of a run (`--output json`).
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_id: Option<String>,
    pub journal: Option<PathBuf>,
    pub up_to_date: bool,
    pub results: Vec<ArchResult>,
    pub published: Vec<Published>,
}

/// The result of an arch the run had nothing to do for.
pub(super) fn up_to_date(item: &PlanItem) -> ArchResult {
    ArchResult {
        recipe: item.recipe.clone(),
        arch: item.arch,
        decision: item.decision.label(),
        outcome: ArchOutcome::UpToDate,
        key: item.key.clone(),
        image: None,
        validators: None,
        notes: Vec::new(),
        error: None,
    }
}
