//! Kubernetes versions and the version-skew policy promotion checks: a node's kubelet may not
//! be newer than its cluster's API server, nor more than three minor versions older.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A Kubernetes `major.minor`, e.g. 1.31.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl FromStr for KubeVersion {
    type Err = String;

    /// Exactly `major.minor` (a cluster's version), e.g. "1.31".
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a Kubernetes version like \"1.31\" (major.minor)");
        let (major, minor) = s.split_once('.').ok_or_else(bad)?;
        let num = |p: &str| {
            (!p.is_empty() && p.len() <= 3 && p.chars().all(|c| c.is_ascii_digit()))
                .then(|| p.parse::<u32>().ok())
                .flatten()
                .ok_or_else(bad)
        };
        Ok(KubeVersion {
            major: num(major)?,
            minor: num(minor)?,
        })
    }
}

impl Serialize for KubeVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KubeVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl KubeVersion {
    /// The `major.minor` of a package version as dpkg, rpm or snap print it: `1.31.2-1.1`,
    /// `1:1.31.2-eks-1-31-5`, `v1.31.2`, `1.31.2-1.amzn2023.0.1`.
    pub fn of_package(version: &str) -> Option<KubeVersion> {
        let v = version.split_once(':').map_or(version, |(_, v)| v);
        let v = v.trim_start_matches('v');
        let mut parts = v.split(['.', '-', '+', '~']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(KubeVersion { major, minor })
    }
}

/// Why a kubelet of `kubelet` may not join a cluster at `cluster`, or None when it may.
pub fn skew(kubelet: KubeVersion, cluster: KubeVersion) -> Option<String> {
    if kubelet.major != cluster.major {
        return Some(format!(
            "kubelet {kubelet} and the cluster's Kubernetes {cluster} differ in major version"
        ));
    }
    if kubelet > cluster {
        return Some(format!(
            "kubelet {kubelet} is newer than the cluster's Kubernetes {cluster} (a kubelet may not be newer than its API server)"
        ));
    }
    if cluster.minor - kubelet.minor > 3 {
        return Some(format!(
            "kubelet {kubelet} is {} minor versions older than the cluster's Kubernetes {cluster} (at most 3)",
            cluster.minor - kubelet.minor
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> KubeVersion {
        s.parse().unwrap()
    }

    #[test]
    fn versions_parse_strictly() {
        assert_eq!(
            v("1.31"),
            KubeVersion {
                major: 1,
                minor: 31
            }
        );
        for bad in [
            "1", "1.31.2", "v1.31", "1.x", "", ".31", "1.", "1.3a", "1,31",
        ] {
            assert!(bad.parse::<KubeVersion>().is_err(), "{bad}");
        }
    }

    #[test]
    fn package_versions_give_major_minor() {
        for (p, want) in [
            ("1.31.2-1.1", "1.31"),
            ("1:1.30.4-eks-1-30-7", "1.30"),
            ("v1.29.0", "1.29"),
            ("1.32.1-1.amzn2023.0.1", "1.32"),
            ("1.31", "1.31"),
        ] {
            assert_eq!(KubeVersion::of_package(p), Some(v(want)), "{p}");
        }
        assert_eq!(KubeVersion::of_package("latest"), None);
    }

    #[test]
    fn the_skew_policy_allows_equal_to_three_minors_older() {
        let c = v("1.31");
        for ok in ["1.31", "1.30", "1.29", "1.28"] {
            assert_eq!(skew(v(ok), c), None, "{ok}");
        }
        assert!(skew(v("1.32"), c).unwrap().contains("newer"));
        assert!(skew(v("1.27"), c)
            .unwrap()
            .contains("4 minor versions older"));
        assert!(skew(v("2.0"), c).unwrap().contains("major"));
        assert!(skew(v("0.31"), c).is_some());
    }
}
