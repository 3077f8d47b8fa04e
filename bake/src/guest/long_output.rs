//! Output longer than SSM RunCommand returns. `GetCommandInvocation` gives at most 24,000
//! characters of stdout (8,000 of stderr) and silently cuts the rest; a package list of an EKS
//! AMI is longer than that. So the producing command writes its output to a file on the
//! instance and prints only its size and sha256; the file is then read back in base64 slices
//! that each fit in one answer, and the whole is checked against the digest before use.

use std::future::Future;

/// The most stdout `GetCommandInvocation` returns.
pub const SSM_STDOUT_LIMIT: usize = 24_000;
/// Bytes per slice: base64 makes 21,336 characters of them, under the limit with room to spare.
pub const SLICE: usize = 16_000;

/// A command's exit code, stdout and stderr.
pub type Ran = (i32, String, String);

/// Runs `producer` (shell) on the instance through `run` and returns its whole stdout, or why
/// it could not be read whole. `run` sends one script and returns what SSM answered.
pub async fn read_whole<F, Fut, E>(run: F, producer: &str) -> Result<String, String>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Ran, E>>,
    E: std::fmt::Display,
{
    let stage = format!(
        "#!/bin/bash\nset -euo pipefail\nf=$(mktemp \"${{TMPDIR:-/var/tmp}}/bake-output-XXXXXX\")\n{{\n{producer}\n}} > \"$f\"\nprintf '%s %s %s\\n' \"$(wc -c < \"$f\")\" \"$(sha256sum \"$f\" | cut -d' ' -f1)\" \"$f\"\n"
    );
    let (rc, out, err) = run(stage).await.map_err(|e| e.to_string())?;
    if rc != 0 {
        return Err(format!("exited {rc}: {}", err.trim()));
    }
    let mut words = out.split_whitespace();
    let (Some(size), Some(digest), Some(path)) = (words.next(), words.next(), words.next()) else {
        return Err(format!("unexpected answer `{}`", out.trim()));
    };
    let size: usize = size
        .parse()
        .map_err(|_| format!("unexpected size `{size}`"))?;
    if !path.starts_with('/') || path.contains('\'') {
        return Err(format!("unexpected path `{path}`"));
    }
    let result = async {
        let mut bytes = Vec::with_capacity(size);
        while bytes.len() < size {
            let script = format!(
                "#!/bin/bash\nset -euo pipefail\n# slice at byte {offset}\ndd if='{path}' iflag=skip_bytes,count_bytes skip={offset} count={SLICE} bs=64K status=none | base64 -w0\n",
                offset = bytes.len()
            );
            let (rc, out, err) = run(script).await.map_err(|e| e.to_string())?;
            if rc != 0 {
                return Err(format!("reading {path} exited {rc}: {}", err.trim()));
            }
            let slice = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, out.trim())
                .map_err(|e| format!("a slice of {path} is not base64: {e}"))?;
            if slice.is_empty() {
                return Err(format!("{path} ended at {} of {size} bytes", bytes.len()));
            }
            bytes.extend(slice);
        }
        let got = crate::input::recipe::sha256_hex(&bytes);
        if bytes.len() != size || got != digest {
            return Err(format!(
                "{path} arrived as {} bytes with sha256 {got}, not {size} bytes with {digest}",
                bytes.len()
            ));
        }
        String::from_utf8(bytes).map_err(|e| format!("{path} is not UTF-8: {e}"))
    }
    .await;
    // Best effort: the instance is thrown away anyway, and the image generalizes /var/tmp.
    let _ = run(format!("#!/bin/bash\nrm -f '{path}'\n")).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Runs a script with a real bash, as AWS-RunShellScript would, and answers as
    /// GetCommandInvocation does: stdout cut at 24,000 characters, stderr at 8,000.
    fn ssm_like(
        dir: &std::path::Path,
    ) -> impl Fn(String) -> std::future::Ready<Result<Ran, String>> + '_ {
        move |script: String| {
            let out = Command::new("bash")
                .arg("-c")
                .arg(&script)
                .env("TMPDIR", dir)
                .env(
                    "PATH",
                    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap()),
                )
                .output()
                .unwrap();
            let cut = |b: &[u8], n: usize| {
                String::from_utf8_lossy(b)
                    .chars()
                    .take(n)
                    .collect::<String>()
            };
            std::future::ready(Ok((
                out.status.code().unwrap_or(-1),
                cut(&out.stdout, SSM_STDOUT_LIMIT),
                cut(&out.stderr, 8_000),
            )))
        }
    }

    /// A package tool whose list is ~200 KB, like a full EKS AMI's (and longer than SSM returns).
    fn long_list(dir: &std::path::Path) -> String {
        let list: String = (0..4000)
            .map(|i| {
                format!("package-{i:04}-with-a-longish-name\t1:2.{i}.0-1ubuntu0.22.04.{i}\tamd64\n")
            })
            .collect();
        std::fs::write(dir.join("list.txt"), &list).unwrap();
        let tool = dir.join("fake-dpkg-query");
        std::fs::write(
            &tool,
            format!("#!/bin/sh\ncat '{}'\n", dir.join("list.txt").display()),
        )
        .unwrap();
        Command::new("chmod")
            .arg("755")
            .arg(&tool)
            .status()
            .unwrap();
        list
    }

    #[tokio::test]
    async fn a_list_longer_than_ssm_returns_arrives_whole() {
        let dir = tempfile::tempdir().unwrap();
        let list = long_list(dir.path());
        assert!(list.len() > 8 * SSM_STDOUT_LIMIT, "{} bytes", list.len());
        let run = ssm_like(dir.path());
        // One command would lose most of it.
        let (_, once, _) = run("fake-dpkg-query".into()).await.unwrap();
        assert_eq!(once.len(), SSM_STDOUT_LIMIT);
        let whole = read_whole(&run, "fake-dpkg-query | sort").await.unwrap();
        let mut sorted: Vec<&str> = list.lines().collect();
        sorted.sort();
        assert_eq!(whole.lines().collect::<Vec<_>>(), sorted);
        // The staged file is gone afterwards.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("bake-output-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn a_slice_that_arrives_damaged_is_an_error_not_a_shorter_list() {
        let dir = tempfile::tempdir().unwrap();
        long_list(dir.path());
        let honest = ssm_like(dir.path());
        let calls = std::cell::Cell::new(0);
        let damaging = |script: String| {
            calls.set(calls.get() + 1);
            let n = calls.get();
            let answer = honest(script);
            async move {
                let (rc, out, err) = answer.await?;
                // The third answer (the second slice) arrives altered, as over a lossy transport.
                Ok::<Ran, String>((
                    rc,
                    if n == 3 {
                        format!("AAAA{}", &out[4..])
                    } else {
                        out
                    },
                    err,
                ))
            }
        };
        let e = read_whole(damaging, "fake-dpkg-query")
            .await
            .map(|whole| whole.len())
            .unwrap_err();
        assert!(e.contains("not") && e.contains("bytes"), "{e}");
    }

    #[tokio::test]
    async fn a_failing_producer_is_reported_with_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_whole(ssm_like(dir.path()), "echo 'rpm: not found' >&2; exit 127")
            .await
            .unwrap_err();
        assert!(
            e.contains("exited 127") && e.contains("rpm: not found"),
            "{e}"
        );
    }
}
