//! What every input file shares, whichever reads it (recipes, the validator catalog,
//! pipelines): the rule for simple names, paths that must stay inside the project, and the size
//! limits of what a file may point at. Below it, one module per thing the user writes.

pub mod names;
pub mod pipeline;
pub mod recipe;
pub mod validate;

use std::path::{Component, Path, PathBuf};

/// Scripts larger than this are refused.
pub const MAX_SCRIPT_BYTES: u64 = 1024 * 1024;
/// Installed files larger than this are refused.
pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;

/// Letters, digits, `-` and `_`, starting with a letter or digit.
pub fn is_simple_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Resolves `rel` (relative to `base`) and requires the real file to be inside one of
/// `allowed`: no absolute paths, no `..`, no symlink that leads out.
pub fn resolve_inside(base: &Path, rel: &str, allowed: &[PathBuf]) -> Result<PathBuf, String> {
    let shown = allowed
        .iter()
        .map(|p| format!("{}/", p.display()))
        .collect::<Vec<_>>()
        .join(" or ");
    if rel.is_empty() {
        return Err("path is empty".into());
    }
    let p = Path::new(rel);
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "path `{rel}` uses `..`; it must stay inside {shown}"
                ))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "path `{rel}` is absolute; it must be relative and inside {shown}"
                ))
            }
        }
    }
    let joined = base.join(p);
    if !joined.exists() {
        return Err(format!("`{rel}` does not exist ({})", joined.display()));
    }
    let real = joined
        .canonicalize()
        .map_err(|e| format!("cannot resolve `{rel}`: {e}"))?;
    let inside = allowed
        .iter()
        .filter_map(|a| a.canonicalize().ok())
        .any(|a| real.starts_with(&a));
    if !inside {
        return Err(format!(
            "`{rel}` resolves to {} which is outside {shown} (symlinks may not lead out)",
            real.display()
        ));
    }
    if !real.is_file() {
        return Err(format!("`{rel}` is not a regular file"));
    }
    Ok(real)
}
