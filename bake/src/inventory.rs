//! What a release's images contain: the package manifest captured on the builder, kept by the
//! registry beside the release (SSM) or by the provider with the image (local), and checked
//! against the digest the release recorded at bake time. `bake diff` and `bake sbom` read it
//! here; `packages` parses it.

use crate::provider::Provider;
use crate::registry::Registry;
use crate::release::Manifest;
use crate::{Arch, Error, Result};

/// The package manifest of a release's image: kept by the registry (AWS) or the provider
/// (local), and checked against the digest recorded at bake time.
pub async fn package_manifest(
    registry: &dyn Registry,
    provider: &dyn Provider,
    release: &Manifest,
    arch: Arch,
) -> Result<Option<String>> {
    let Some(image) = release.images.get(&arch) else {
        return Ok(None);
    };
    let text = match registry
        .package_manifest(&release.recipe, &release.release, arch)
        .await?
    {
        Some(t) => Some(t),
        None => provider.package_manifest(&image.image_id).await?,
    };
    if let (Some(t), Some(want)) = (&text, &image.packages_sha256) {
        let got = crate::input::recipe::sha256_hex(t.as_bytes());
        if &got != want {
            return Err(Error::Conflict(format!(
                "the package manifest kept for {} {} {arch} has sha256 {got}, not the {want} recorded at bake time",
                release.recipe, release.release
            )));
        }
    }
    Ok(text)
}
