//! `bake diff`: what changed between two releases of a recipe, per arch — packages added,
//! removed and changed, the kernel, kubelet and containerd, the base image and the bake key —
//! from the package manifests captured at bake time (kept with the image locally, beside the
//! release on AWS). Versions are ordered as dpkg or rpm order them, so a downgrade is flagged.

use crate::packages::{compare, Family, PackageList};
use crate::provider::Provider;
use crate::registry::Registry;
use crate::release::ReleaseId;
use crate::{Arch, Result};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub package: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// The new version is older than the old one, as the package manager orders them.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub downgrade: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct PackageDiff {
    pub added: Vec<Change>,
    pub removed: Vec<Change>,
    pub changed: Vec<Change>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArchDiff {
    pub arch: Arch,
    pub image: (Option<String>, Option<String>),
    pub base: (Option<String>, Option<String>),
    pub key_changed: bool,
    /// Kernel, kubelet and containerd versions, where either side has them.
    pub highlights: Vec<Change>,
    pub packages: PackageDiff,
    /// Why package details are missing (a manifest was not kept for an image).
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub recipe: String,
    pub from: ReleaseId,
    pub to: ReleaseId,
    pub arches: Vec<ArchDiff>,
}

/// A manifest as name → (version, how its versions are ordered).
pub type Versions = BTreeMap<String, (String, Family)>;

/// Parses a package manifest into name → version and family.
pub fn parse_manifest(text: &str) -> Versions {
    PackageList::parse(text)
        .packages
        .into_iter()
        .map(|p| (p.name, (p.version, p.family)))
        .collect()
}

fn change(package: &str, from: Option<&(String, Family)>, to: Option<&(String, Family)>) -> Change {
    let downgrade = match (from, to) {
        (Some((a, fam)), Some((b, _))) => compare(*fam, b, a) == std::cmp::Ordering::Less,
        _ => false,
    };
    Change {
        package: package.to_string(),
        from: from.map(|v| v.0.clone()),
        to: to.map(|v| v.0.clone()),
        downgrade,
    }
}

pub fn diff_packages(a: &Versions, b: &Versions) -> PackageDiff {
    let mut d = PackageDiff::default();
    for (name, va) in a {
        match b.get(name) {
            None => d.removed.push(change(name, Some(va), None)),
            Some(vb) if vb.0 != va.0 => d.changed.push(change(name, Some(va), Some(vb))),
            _ => {}
        }
    }
    for (name, vb) in b {
        if !a.contains_key(name) {
            d.added.push(change(name, None, Some(vb)));
        }
    }
    d
}

fn highlights(a: &Versions, b: &Versions) -> Vec<Change> {
    let interesting = |n: &str| {
        (n.starts_with("linux-image-") && n.chars().any(|c| c.is_ascii_digit()))
            || matches!(
                n,
                "kubelet" | "kubelet-eks" | "containerd" | "containerd.io" | "nodeadm"
            )
    };
    let mut names: Vec<&String> = a
        .keys()
        .chain(b.keys())
        .filter(|n| interesting(n))
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| change(n, a.get(n), b.get(n)))
        .filter(|c| c.from != c.to)
        .collect()
}

pub async fn diff(
    registry: &dyn Registry,
    provider: &dyn Provider,
    recipe: &str,
    from: &ReleaseId,
    to: &ReleaseId,
) -> Result<Diff> {
    let a = registry.existing_release(recipe, from).await?;
    let b = registry.existing_release(recipe, to).await?;
    let mut arches: Vec<Arch> = a.images.keys().chain(b.images.keys()).copied().collect();
    arches.sort();
    arches.dedup();
    let mut out = Vec::new();
    for arch in arches {
        let ia = a.images.get(&arch);
        let ib = b.images.get(&arch);
        let ma = crate::inventory::package_manifest(registry, provider, &a, arch).await?;
        let mb = crate::inventory::package_manifest(registry, provider, &b, arch).await?;
        let note = match (&ma, &mb) {
            (Some(_), Some(_)) => None,
            _ => Some("a package manifest is not available for one of the images; only base and key are compared".into()),
        };
        let pa = ma.as_deref().map(parse_manifest).unwrap_or_default();
        let pb = mb.as_deref().map(parse_manifest).unwrap_or_default();
        let (packages, highlights) = if note.is_none() {
            (diff_packages(&pa, &pb), highlights(&pa, &pb))
        } else {
            (PackageDiff::default(), Vec::new())
        };
        out.push(ArchDiff {
            arch,
            image: (
                ia.map(|i| i.image_id.clone()),
                ib.map(|i| i.image_id.clone()),
            ),
            base: (ia.map(|i| i.base.clone()), ib.map(|i| i.base.clone())),
            key_changed: ia.map(|i| &i.key) != ib.map(|i| &i.key),
            highlights,
            packages,
            note,
        });
    }
    Ok(Diff {
        recipe: recipe.to_string(),
        from: from.clone(),
        to: to.clone(),
        arches: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_diff() {
        let a = parse_manifest("apt\t2.6.1\tamd64\nlinux-image-6.1.0-26-cloud-amd64\t6.1.112-1\tamd64\nunattended-upgrades\t2.9.1\tall\n");
        let b = parse_manifest("apt\t2.6.2\tamd64\nlinux-image-6.1.0-28-cloud-amd64\t6.1.119-1\tamd64\nkubelet\t1.31.2\tamd64\n");
        let d = diff_packages(&a, &b);
        assert_eq!(
            d.changed
                .iter()
                .map(|c| c.package.as_str())
                .collect::<Vec<_>>(),
            vec!["apt"]
        );
        assert_eq!(d.added.len(), 2);
        assert_eq!(d.removed.len(), 2);
        let h = highlights(&a, &b);
        assert_eq!(h.len(), 3, "{h:?}");
        assert!(h.iter().any(|c| c.package == "kubelet" && c.from.is_none()));
        assert!(d.changed.iter().all(|c| !c.downgrade));
    }

    #[test]
    fn a_downgrade_is_flagged_by_the_package_managers_order() {
        // dpkg: 252.30-1~deb12u2 is older than 252.30-1; 1.10 is newer than 1.9.
        let a = parse_manifest("#os\tdebian\t12\nudev\t252.30-1\tamd64\nfoo\t1.9-1\tamd64\n");
        let b =
            parse_manifest("#os\tdebian\t12\nudev\t252.30-1~deb12u2\tamd64\nfoo\t1.10-1\tamd64\n");
        let d = diff_packages(&a, &b);
        let flagged: Vec<(&str, bool)> = d
            .changed
            .iter()
            .map(|c| (c.package.as_str(), c.downgrade))
            .collect();
        assert_eq!(flagged, vec![("foo", false), ("udev", true)]);
        // rpm: 1.0~rc1 is older than 1.0.
        let a = parse_manifest("kubelet\t1.31.0-1.amzn2023\tx86_64\n");
        let b = parse_manifest("kubelet\t1.31.0~rc1-1.amzn2023\tx86_64\n");
        assert!(diff_packages(&a, &b).changed[0].downgrade);
        assert!(highlights(&a, &b)[0].downgrade);
    }
}
