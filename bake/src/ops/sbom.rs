//! `bake sbom`: the software bill of materials of one image of a release, as CycloneDX 1.5
//! JSON, built from the package manifest captured on the builder at bake time (kept with the
//! image locally, beside the release on AWS) and checked against the digest the release
//! recorded. The image is the BOM's subject; each package is a component named by its
//! package URL, so scanners (Grype, Trivy, Dependency-Track) match it to advisories.

use crate::packages::{Family, Package, PackageList};
use crate::provider::Provider;
use crate::registry::Registry;
use crate::release::{Manifest, ReleaseId};
use crate::{Arch, Error, Result};
use cyclonedx_bom::models::component::Classification;
use cyclonedx_bom::models::property::{Properties, Property};
use cyclonedx_bom::prelude::*;
use std::str::FromStr;

/// The BOM of `recipe`'s `release` for `arch`.
pub async fn of_release(
    registry: &dyn Registry,
    provider: &dyn Provider,
    recipe: &str,
    release: &ReleaseId,
    arch: Arch,
) -> Result<Bom> {
    let manifest = registry.existing_release(recipe, release).await?;
    if !manifest.images.contains_key(&arch) {
        return Err(Error::Usage(format!(
            "release {release} of `{recipe}` has no {arch} image (it has: {})",
            manifest
                .images
                .keys()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let Some(text) =
        crate::inventory::package_manifest(registry, provider, &manifest, arch).await?
    else {
        return Err(Error::Usage(format!(
            "no package manifest is kept for release {release} of `{recipe}` ({arch}): it was published by a run resumed past its capture, or before bake kept manifests; bake it again to get an SBOM"
        )));
    };
    let revoked = registry.revocation(recipe, release).await?;
    Ok(build(
        &manifest,
        arch,
        &PackageList::parse(&text),
        revoked.map(|r| r.to_string()),
    ))
}

/// The BOM itself: pure, so its shape is tested without a registry.
pub fn build(manifest: &Manifest, arch: Arch, list: &PackageList, revoked: Option<String>) -> Bom {
    let image = &manifest.images[&arch];
    let mut subject = Component::new(
        Classification::OperatingSystem,
        &manifest.recipe,
        &manifest.release.to_string(),
        Some(image.image_id.clone()),
    );
    subject.description = Some(NormalizedString::new(&format!(
        "{} image {} of release {} ({arch}), baked by bake {}",
        manifest.provider, image.image_id, manifest.release, manifest.tool_version
    )));
    let mut props = vec![
        Property::new("bake:image-id", &image.image_id),
        Property::new("bake:arch", &arch.to_string()),
        Property::new("bake:provider", &manifest.provider),
        Property::new("bake:base", &image.base),
        Property::new("bake:key", &image.key.to_string()),
        Property::new("bake:created", &manifest.created_at.to_rfc3339()),
    ];
    if let Some(os) = &list.os {
        props.push(Property::new(
            "bake:os",
            &format!("{} {}", os.id, os.version),
        ));
    }
    if let Some(sha) = &image.packages_sha256 {
        props.push(Property::new("bake:package-manifest-sha256", sha));
    }
    if let Some(why) = revoked {
        props.push(Property::new("bake:revoked", &why));
    }
    subject.properties = Some(Properties(props));

    let components = list
        .packages
        .iter()
        .map(|p| {
            let purl = purl(p, list.os.as_ref());
            let mut c = Component::new(Classification::Library, &p.name, &p.version, purl.clone());
            c.purl = purl.as_deref().and_then(|s| Purl::from_str(s).ok());
            c.properties = Some(Properties(vec![
                Property::new("bake:package-type", family_name(p.family)),
                Property::new("bake:package-arch", &p.arch),
            ]));
            c
        })
        .collect();

    Bom {
        spec_version: SpecVersion::V1_5,
        metadata: Some(Metadata {
            timestamp: DateTime::now().ok(),
            component: Some(subject),
            ..Metadata::default()
        }),
        components: Some(Components(components)),
        ..Bom::default()
    }
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::Deb => "deb",
        Family::Rpm => "rpm",
        Family::Snap => "snap",
    }
}

/// The package URL (purl spec): `pkg:deb/<distro>/<name>@<version>?arch=..&distro=..`, rpm
/// likewise, snaps as `pkg:generic/snapcraft/<name>@<version>` (purl has no snap type). None
/// where the spec cannot express the name.
fn purl(p: &Package, os: Option<&crate::packages::Os>) -> Option<String> {
    let (ty, namespace) = match p.family {
        Family::Deb | Family::Rpm => (family_name(p.family), os.map(|o| o.id.as_str())),
        Family::Snap => ("generic", Some("snapcraft")),
    };
    let mut b = purl::GenericPurlBuilder::new(ty.to_string(), p.name.as_str())
        .with_version(p.version.as_str());
    if let Some(ns) = namespace {
        b = b.with_namespace(ns);
    }
    if p.family != Family::Snap {
        b = b.with_qualifier("arch", p.arch.as_str()).ok()?;
        if let Some(o) = os {
            b = b
                .with_qualifier("distro", format!("{}-{}", o.id, o.version))
                .ok()?;
        }
    }
    b.build().ok().map(|u| u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::ReleaseImage;
    use cyclonedx_bom::validation::Validate;

    fn manifest() -> Manifest {
        let mut images = std::collections::BTreeMap::new();
        images.insert(
            Arch::X86_64,
            ReleaseImage {
                image_id: "ami-0123456789abcdef0".into(),
                key: crate::key::BakeKey::from_hex(&"a".repeat(64)),
                base: "ami-base".into(),
                validated_at: chrono::Utc::now(),
                validators: Default::default(),
                packages_sha256: Some("b".repeat(64)),
                kubelet: Some("1.31.2".into()),
                packages: None,
                run_id: "r".into(),
                copies: Default::default(),
            },
        );
        Manifest {
            recipe: "eks-node".into(),
            release: "2026.12.03-1".parse().unwrap(),
            provider: "aws".into(),
            tool_version: "0.1.0".into(),
            created_at: chrono::Utc::now(),
            images,
        }
    }

    #[test]
    fn a_bom_names_the_image_and_every_package_by_purl_and_validates() {
        let list = PackageList::parse(
            "#os\tubuntu\t24.04\nlibc6\t2.39-0ubuntu8.3\tamd64\nlibstdc++6\t14.2.0-4ubuntu2~24.04\tamd64\nkubelet-eks\t1.31.2\tsnap\n",
        );
        let bom = build(
            &manifest(),
            Arch::X86_64,
            &list,
            Some("today by ops: CVE".into()),
        );
        assert!(
            bom.validate_version(SpecVersion::V1_5).passed(),
            "{:?}",
            bom.validate_version(SpecVersion::V1_5)
        );
        let mut out = Vec::new();
        bom.clone().output_as_json_v1_5(&mut out).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["bomFormat"], "CycloneDX");
        assert_eq!(json["specVersion"], "1.5");
        assert_eq!(
            json["metadata"]["component"]["bom-ref"],
            "ami-0123456789abcdef0"
        );
        assert_eq!(json["metadata"]["component"]["version"], "2026.12.03-1");
        let purls: Vec<&str> = json["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["purl"].as_str().unwrap())
            .collect();
        assert_eq!(
            purls,
            vec![
                "pkg:deb/ubuntu/libc6@2.39-0ubuntu8.3?arch=amd64&distro=ubuntu-24.04",
                "pkg:deb/ubuntu/libstdc++6@14.2.0-4ubuntu2~24.04?arch=amd64&distro=ubuntu-24.04",
                "pkg:generic/snapcraft/kubelet-eks@1.31.2",
            ]
        );
        let props = json["metadata"]["component"]["properties"]
            .as_array()
            .unwrap();
        assert!(props.iter().any(|p| p["name"] == "bake:revoked"));
        // What it prints, a reader of CycloneDX reads back.
        let back = Bom::parse_from_json_v1_5(&out[..]).unwrap();
        assert_eq!(back.components.unwrap().0.len(), 3);
    }
}
