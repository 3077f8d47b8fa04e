//! AWSTOE component documents for the `imagebuilder` engine: one `build`-phase component per
//! recipe step (and one that installs the recipe's files), and one `test`-phase component per
//! validator that needs no cluster. Documents are YAML, named from a digest of their
//! content so an unchanged step reuses its component.

use crate::input::recipe::{sha256_hex, FileSpec, Recipe, StepSpec};
use crate::input::validate::{NOT_APPLICABLE_EXIT, SKIP_EXIT};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// An AWSTOE document (the subset bake writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub name: String,
    pub description: String,
    pub schema_version: String,
    pub phases: Vec<Phase>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub steps: Vec<ToeStep>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToeStep {
    pub name: String,
    pub action: String,
    pub on_failure: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    pub inputs: Inputs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    pub commands: Vec<String>,
}

/// The most a component's document may hold (Image Builder API Reference, CreateComponent:
/// `data`, 1 to 16,000 characters).
pub const MAX_DATA: usize = 16_000;

/// The first component whose document Image Builder would refuse as too long, named with its
/// size: a step (or the recipe's files together) too big to inline.
pub fn too_long(components: &[Component]) -> Option<String> {
    components
        .iter()
        .find(|c| c.data.chars().count() > MAX_DATA)
        .map(|c| {
            format!(
                "the AWSTOE document of component {} ({} phase) is {} characters; Image Builder takes at most {MAX_DATA}",
                c.name,
                c.phase,
                c.data.chars().count()
            )
        })
}

/// One component to create (or reuse, when one with this name exists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Component {
    /// `bake-<recipe>-<what>-<digest>`: the digest covers the document, so a changed script
    /// is a new component and an unchanged one is reused.
    pub name: String,
    pub version: String,
    pub phase: String,
    /// The YAML document.
    pub data: String,
}

/// A step name AWSTOE accepts (letters, digits, `_`).
fn toe_name(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn component(recipe: &Recipe, what: &str, phase: &str, doc: Document) -> Component {
    let data = serde_norway::to_string(&doc).expect("documents serialize");
    Component {
        name: format!(
            "bake-{}-{what}-{}",
            recipe.name,
            &sha256_hex(data.as_bytes())[..12]
        ),
        version: "1.0.0".into(),
        phase: phase.into(),
        data,
    }
}

/// A shell command that runs `script` as a file, so its shebang and `set -e` apply. With
/// `may_not_apply` (the name of a validator whose catalog entry allows it), its "does not apply
/// here" exit passes the step and says so; from anything else that exit fails like any other.
fn run_script(label: &str, script: &[u8], may_not_apply: Option<&str>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(script);
    let not_applicable = match may_not_apply {
        Some(name) => format!("if [ $rc -eq {NOT_APPLICABLE_EXIT} ]; then echo \"bake: validator {name} does not apply here (exit {NOT_APPLICABLE_EXIT})\"; exit 0; fi\n"),
        None => String::new(),
    };
    format!(
        "set -u\nf=$(mktemp /tmp/bake-XXXXXX) || exit 1\necho '{b64}' | base64 -d > \"$f\" || exit 1\nchmod 0700 \"$f\"\n\"$f\"; rc=$?\nrm -f \"$f\"\n{not_applicable}if [ $rc -ne 0 ]; then echo \"bake: {label} exited $rc\" >&2; fi\nexit $rc"
    )
}

fn install_file(f: &FileSpec) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(&f.content);
    format!(
        "set -eu\nmkdir -p \"$(dirname '{dest}')\"\necho '{b64}' | base64 -d > '{dest}.bake-tmp'\nchmod {mode:o} '{dest}.bake-tmp'\nmv '{dest}.bake-tmp' '{dest}'",
        dest = f.dest,
        mode = f.mode
    )
}

fn build_step(step: &StepSpec, default_timeout: u64) -> ToeStep {
    ToeStep {
        name: toe_name(&step.name),
        action: "ExecuteBash".into(),
        on_failure: "Abort".into(),
        timeout_seconds: Some(step.timeout.map(|t| t.as_secs()).unwrap_or(default_timeout)),
        inputs: Inputs {
            commands: vec![run_script(
                &format!("step {}", step.name),
                &step.content,
                None,
            )],
        },
    }
}

/// The components of a recipe, in the order the image recipe lists them: files, each step,
/// then the validators' test component. `step_timeout` is the default per step (seconds).
///
/// Long because it is the recipe's AWSTOE documents in the order Image Builder runs them, each
/// built in place; the snapshot tests read them the same way.
pub fn components(recipe: &Recipe, step_timeout: u64) -> Vec<Component> {
    let mut out = Vec::new();
    if !recipe.files.is_empty() {
        let steps = recipe
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| ToeStep {
                name: format!("file_{}", i + 1),
                action: "ExecuteBash".into(),
                on_failure: "Abort".into(),
                timeout_seconds: Some(60),
                inputs: Inputs {
                    commands: vec![install_file(f)],
                },
            })
            .collect();
        out.push(component(
            recipe,
            "files",
            "build",
            Document {
                name: format!("bake-{}-files", recipe.name),
                description: format!(
                    "bake: install the files of recipe {} ({})",
                    recipe.name,
                    recipe
                        .files
                        .iter()
                        .map(|f| f.dest.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                schema_version: "1.0".into(),
                phases: vec![Phase {
                    name: "build".into(),
                    steps,
                }],
            },
        ));
    }
    for step in &recipe.steps {
        out.push(component(
            recipe,
            &step.name,
            "build",
            Document {
                name: format!("bake-{}-{}", recipe.name, step.name),
                description: format!(
                    "bake: step {} of recipe {} ({})",
                    step.name, recipe.name, step.script
                ),
                schema_version: "1.0".into(),
                phases: vec![Phase {
                    name: "build".into(),
                    steps: vec![build_step(step, step_timeout)],
                }],
            },
        ));
    }
    // Only checks a build instance can judge run here: those that need a joined cluster or
    // the image's root as shipped (a second disk) run only on bake's canary. A check for
    // another distribution says so and passes; every other one must pass: a skip (exit 77)
    // fails the test phase too, because skipped is never pass. One component each: a
    // component's document holds at most 16,000 characters (MAX_DATA), and Image Builder's
    // failure reason names the document that failed, so it names the validator.
    for v in recipe
        .validators
        .iter()
        .filter(|v| !v.needs_cluster && !v.reads_image)
    {
        let step = ToeStep {
            name: toe_name(&format!("validate_{}", v.name)),
            action: "ExecuteBash".into(),
            on_failure: "Abort".into(),
            timeout_seconds: Some(300),
            inputs: Inputs {
                commands: vec![format!(
                    "{}{}",
                    crate::canary::applies_guard(v).unwrap_or_default(),
                    run_script(
                        &format!(
                            "validator {} (exit {SKIP_EXIT} = skipped, which fails here)",
                            v.name
                        ),
                        &v.content,
                        v.not_applicable_when.as_ref().map(|_| v.name.as_str()),
                    )
                )],
            },
        };
        out.push(component(
            recipe,
            &format!("validate-{}", v.name),
            "test",
            Document {
                name: format!("bake-{}-validate-{}", recipe.name, v.name),
                description: format!(
                    "bake: validator {} of recipe {}, judged on Image Builder's test instance (bake's canary runs it again)",
                    v.name, recipe.name
                ),
                schema_version: "1.0".into(),
                phases: vec![Phase {
                    name: "test".into(),
                    steps: vec![step],
                }],
            },
        ));
    }
    out
}
