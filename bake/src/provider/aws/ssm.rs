//! SSM RunCommand as a [`Guest`]: every script goes through `AWS-RunShellScript` as one
//! command, inlined in base64 (no S3 bucket needed), and is read back with
//! `GetCommandInvocation`, which returns at most 24,000 characters of stdout and 8,000 of
//! stderr. The agent runs commands as root with only `PATH` set.

use crate::guest::batch::{self, Job, Outcome, Printed};
use crate::guest::long_output::SSM_STDOUT_LIMIT;
use crate::guest::{Guest, Ran};
use crate::provider::aws::sdk::{code, err, Limits, Poll};
use crate::{Error, Result};
use async_trait::async_trait;
use aws_sdk_ssm::types::{CommandInvocationStatus, InstanceInformationStringFilter, PingStatus};
use base64::Engine as _;
use std::time::Duration;

/// A command's parameters are limited to a few tens of KB; a larger file would need S3.
pub const MAX_INLINE_FILE: usize = 48 * 1024;

/// What one command runs: a document, the sha256 its content must have, its parameters.
pub struct Invocation<'a> {
    pub document: &'a str,
    pub hash: Option<&'a str>,
    pub parameters: Vec<(&'a str, String)>,
}

/// One instance reached through SSM.
#[derive(Clone)]
pub struct SsmGuest {
    pub ssm: aws_sdk_ssm::Client,
    pub limits: Limits,
    pub region: String,
    pub instance: String,
    pub poll_interval: Duration,
}

impl SsmGuest {
    /// Waits until the instance's SSM agent is online (DescribeInstanceInformation), up to
    /// `timeout`.
    pub async fn wait_online(&self, timeout: Duration) -> Result<()> {
        let id = &self.instance;
        let poll = Poll::new(self.poll_interval);
        loop {
            self.limits.ssm.until_ready().await;
            let filter = InstanceInformationStringFilter::builder()
                .key("InstanceIds")
                .values(id)
                .build()
                .map_err(|e| Error::provider("aws", e.to_string()))?;
            let r = self
                .ssm
                .describe_instance_information()
                .filters(filter)
                .send()
                .await
                .map_err(|e| err(format!("asking SSM about {id} in {}", self.region), e))?;
            let online = r.instance_information_list().iter().any(|i| {
                i.instance_id() == Some(id) && i.ping_status() == Some(&PingStatus::Online)
            });
            if online {
                return Ok(());
            }
            if poll.elapsed() > timeout {
                return Err(Error::provider(
                    "aws",
                    format!(
                        "the SSM agent of {id} in {} did not come online within {timeout:?} (instance profile with AmazonSSMManagedInstanceCore? route to SSM?)",
                        self.region
                    ),
                ));
            }
            poll.tick().await;
        }
    }

    /// Sends one AWS-RunShellScript command and waits for its end.
    async fn command(&self, label: &str, script: &str, timeout: Duration) -> Result<Ran> {
        let invocation = Invocation {
            document: "AWS-RunShellScript",
            hash: None,
            parameters: vec![
                ("commands", script.to_string()),
                ("executionTimeout", timeout.as_secs().max(1).to_string()),
            ],
        };
        self.send(label, &invocation, timeout).await
    }

    /// Sends one command of `invocation`'s document and waits for its end (up to `timeout` and
    /// a minute).
    ///
    /// Long because sending, polling with backoff and reading the answer (its cut, its status) are
    /// one exchange with SSM whose failures are told apart in one place.
    pub async fn send(
        &self,
        label: &str,
        invocation: &Invocation<'_>,
        timeout: Duration,
    ) -> Result<Ran> {
        let instance = &self.instance;
        let mut attempts = 0;
        let command_id = loop {
            self.limits.ssm.until_ready().await;
            let mut send = self
                .ssm
                .send_command()
                .document_name(invocation.document)
                .instance_ids(instance);
            for (name, value) in &invocation.parameters {
                send = send.parameters(*name, vec![value.clone()]);
            }
            if let Some(hash) = invocation.hash {
                // SSM runs the document only if its content still has this sha256.
                send = send
                    .document_hash(hash)
                    .document_hash_type(aws_sdk_ssm::types::DocumentHashType::Sha256);
            }
            let sent = send
                .comment(label.chars().take(100).collect::<String>())
                // One instance a command, said explicitly rather than left to SSM's defaults
                // (50 at once): bake runs its commands at the pace it chooses (`bake audit`
                // at most eight nodes at once) and judges each instance's answer itself.
                .max_concurrency("1")
                .max_errors("0")
                .send()
                .await;
            match sent {
                Ok(r) => {
                    break r
                        .command()
                        .and_then(|c| c.command_id())
                        .unwrap_or_default()
                        .to_string()
                }
                // The agent may not be registered for commands yet, a moment after coming online.
                Err(e) if code(&e) == Some("InvalidInstanceId") && attempts < 10 => {
                    attempts += 1;
                    tokio::time::sleep(self.poll_interval).await;
                }
                Err(e) => {
                    return Err(err(
                        format!(
                            "{label}: sending the command to {instance} in {}",
                            self.region
                        ),
                        e,
                    ))
                }
            }
        };
        // Short commands finish in well under a poll interval: the pace starts fast.
        let poll = Poll::new(self.poll_interval);
        loop {
            poll.tick().await;
            self.limits.ssm.until_ready().await;
            let r = self
                .ssm
                .get_command_invocation()
                .command_id(&command_id)
                .instance_id(instance)
                .send()
                .await;
            let inv = match r {
                Ok(inv) => inv,
                // Eventual consistency: the invocation is not visible right after SendCommand.
                Err(e) if code(&e) == Some("InvocationDoesNotExist") => continue,
                Err(e) => {
                    return Err(err(
                        format!("{label}: reading command {command_id} in {}", self.region),
                        e,
                    ))
                }
            };
            let ran = |exit_code| Ran {
                exit_code,
                stdout: inv
                    .standard_output_content()
                    .unwrap_or_default()
                    .to_string(),
                stderr: inv.standard_error_content().unwrap_or_default().to_string(),
            };
            match inv.status() {
                Some(CommandInvocationStatus::Success) => return Ok(ran(0)),
                Some(CommandInvocationStatus::Failed) => return Ok(ran(inv.response_code())),
                Some(
                    s @ (CommandInvocationStatus::TimedOut
                    | CommandInvocationStatus::Cancelled
                    | CommandInvocationStatus::Cancelling),
                ) => {
                    return Err(Error::provider(
                        "aws",
                        format!("{label}: command {command_id} on {instance} ended {s}"),
                    ))
                }
                _ => {}
            }
            if poll.elapsed() > timeout + Duration::from_secs(60) {
                return Err(Error::provider(
                    "aws",
                    format!("{label}: command {command_id} on {instance} did not finish within {timeout:?}"),
                ));
            }
        }
    }
}

#[async_trait]
impl Guest for SsmGuest {
    fn transport(&self) -> &'static str {
        "SSM RunCommand"
    }

    fn stdout_limit(&self) -> Option<usize> {
        Some(SSM_STDOUT_LIMIT)
    }

    async fn put(
        &mut self,
        label: &str,
        path: &str,
        content: &[u8],
        mode: u32,
        timeout: Duration,
    ) -> Result<()> {
        if content.len() > MAX_INLINE_FILE {
            return Err(Error::provider(
                "aws",
                format!(
                    "{label}: {path} is {} bytes; files go inline in SSM commands, at most {MAX_INLINE_FILE}",
                    content.len()
                ),
            ));
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(content);
        let script = crate::guest::put_script(
            label,
            path,
            content,
            mode,
            &format!("echo '{b64}' | base64 -d"),
        );
        let ran = self.command(label, &script, timeout).await?;
        if ran.exit_code != 0 {
            return Err(Error::provider(
                "aws",
                format!(
                    "{label}: writing {path} on {} exited {}: {}",
                    self.instance,
                    ran.exit_code,
                    ran.tail(8)
                ),
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
    ) -> Result<Ran> {
        // The script runs from a private temp file, so it needs no quoting and keeps its own
        // shebang. It travels as text in a here-document (readable in the command history, a
        // quarter smaller than base64) unless it is not UTF-8 or holds the delimiter.
        let exports: String = env
            .iter()
            .map(|(k, v)| format!("export {k}={}\n", crate::guest::sh_quote(v)))
            .collect();
        let delimiter = format!(
            "BAKE_SCRIPT_{}",
            &crate::input::recipe::sha256_hex(script)[..16]
        );
        let write = match std::str::from_utf8(script) {
            Ok(text) if !text.contains(&delimiter) => {
                let nl = if text.ends_with('\n') { "" } else { "\n" };
                format!("cat > \"$f\" <<'{delimiter}'\n{text}{nl}{delimiter}\n")
            }
            _ => format!(
                "echo '{}' | base64 -d > \"$f\"\n",
                base64::engine::general_purpose::STANDARD.encode(script)
            ),
        };
        let wrapper = format!(
            "#!/bin/bash\n# bake: {label}\n{exports}f=$(mktemp /var/tmp/bake-XXXXXX)\n{write}chmod 0700 \"$f\"\n\"$f\"\nrc=$?\nrm -f \"$f\"\nexit $rc\n"
        );
        self.command(label, &wrapper, timeout).await
    }

    /// The jobs in as few commands as their scripts fit in (each command a send, polls and an
    /// output fetch on AWS), their outputs read whole even past the 24,000-character cut.
    async fn run_each(&mut self, label: &str, jobs: &[Job<'_>]) -> Result<Vec<Outcome>> {
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in batch::chunks(jobs, MAX_INLINE_FILE.div_ceil(3) * 4) {
            let script = batch::script(label, chunk, SSM_STDOUT_LIMIT - 1_000);
            let names: Vec<&str> = chunk.iter().map(|j| j.name).collect();
            let label = format!("{label} {}", names.join(" "));
            let ran = self.command(&label, &script, batch::limit(chunk)).await?;
            let instance = self.instance.clone();
            let fail =
                |why: String| Error::provider("aws", format!("{label}: on {instance}: {why}"));
            if ran.exit_code != 0 {
                return Err(fail(format!(
                    "the batch exited {}: {}",
                    ran.exit_code,
                    ran.tail(8)
                )));
            }
            match batch::parse(&ran.stdout, chunk).map_err(fail)? {
                Printed::Whole(outcomes) => out.extend(outcomes),
                Printed::Kept { exit_codes, dir } => {
                    let read = Duration::from_secs(120);
                    for (i, (job, rc)) in chunk.iter().zip(exit_codes).enumerate() {
                        let what = format!("{label} {} output", job.name);
                        let stdout = self
                            .read_output(&what, &format!("cat '{dir}/{i}.out'"), read)
                            .await
                            .map_err(fail)?;
                        let stderr = self
                            .read_output(&what, &format!("cat '{dir}/{i}.err'"), read)
                            .await
                            .map_err(fail)?;
                        out.push(batch::outcome(job, rc, stdout, stderr));
                    }
                    let clean = format!("#!/bin/bash\nrm -rf '{dir}'\n");
                    self.command(&label, &clean, read).await?;
                }
            }
        }
        Ok(out)
    }
}
