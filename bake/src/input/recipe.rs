//! Recipes (`recipes/<name>.toml`): what goes into an image. Loading a recipe checks
//! everything it references — scripts exist, are executable and stay inside the recipe's
//! directories; pinned files match their sha256; validators exist — so a bad recipe is
//! refused before anything is created.

use crate::diag::{read_toml, Diagnostic};
use crate::input::names::AwsBaseRef;
use crate::input::validate::{Catalog, Validator};
use crate::input::{is_simple_name, resolve_inside, MAX_FILE_BYTES, MAX_SCRIPT_BYTES};
use crate::Arch;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    description: String,
    base: RawBase,
    #[serde(default)]
    volume: Volume,
    #[serde(default)]
    files: Vec<RawFile>,
    steps: Vec<RawStep>,
    #[serde(default)]
    validators: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBase {
    local: Option<LocalBase>,
    aws: Option<BTreeMap<Arch, AwsBaseRef>>,
}

/// The local provider's base: a Debian root filesystem built with mmdebstrap.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LocalBase {
    /// Debian suite, e.g. `bookworm`.
    pub suite: String,
    /// Packages on top of what every node base has (systemd, udev, kernel, guest agent...).
    #[serde(default)]
    pub packages: Vec<String>,
    /// Keep the base build's package lists and downloaded .debs so steps can install or
    /// reinstall those packages without network (`apt-get install --no-download`). The
    /// generalize step should `apt-get clean` and drop the lists before the image is taken.
    #[serde(default)]
    pub offline_apt: bool,
}

/// Root volume settings. Volumes are always encrypted (rule 6).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// GiB. Unset: the base's own root volume size on AWS, 8 GiB for a local base. Never less
    /// than the base's root snapshot (RunInstances refuses that), checked at plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_gib: Option<Spanned<u32>>,
    #[serde(default = "default_volume_type", rename = "type")]
    pub volume_type: String,
    #[serde(default = "default_true")]
    pub encrypted: Spanned<bool>,
}

/// The root volume of a local base, and the fallback where a base does not say its size.
pub const DEFAULT_SIZE_GIB: u32 = 8;

impl Volume {
    /// What the recipe asks for, if anything.
    pub fn size(&self) -> Option<u32> {
        self.size_gib.as_ref().map(|s| *s.get_ref())
    }
}
fn default_volume_type() -> String {
    "gp3".into()
}
fn default_true() -> Spanned<bool> {
    Spanned::new(0..0, true)
}

impl Default for Volume {
    fn default() -> Self {
        Volume {
            size_gib: None,
            volume_type: default_volume_type(),
            encrypted: default_true(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: Spanned<String>,
    script: Spanned<String>,
    #[serde(default, with = "humantime_serde::option")]
    timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    source: Spanned<String>,
    dest: Spanned<String>,
    sha256: Spanned<String>,
    #[serde(default = "default_mode")]
    mode: Spanned<String>,
}

fn default_mode() -> Spanned<String> {
    Spanned::new(0..0, "0644".into())
}

/// A loaded, checked recipe.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub name: String,
    pub description: String,
    pub file: PathBuf,
    pub local: Option<LocalBase>,
    pub aws: BTreeMap<Arch, AwsBaseRef>,
    pub volume: Volume,
    /// `file:line:col` of `volume.size_gib`, for errors found later (at plan).
    pub size_place: Option<String>,
    pub files: Vec<FileSpec>,
    pub steps: Vec<StepSpec>,
    pub validators: Vec<Validator>,
}

/// One provisioning step: a script run as root on the builder.
#[derive(Debug, Clone)]
pub struct StepSpec {
    pub name: String,
    /// Path relative to `recipes/`, as written in the recipe.
    pub script: String,
    pub content: Vec<u8>,
    pub timeout: Option<Duration>,
}

/// A file installed into the image before the steps run.
#[derive(Debug, Clone)]
pub struct FileSpec {
    pub source: String,
    pub dest: String,
    pub sha256: String,
    pub mode: u32,
    pub content: Vec<u8>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// 16 bytes written as a UUID is (8-4-4-4-12 hex digits), with the version and variant bits
/// of `version` (4: random, 8: custom, e.g. from a digest) set as RFC 9562 says.
pub fn uuid_text(mut b: [u8; 16], version: u8) -> String {
    b[6] = (b[6] & 0x0f) | (version << 4);
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl Recipe {
    /// The root volume size for a base whose root snapshot is `base_gib` (None: unknown), or
    /// the refusal when the recipe asks for less than the snapshot holds.
    pub fn volume_size_for(
        &self,
        arch: Arch,
        base: &str,
        base_gib: Option<u32>,
    ) -> Result<u32, crate::Error> {
        match (self.volume.size(), base_gib) {
            (Some(want), Some(have)) if want < have => Err(crate::Error::Usage(format!(
                "{}: field `volume.size_gib`: {want} GiB is smaller than the {arch} base {base}, whose root snapshot is {have} GiB; EC2 refuses a volume smaller than its snapshot (ask for at least {have}, or leave size_gib out to take the base's size)",
                self.size_place
                    .clone()
                    .unwrap_or_else(|| self.file.display().to_string())
            ))),
            (Some(want), _) => Ok(want),
            (None, Some(have)) => Ok(have),
            (None, None) => Ok(DEFAULT_SIZE_GIB),
        }
    }

    /// Loads `recipes_dir/<name>.toml` and everything it references.
    pub fn load(recipes_dir: &Path, name: &str, catalog: &Catalog) -> Result<Recipe, Diagnostic> {
        let file = recipes_dir.join(format!("{name}.toml"));
        if !is_simple_name(name) {
            return Err(Diagnostic::file(
                &file,
                format!("`{name}` is not a valid recipe name (letters, digits, `-`, `_`)"),
            ));
        }
        let (raw, src) = read_toml::<RawRecipe>(&file)?;
        let at = |span: std::ops::Range<usize>, msg: String| Diagnostic::at(&file, &src, span, msg);

        if !*raw.volume.encrypted.get_ref() {
            return Err(at(
                raw.volume.encrypted.span(),
                "volumes are always encrypted; `encrypted = false` is not allowed".into(),
            ));
        }
        let allowed = [recipes_dir.join(name), recipes_dir.join("steps")];

        if raw.steps.is_empty() {
            return Err(Diagnostic::at_key(
                &file,
                &src,
                &["steps"],
                "a recipe needs at least one `[[steps]]` entry",
            ));
        }
        let steps = load_steps(raw.steps, recipes_dir, &allowed, &at)?;
        let files = load_files(raw.files, recipes_dir, &allowed, &at)?;
        let validators = load_validators(raw.validators, catalog, &at)?;

        let size_place = raw.volume.size_gib.as_ref().map(|s| {
            let (line, col) = crate::diag::line_col(&src, s.span().start);
            format!("{}:{line}:{col}", file.display())
        });
        Ok(Recipe {
            name: name.to_string(),
            description: raw.description,
            file,
            local: raw.base.local,
            aws: raw.base.aws.unwrap_or_default(),
            volume: raw.volume,
            size_place,
            files,
            steps,
            validators,
        })
    }
}

/// The recipe's steps: simple unique names, executable scripts inside the recipe's own
/// directory or the shared `steps/`, each within the script size limit.
fn load_steps(
    raw: Vec<RawStep>,
    recipes_dir: &Path,
    allowed: &[PathBuf],
    at: &dyn Fn(std::ops::Range<usize>, String) -> Diagnostic,
) -> Result<Vec<StepSpec>, Diagnostic> {
    let mut seen = BTreeSet::new();
    let mut steps = Vec::new();
    for step in raw {
        let step_name = step.name.get_ref();
        if !is_simple_name(step_name) {
            return Err(at(
                step.name.span(),
                format!("step name `{step_name}` must be letters, digits, `-` or `_`"),
            ));
        }
        if !seen.insert(step_name.clone()) {
            return Err(at(
                step.name.span(),
                format!("duplicate step name `{step_name}`"),
            ));
        }
        let path = resolve_inside(recipes_dir, step.script.get_ref(), allowed)
            .map_err(|m| at(step.script.span(), m))?;
        let content =
            read_limited(&path, MAX_SCRIPT_BYTES).map_err(|m| at(step.script.span(), m))?;
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if mode & 0o111 == 0 {
            return Err(at(
                step.script.span(),
                format!(
                    "script `{}` is not executable (chmod +x it)",
                    step.script.get_ref()
                ),
            ));
        }
        steps.push(StepSpec {
            name: step_name.clone(),
            script: step.script.into_inner(),
            content,
            timeout: step.timeout,
        });
    }
    Ok(steps)
}

/// The files the recipe installs: inside its directories, pinned by sha256, each to a
/// distinct guest path with an octal mode.
fn load_files(
    raw: Vec<RawFile>,
    recipes_dir: &Path,
    allowed: &[PathBuf],
    at: &dyn Fn(std::ops::Range<usize>, String) -> Diagnostic,
) -> Result<Vec<FileSpec>, Diagnostic> {
    let mut files = Vec::new();
    let mut dests = BTreeSet::new();
    for f in raw {
        let path = resolve_inside(recipes_dir, f.source.get_ref(), allowed)
            .map_err(|m| at(f.source.span(), m))?;
        let content = read_limited(&path, MAX_FILE_BYTES).map_err(|m| at(f.source.span(), m))?;
        let want = f.sha256.get_ref().to_ascii_lowercase();
        if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(at(f.sha256.span(), "sha256 must be 64 hex digits".into()));
        }
        let got = sha256_hex(&content);
        if got != want {
            return Err(at(
                f.sha256.span(),
                format!(
                    "sha256 mismatch for `{}`: pinned {want}, file has {got}",
                    f.source.get_ref()
                ),
            ));
        }
        let dest = check_guest_path(f.dest.get_ref()).map_err(|m| at(f.dest.span(), m))?;
        if !dests.insert(dest.clone()) {
            return Err(at(f.dest.span(), format!("two files install to `{dest}`")));
        }
        let mode = u32::from_str_radix(f.mode.get_ref(), 8)
            .ok()
            .filter(|m| *m <= 0o7777 && !f.mode.get_ref().is_empty())
            .ok_or_else(|| {
                at(
                    f.mode.span(),
                    format!(
                        "mode `{}` is not an octal file mode like \"0644\"",
                        f.mode.get_ref()
                    ),
                )
            })?;
        files.push(FileSpec {
            source: f.source.into_inner(),
            dest,
            sha256: got,
            mode,
            content,
        });
    }
    Ok(files)
}

/// The recipe's validators, each defined in the catalog and listed once.
fn load_validators(
    raw: Vec<Spanned<String>>,
    catalog: &Catalog,
    at: &dyn Fn(std::ops::Range<usize>, String) -> Diagnostic,
) -> Result<Vec<Validator>, Diagnostic> {
    let mut validators = Vec::new();
    let mut seen = BTreeSet::new();
    for v in raw {
        let validator = catalog.get(v.get_ref()).ok_or_else(|| {
            at(
                v.span(),
                format!(
                    "unknown validator `{}` (defined in {}: {})",
                    v.get_ref(),
                    catalog.file().display(),
                    catalog.names().join(", ")
                ),
            )
        })?;
        if !seen.insert(v.get_ref().clone()) {
            return Err(at(
                v.span(),
                format!("validator `{}` is listed twice", v.get_ref()),
            ));
        }
        validators.push(validator.clone());
    }
    Ok(validators)
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > limit {
        return Err(format!(
            "{} is {len} bytes; the limit is {limit}",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// An absolute, normalized path inside the image.
fn check_guest_path(dest: &str) -> Result<String, String> {
    if !dest.starts_with('/') {
        return Err(format!(
            "destination `{dest}` must be an absolute path in the image"
        ));
    }
    if dest.ends_with('/') {
        return Err(format!(
            "destination `{dest}` must name a file, not a directory"
        ));
    }
    for seg in dest[1..].split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!(
                "destination `{dest}` must be normalized (no `//`, `.` or `..`)"
            ));
        }
    }
    if dest.bytes().any(|b| b.is_ascii_control()) {
        return Err(format!("destination `{dest}` has control characters"));
    }
    Ok(dest.to_string())
}
