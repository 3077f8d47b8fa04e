//! What a canary says of an image: each check's verdict (pass, fail, skipped, not applicable)
//! from its script's exit code or from bake's own judgement, and the image's verdict from them
//! all. Skipped is never pass: an image is accepted only if every check that applies passed.

use crate::input::validate::{Validator, NOT_APPLICABLE_EXIT, NOT_JUDGED_EXIT, SKIP_EXIT};
use serde::{Deserialize, Serialize};

/// A validator's exit as a verdict, or why it gave none (`NOT_JUDGED_EXIT`, with its reason).
pub fn judged(
    v: &Validator,
    exit_code: i32,
    stdout: &str,
    stderr: &str,
) -> Result<CheckResult, String> {
    let name = v.name.as_str();
    let why = || {
        stdout
            .lines()
            .chain(stderr.lines())
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no reason given")
            .trim()
            .to_string()
    };
    if exit_code == NOT_JUDGED_EXIT {
        return Err(not_judged(name, &why()));
    }
    if exit_code == NOT_APPLICABLE_EXIT {
        let output = CheckResult::from_exit(name, exit_code, stdout, stderr).output;
        return Ok(match &v.not_applicable_when {
            Some(_) => CheckResult {
                exit_code: Some(exit_code),
                output,
                ..CheckResult::not_applicable(name, why())
            },
            None => CheckResult {
                name: name.to_string(),
                status: Status::Fail,
                reason: Some(format!(
                    "exited {NOT_APPLICABLE_EXIT} (does not apply: {}), but its catalog entry declares no not_applicable_when",
                    why()
                )),
                exit_code: Some(exit_code),
                output,
                not_applicable: false,
            },
        });
    }
    Ok(CheckResult::from_exit(name, exit_code, stdout, stderr))
}

/// What a run says of a validator that gave no verdict (the run fails; the image is not rejected).
pub fn not_judged(name: &str, why: &str) -> String {
    format!(
        "validator {name} could not judge the image: {why} (not a rejection; the next run tries again)"
    )
}

/// A check's verdict. `NotApplicable` is a check that cannot apply here (another
/// distribution's, or one that needs a cluster where there is none): it blocks nothing, unlike
/// `Skipped`, a check that applies but could not be made. Releases recorded before the two were
/// told apart say `skipped` for both; they still read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    Skipped,
    NotApplicable,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skipped => "skipped",
            Status::NotApplicable => "not_applicable",
        })
    }
}

/// `7 pass, 0 fail, 0 skipped, 2 not applicable` (the last part only when there are any).
pub fn summarize(statuses: impl IntoIterator<Item = Status>) -> String {
    let (mut pass, mut fail, mut skipped, mut na) = (0, 0, 0, 0);
    for s in statuses {
        match s {
            Status::Pass => pass += 1,
            Status::Fail => fail += 1,
            Status::Skipped => skipped += 1,
            Status::NotApplicable => na += 1,
        }
    }
    let mut out = format!("{pass} pass, {fail} fail, {skipped} skipped");
    if na > 0 {
        out.push_str(&format!(", {na} not applicable"));
    }
    out
}

/// What one validator said about one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub status: Status,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    /// Combined stdout and stderr, kept for the run log.
    pub output: String,
    /// True when the check could not apply here (status `NotApplicable`; records written
    /// before that status existed say `Skipped` with this set).
    #[serde(default)]
    pub not_applicable: bool,
}

impl CheckResult {
    /// Interprets a validator script's exit code and output.
    pub fn from_exit(name: &str, exit_code: i32, stdout: &str, stderr: &str) -> CheckResult {
        let output = if stderr.is_empty() {
            stdout.to_string()
        } else {
            format!("{stdout}{stderr}")
        };
        let last_line = |s: &str| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string())
        };
        let (status, reason) = match exit_code {
            // A pass may carry a note for the reader (a `note: ` line): what the check saw
            // that is no fault of the image but worth knowing.
            0 => (
                Status::Pass,
                stdout
                    .lines()
                    .rev()
                    .find_map(|l| l.trim().strip_prefix("note: "))
                    .map(str::to_string),
            ),
            SKIP_EXIT => (
                Status::Skipped,
                Some(last_line(stdout).unwrap_or_else(|| "skipped without a reason".into())),
            ),
            code => (
                Status::Fail,
                Some(
                    last_line(stdout)
                        .or_else(|| last_line(stderr))
                        .unwrap_or_else(|| format!("exit code {code}")),
                ),
            ),
        };
        CheckResult {
            name: name.to_string(),
            status,
            reason,
            exit_code: Some(exit_code),
            output,
            not_applicable: false,
        }
    }

    /// Logs the result (status and reason) for `recipe` × `arch`.
    pub fn log(&self, recipe: &str, arch: crate::Arch) {
        tracing::info!(recipe, arch = %arch, validator = %self.name, status = %self.status, "{}", self.reason.as_deref().unwrap_or_default());
    }

    /// A check that could not be made here although it applies: skipped, which blocks.
    pub fn skipped(name: &str, reason: impl Into<String>) -> CheckResult {
        CheckResult {
            name: name.to_string(),
            status: Status::Skipped,
            reason: Some(reason.into()),
            exit_code: None,
            output: String::new(),
            not_applicable: false,
        }
    }

    /// A check that needs something this provider does not have.
    pub fn not_applicable(name: &str, reason: impl Into<String>) -> CheckResult {
        CheckResult {
            status: Status::NotApplicable,
            not_applicable: true,
            ..CheckResult::skipped(name, reason)
        }
    }

    /// The status, with an older record's not-applicable skip read as what it was.
    pub fn verdict(&self) -> Status {
        if self.is_not_applicable() {
            Status::NotApplicable
        } else {
            self.status
        }
    }

    /// Does not apply here: the status says so, or (an older record) a skip marked so.
    pub fn is_not_applicable(&self) -> bool {
        self.status == Status::NotApplicable
            || (self.status == Status::Skipped && self.not_applicable)
    }
}

/// The decision over all results of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub accepted: bool,
    pub passed: usize,
    pub failed: usize,
    /// Checks that apply but could not be made: each blocks.
    pub skipped: usize,
    #[serde(default)]
    pub not_applicable: usize,
    pub results: Vec<CheckResult>,
}

impl Verdict {
    /// Accepted only if there was at least one check, none failed, and every skip was a
    /// check that cannot apply on this provider. Skipped never counts as pass.
    pub fn decide(results: Vec<CheckResult>) -> Verdict {
        let count = |s: Status| results.iter().filter(|r| r.status == s).count();
        let passed = count(Status::Pass);
        let failed = count(Status::Fail);
        let not_applicable = results.iter().filter(|r| r.is_not_applicable()).count();
        let skipped = count(Status::Skipped) + count(Status::NotApplicable) - not_applicable;
        Verdict {
            accepted: passed > 0 && failed == 0 && skipped == 0,
            passed,
            failed,
            skipped,
            not_applicable,
            results,
        }
    }

    pub fn summary(&self) -> String {
        summarize(self.results.iter().map(CheckResult::verdict))
    }

    /// The names and reasons of what blocked acceptance.
    /// What passing checks noted (`<check>: <note>`): no blocker, but worth reading.
    pub fn notes(&self) -> Vec<String> {
        self.results
            .iter()
            .filter(|r| r.status == Status::Pass)
            .filter_map(|r| Some(format!("{}: {}", r.name, r.reason.as_ref()?)))
            .collect()
    }

    pub fn blockers(&self) -> Vec<String> {
        self.results
            .iter()
            .filter(|r| {
                r.status == Status::Fail || (r.status == Status::Skipped && !r.not_applicable)
            })
            .map(|r| {
                format!(
                    "{} {}: {}",
                    r.name,
                    r.status,
                    r.reason.clone().unwrap_or_default()
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::validate::{JudgedBy, Scope};

    /// 75 is no verdict (the run fails, the image is not rejected), with the last line said as
    /// the reason; any other exit is a verdict.
    #[test]
    fn a_check_that_could_not_judge_gives_no_verdict() {
        let pod = script_validator("pod-network", None);
        let why = super::judged(
            &pod,
            NOT_JUDGED_EXIT,
            "waiting\nthe CNI never came up within 1s\n",
            "",
        )
        .unwrap_err();
        assert!(why.contains("the CNI never came up within 1s"), "{why}");
        assert!(why.contains("not a rejection"), "{why}");
        assert_eq!(
            super::judged(&pod, 1, "the MAC changed\n", "")
                .unwrap()
                .status,
            Status::Fail
        );
    }

    /// 78 is "does not apply here" only from a validator whose catalog entry says when that may
    /// be (then it does not block, with the script's reason); from any other it fails.
    #[test]
    fn only_a_declared_validator_may_say_it_does_not_apply() {
        let said =
            "checking\nsystemd-networkd is not running: NetworkManager manages the network\n";
        let declared = script_validator("networkd", Some("networkd is not the network manager"));
        let r = super::judged(&declared, NOT_APPLICABLE_EXIT, said, "").unwrap();
        assert_eq!(r.verdict(), Status::NotApplicable);
        assert_eq!(
            r.reason.as_deref(),
            Some("systemd-networkd is not running: NetworkManager manages the network")
        );
        assert!(r.output.contains("checking"), "{r:?}");
        assert!(Verdict::decide(vec![r, CheckResult::from_exit("other", 0, "", "")]).accepted);
        let undeclared = script_validator("mac-policy", None);
        let r = super::judged(&undeclared, NOT_APPLICABLE_EXIT, said, "").unwrap();
        assert_eq!(r.status, Status::Fail);
        assert!(
            r.reason
                .as_deref()
                .unwrap()
                .contains("declares no not_applicable_when"),
            "{r:?}"
        );
        assert!(!Verdict::decide(vec![r]).accepted);
    }

    #[test]
    fn exit_codes_decide_status() {
        assert_eq!(CheckResult::from_exit("a", 0, "", "").status, Status::Pass);
        let skip = CheckResult::from_exit("a", 77, "needs a cluster\n", "");
        assert_eq!(skip.status, Status::Skipped);
        assert_eq!(skip.reason.as_deref(), Some("needs a cluster"));
        let fail = CheckResult::from_exit("a", 1, "ok so far\nMAC was rewritten\n", "");
        assert_eq!(fail.status, Status::Fail);
        assert_eq!(fail.reason.as_deref(), Some("MAC was rewritten"));
    }

    /// A pass may say what it saw (a `note: ` line), which the run prints; it blocks nothing.
    #[test]
    fn a_pass_carries_its_note() {
        let pass = CheckResult::from_exit(
            "mac-policy",
            0,
            "drop-in x\nnote: the packaged file was edited\nveth ok\n",
            "",
        );
        assert_eq!(pass.status, Status::Pass);
        assert_eq!(pass.reason.as_deref(), Some("the packaged file was edited"));
        let v = Verdict::decide(vec![pass, CheckResult::from_exit("b", 0, "all good\n", "")]);
        assert!(v.accepted);
        assert_eq!(
            v.notes(),
            vec!["mac-policy: the packaged file was edited".to_string()]
        );
        assert!(v.blockers().is_empty());
    }

    #[test]
    fn skipped_is_never_pass() {
        let v = Verdict::decide(vec![
            CheckResult::from_exit("a", 0, "", ""),
            CheckResult::from_exit("b", 77, "cannot tell", ""),
        ]);
        assert!(!v.accepted);
        assert_eq!(v.blockers(), vec!["b skipped: cannot tell".to_string()]);

        let v = Verdict::decide(vec![
            CheckResult::from_exit("a", 0, "", ""),
            CheckResult::not_applicable("node-ready", "needs a cluster"),
        ]);
        assert!(v.accepted);

        assert!(!Verdict::decide(vec![CheckResult::not_applicable("x", "y")]).accepted);
        assert!(!Verdict::decide(vec![]).accepted);
    }

    /// Not applicable is a verdict of its own, in the summary and as JSON; a record written
    /// before it existed (`skipped`, marked not applicable) reads as what it was.
    #[test]
    fn not_applicable_is_its_own_verdict_and_old_records_still_read() {
        let v = Verdict::decide(vec![
            CheckResult::from_exit("a", 0, "", ""),
            CheckResult::not_applicable("node-ready", "needs a cluster"),
        ]);
        assert_eq!((v.skipped, v.not_applicable), (0, 1));
        assert_eq!(v.summary(), "1 pass, 0 fail, 0 skipped, 1 not applicable");
        assert_eq!(
            serde_json::to_value(Status::NotApplicable).unwrap(),
            "not_applicable"
        );
        assert_eq!(Status::NotApplicable.to_string(), "not_applicable");

        let old: Verdict = serde_json::from_value(serde_json::json!({
            "accepted": true, "passed": 1, "failed": 0, "skipped": 1,
            "results": [
                {"name": "a", "status": "pass", "reason": null, "exit_code": 0, "output": ""},
                {"name": "node-ready", "status": "skipped", "reason": "needs a cluster",
                 "exit_code": null, "output": "", "not_applicable": true}
            ]
        }))
        .unwrap();
        assert_eq!(old.results[1].verdict(), Status::NotApplicable);
        assert_eq!(old.summary(), "1 pass, 0 fail, 0 skipped, 1 not applicable");
        assert!(Verdict::decide(old.results).accepted);
        // A manifest's plain `skipped` still parses.
        assert_eq!(
            serde_json::from_value::<Status>(serde_json::json!("skipped")).unwrap(),
            Status::Skipped
        );
    }

    /// A script validator named `name`, allowed to say "does not apply" when `when` is given.
    fn script_validator(name: &str, when: Option<&str>) -> Validator {
        Validator {
            name: name.into(),
            checks: String::new(),
            script: format!("{name}.sh"),
            content: Vec::new(),
            judged_by: JudgedBy::Script,
            scope: Scope::Node,
            needs_cluster: false,
            reads_image: false,
            applies_to: Vec::new(),
            not_applicable_when: when.map(str::to_string),
            audit: false,
        }
    }
}
