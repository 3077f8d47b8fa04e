//! Provisioning on the builder, for every provider: install the recipe's pinned files, run
//! its steps in order, capture the package manifest. All of it through the builder's
//! [`Guest`](crate::guest::Guest), so the guest agent and SSM RunCommand run the same thing.

use super::Role;
use super::{Machines, Step, StepContext};
use crate::input::recipe::{FileSpec, StepSpec};
use crate::Result;
use async_trait::async_trait;
use std::time::{Duration, Instant};

/// Installs each pinned file (its sha256 checked at load) at its destination; the guest checks
/// that the same bytes arrived.
pub struct InstallFiles<'a> {
    pub files: &'a [FileSpec],
    pub timeout: Duration,
}

#[async_trait]
impl<S: Machines> Step<S> for InstallFiles<'_> {
    fn name(&self) -> &str {
        "install-files"
    }
    async fn run(&self, state: &mut S, cx: &StepContext<'_>) -> Result<()> {
        let guest = state.guest(Role::Builder)?;
        for (i, f) in self.files.iter().enumerate() {
            cx.phase(&format!("file {}/{} {}", i + 1, self.files.len(), f.dest));
            let label = format!("{} {} file {}", cx.recipe, cx.arch, f.dest);
            guest
                .put(&label, &f.dest, &f.content, f.mode, self.timeout)
                .await
                .map_err(|e| cx.error("install-files", format!("{}: {e}", f.dest)))?;
        }
        Ok(())
    }
}

/// Runs the recipe's steps in order; the first that exits non-zero fails the bake with the
/// tail of its output. Each step's whole output goes to its log.
pub struct RunSteps<'a> {
    pub steps: &'a [StepSpec],
    /// For steps that name no timeout of their own.
    pub timeout: Duration,
}

#[async_trait]
impl<S: Machines> Step<S> for RunSteps<'_> {
    fn name(&self) -> &str {
        "steps"
    }
    async fn run(&self, state: &mut S, cx: &StepContext<'_>) -> Result<()> {
        let logs = cx.log_dir();
        let guest = state.guest(Role::Builder)?;
        for (i, step) in self.steps.iter().enumerate() {
            cx.phase(&format!(
                "step {}/{} {}",
                i + 1,
                self.steps.len(),
                step.name
            ));
            let label = format!("{} {} step {}", cx.recipe, cx.arch, step.name);
            let start = Instant::now();
            let ran = guest
                .run(
                    &label,
                    &step.content,
                    &cx.env(),
                    step.timeout.unwrap_or(self.timeout),
                )
                .await
                .map_err(|e| cx.error(&step.name, e.to_string()))?;
            let log = logs.join(format!("{:02}-{}.log", i + 1, step.name));
            let _ = std::fs::write(
                &log,
                format!(
                    "# step {} ({}) exit {} in {:.1?}\n## stdout\n{}\n## stderr\n{}",
                    step.name,
                    step.script,
                    ran.exit_code,
                    start.elapsed(),
                    ran.stdout,
                    ran.stderr
                ),
            );
            tracing::info!(recipe = cx.recipe, arch = %cx.arch, step = %step.name, rc = ran.exit_code, "step done in {:.1?}", start.elapsed());
            if ran.exit_code != 0 {
                return Err(cx.error(
                    &step.name,
                    format!(
                        "{} exited {} (log: {}):\n{}",
                        step.script,
                        ran.exit_code,
                        log.display(),
                        ran.tail(8)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The shell that lists installed packages as `name<TAB>version<TAB>arch`, sorted (dpkg, or
/// rpm on Amazon Linux), then snaps as `name<TAB>version<TAB>snap<TAB>revision`.
pub const PACKAGES_PRODUCER: &str = "# bake: package manifest\n# the distribution, for package URLs in the SBOM\nif [ -r /etc/os-release ]; then . /etc/os-release; printf '#os\\t%s\\t%s\\n' \"$ID\" \"${VERSION_ID:-}\"; fi\nif command -v dpkg-query >/dev/null; then dpkg-query -W -f='${Package}\\t${Version}\\t${Architecture}\\n' | sort; else rpm -qa --qf '%{NAME}\\t%{VERSION}-%{RELEASE}\\t%{ARCH}\\n' | sort; fi\n# snaps (the kubelet of Canonical's EKS images is one)\nif command -v snap >/dev/null 2>&1; then snap list 2>/dev/null | awk 'NR > 1 { print $1 \"\\t\" $2 \"\\tsnap\\t\" $3 }'; fi";

/// Captures the package manifest, whole however long, from the builder (or, where the image
/// was built out of bake's reach, from the canary).
pub struct CapturePackages {
    pub role: Role,
    pub timeout: Duration,
}

#[async_trait]
impl<S: Machines> Step<S> for CapturePackages {
    fn name(&self) -> &str {
        "packages"
    }
    async fn run(&self, state: &mut S, cx: &StepContext<'_>) -> Result<()> {
        cx.phase("package manifest");
        let label = format!("{} {} packages", cx.recipe, cx.arch);
        let list = state
            .guest(self.role)?
            .read_output(&label, PACKAGES_PRODUCER, self.timeout)
            .await
            .map_err(|why| cx.error("packages", why))?;
        state.made().packages = Some(list);
        Ok(())
    }
}
