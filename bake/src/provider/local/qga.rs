//! A small client for the QEMU guest agent (qemu-ga) over the VM's virtio-serial Unix socket:
//! sync, `guest-exec` with captured output and exit status, file upload, shutdown.
//! The protocol is one JSON object per line each way.

use base64::Engine as _;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum QgaError {
    #[error("guest agent at {socket} did not answer within {waited:?}")]
    NotReady { socket: PathBuf, waited: Duration },
    #[error("guest agent I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("guest agent {command}: {message}")]
    Command { command: String, message: String },
    #[error("guest agent closed the connection")]
    Closed,
    #[error("`{command}` did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
}

/// The result of a command run in the guest.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub struct Agent {
    socket: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl Agent {
    /// Connects and syncs, retrying until the agent answers or `timeout` passes.
    /// `alive` is checked between tries so a VM that died is noticed at once.
    pub async fn connect(
        socket: &Path,
        timeout: Duration,
        mut alive: impl FnMut() -> Result<(), String>,
    ) -> Result<Agent, QgaError> {
        let start = Instant::now();
        loop {
            if let Err(why) = alive() {
                return Err(QgaError::Command {
                    command: "connect".into(),
                    message: why,
                });
            }
            if start.elapsed() > timeout {
                return Err(QgaError::NotReady {
                    socket: socket.to_path_buf(),
                    waited: timeout,
                });
            }
            if let Ok(stream) = UnixStream::connect(socket).await {
                let (r, w) = stream.into_split();
                let mut agent = Agent {
                    socket: socket.to_path_buf(),
                    reader: BufReader::new(r),
                    writer: w,
                };
                if agent.sync(Duration::from_secs(3)).await.is_ok() {
                    return Ok(agent);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// `guest-sync` with a random ID; answers left over from earlier requests are skipped.
    async fn sync(&mut self, timeout: Duration) -> Result<(), QgaError> {
        let id: u32 = rand::random::<u32>() >> 1;
        self.send(&json!({"execute": "guest-sync", "arguments": {"id": id}}))
            .await?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = tokio::time::timeout(left, self.read())
                .await
                .map_err(|_| QgaError::NotReady {
                    socket: self.socket.clone(),
                    waited: timeout,
                })??;
            if v.get("return").and_then(Value::as_u64) == Some(id as u64) {
                return Ok(());
            }
        }
    }

    async fn send(&mut self, v: &Value) -> Result<(), QgaError> {
        let mut line = serde_json::to_vec(v).expect("json serializes");
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        Ok(())
    }

    async fn read(&mut self) -> Result<Value, QgaError> {
        loop {
            let mut line = Vec::new();
            let n = self.reader.read_until(b'\n', &mut line).await?;
            if n == 0 {
                return Err(QgaError::Closed);
            }
            // guest-sync-delimited sends 0xFF; tolerate any stray bytes before the JSON.
            let start = line.iter().position(|b| *b == b'{').unwrap_or(line.len());
            if let Ok(v) = serde_json::from_slice::<Value>(&line[start..]) {
                return Ok(v);
            }
        }
    }

    /// Runs one agent command and returns its `return` value.
    pub async fn call(&mut self, command: &str, arguments: Value) -> Result<Value, QgaError> {
        self.send(&json!({"execute": command, "arguments": arguments}))
            .await?;
        let v = tokio::time::timeout(Duration::from_secs(60), self.read())
            .await
            .map_err(|_| QgaError::Timeout {
                command: command.into(),
                timeout: Duration::from_secs(60),
            })??;
        if let Some(err) = v.get("error") {
            return Err(QgaError::Command {
                command: command.into(),
                message: err
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
                    .to_string(),
            });
        }
        Ok(v.get("return").cloned().unwrap_or(Value::Null))
    }

    /// Runs `path args...` in the guest with `env`, waits up to `timeout`, and returns its
    /// exit code and output.
    pub async fn exec(
        &mut self,
        path: &str,
        args: &[&str],
        env: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, QgaError> {
        let shown = std::iter::once(path)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let r = self
            .call(
                "guest-exec",
                json!({"path": path, "arg": args, "env": env, "capture-output": true}),
            )
            .await?;
        let pid = r
            .get("pid")
            .and_then(Value::as_i64)
            .ok_or_else(|| QgaError::Command {
                command: "guest-exec".into(),
                message: format!("no pid in answer {r}"),
            })?;
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(50);
        loop {
            let st = self.call("guest-exec-status", json!({"pid": pid})).await?;
            if st.get("exited").and_then(Value::as_bool) == Some(true) {
                let text = |k: &str| {
                    st.get(k)
                        .and_then(Value::as_str)
                        .and_then(|s| b64().decode(s).ok())
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default()
                };
                let exit_code = st
                    .get("exitcode")
                    .and_then(Value::as_i64)
                    .or_else(|| st.get("signal").and_then(Value::as_i64).map(|s| 128 + s))
                    .unwrap_or(-1) as i32;
                return Ok(ExecOutput {
                    exit_code,
                    stdout: text("out-data"),
                    stderr: text("err-data"),
                });
            }
            if Instant::now() > deadline {
                return Err(QgaError::Timeout {
                    command: shown,
                    timeout,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// Writes `content` to `path` in the guest (the parent directory must exist).
    pub async fn write_file(&mut self, path: &str, content: &[u8]) -> Result<(), QgaError> {
        let handle = self
            .call("guest-file-open", json!({"path": path, "mode": "w"}))
            .await?;
        let handle = handle.as_i64().ok_or_else(|| QgaError::Command {
            command: "guest-file-open".into(),
            message: format!("no handle for {path}"),
        })?;
        for chunk in content.chunks(48 * 1024) {
            self.call(
                "guest-file-write",
                json!({"handle": handle, "buf-b64": b64().encode(chunk)}),
            )
            .await?;
        }
        self.call("guest-file-close", json!({"handle": handle}))
            .await?;
        Ok(())
    }

    /// Reads a whole file from the guest.
    pub async fn read_file(&mut self, path: &str) -> Result<Vec<u8>, QgaError> {
        let handle = self
            .call("guest-file-open", json!({"path": path, "mode": "r"}))
            .await?;
        let handle = handle.as_i64().ok_or_else(|| QgaError::Command {
            command: "guest-file-open".into(),
            message: format!("no handle for {path}"),
        })?;
        let mut content = Vec::new();
        loop {
            let r = self
                .call(
                    "guest-file-read",
                    json!({"handle": handle, "count": 4 * 1024 * 1024}),
                )
                .await?;
            if let Some(data) = r.get("buf-b64").and_then(Value::as_str) {
                content.extend(b64().decode(data).map_err(|e| QgaError::Command {
                    command: "guest-file-read".into(),
                    message: e.to_string(),
                })?);
            }
            if r.get("eof").and_then(Value::as_bool).unwrap_or(true) {
                break;
            }
        }
        self.call("guest-file-close", json!({"handle": handle}))
            .await?;
        Ok(content)
    }

    /// Asks the guest to power off. The agent may not answer (it goes down with the guest).
    pub async fn shutdown(&mut self) -> Result<(), QgaError> {
        self.send(&json!({"execute": "guest-shutdown", "arguments": {"mode": "powerdown"}}))
            .await
    }
}

/// The guest agent's `guest-exec` environment replaces the guest's: what every command gets.
const BASE_ENV: [&str; 3] = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "LANG=C.UTF-8",
];

/// Where a script is staged, one file per run, removed when it ends. Not /run: Debian mounts it
/// `noexec`, and a script must be executable to keep its own shebang.
const SCRIPTS: &str = "/var/tmp";

impl Agent {
    /// Runs `sh -c script args...` with the base environment plus `env`, as an error when
    /// the agent fails or the command times out.
    async fn sh(
        &mut self,
        label: &str,
        script: &str,
        args: &[&str],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> crate::Result<crate::guest::Ran> {
        let mut argv = vec!["-c", script, "sh"];
        argv.extend_from_slice(args);
        let env: Vec<String> = BASE_ENV
            .iter()
            .map(|s| s.to_string())
            .chain(env.iter().map(|(k, v)| format!("{k}={v}")))
            .collect();
        let out = self
            .exec("/bin/sh", &argv, &env, timeout)
            .await
            .map_err(|e| crate::Error::provider("local", format!("{label}: {e}")))?;
        Ok(crate::guest::Ran {
            exit_code: out.exit_code,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}

#[async_trait::async_trait]
impl crate::guest::Guest for Agent {
    fn transport(&self) -> &'static str {
        "guest agent"
    }

    /// `guest-exec` keeps up to 16 MiB of output, far beyond anything bake reads.
    fn stdout_limit(&self) -> Option<usize> {
        None
    }

    async fn put(
        &mut self,
        label: &str,
        path: &str,
        content: &[u8],
        mode: u32,
        timeout: Duration,
    ) -> crate::Result<()> {
        // The content goes over the agent's own file calls to a staging file, then the same
        // script as every transport's moves it into place and checks it in the guest.
        let staging = format!(
            "{SCRIPTS}/bake-put-{}",
            hex::encode(rand::random::<[u8; 8]>())
        );
        self.write_file(&staging, content).await.map_err(|e| {
            crate::Error::provider("local", format!("{label}: uploading {path}: {e}"))
        })?;
        let script =
            crate::guest::put_script(label, path, content, mode, &format!("cat {staging}"));
        let script = format!("trap 'rm -f {staging}' EXIT\n{script}");
        let ran = self.sh(label, &script, &[], &[], timeout).await?;
        if ran.exit_code != 0 {
            return Err(crate::Error::provider(
                "local",
                format!("{label}: writing {path}: {}", ran.tail(4)),
            ));
        }
        Ok(())
    }

    async fn run(
        &mut self,
        label: &str,
        script: &[u8],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> crate::Result<crate::guest::Ran> {
        let path = format!("{SCRIPTS}/bake-{}", hex::encode(rand::random::<[u8; 8]>()));
        self.write_file(&path, script).await.map_err(|e| {
            crate::Error::provider("local", format!("{label}: uploading the script: {e}"))
        })?;
        self.sh(
            label,
            "chmod 0700 \"$1\" && \"$1\"; rc=$?; rm -f \"$1\"; exit $rc",
            &[&path],
            env,
            timeout,
        )
        .await
    }
}
