//! Releases (`YYYY.MM.DD-N`): one validated image per arch of a recipe plus a manifest.
//! Immutable once published. Channels point clusters at releases; their history is the
//! audit log and the rollback list.

use crate::key::BakeKey;
use crate::verdict::Status;
use crate::Arch;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A release version, `YYYY.MM.DD-N`, ordered by date then N.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReleaseId {
    date: NaiveDate,
    n: u32,
}

impl ReleaseId {
    pub fn new(date: NaiveDate, n: u32) -> ReleaseId {
        ReleaseId { date, n }
    }

    /// The next ID for `date` given the IDs that exist.
    pub fn next<'a>(
        date: NaiveDate,
        existing: impl IntoIterator<Item = &'a ReleaseId>,
    ) -> ReleaseId {
        let n = existing
            .into_iter()
            .filter(|r| r.date == date)
            .map(|r| r.n)
            .max()
            .unwrap_or(0);
        ReleaseId { date, n: n + 1 }
    }
}

impl fmt::Display for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.date.format("%Y.%m.%d"), self.n)
    }
}

impl FromStr for ReleaseId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("`{s}` is not a release ID (expected YYYY.MM.DD-N, e.g. 2026.11.25-1)");
        let (date, n) = s.split_once('-').ok_or_else(bad)?;
        let date = NaiveDate::parse_from_str(date, "%Y.%m.%d").map_err(|_| bad())?;
        if date.format("%Y.%m.%d").to_string() != s.split_once('-').map(|x| x.0).unwrap_or("") {
            return Err(bad());
        }
        let n: u32 = n.parse().map_err(|_| bad())?;
        if n == 0 || n.to_string() != s.split_once('-').map(|x| x.1).unwrap_or("") {
            return Err(bad());
        }
        Ok(ReleaseId { date, n })
    }
}

impl TryFrom<String> for ReleaseId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ReleaseId> for String {
    fn from(r: ReleaseId) -> String {
        r.to_string()
    }
}

impl Ord for ReleaseId {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.date, self.n).cmp(&(other.date, other.n))
    }
}

impl PartialOrd for ReleaseId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One arch's image in a release, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseImage {
    pub image_id: String,
    pub key: BakeKey,
    pub base: String,
    pub validated_at: DateTime<Utc>,
    /// Validator name → status.
    pub validators: BTreeMap<String, Status>,
    /// sha256 of the package manifest captured at bake time.
    pub packages_sha256: Option<String>,
    /// The kubelet's version in the image, as its package manager printed it (promotion checks
    /// it against the cluster's Kubernetes version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet: Option<String>,
    /// The package manifest itself, from the bake to the registry that keeps it (never in the
    /// release's JSON: it would not fit an SSM value).
    #[serde(skip)]
    pub packages: Option<String>,
    pub run_id: String,
    /// The image's copies in other regions (region → image ID); each region has the release
    /// parameters with its own ID.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub copies: BTreeMap<String, String>,
}

/// The release manifest (`.../releases/<release>/manifest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub recipe: String,
    pub release: ReleaseId,
    pub provider: String,
    pub tool_version: String,
    pub created_at: DateTime<Utc>,
    pub images: BTreeMap<Arch, ReleaseImage>,
}

/// What deciding a release's fate needs of it: its ID and each arch's image. Read whole from
/// the manifests where the registry keeps nothing smaller; read from the index alone on SSM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseImages {
    pub release: ReleaseId,
    pub images: BTreeMap<Arch, String>,
}

impl From<&Manifest> for ReleaseImages {
    fn from(m: &Manifest) -> Self {
        ReleaseImages {
            release: m.release.clone(),
            images: m
                .images
                .iter()
                .map(|(a, i)| (*a, i.image_id.clone()))
                .collect(),
        }
    }
}

/// Why a release was withdrawn, by whom, when. Written once beside the release, which itself
/// never changes; promote and pin refuse a revoked release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub reason: String,
    pub who: String,
    pub at: DateTime<Utc>,
}

impl std::fmt::Display for Revocation {
    /// `<when> by <who>: <reason>`, as refusals name it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} by {}: {}",
            self.at.format("%Y-%m-%d %H:%M UTC"),
            self.who,
            self.reason
        )
    }
}

/// One entry of a channel's history: where it pointed from then on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelEntry {
    /// 1, 2, 3... per channel; Terraform can pin a channel parameter by this version.
    pub version: u64,
    pub release: ReleaseId,
    pub images: BTreeMap<Arch, String>,
    /// The channel it was promoted from, if any.
    pub from: Option<String>,
    pub who: String,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// A channel move to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelMove {
    pub release: ReleaseId,
    pub images: BTreeMap<Arch, String>,
    pub from: Option<String>,
    pub who: String,
    pub reason: Option<String>,
}

impl ChannelMove {
    /// The history entry of this move, the channel's `version`-th, made now.
    pub fn into_entry(self, version: u64) -> ChannelEntry {
        ChannelEntry {
            version,
            release: self.release,
            images: self.images,
            from: self.from,
            who: self.who,
            reason: self.reason,
            at: Utc::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_ids_parse_order_and_count_up() {
        let a: ReleaseId = "2026.11.25-2".parse().unwrap();
        let b: ReleaseId = "2026.11.25-10".parse().unwrap();
        let c: ReleaseId = "2026.12.01-1".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(a.to_string(), "2026.11.25-2");
        let next = ReleaseId::next(NaiveDate::from_ymd_opt(2026, 11, 25).unwrap(), [&a, &b, &c]);
        assert_eq!(next.to_string(), "2026.11.25-11");
        for bad in [
            "2026.11.25",
            "2026-11-25-1",
            "2026.13.01-1",
            "2026.11.25-0",
            "2026.11.25-01",
            "2026.1.5-1",
        ] {
            assert!(bad.parse::<ReleaseId>().is_err(), "{bad} accepted");
        }
    }
}
