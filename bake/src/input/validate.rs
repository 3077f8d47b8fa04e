//! Validators: checks of a new image on its canary. Their definitions live in
//! `validators/catalog.toml`. Most have a script, run on the canary, whose exit code decides: 0
//! pass, 77 skipped (reason on stdout), 75 could not judge (no verdict: the run fails, the
//! image is not rejected), anything else fail; a few bake judges itself from the cluster's API
//! (`judged_by = "cluster-api"`). Skipped is never pass: an image is accepted only if every
//! validator that applies passed or does not apply.

use crate::diag::{read_toml, Diagnostic};
use crate::input::{is_simple_name, resolve_inside, MAX_SCRIPT_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Exit code a validator script uses to say "cannot check here", with the reason on stdout.
pub const SKIP_EXIT: i32 = 77;

/// Exit code a validator script uses to say "could not judge the image yet": what it checks
/// never came up in time (a canary that did not join its cluster). That is no verdict on the
/// image: the bake fails (exit 1), the image is not marked rejected, and the next run tries
/// again — unlike a check that ran and failed (rejected, exit 3).
pub const NOT_JUDGED_EXIT: i32 = 75;

/// Exit code a validator script uses to say "does not apply on this canary", with the reason on
/// stdout — honoured only for a validator whose catalog entry says when that may be
/// (`not_applicable_when`); from any other it is a failure, so no script can wave itself through.
pub const NOT_APPLICABLE_EXIT: i32 = 78;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Runs on the canary node.
    #[default]
    Node,
    /// Checks the image's attributes from outside.
    Image,
}

/// Who judges a validator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum JudgedBy {
    /// Its script, run on the canary.
    #[default]
    Script,
    /// bake itself, from the API of the cluster the canary joined (its node, as the cluster
    /// sees it): nothing runs on the canary, so it needs no tool the base may lack.
    ClusterApi,
    /// bake itself, with a pod it runs on the canary's node through the cluster's API: the
    /// cluster's own CNI wires it (`steps::pod_network`).
    ClusterPod,
}

impl JudgedBy {
    /// Its name in the catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            JudgedBy::Script => "script",
            JudgedBy::ClusterApi => "cluster-api",
            JudgedBy::ClusterPod => "cluster-pod",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValidator {
    checks: Spanned<String>,
    #[serde(default)]
    script: Option<Spanned<String>>,
    #[serde(default)]
    judged_by: JudgedBy,
    #[serde(default)]
    scope: Scope,
    #[serde(default)]
    needs_cluster: bool,
    #[serde(default)]
    reads_image: bool,
    #[serde(default)]
    applies_to: Vec<String>,
    #[serde(default)]
    not_applicable_when: Option<Spanned<String>>,
    #[serde(default)]
    audit: Option<Spanned<bool>>,
}

/// One validator from the catalog.
#[derive(Debug, Clone, Serialize)]
pub struct Validator {
    pub name: String,
    /// What it checks, in a sentence.
    pub checks: String,
    /// The script run on the canary (empty when bake judges it from the cluster's API).
    pub script: String,
    #[serde(skip)]
    pub content: Vec<u8>,
    pub judged_by: JudgedBy,
    pub scope: Scope,
    /// Needs a joined cluster node (kubelet, node Ready); skipped where there is none.
    pub needs_cluster: bool,
    /// Judges the image's root filesystem as the image shipped it (mounted read-only at
    /// `BAKE_IMAGE_ROOT` from a second disk made from the image), not what the canary's first
    /// boot made of it: machine-id, host keys, logs and anything else cloud-init writes.
    pub reads_image: bool,
    /// The distributions it applies to (os-release `ID`, matched against `ID` and `ID_LIKE`);
    /// empty = all. Elsewhere it is reported as not applicable and does not run.
    pub applies_to: Vec<String>,
    /// When its script may answer "does not apply here" (exit [`NOT_APPLICABLE_EXIT`]): a
    /// condition only the running canary can tell (which service manages the network). None:
    /// that exit is a failure.
    pub not_applicable_when: Option<String>,
    /// Safe to run on a live node, to tell whether it is still as baked: run with
    /// `BAKE_AUDIT=1` it changes nothing a node runs on (no restart, no `udevadm trigger`, no
    /// link or file left behind, only its own temp dir), in bounded time.
    pub audit: bool,
}

/// All validators defined in `validators/catalog.toml`.
#[derive(Debug, Clone)]
pub struct Catalog {
    file: PathBuf,
    validators: BTreeMap<String, Validator>,
}

impl Catalog {
    /// Long because each field of a catalog entry is checked in turn, each error at its own span
    /// (file:line), the script read last; split up, the rules of one entry would scatter.
    pub fn load(validators_dir: &Path) -> Result<Catalog, Diagnostic> {
        let file = validators_dir.join("catalog.toml");
        let (raw, src) = read_toml::<BTreeMap<String, RawValidator>>(&file)?;
        let mut validators = BTreeMap::new();
        let allowed = [validators_dir.to_path_buf()];
        for (name, v) in raw {
            let at = |span: std::ops::Range<usize>, m: String| Diagnostic::at(&file, &src, span, m);
            if !is_simple_name(&name) {
                return Err(at(
                    v.checks.span(),
                    format!("validator name `{name}` must be letters, digits, `-` or `_`"),
                ));
            }
            if let Some(bad) = v.applies_to.iter().find(|d| !is_simple_name(d)) {
                return Err(at(v.checks.span(), format!(
                    "validator `{name}`: applies_to entry `{bad}` is not an os-release ID (like `debian`, `ubuntu`, `amzn`)"
                )));
            }
            if v.scope == Scope::Image {
                return Err(at(v.checks.span(), format!(
                    "validator `{name}`: scope = \"image\" is not acted on (every validator runs on, or about, the canary); remove the field"
                )));
            }
            if let (false, Some(when)) = (v.judged_by == JudgedBy::Script, &v.not_applicable_when) {
                return Err(at(when.span(), format!(
                    "validator `{name}`: not_applicable_when is said by a script's exit {NOT_APPLICABLE_EXIT}; bake judges this one from the cluster (judged_by = \"{}\")",
                    v.judged_by.as_str()
                )));
            }
            if let Some(audit) = v
                .audit
                .as_ref()
                .filter(|a| *a.get_ref() && v.judged_by != JudgedBy::Script)
            {
                return Err(at(audit.span(), format!(
                    "validator `{name}`: audit = true, but bake judges it from the canary's cluster (judged_by = \"{}\"); an audit runs scripts on the node",
                    v.judged_by.as_str()
                )));
            }
            if let Some(when) = v
                .not_applicable_when
                .as_ref()
                .filter(|w| w.get_ref().trim().is_empty())
            {
                return Err(at(
                    when.span(),
                    format!(
                    "validator `{name}`: not_applicable_when must say when the check does not apply"
                ),
                ));
            }
            if let Some(audit) = v.audit.as_ref().filter(|a| *a.get_ref() && v.reads_image) {
                return Err(at(audit.span(), format!(
                    "validator `{name}`: audit = true, but it reads the image as shipped (reads_image), which a running node does not have"
                )));
            }
            let (script, content) = match (v.judged_by, v.script) {
                (JudgedBy::Script, None) => {
                    return Err(at(
                        v.checks.span(),
                        format!("validator `{name}` has no `script` (or judged_by = \"cluster-api\")"),
                    ))
                }
                (JudgedBy::ClusterApi | JudgedBy::ClusterPod, Some(script)) => {
                    return Err(at(script.span(), format!(
                        "validator `{name}` is judged by bake from the cluster (judged_by = \"{}\"); it takes no script",
                        v.judged_by.as_str()
                    )))
                }
                (JudgedBy::ClusterApi | JudgedBy::ClusterPod, None) => {
                    if !v.needs_cluster {
                        return Err(at(v.checks.span(), format!(
                            "validator `{name}`: judged_by = \"{}\" needs a cluster; add needs_cluster = true",
                            v.judged_by.as_str()
                        )));
                    }
                    (String::new(), Vec::new())
                }
                (JudgedBy::Script, Some(script)) => {
                    let at = |m: String| at(script.span(), m);
                    let path = resolve_inside(validators_dir, script.get_ref(), &allowed)
                        .map_err(at)?;
                    let meta = std::fs::metadata(&path).map_err(|e| at(e.to_string()))?;
                    if meta.len() > MAX_SCRIPT_BYTES {
                        return Err(at(format!(
                            "script is {} bytes; the limit is {MAX_SCRIPT_BYTES}",
                            meta.len()
                        )));
                    }
                    if meta.permissions().mode() & 0o111 == 0 {
                        return Err(at(format!(
                            "script `{}` is not executable (chmod +x it)",
                            script.get_ref()
                        )));
                    }
                    let content = std::fs::read(&path).map_err(|e| at(e.to_string()))?;
                    (script.into_inner(), content)
                }
            };
            validators.insert(
                name.clone(),
                Validator {
                    name,
                    checks: v.checks.into_inner(),
                    script,
                    content,
                    judged_by: v.judged_by,
                    scope: v.scope,
                    needs_cluster: v.needs_cluster,
                    reads_image: v.reads_image,
                    applies_to: v.applies_to,
                    not_applicable_when: v.not_applicable_when.map(Spanned::into_inner),
                    audit: v.audit.is_some_and(|a| a.into_inner()),
                },
            );
        }
        Ok(Catalog { file, validators })
    }

    pub fn get(&self, name: &str) -> Option<&Validator> {
        self.validators.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.validators.keys().cloned().collect()
    }

    pub fn file(&self) -> &Path {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// What the catalog refuses, each naming the validator and the fix: a script together with
    /// judged_by = "cluster-api", cluster-api without needs_cluster, neither, and the image
    /// scope nothing acts on.
    #[test]
    fn the_catalog_refuses_what_it_cannot_run() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("ok.sh");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let refused = |entry: &str| {
            std::fs::write(dir.path().join("catalog.toml"), format!("[v]\n{entry}\n")).unwrap();
            Catalog::load(dir.path()).unwrap_err().to_string()
        };
        let e = refused(
            "checks = \"x\"\nscript = \"ok.sh\"\njudged_by = \"cluster-api\"\nneeds_cluster = true",
        );
        assert!(
            e.contains(
                "judged by bake from the cluster (judged_by = \"cluster-api\"); it takes no script"
            ),
            "{e}"
        );
        assert!(e.contains("catalog.toml:3"), "{e}");
        let e = refused("checks = \"x\"\njudged_by = \"cluster-api\"");
        assert!(e.contains("add needs_cluster = true"), "{e}");
        let e = refused("checks = \"x\"\njudged_by = \"cluster-pod\"");
        assert!(
            e.contains("judged_by = \"cluster-pod\" needs a cluster"),
            "{e}"
        );
        let e = refused(
            "checks = \"x\"\njudged_by = \"cluster-pod\"\nneeds_cluster = true\naudit = true",
        );
        assert!(e.contains("an audit runs scripts on the node"), "{e}");
        assert!(e.contains("catalog.toml:5"), "{e}");
        let e = refused("checks = \"x\"");
        assert!(e.contains("has no `script`"), "{e}");
        let e = refused("checks = \"x\"\nscript = \"ok.sh\"\nscope = \"image\"");
        assert!(e.contains("scope = \"image\" is not acted on"), "{e}");
        let e = refused(
            "checks = \"x\"\njudged_by = \"cluster-api\"\nneeds_cluster = true\nnot_applicable_when = \"y\"",
        );
        assert!(e.contains("said by a script's exit 78"), "{e}");
        let e = refused("checks = \"x\"\nscript = \"ok.sh\"\nnot_applicable_when = \" \"");
        assert!(e.contains("must say when the check does not apply"), "{e}");
        assert!(e.contains("catalog.toml:4"), "{e}");
        let e = refused("checks = \"x\"\nscript = \"ok.sh\"\nreads_image = true\naudit = true");
        assert!(e.contains("which a running node does not have"), "{e}");
        assert!(e.contains("catalog.toml:5"), "{e}");
        std::fs::write(
            dir.path().join("catalog.toml"),
            "[v]\nchecks = \"x\"\njudged_by = \"cluster-api\"\nneeds_cluster = true\n",
        )
        .unwrap();
        let c = Catalog::load(dir.path()).unwrap();
        let v = c.get("v").unwrap();
        assert_eq!((v.judged_by, v.script.as_str()), (JudgedBy::ClusterApi, ""));
    }
}
