//! The bake key: sha256 over a canonical encoding of everything that decides an image's
//! content — the recipe as parsed (not its TOML text), every script and file it references,
//! its validators, the arch, the resolved base image ID and the key format version.
//! Same key → same image, so a scheduled run with nothing new does nothing.

use crate::input::recipe::{sha256_hex, Recipe};
use crate::Arch;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Bumped whenever the canonical encoding changes, so old keys never collide with new ones.
pub const KEY_FORMAT: &str = "bake-key/1";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BakeKey(String);

impl BakeKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The first 12 hex digits, for tables and names.
    pub fn short(&self) -> &str {
        &self.0[..12.min(self.0.len())]
    }
    pub fn from_hex(s: &str) -> BakeKey {
        BakeKey(s.to_string())
    }
}

impl fmt::Display for BakeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Serialize)]
struct Canonical<'a> {
    format: &'a str,
    recipe: &'a str,
    arch: Arch,
    base: &'a str,
    volume: (Option<u32>, &'a str),
    files: Vec<(&'a str, String, u32)>,
    steps: Vec<(&'a str, String, Option<u64>)>,
    validators: Vec<ValidatorKey<'a>>,
}

/// Everything about a validator that decides its verdict.
#[derive(Serialize)]
struct ValidatorKey<'a> {
    name: &'a str,
    script_sha256: String,
    /// Absent for a script (the default), so keys made before bake judged any validator
    /// itself are unchanged.
    #[serde(skip_serializing_if = "is_script")]
    judged_by: crate::input::validate::JudgedBy,
    scope: String,
    needs_cluster: bool,
    reads_image: bool,
    applies_to: &'a [String],
    /// Absent when the script may not say "does not apply" (as before that existed).
    #[serde(skip_serializing_if = "Option::is_none")]
    not_applicable_when: Option<&'a str>,
}

fn is_script(j: &crate::input::validate::JudgedBy) -> bool {
    *j == crate::input::validate::JudgedBy::Script
}

/// Computes the key of `recipe` for `arch` on the resolved base image `base_id`.
pub fn bake_key(recipe: &Recipe, arch: Arch, base_id: &str) -> BakeKey {
    let canonical = Canonical {
        format: KEY_FORMAT,
        recipe: &recipe.name,
        arch,
        base: base_id,
        volume: (recipe.volume.size(), &recipe.volume.volume_type),
        files: recipe
            .files
            .iter()
            .map(|f| (f.dest.as_str(), sha256_hex(&f.content), f.mode))
            .collect(),
        steps: recipe
            .steps
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    sha256_hex(&s.content),
                    s.timeout.map(|t| t.as_millis() as u64),
                )
            })
            .collect(),
        validators: recipe
            .validators
            .iter()
            .map(|v| ValidatorKey {
                name: &v.name,
                script_sha256: sha256_hex(&v.content),
                judged_by: v.judged_by,
                scope: format!("{:?}", v.scope),
                needs_cluster: v.needs_cluster,
                reads_image: v.reads_image,
                applies_to: &v.applies_to,
                not_applicable_when: v.not_applicable_when.as_deref(),
            })
            .collect(),
    };
    let bytes = serde_json::to_vec(&canonical).expect("canonical key encoding serializes");
    BakeKey(hex::encode(Sha256::digest(&bytes)))
}
