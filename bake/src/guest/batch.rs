//! Several scripts in one command, for a transport where each command costs a round trip (SSM:
//! a send, polls and an output fetch). The scripts run one after another in a private
//! directory, each with its own environment and time limit, their exit codes and outputs kept
//! apart. What comes back stays under the transport's cut: the outputs come inline, in base64,
//! when all of them fit; otherwise only their sizes come back, the directory stays, and the
//! caller reads each output whole ([`Guest::read_output`](super::Guest::read_output)) before
//! removing it.

use super::Ran;
use base64::Engine as _;
use std::time::Duration;

/// One script of a batch.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    /// What it is, for messages (e.g. the validator's name).
    pub name: &'a str,
    /// A whole script, shebang included.
    pub script: &'a [u8],
    /// Added to the transport's environment for this script only.
    pub env: Vec<(&'a str, String)>,
    /// Its own limit; past it the script is stopped and counted as not finished.
    pub timeout: Duration,
}

/// How each script of a batch ended: its exit code and output, or why it did not finish.
pub type Outcome = std::result::Result<Ran, String>;

/// Grace after a script's limit before it is killed (`timeout -k`).
const KILL_AFTER: u64 = 10;

/// The longest the whole batch may take: every script's limit and its grace, one after another.
pub fn limit(jobs: &[Job<'_>]) -> Duration {
    jobs.iter()
        .map(|j| j.timeout + Duration::from_secs(KILL_AFTER))
        .sum::<Duration>()
        + Duration::from_secs(30)
}

/// `jobs` cut into runs of consecutive jobs whose scripts, as sent (base64), fit in
/// `max_command` characters together; a job larger than that alone goes alone.
pub fn chunks<'j, 'a>(jobs: &'j [Job<'a>], max_command: usize) -> Vec<&'j [Job<'a>]> {
    let size = |j: &Job<'_>| {
        j.script.len().div_ceil(3) * 4
            + j.env
                .iter()
                .map(|(k, v)| k.len() + v.len() + 16)
                .sum::<usize>()
            + 256
    };
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, job) in jobs.iter().enumerate() {
        let s = size(job);
        if i > start && used + s > max_command {
            out.push(&jobs[start..i]);
            (start, used) = (i, 0);
        }
        used += s;
    }
    if start < jobs.len() {
        out.push(&jobs[start..]);
    }
    out
}

/// What a batch does with outputs too long for one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenLong {
    /// Keeps them in its directory for the caller to read ([`Printed::Kept`]).
    Keep,
    /// Cuts each to its last bytes, so they fit, and leaves nothing behind (the audit program,
    /// whose caller may run nothing else on the node).
    CutToTail,
}

/// The shell that runs `jobs` in order and prints what [`parse`] reads. `inline_budget` is the
/// most characters of output the transport returns whole (with room kept for the headers).
pub fn script(label: &str, jobs: &[Job<'_>], inline_budget: usize) -> String {
    script_with(label, jobs, inline_budget, WhenLong::Keep)
}

/// [`script`], choosing what happens to outputs too long for one answer.
pub fn script_with(label: &str, jobs: &[Job<'_>], inline_budget: usize, long: WhenLong) -> String {
    let mut s = format!(
        "#!/bin/sh\n# bake: {label}\nd=$(mktemp -d /var/tmp/bake-batch-XXXXXX) || exit 1\n"
    );
    for (i, job) in jobs.iter().enumerate() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(job.script);
        let exports: String = job
            .env
            .iter()
            .map(|(k, v)| format!("export {k}={}; ", super::sh_quote(v)))
            .collect();
        s.push_str(&format!(
            "# bake-job {i}: {label} {name}\necho '{b64}' | base64 -d > \"$d/{i}.sh\" && chmod 0700 \"$d/{i}.sh\"\n\
             ( {exports}exec timeout -k {KILL_AFTER} {secs} \"$d/{i}.sh\" ) < /dev/null > \"$d/{i}.out\" 2> \"$d/{i}.err\"\n\
             echo $? > \"$d/{i}.rc\"\n",
            name = job.name.replace('\n', " "),
            secs = job.timeout.as_secs().max(1),
        ));
    }
    // base64 makes four characters of three bytes; each script adds a header and two lines.
    // POSIX sh throughout: the agent may start it with `sh`.
    let fits = "[ $(((size + 2 * n) / 3 * 4 + 64 * n)) -le {inline_budget} ]";
    let fits = fits.replace("{inline_budget}", &inline_budget.to_string());
    let decide = match long {
        WhenLong::Keep => format!(
            "if {fits}; then inline=1; echo 'bake-batch inline'\n\
             else inline=0; echo \"bake-batch kept $d\"; fi\n"
        ),
        // Each output's share of the budget, in bytes before base64.
        WhenLong::CutToTail => format!(
            "if ! {fits}; then\n\
             \x20 per=$(( ({inline_budget} - 64 * n) / 4 * 3 / (2 * n) ))\n\
             \x20 for f in \"$d\"/*.out \"$d\"/*.err; do\n\
             \x20   if [ \"$(stat -c %s \"$f\")\" -gt \"$per\" ]; then tail -c \"$per\" \"$f\" > \"$f.cut\" && mv \"$f.cut\" \"$f\"; fi\n\
             \x20 done\n\
             fi\n\
             inline=1; echo 'bake-batch inline'\n"
        ),
    };
    s.push_str(&format!(
        "n={n}\nsize=0\ni=0\nwhile [ \"$i\" -lt \"$n\" ]; do\n\
         \x20 size=$((size + $(stat -c %s \"$d/$i.out\") + $(stat -c %s \"$d/$i.err\")))\n\
         \x20 i=$((i + 1))\n\
         done\n\
         {decide}\
         i=0\nwhile [ \"$i\" -lt \"$n\" ]; do\n\
         \x20 printf 'bake-job %s %s\\n' \"$i\" \"$(cat \"$d/$i.rc\")\"\n\
         \x20 if [ \"$inline\" = 1 ]; then base64 -w0 \"$d/$i.out\"; echo; base64 -w0 \"$d/$i.err\"; echo; fi\n\
         \x20 i=$((i + 1))\n\
         done\n\
         if [ \"$inline\" = 1 ]; then rm -rf \"$d\"; fi\n",
        n = jobs.len(),
    ));
    s
}

/// What one batch printed.
#[derive(Debug, PartialEq, Eq)]
pub enum Printed {
    /// Every script's outcome, its output whole.
    Whole(Vec<Outcome>),
    /// The outputs were too long to come back in one answer: each script's exit code, and the
    /// directory holding `<i>.out` and `<i>.err`, for the caller to read and then remove.
    Kept { exit_codes: Vec<i32>, dir: String },
}

/// Reads what [`script`] printed for `jobs`.
pub fn parse(stdout: &str, jobs: &[Job<'_>]) -> std::result::Result<Printed, String> {
    let mut lines = stdout.lines();
    let first = lines.next().unwrap_or_default();
    let kept = match first.strip_prefix("bake-batch ") {
        Some("inline") => None,
        Some(rest) => Some(
            rest.strip_prefix("kept ")
                .filter(|d| d.starts_with("/var/tmp/bake-batch-") && !d.contains(['\'', ' ']))
                .ok_or_else(|| format!("unexpected first line `{first}` of the batch's answer"))?,
        ),
        None => {
            return Err(format!(
                "unexpected first line `{first}` of the batch's answer"
            ))
        }
    };
    let decode = |line: Option<&str>, what: &str| -> std::result::Result<String, String> {
        let line = line.ok_or_else(|| format!("the batch's answer ends before {what}"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(line.trim())
            .map_err(|e| format!("{what} is not base64: {e}"))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    let mut codes = Vec::new();
    let mut whole = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let header = lines
            .next()
            .ok_or_else(|| format!("the batch's answer ends before {}", job.name))?;
        let rc = match header.split_whitespace().collect::<Vec<_>>()[..] {
            ["bake-job", index, rc] if index.parse::<usize>() == Ok(i) => rc
                .parse::<i32>()
                .map_err(|_| format!("{}: unexpected exit code `{rc}`", job.name))?,
            _ => {
                return Err(format!(
                    "expected the answer of {} (#{i}), got `{header}`",
                    job.name
                ))
            }
        };
        codes.push(rc);
        if kept.is_none() {
            let stdout = decode(lines.next(), &format!("{}'s stdout", job.name))?;
            let stderr = decode(lines.next(), &format!("{}'s stderr", job.name))?;
            whole.push(outcome(job, rc, stdout, stderr));
        }
    }
    if let Some(extra) = lines.find(|l| !l.trim().is_empty()) {
        return Err(format!(
            "unexpected line `{extra}` after the batch's answer"
        ));
    }
    Ok(match kept {
        None => Printed::Whole(whole),
        Some(dir) => Printed::Kept {
            exit_codes: codes,
            dir: dir.to_string(),
        },
    })
}

/// One script's outcome: stopped at its limit (`timeout` exits 124, or 137 once killed) is not
/// finished; anything else is its exit code and output.
pub fn outcome(job: &Job<'_>, exit_code: i32, stdout: String, stderr: String) -> Outcome {
    if exit_code == 124 || exit_code == 137 {
        return Err(format!(
            "did not finish within {}",
            humantime::format_duration(job.timeout)
        ));
    }
    Ok(Ran {
        exit_code,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job<'a>(name: &'a str, script: &'a str, env: &[(&'a str, &str)], secs: u64) -> Job<'a> {
        Job {
            name,
            script: script.as_bytes(),
            env: env.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            timeout: Duration::from_secs(secs),
        }
    }

    /// Runs the batch as the agent may: the whole script, by `sh` (dash here), as root.
    fn run(jobs: &[Job<'_>], budget: usize) -> Printed {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script("test batch", jobs, budget))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        parse(&String::from_utf8(out.stdout).unwrap(), jobs).unwrap()
    }

    #[test]
    fn outputs_too_long_are_cut_to_their_tails_when_nothing_may_stay() {
        let jobs = [job("long", "#!/bin/sh\nseq 1 100000\n", &[], 30)];
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script_with("test batch", &jobs, 2_000, WhenLong::CutToTail))
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(stdout.len() <= 2_000, "{} characters", stdout.len());
        let Printed::Whole(outcomes) = parse(&stdout, &jobs).unwrap() else {
            panic!("kept: {stdout}")
        };
        let ran = outcomes[0].as_ref().unwrap();
        assert!(ran.stdout.ends_with("99999\n100000\n"), "{:?}", ran.stdout);
    }

    #[test]
    fn each_script_keeps_its_exit_code_output_and_environment() {
        let jobs = [
            job("first", "#!/bin/sh\necho one\n", &[], 30),
            job(
                "second",
                "#!/bin/bash\necho \"$WHO\"; echo oops >&2; exit 3\n",
                &[("WHO", "it's \"quoted\" $HOME")],
                30,
            ),
            // The first job's variables do not leak into the next.
            job(
                "third",
                "#!/bin/sh\necho \"[${WHO:-}]\"; exit 78\n",
                &[],
                30,
            ),
        ];
        let Printed::Whole(outcomes) = run(&jobs, 23_000) else {
            panic!("small outputs come inline")
        };
        let expect = |exit_code, stdout: &str, stderr: &str| {
            Ok(Ran {
                exit_code,
                stdout: stdout.into(),
                stderr: stderr.into(),
            })
        };
        assert_eq!(
            outcomes,
            vec![
                expect(0, "one\n", ""),
                expect(3, "it's \"quoted\" $HOME\n", "oops\n"),
                expect(78, "[]\n", ""),
            ]
        );
    }

    #[test]
    fn a_script_past_its_limit_is_not_finished_and_the_next_still_runs() {
        let jobs = [
            job("slow", "#!/bin/sh\nsleep 30\n", &[], 1),
            job("next", "#!/bin/sh\necho ran\n", &[], 30),
        ];
        let Printed::Whole(outcomes) = run(&jobs, 23_000) else {
            panic!("small outputs come inline")
        };
        assert_eq!(outcomes[0], Err("did not finish within 1s".into()));
        assert_eq!(outcomes[1].as_ref().unwrap().stdout, "ran\n");
    }

    #[test]
    fn outputs_past_the_cut_stay_in_the_guest_for_reading_whole() {
        let jobs = [
            job(
                "long",
                "#!/bin/sh\nhead -c 30000 /dev/zero | tr '\\0' x\nexit 1\n",
                &[],
                30,
            ),
            job("short", "#!/bin/sh\necho short\n", &[], 30),
        ];
        let Printed::Kept { exit_codes, dir } = run(&jobs, 23_000) else {
            panic!("30,000 characters do not fit in 23,000")
        };
        assert_eq!(exit_codes, vec![1, 0]);
        let long = std::fs::read_to_string(format!("{dir}/0.out")).unwrap();
        let short = std::fs::read_to_string(format!("{dir}/1.out")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((long.len(), short.as_str()), (30_000, "short\n"));
    }

    #[test]
    fn what_is_not_the_batchs_answer_is_refused() {
        let jobs = [
            job("a", "#!/bin/sh\n", &[], 1),
            job("b", "#!/bin/sh\n", &[], 1),
        ];
        for (stdout, why) in [
            ("", "unexpected first line"),
            ("bake-batch inline\nbake-job 0 0\n\n\n", "ends before b"),
            (
                "bake-batch inline\nbake-job 1 0\n\n\n",
                "expected the answer of a",
            ),
            (
                "bake-batch inline\nbake-job 0 x\n\n\n",
                "unexpected exit code",
            ),
            ("bake-batch inline\nbake-job 0 0\n!!\n\n", "not base64"),
            (
                "bake-batch kept /etc\nbake-job 0 0\nbake-job 1 0\n",
                "unexpected first line",
            ),
            (
                "bake-batch kept /var/tmp/bake-batch-x\nbake-job 0 0\nbake-job 1 0\nmore\n",
                "after the batch",
            ),
        ] {
            let err = parse(stdout, &jobs).unwrap_err();
            assert!(err.contains(why), "{stdout:?}: {err}");
        }
    }

    #[test]
    fn chunks_fit_the_command_and_keep_the_order() {
        let big = "#!/bin/sh\n".to_string() + &"#".repeat(3_000);
        let jobs: Vec<Job> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| job(n, &big, &[], 1))
            .collect();
        // Each job is about 4,300 characters as sent: two fit in 9,000.
        let cut: Vec<Vec<&str>> = chunks(&jobs, 9_000)
            .iter()
            .map(|c| c.iter().map(|j| j.name).collect())
            .collect();
        assert_eq!(cut, vec![vec!["a", "b"], vec!["c", "d"]]);
        // A job larger than a command goes alone.
        assert_eq!(chunks(&jobs, 100).len(), 4);
        assert_eq!(chunks(&jobs, 1_000_000).len(), 1);
        assert!(chunks(&[], 100).is_empty());
    }
}
