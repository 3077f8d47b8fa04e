//! The step library (Packer's multistep, with a journal). A bake is a list of steps, each with
//! `run` and `cleanup`. The steps that ran — including the one that failed — are cleaned up
//! last-first on success, failure, rejection and interrupt; every cleanup gets its own timeout
//! and a fresh, uncancelled context. What a cleanup does may depend on the outcome: a builder
//! is always removed, an image only when the bake failed or was interrupted.

//!
//! The steps that work inside a machine are written once, on the [`Guest`] communicator, for
//! every provider: `provision` (install files, run recipe steps, capture packages) and
//! `validators` (prepare the canary, run the checks, decide). A provider supplies only the
//! machine lifecycle (disks or instances, boots, images) and a state that implements [`Machines`].

pub mod node_ready;
pub mod pod_network;
pub mod provision;
pub mod validators;

use crate::guest::Guest;
use crate::journal::{Entry, Journal, Kind, StepStatus};
use crate::report::Reporter;
use crate::verdict::Verdict;
use crate::{Arch, Error, Result};
use async_trait::async_trait;
use chrono::Utc;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Which VM or instance of a bake: the builder that makes the image, or the canary that proves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Builder,
    Canary,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Builder => "builder",
            Role::Canary => "canary",
        }
    }
}

/// One thing per role of a bake (the builder's and the canary's instance, disk or guest).
#[derive(Debug)]
pub struct ByRole<T> {
    builder: Option<T>,
    canary: Option<T>,
}

impl<T> Default for ByRole<T> {
    fn default() -> Self {
        ByRole {
            builder: None,
            canary: None,
        }
    }
}

impl<T> ByRole<T> {
    /// The slot of `role`.
    pub fn slot(&mut self, role: Role) -> &mut Option<T> {
        match role {
            Role::Builder => &mut self.builder,
            Role::Canary => &mut self.canary,
        }
    }

    pub fn get(&self, role: Role) -> Option<&T> {
        match role {
            Role::Builder => self.builder.as_ref(),
            Role::Canary => self.canary.as_ref(),
        }
    }
}

/// What the provider-neutral steps need of a provider's bake state.
pub trait Machines: Send {
    /// The builder's or canary's guest, once its agent answers.
    fn guest(&mut self, role: Role) -> Result<&mut dyn Guest>;
    /// Where the canary may see its second disk, the image as shipped (most specific first).
    fn image_devices(&self) -> Vec<String>;
    /// What the steps produce for the provider's own steps to record.
    fn made(&mut self) -> &mut Made;
    /// The name the canary registers under when it joins a cluster, where the provider knows
    /// it (EC2: the instance's private DNS name, which nodeadm and Canonical's bootstrap use).
    fn node_name(&self) -> Option<String> {
        None
    }
}

/// What the provider-neutral steps produce.
#[derive(Debug, Default)]
pub struct Made {
    /// The package manifest: `name<TAB>version<TAB>arch` lines, sorted.
    pub packages: Option<String>,
    /// The validators' verdict on the canary.
    pub verdict: Option<Verdict>,
}

impl Made {
    /// True once validators accepted the image: a validated image outlives a failure after it
    /// (copy, share), so the next run or `resume` reuses it instead of baking again.
    pub fn validated(&self) -> bool {
        self.verdict.as_ref().is_some_and(|v| v.accepted)
    }

    /// The kubelet's version in the package manifest, as the package manager prints it.
    pub fn kubelet(&self) -> Option<String> {
        self.packages
            .as_deref()
            .and_then(crate::packages::kubelet_in)
    }

    /// The sha256 of the package manifest.
    pub fn packages_sha256(&self) -> Option<String> {
        self.packages
            .as_deref()
            .map(|p| crate::input::recipe::sha256_hex(p.as_bytes()))
    }
}

/// How a bake ended, as seen by the cleanups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every step ran and the image was accepted.
    Succeeded,
    /// Every step ran but validators rejected the image: keep it, marked rejected, with logs.
    Rejected,
    /// A step failed: remove everything, the image included.
    Failed,
    /// Ctrl-C/SIGTERM: remove everything, the image included.
    Cancelled,
}

impl Outcome {
    /// True when a produced image must be deleted during cleanup.
    pub fn discards_image(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::Cancelled)
    }
}

/// What every step gets: where it is, how to record resources, how to report, and the
/// cancellation token (always uncancelled during cleanups).
pub struct StepContext<'a> {
    pub recipe: &'a str,
    pub arch: Arch,
    pub journal: &'a Journal,
    pub reporter: &'a dyn Reporter,
    pub cancel: CancellationToken,
}

impl StepContext<'_> {
    /// Records a created resource in the journal (fsynced) — call before the next call that can fail.
    pub fn created(&self, kind: Kind, id: &str) -> Result<()> {
        self.journal.created(self.recipe, self.arch, kind, id)
    }
    pub fn removed(&self, kind: Kind, id: &str) -> Result<()> {
        self.journal.removed(kind, id)
    }
    /// A step failure with this bake's recipe and arch.
    pub fn error(&self, step: &str, message: impl Into<String>) -> Error {
        Error::Step {
            recipe: self.recipe.to_string(),
            arch: self.arch.to_string(),
            step: step.to_string(),
            message: message.into(),
        }
    }

    /// Where this bake's step and validator logs go: `<state>/runs/<run-id>/<recipe>-<arch>/`.
    pub fn log_dir(&self) -> PathBuf {
        let dir = self
            .journal
            .logs_dir()
            .join(format!("{}-{}", self.recipe, self.arch));
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    /// The guest environment every script gets.
    pub fn env(&self) -> [(&'static str, &str); 3] {
        [
            ("DEBIAN_FRONTEND", "noninteractive"),
            ("BAKE_RECIPE", self.recipe),
            ("BAKE_ARCH", self.arch.as_str()),
        ]
    }

    pub fn phase(&self, phase: &str) {
        self.reporter.phase(self.recipe, self.arch, phase);
    }
    fn step_event(&self, step: &str, status: StepStatus) -> Result<()> {
        self.journal.record(&Entry::Step {
            recipe: self.recipe.to_string(),
            arch: self.arch,
            step: step.to_string(),
            status,
            at: Utc::now(),
        })
    }
}

/// One step of a bake over the provider's typed state `S`.
#[async_trait]
pub trait Step<S: Send>: Send + Sync {
    fn name(&self) -> &str;
    async fn run(&self, state: &mut S, cx: &StepContext<'_>) -> Result<()>;
    async fn cleanup(
        &self,
        _state: &mut S,
        _outcome: Outcome,
        _cx: &StepContext<'_>,
    ) -> Result<()> {
        Ok(())
    }
}

/// What a run of steps produced.
#[derive(Debug)]
pub struct RunReport {
    pub outcome: Outcome,
    /// The error that stopped the steps, if any.
    pub error: Option<Error>,
    /// Cleanups that failed or timed out (their resources stay in the journal for `sweep`).
    pub cleanup_errors: Vec<Error>,
}

impl RunReport {
    /// The run's result: the step error first, then the first cleanup error.
    pub fn into_result(mut self) -> Result<Outcome> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if !self.cleanup_errors.is_empty() {
            return Err(Error::Many(std::mem::take(&mut self.cleanup_errors)));
        }
        Ok(self.outcome)
    }
}

/// Runs steps and their cleanups.
#[derive(Debug, Clone)]
pub struct Runner {
    /// Limit for each cleanup.
    pub cleanup_timeout: Duration,
}

impl Default for Runner {
    fn default() -> Self {
        Runner {
            cleanup_timeout: Duration::from_secs(300),
        }
    }
}

impl Runner {
    /// Runs `steps` in order until one fails or `cx.cancel` fires, then cleans up the steps
    /// that started, last-first. `accepted` decides, after all steps ran, whether the outcome
    /// is `Succeeded` or `Rejected`.
    ///
    /// Long because the run, the cancellation and the clean-up in reverse order are one loop: what
    /// was started is exactly what is cleaned.
    pub async fn run<S: Send>(
        &self,
        steps: &[Box<dyn Step<S> + '_>],
        state: &mut S,
        cx: &StepContext<'_>,
        accepted: impl Fn(&S) -> bool,
    ) -> RunReport {
        let mut started = 0usize;
        let mut error = None;
        for step in steps {
            if cx.cancel.is_cancelled() {
                error = Some(interrupted(cx));
                break;
            }
            started += 1;
            let _ = cx.step_event(step.name(), StepStatus::Started);
            let result = tokio::select! {
                biased;
                _ = cx.cancel.cancelled() => Err(interrupted(cx)),
                r = step.run(state, cx) => r,
            };
            match result {
                Ok(()) => {
                    let _ = cx.step_event(step.name(), StepStatus::Ok);
                }
                Err(e) => {
                    let _ = cx.step_event(step.name(), StepStatus::Failed);
                    error = Some(e);
                    break;
                }
            }
        }
        let outcome = match &error {
            None if accepted(state) => Outcome::Succeeded,
            None => Outcome::Rejected,
            Some(Error::Interrupted { .. }) => Outcome::Cancelled,
            Some(_) if cx.cancel.is_cancelled() => Outcome::Cancelled,
            Some(_) => Outcome::Failed,
        };

        // Cleanups run with a fresh token: an interrupt must not cut them short.
        let fresh = StepContext {
            recipe: cx.recipe,
            arch: cx.arch,
            journal: cx.journal,
            reporter: cx.reporter,
            cancel: CancellationToken::new(),
        };
        let mut cleanup_errors = Vec::new();
        for step in steps[..started].iter().rev() {
            let r =
                tokio::time::timeout(self.cleanup_timeout, step.cleanup(state, outcome, &fresh))
                    .await;
            let failure = match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(Error::Step {
                    recipe: cx.recipe.to_string(),
                    arch: cx.arch.to_string(),
                    step: step.name().to_string(),
                    message: format!(
                        "cleanup timed out after {}; its resources stay in journal {} for `bake sweep`",
                        humantime::format_duration(self.cleanup_timeout),
                        cx.journal.path().display()
                    ),
                }),
            };
            match failure {
                None => {
                    let _ = fresh.step_event(step.name(), StepStatus::Cleaned);
                }
                Some(e) => {
                    tracing::error!(recipe = cx.recipe, arch = %cx.arch, step = step.name(), "cleanup failed: {e}");
                    let _ = fresh.step_event(step.name(), StepStatus::CleanupFailed);
                    cleanup_errors.push(e);
                }
            }
        }
        RunReport {
            outcome,
            error,
            cleanup_errors,
        }
    }
}

fn interrupted(cx: &StepContext<'_>) -> Error {
    Error::Interrupted {
        journal: cx.journal.path().display().to_string(),
    }
}
