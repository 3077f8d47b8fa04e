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
    let out = c.output().await.map_err(|e| {
        Error::provider(
            "local",
            format!(
                "cannot run `{program}`: {e} (run scripts/setup-host to install what bake needs)"
            ),
        )
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr
            .lines()
            .chain(stdout.lines())
            .rev()
            .take(15)
            .collect();
        return Err(Error::provider(
            "local",
            format!(
                "`{program} {}` failed ({}):\n{}",
                args.join(" "),
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ),
        ));
    }
    Ok(stdout)
}
