//! The guest: how bake reaches inside a builder or canary, whatever the transport (Packer's
//! communicator). Installing files, running recipe steps, capturing the package manifest and
//! running validators are written once on this trait (`steps::provision`, `steps::validators`);
//! the QEMU guest agent (`provider::local::qga`), a chroot of the disk (`provider::local::chroot`,
//! the offline builder) and SSM RunCommand (`provider::aws::ssm`) implement it, each with the
//! limits of its transport.

use crate::Result;
use async_trait::async_trait;
use std::time::Duration;

pub mod audit;
pub mod batch;
pub mod long_output;
pub use batch::{Job, Outcome};

/// What a command in the guest ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// The last `n` lines of stderr then stdout, for an error message.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .chain(self.stdout.lines())
            .rev()
            .take(n)
            .collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// `s` as one shell word: single-quoted, its own single quotes escaped.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script every transport's `put` runs in the guest: `path`'s directory made, the content
/// written from `source` (a shell command whose stdout is the content: the transport's way of
/// carrying it), its mode set, then checked against the content's sha256 by the guest itself.
pub fn put_script(label: &str, path: &str, content: &[u8], mode: u32, source: &str) -> String {
    let quoted = sh_quote(path);
    let label = label.replace('\n', " ");
    format!(
        "#!/bin/sh\n# bake: {label}\nset -eu\nmkdir -p \"$(dirname {quoted})\"\n{source} > {quoted}\nchmod {mode:o} {quoted}\n{}\n",
        verify_command(path, content)
    )
}

/// The shell that checks, in the guest, that `path` holds what bake sent (sha256 of `content`).
pub fn verify_command(path: &str, content: &[u8]) -> String {
    let line = format!("{}  {path}", crate::input::recipe::sha256_hex(content));
    format!("echo {} | sha256sum -c --quiet -", sh_quote(&line))
}

/// A transport into one running machine. Every call names what it does (`label`) so the
/// transport can show it (SSM: the command's comment).
#[async_trait]
pub trait Guest: Send {
    /// The transport, for messages ("guest agent", "SSM RunCommand").
    fn transport(&self) -> &'static str;

    /// The most characters of stdout one command returns; longer output is cut by the
    /// transport (SSM: 24,000). None when nothing is cut.
    fn stdout_limit(&self) -> Option<usize>;

    /// Writes `content` to `path` (parents created) with `mode`. The guest itself checks that
    /// what arrived has the content's sha256 (`sha256sum -c`), so a cut or garbled transfer
    /// is an error, not a file.
    async fn put(
        &mut self,
        label: &str,
        path: &str,
        content: &[u8],
        mode: u32,
        timeout: Duration,
    ) -> Result<()>;

    /// Runs `script` (a whole script, shebang included) as root with `env` added to the
    /// transport's own environment, and waits up to `timeout` for its exit code and output.
    /// An error means it could not be run or did not finish; a non-zero exit is an `Ok`.
    async fn run(
        &mut self,
        label: &str,
        script: &[u8],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Ran>;

    /// Runs `jobs` one after another, each with its own environment and limit, and returns how
    /// each ended, in order (a job that did not finish is an `Err` of its own). This default
    /// sends them one by one; a transport where each command is a round trip sends them as one
    /// ([`batch`]). An error means the jobs could not be run at all.
    async fn run_each(&mut self, label: &str, jobs: &[Job<'_>]) -> Result<Vec<Outcome>> {
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            let env: Vec<(&str, &str)> = job.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let label = format!("{label} {}", job.name);
            let ran = self.run(&label, job.script, &env, job.timeout).await;
            out.push(ran.map_err(|e| e.to_string()));
        }
        Ok(out)
    }

    /// The whole stdout of `producer` (shell), however long: directly when the transport
    /// cuts nothing, else staged in a file in the guest and read back in slices that each fit
    /// in one answer, checked against its sha256.
    async fn read_output(
        &mut self,
        label: &str,
        producer: &str,
        timeout: Duration,
    ) -> std::result::Result<String, String> {
        match self.stdout_limit() {
            None => {
                let script = format!("#!/bin/sh\nset -e\n{producer}\n");
                let ran = self
                    .run(label, script.as_bytes(), &[], timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                if ran.exit_code != 0 {
                    return Err(format!("exited {}: {}", ran.exit_code, ran.tail(8)));
                }
                Ok(ran.stdout)
            }
            Some(_) => {
                let guest = tokio::sync::Mutex::new(self);
                let run = |script: String| {
                    let guest = &guest;
                    async move {
                        let ran = guest
                            .lock()
                            .await
                            .run(label, script.as_bytes(), &[], timeout)
                            .await?;
                        Ok::<_, crate::Error>((ran.exit_code, ran.stdout, ran.stderr))
                    }
                };
                crate::guest::long_output::read_whole(run, producer).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{put_script, verify_command};
    use std::process::Command;

    fn sh(script: &str) -> i32 {
        Command::new("sh")
            .args(["-c", script])
            .status()
            .expect("sh runs")
            .code()
            .unwrap_or(-1)
    }

    /// What the guest runs after a transfer: it passes only when the file holds the bytes sent.
    #[test]
    fn the_guest_side_check_passes_only_for_the_bytes_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("it's a file.conf");
        let path = path.to_str().unwrap();
        let sent = b"[Link]\nMACAddressPolicy=none\n";
        std::fs::write(path, sent).unwrap();
        assert_eq!(sh(&verify_command(path, sent)), 0);
        // Cut short in transit, or garbled: the check fails, so the put fails.
        std::fs::write(path, &sent[..10]).unwrap();
        assert_ne!(sh(&verify_command(path, sent)), 0);
        std::fs::write(path, b"[Link]\nMACAddressPolicy=persistent\n").unwrap();
        assert_ne!(sh(&verify_command(path, sent)), 0);
        std::fs::remove_file(path).unwrap();
        assert_ne!(
            sh(&verify_command(path, sent)),
            0,
            "a missing file fails too"
        );
    }

    /// The script every transport's put runs: it makes the directory, writes what its source
    /// prints, sets the mode, and fails when what arrived is not what was sent.
    #[test]
    fn the_put_script_writes_sets_the_mode_and_refuses_what_did_not_arrive_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/it's new/99-bake.conf");
        let path_s = path.to_str().unwrap();
        let sent = b"[Link]\nMACAddressPolicy=none\n";
        let staged = dir.path().join("staged");
        std::fs::write(&staged, sent).unwrap();
        let source = format!("cat {}", super::sh_quote(staged.to_str().unwrap()));
        assert_eq!(sh(&put_script("a file", path_s, sent, 0o640, &source)), 0);
        assert_eq!(std::fs::read(&path).unwrap(), sent);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // A transfer cut short: the guest's own check fails the put.
        std::fs::write(&staged, &sent[..7]).unwrap();
        assert_ne!(sh(&put_script("a file", path_s, sent, 0o640, &source)), 0);
    }
}
