//! Running host tools (mmdebstrap, mkfs.ext4, qemu-img) with their output kept for errors.

use crate::{Error, Result};
use std::path::Path;
use tokio::process::Command;

/// Runs `program args...`; on failure the error names the command and its last output lines.
pub async fn run(program: &str, args: &[String], cwd: Option<&Path>) -> Result<String> {
    let mut c = Command::new(program);
    c.args(args)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    tracing::debug!("running {program} {}", args.join(" "));
    let out = c.output().await.map_err(|e| cannot_run(program, e))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr
            .lines()
            .chain(stdout.lines())
            .rev()
            .take(15)
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(failed(program, args, out.status, &tail.join("\n")));
    }
    Ok(stdout)
}

/// Runs `program args...` and hands each line it writes (stdout and stderr, as they come) to
/// `on_line`, for progress; on failure the error names the command and its last lines.
pub async fn run_lines(
    program: &str,
    args: &[String],
    on_line: &(dyn Fn(&str) + Send + Sync),
) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut c = Command::new(program);
    c.args(args)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    tracing::debug!("running {program} {}", args.join(" "));
    let mut child = c.spawn().map_err(|e| cannot_run(program, e))?;
    let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut err = BufReader::new(child.stderr.take().expect("piped")).lines();
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        let line = tokio::select! {
            l = out.next_line(), if out_open => l.map_err(|e| Error::io(format!("reading {program}'s output"), e))?.or_else(|| { out_open = false; None }),
            l = err.next_line(), if err_open => l.map_err(|e| Error::io(format!("reading {program}'s output"), e))?.or_else(|| { err_open = false; None }),
        };
        if let Some(line) = line {
            on_line(&line);
            if tail.len() == 15 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| Error::io(format!("waiting for {program}"), e))?;
    if !status.success() {
        return Err(failed(program, args, status, &Vec::from(tail).join("\n")));
    }
    Ok(())
}

fn cannot_run(program: &str, e: std::io::Error) -> Error {
    Error::provider(
        "local",
        format!("cannot run `{program}`: {e} (run scripts/setup-host to install what bake needs)"),
    )
}

/// The error of a command that exited non-zero: the command line, its status, its last lines.
fn failed(program: &str, args: &[String], status: std::process::ExitStatus, tail: &str) -> Error {
    Error::provider(
        "local",
        format!("`{program} {}` failed ({status}):\n{tail}", args.join(" ")),
    )
}
