//! `bake diff`: what changed between two releases of a recipe, per arch — packages added,
//! removed and changed, the kernel, kubelet and containerd, the base image and the bake key —
//! from the package manifests captured at bake time.

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

/// Parses `name<TAB>version<TAB>arch` lines into name → version.
pub fn parse_manifest(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .filter(|(n, _)| !n.is_empty())
        .collect()
}

pub fn diff_packages(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> PackageDiff {
    let mut d = PackageDiff::default();
    for (name, va) in a {
        match b.get(name) {
            None => d.removed.push(Change {
                package: name.clone(),
                from: Some(va.clone()),
                to: None,
            }),
            Some(vb) if vb != va => d.changed.push(Change {
                package: name.clone(),
                from: Some(va.clone()),
                to: Some(vb.clone()),
            }),
            _ => {}
        }
    }
    for (name, vb) in b {
        if !a.contains_key(name) {
            d.added.push(Change {
                package: name.clone(),
                from: None,
                to: Some(vb.clone()),
            });
        }
    }
    d
}

fn highlights(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<Change> {
    let interesting = |n: &str| {
        (n.starts_with("linux-image-") && n.chars().any(|c| c.is_ascii_digit()))
            || matches!(n, "kubelet" | "containerd" | "containerd.io" | "nodeadm")
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
        .map(|n| Change {
            package: n.clone(),
            from: a.get(n).cloned(),
            to: b.get(n).cloned(),
        })
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
        let ma = match ia {
            Some(i) => provider.package_manifest(&i.image_id).await?,
            None => None,
        };
        let mb = match ib {
            Some(i) => provider.package_manifest(&i.image_id).await?,
            None => None,
        };
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
    }
}
