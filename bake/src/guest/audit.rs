//! The audit program of a recipe: what `bake audit` runs on each node built from it. One shell
//! program with three parameters (`action`, `arch`, `offset`) and no other input:
//! - `checks`: the node's distribution, then the checks the catalog declares safe on a live
//!   node (`audit = true`, with `BAKE_AUDIT=1`), one after another with their own limits, each
//!   run only where it applies (`applies_to`), their outcomes apart ([`batch`]);
//! - `packages`: a slice of the node's package list, from `offset`, with the whole list's size
//!   and sha256 so the reader can join the slices and check them (nothing is left on the node:
//!   each slice lists the packages again, in a temp file removed on exit).
//!
//! On AWS it is installed once per recipe as an SSM Command document of the pipeline's own
//! (`bake audit-document --apply`), and the nodes' IAM grant names that document: what may run
//! on a node is fixed there and reviewed, never a script bake sends. Where bake reaches a node's
//! guest directly (the local provider) the same program runs, its parameters filled in as SSM
//! fills a document's, so the VM tier proves what the document does.

use super::batch::{self, Job, Outcome, Printed, WhenLong};
use super::long_output::{SLICE, SSM_STDOUT_LIMIT};
use super::Ran;
use crate::input::recipe::sha256_hex;
use crate::input::validate::Validator;
use crate::Arch;
use serde_json::json;
use std::future::Future;
use std::time::Duration;

/// Each check's limit on a node: fixed in the program (a document's content is what it runs).
pub const CHECK_LIMIT: Duration = Duration::from_secs(120);
/// The most an SSM document's content may hold (Systems Manager quotas: 64 KB).
pub const DOCUMENT_MAX: usize = 64 * 1024;
/// The action that runs the checks.
pub const CHECKS: &str = "checks";
/// The action that answers a slice of the package list.
pub const PACKAGES: &str = "packages";

/// The node's distribution, the first job of the checks (as the canary's prepare script says it).
const OS_RELEASE: &str = "#!/bin/sh\nID=; ID_LIKE=; VERSION_ID=; . /etc/os-release 2>/dev/null || . /usr/lib/os-release\nprintf 'os_id=%s\\nos_like=%s\\nos_version=%s\\n' \"$ID\" \"$ID_LIKE\" \"$VERSION_ID\"\n";
/// The name of that first job.
pub const OS_JOB: &str = "os-release";

/// The audit program of one recipe.
#[derive(Debug, Clone)]
pub struct AuditProgram {
    pub recipe: String,
    checks: Vec<Validator>,
    /// Each check wrapped to run only where it applies.
    scripts: Vec<Vec<u8>>,
}

impl AuditProgram {
    /// The program of `recipe`: its validators declared safe on a live node, in its order.
    pub fn new(recipe: &str, validators: &[Validator]) -> Self {
        let checks: Vec<Validator> = validators.iter().filter(|v| v.audit).cloned().collect();
        let scripts = checks.iter().map(guarded).collect();
        AuditProgram {
            recipe: recipe.to_string(),
            checks,
            scripts,
        }
    }

    /// The checks, in the order their outcomes come (after the os-release job's).
    pub fn checks(&self) -> &[Validator] {
        &self.checks
    }

    /// The name of its SSM document for the registry at `prefix`: one per pipeline and recipe
    /// (`bake-audit.<prefix with / as .>.<recipe>`; SSM names allow letters, digits, `_-.`).
    pub fn document_name(&self, prefix: &str) -> String {
        document_name(prefix, &self.recipe)
    }

    /// The jobs of the checks action, `arch` as given (a document's `{{ arch }}` placeholder, or
    /// a node's arch where the program runs directly).
    fn jobs(&self, arch: &str) -> Vec<Job<'_>> {
        let env = vec![
            ("BAKE_AUDIT", "1".to_string()),
            ("BAKE_RECIPE", self.recipe.clone()),
            ("BAKE_ARCH", arch.to_string()),
        ];
        let mut jobs = vec![Job {
            name: OS_JOB,
            script: OS_RELEASE.as_bytes(),
            env: Vec::new(),
            timeout: Duration::from_secs(30),
        }];
        for (v, script) in self.checks.iter().zip(&self.scripts) {
            jobs.push(Job {
                name: &v.name,
                script,
                env: env.clone(),
                timeout: CHECK_LIMIT,
            });
        }
        jobs
    }

    /// The longest the checks action may take: every job's limit and its grace, one after
    /// another (the document's `timeoutSeconds`, and how long bake waits for its answer).
    pub fn limit(&self) -> Duration {
        batch::limit(&self.jobs(""))
    }

    /// The program, its parameters as SSM placeholders (`{{ action }}`, `{{ arch }}`,
    /// `{{ offset }}`), each a value SSM checks against the document before anything runs.
    fn program(&self) -> String {
        let label = format!("audit {}", self.recipe);
        // Outputs past what one answer holds are cut to their last bytes: nothing stays on the
        // node to be read later, and the verdicts' evidence is in the last lines.
        let checks = batch::script_with(
            &label,
            &self.jobs("{{ arch }}"),
            SSM_STDOUT_LIMIT - 1_000,
            WhenLong::CutToTail,
        );
        format!(
            "#!/bin/sh\n# bake: the audit of the nodes of recipe {recipe}. It reads the node and changes nothing on it:\n\
             # `checks` runs the recipe's checks declared safe on a live node; `packages` prints a slice of the package list.\n\
             case '{{{{ action }}}}' in\n\
             {CHECKS})\n{checks}\n;;\n\
             {PACKAGES})\n\
             f=$(mktemp /var/tmp/bake-audit-XXXXXX) || exit 1\n\
             trap 'rm -f \"$f\"' EXIT\n\
             (\n{producer}\n) > \"$f\" || exit 1\n\
             printf 'bake-packages %s %s\\n' \"$(wc -c < \"$f\")\" \"$(sha256sum \"$f\" | cut -d' ' -f1)\"\n\
             dd if=\"$f\" iflag=skip_bytes,count_bytes skip='{{{{ offset }}}}' count={SLICE} bs=64K status=none | base64 -w0\n\
             echo\n;;\n\
             esac\n",
            recipe = self.recipe,
            producer = crate::steps::provision::PACKAGES_PRODUCER,
        )
    }

    /// The SSM Command document (schema 2.2) that runs the program, its parameters limited to
    /// the values the program takes; or why this recipe's checks cannot make one.
    pub fn document(&self) -> std::result::Result<String, String> {
        let program = self.program();
        let stray = program
            .replace("{{ action }}", "")
            .replace("{{ arch }}", "")
            .replace("{{ offset }}", "");
        if stray.contains("{{") {
            return Err(format!(
                "the audit program of {} holds `{{{{`, which SSM would read as a parameter",
                self.recipe
            ));
        }
        let limit = self.limit().as_secs();
        let doc = json!({
            "schemaVersion": "2.2",
            "description": format!("bake audit of the nodes of recipe {}: read-only checks and the package list (made by `bake audit-document`)", self.recipe),
            "parameters": {
                "action": {
                    "type": "String",
                    "description": "checks: the node's distribution and the recipe's checks safe on a live node; packages: a slice of the package list",
                    "allowedValues": [CHECKS, PACKAGES]
                },
                "arch": {
                    "type": "String",
                    "description": "the node's architecture, as the checks are told it (BAKE_ARCH)",
                    "allowedValues": Arch::ALL.iter().map(|a| a.to_string()).collect::<Vec<_>>()
                },
                "offset": {
                    "type": "String",
                    "description": "where the slice of the package list starts, in bytes",
                    "default": "0",
                    "allowedPattern": "^[0-9]{1,9}$"
                }
            },
            "mainSteps": [{
                "action": "aws:runShellScript",
                "name": "audit",
                "inputs": {
                    "timeoutSeconds": limit.to_string(),
                    "runCommand": program.lines().collect::<Vec<_>>()
                }
            }]
        });
        let content = serde_json::to_string_pretty(&doc).expect("a JSON value serializes");
        if content.len() > DOCUMENT_MAX {
            return Err(format!(
                "the audit document of {} would be {} bytes; SSM takes at most {DOCUMENT_MAX} (fewer or shorter checks with `audit = true`)",
                self.recipe,
                content.len()
            ));
        }
        Ok(content)
    }

    /// The sha256 SSM keeps of a document's content (DescribeDocument's `Hash`).
    pub fn hash(content: &str) -> String {
        sha256_hex(content.as_bytes())
    }

    /// The program with its parameters filled in, as SSM fills a document's before the agent
    /// runs it: what a guest reached directly runs.
    pub fn rendered(&self, action: &str, arch: Arch, offset: usize) -> String {
        self.program()
            .replace("{{ action }}", action)
            .replace("{{ arch }}", &arch.to_string())
            .replace("{{ offset }}", &offset.to_string())
    }

    /// What the checks action printed: the os-release job's output, then each check's outcome
    /// in [`AuditProgram::checks`] order.
    pub fn parse_checks(&self, ran: &Ran) -> std::result::Result<(String, Vec<Outcome>), String> {
        if ran.exit_code != 0 {
            return Err(format!(
                "the checks exited {}: {}",
                ran.exit_code,
                ran.tail(8)
            ));
        }
        let jobs = self.jobs("");
        let mut outcomes = match batch::parse(&ran.stdout, &jobs)? {
            Printed::Whole(outcomes) => outcomes,
            Printed::Kept { dir, .. } => {
                return Err(format!(
                    "the checks kept their output in {dir}, which the program never does"
                ))
            }
        };
        let os = outcomes
            .remove(0)
            .map_err(|why| format!("{OS_JOB}: {why}"))?;
        Ok((os.stdout, outcomes))
    }

    /// The node's whole package list, read slice by slice through `run` (the packages action at
    /// an offset), checked against the size and sha256 every slice reports.
    pub async fn read_packages<F, Fut>(run: F) -> std::result::Result<String, String>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = std::result::Result<Ran, String>>,
    {
        let mut bytes: Vec<u8> = Vec::new();
        let mut whole: Option<(usize, String)> = None;
        loop {
            let ran = run(bytes.len()).await?;
            if ran.exit_code != 0 {
                return Err(format!(
                    "listing the packages exited {}: {}",
                    ran.exit_code,
                    ran.tail(8)
                ));
            }
            let mut lines = ran.stdout.lines();
            let header = lines.next().unwrap_or_default();
            let (size, digest) = match header.split_whitespace().collect::<Vec<_>>()[..] {
                ["bake-packages", size, digest] => (
                    size.parse::<usize>()
                        .map_err(|_| format!("unexpected size in `{header}`"))?,
                    digest.to_string(),
                ),
                _ => {
                    return Err(format!(
                        "unexpected first line `{header}` of the package list"
                    ))
                }
            };
            match &whole {
                None => whole = Some((size, digest.clone())),
                Some(first) if *first != (size, digest.clone()) => {
                    return Err(
                        "the node's package list changed while it was read; audit it again".into(),
                    )
                }
                Some(_) => {}
            }
            let slice = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                lines.next().unwrap_or_default().trim(),
            )
            .map_err(|e| format!("a slice of the package list is not base64: {e}"))?;
            if slice.is_empty() && bytes.len() < size {
                return Err(format!(
                    "the package list ended at {} of {size} bytes",
                    bytes.len()
                ));
            }
            bytes.extend(slice);
            if bytes.len() >= size {
                break;
            }
        }
        let (size, digest) = whole.expect("one slice was read");
        if bytes.len() != size || sha256_hex(&bytes) != digest {
            return Err(format!(
                "the package list arrived as {} bytes with sha256 {}, not {size} bytes with {digest}",
                bytes.len(),
                sha256_hex(&bytes)
            ));
        }
        String::from_utf8(bytes).map_err(|e| format!("the package list is not UTF-8: {e}"))
    }
}

/// The name of `recipe`'s audit document for the registry at `prefix` (see
/// [`AuditProgram::document_name`]).
pub fn document_name(prefix: &str, recipe: &str) -> String {
    format!(
        "bake-audit.{}.{recipe}",
        prefix.trim_matches('/').replace('/', ".")
    )
}

/// How `bake audit` asks one node the program's questions; an error says why the node could
/// not be judged.
#[async_trait::async_trait]
pub trait NodeProbe: Send {
    /// The checks action: the node's os-release lines, then each check's outcome in
    /// [`AuditProgram::checks`] order.
    async fn checks(&mut self) -> std::result::Result<(String, Vec<Outcome>), String>;
    /// The node's whole package list.
    async fn packages(&mut self) -> std::result::Result<String, String>;
}

/// A node whose guest bake reaches directly (the local provider's): the program runs with its
/// parameters filled in, as SSM runs the document.
pub struct GuestProbe {
    pub guest: Box<dyn super::Guest>,
    pub program: AuditProgram,
    pub arch: Arch,
    /// For messages: the recipe, arch and node.
    pub label: String,
}

#[async_trait::async_trait]
impl NodeProbe for GuestProbe {
    async fn checks(&mut self) -> std::result::Result<(String, Vec<Outcome>), String> {
        let script = self.program.rendered(CHECKS, self.arch, 0);
        let label = format!("{} checks", self.label);
        let ran = self
            .guest
            .run(&label, script.as_bytes(), &[], self.program.limit())
            .await
            .map_err(|e| e.to_string())?;
        self.program
            .parse_checks(&ran)
            .map_err(|why| format!("{}: {why}", self.label))
    }

    async fn packages(&mut self) -> std::result::Result<String, String> {
        let label = format!("{} packages", self.label);
        let (program, arch) = (&self.program, self.arch);
        let guest = tokio::sync::Mutex::new(&mut self.guest);
        AuditProgram::read_packages(|offset| {
            let (guest, label) = (&guest, &label);
            let script = program.rendered(PACKAGES, arch, offset);
            async move {
                guest
                    .lock()
                    .await
                    .run(label, script.as_bytes(), &[], CHECK_LIMIT)
                    .await
                    .map_err(|e| e.to_string())
            }
        })
        .await
        .map_err(|why| format!("{label}: {why}"))
    }
}

/// Where a recipe's audit document stands in one region.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DocumentState {
    /// Not there: the audit cannot run there.
    Missing,
    /// There, with other content (the recipe's checks changed since it was installed).
    Stale,
    /// There, as this pipeline would install it.
    Current,
    /// Made now (`--apply`).
    Created,
    /// Given this content as its new default version now (`--apply`).
    Updated,
}

/// A recipe's audit document in one region.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Installed {
    pub recipe: String,
    pub region: String,
    pub name: String,
    pub state: DocumentState,
    /// The sha256 of the content this pipeline installs.
    pub hash: String,
}

/// A check as the program runs it: where it does not apply (its `applies_to`), it says so and
/// exits 0 without running; else the validator runs from a file of its own in the batch's
/// private directory (so it keeps its shebang).
fn guarded(v: &Validator) -> Vec<u8> {
    let mut s = String::from("#!/bin/sh\n");
    s.push_str(&crate::canary::applies_guard(v).unwrap_or_default());
    let delimiter = format!("BAKE_CHECK_{}", &sha256_hex(&v.content)[..16]);
    match std::str::from_utf8(&v.content) {
        Ok(text) if !text.contains(&delimiter) => {
            let nl = if text.ends_with('\n') { "" } else { "\n" };
            s.push_str(&format!(
                "cat > \"$0.check\" <<'{delimiter}'\n{text}{nl}{delimiter}\n"
            ));
        }
        _ => s.push_str(&format!(
            "echo '{}' | base64 -d > \"$0.check\"\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &v.content)
        )),
    }
    s.push_str("chmod 0700 \"$0.check\"\nexec \"$0.check\"\n");
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator(name: &str, script: &str, applies_to: &[&str], audit: bool) -> Validator {
        Validator {
            name: name.into(),
            checks: String::new(),
            script: format!("{name}.sh"),
            content: script.as_bytes().to_vec(),
            judged_by: Default::default(),
            scope: Default::default(),
            needs_cluster: false,
            reads_image: false,
            applies_to: applies_to.iter().map(|s| s.to_string()).collect(),
            not_applicable_when: None,
            audit,
        }
    }

    fn program() -> AuditProgram {
        AuditProgram::new(
            "eks-node",
            &[
                validator(
                    "passes",
                    "#!/bin/bash\necho \"ok on $BAKE_ARCH ($BAKE_AUDIT)\"\n",
                    &[],
                    true,
                ),
                validator(
                    "never-here",
                    "#!/bin/sh\necho ran\nexit 1\n",
                    &["no-such-distro"],
                    true,
                ),
                validator("not-safe", "#!/bin/sh\nexit 1\n", &[], false),
                validator("fails", "#!/bin/sh\necho evidence\nexit 1\n", &[], true),
            ],
        )
    }

    /// Runs the program as the agent would: its parameters filled in, by `sh`.
    fn run(p: &AuditProgram, action: &str, offset: usize) -> Ran {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(p.rendered(action, Arch::Arm64, offset))
            .output()
            .unwrap();
        Ran {
            exit_code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }

    #[test]
    fn the_checks_run_where_they_apply_with_the_audit_environment() {
        let p = program();
        let names: Vec<&str> = p.checks().iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            ["passes", "never-here", "fails"],
            "only audit = true"
        );
        let (os, outcomes) = p.parse_checks(&run(&p, CHECKS, 0)).unwrap();
        assert!(os.contains("os_id="), "{os}");
        let ok = outcomes[0].as_ref().unwrap();
        assert_eq!((ok.exit_code, ok.stdout.trim()), (0, "ok on arm64 (1)"));
        let skipped = outcomes[1].as_ref().unwrap();
        assert_eq!(skipped.exit_code, 0);
        assert!(!skipped.stdout.contains("ran"), "{skipped:?}");
        let failed = outcomes[2].as_ref().unwrap();
        assert_eq!((failed.exit_code, failed.stdout.trim()), (1, "evidence"));
    }

    #[tokio::test]
    async fn the_package_list_is_read_whole_slice_by_slice() {
        let p = program();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let list = AuditProgram::read_packages(|offset| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let ran = run(&p, PACKAGES, offset);
            async move { Ok(ran) }
        })
        .await
        .unwrap();
        assert!(
            list.starts_with("#os\t"),
            "{}",
            &list[..list.len().min(200)]
        );
        let slices = list.len().div_ceil(SLICE).max(1);
        assert_eq!(calls.into_inner(), slices);
    }

    #[tokio::test]
    async fn a_list_that_changes_between_slices_is_refused() {
        let answers = [
            "bake-packages 20000 aaaa\nYQ==\n",
            "bake-packages 20001 bbbb\nYg==\n",
        ];
        let n = std::sync::atomic::AtomicUsize::new(0);
        let err = AuditProgram::read_packages(|_| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let ran = Ran {
                exit_code: 0,
                stdout: answers[i].to_string(),
                stderr: String::new(),
            };
            async move { Ok(ran) }
        })
        .await
        .unwrap_err();
        assert!(err.contains("changed while it was read"), "{err}");
    }

    #[test]
    fn the_document_takes_only_its_three_parameters_and_names_its_recipe() {
        let p = program();
        let content = p.document().unwrap();
        let doc: serde_json::Value = serde_json::from_str(&content).unwrap();
        assert_eq!(doc["schemaVersion"], "2.2");
        let params = doc["parameters"].as_object().unwrap();
        assert_eq!(
            params.keys().collect::<Vec<_>>(),
            ["action", "arch", "offset"]
        );
        assert_eq!(
            doc["parameters"]["action"]["allowedValues"],
            json!(["checks", "packages"])
        );
        let lines: Vec<&str> = doc["mainSteps"][0]["inputs"]["runCommand"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        let script = lines.join("\n");
        assert!(script.contains("case '{{ action }}' in"));
        assert!(script.contains("export BAKE_ARCH='{{ arch }}'"), "{script}");
        assert!(!script.contains("not-safe"));
        assert_eq!(
            p.document_name("/team/bake"),
            "bake-audit.team.bake.eks-node"
        );
        // The same content every time: its hash is how bake knows the installed one is current.
        assert_eq!(content, program().document().unwrap());
    }

    #[test]
    fn a_checks_own_braces_never_reach_ssm_as_parameters() {
        // Each check travels in base64 inside the program (no braces): only the program's own
        // three placeholders are SSM parameters, whatever the checks hold.
        let p = AuditProgram::new(
            "r",
            &[validator(
                "braces",
                "#!/bin/sh\necho '{{ x }}'\n",
                &[],
                true,
            )],
        );
        let content = p.document().unwrap();
        assert!(!content.contains("{{ x }}"), "{content}");
    }
}
