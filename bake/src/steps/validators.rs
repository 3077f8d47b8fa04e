//! Validation on the canary, for every provider: prepare the canary (which OS booted, the
//! image as shipped mounted read-only), run each validator that applies through the canary's
//! [`crate::guest::Guest`], decide the verdict, and have the provider record it before
//! the step counts as done (a run killed right after still finds its verdict).

use super::node_ready::ClusterNodes;
use super::pod_network::{ClusterPods, ProbePod};
use super::provision::PACKAGES_PRODUCER;
use super::Role;
use super::{Machines, Step, StepContext};
use crate::canary::{Planned, Prepared};
use crate::guest::Guest;
use crate::input::pipeline::PodProbeSettings;
use crate::input::validate::{JudgedBy, Validator};
use crate::verdict::{CheckResult, Status, Verdict};
use crate::Result;
use async_trait::async_trait;
use std::time::Duration;

/// How a provider keeps a verdict with its image (EC2: tags; local: the store's record).
#[async_trait]
pub trait RecordVerdict<S>: Send + Sync {
    async fn record(&self, state: &mut S, verdict: &Verdict, cx: &StepContext<'_>) -> Result<()>;
}

/// The name under which the canary's software is compared with the image's manifest.
pub const SOFTWARE_AS_BAKED: &str = "software-as-baked";

/// Whether the canary's software can be compared with what was baked.
#[derive(Debug, Clone, Copy)]
pub enum Software<'a> {
    /// Against the manifest captured on the builder, before the image was made.
    AsBaked,
    /// Not here, and why (e.g. the manifest was read on this very canary).
    NotApplicable(&'a str),
}

/// The step's name, in its errors and the journal.
const STEP: &str = "validate";

pub struct Validate<'a, S> {
    /// After the catalog's checks: does the canary, booted and (where there is a cluster)
    /// joined, run exactly the software the image was baked with?
    pub software: Software<'a>,
    pub validators: &'a [Validator],
    /// Limit of each validator.
    pub timeout: Duration,
    /// How long cluster checks may wait for the canary to join (None: no cluster here).
    pub join_timeout: Option<Duration>,
    /// Why cluster checks cannot run here, if they cannot.
    pub no_cluster: Option<&'a str>,
    /// The API of the cluster the canary joins, for the checks bake judges from it.
    pub cluster: Option<&'a dyn ClusterNodes>,
    /// The same cluster running bake's probe pod, and the image and namespace it runs in.
    pub pods: Option<(&'a dyn ClusterPods, &'a PodProbeSettings)>,
    /// How often bake asks that API while the canary joins.
    pub poll_interval: Duration,
    pub recorder: &'a dyn RecordVerdict<S>,
}

#[async_trait]
impl<S: Machines> Step<S> for Validate<'_, S> {
    fn name(&self) -> &str {
        STEP
    }
    async fn run(&self, state: &mut S, cx: &StepContext<'_>) -> Result<()> {
        let logs = cx.log_dir();
        let baked = state.made().packages.clone();
        let node_name = state.node_name();
        let devices = state.image_devices().join(" ");
        let guest = state.guest(Role::Canary)?;
        let prepared = self.prepare(guest, &devices, cx).await?;
        let mut results = self
            .checks(guest, &prepared, node_name.as_deref(), &logs, cx)
            .await?;
        for r in &results {
            r.log(cx.recipe, cx.arch);
        }
        // Last, once first boot and the join are over: bootstrap scripts, cloud-init's
        // package_upgrade or a snap refresh change software at boot, which no image check sees.
        let software = self.software(guest, baked.as_deref(), &logs, cx).await?;
        software.log(cx.recipe, cx.arch);
        results.push(software);
        let verdict = Verdict::decide(results);
        self.recorder.record(state, &verdict, cx).await?;
        if !verdict.accepted {
            cx.phase(&format!("rejected: {}", verdict.blockers().join("; ")));
        }
        state.made().verdict = Some(verdict);
        Ok(())
    }
}

impl<S> Validate<'_, S> {
    /// Says which OS booted and mounts the image's own root filesystem (the second disk)
    /// read-only on the canary (`canary::PREPARE_SCRIPT`).
    async fn prepare(
        &self,
        guest: &mut dyn Guest,
        devices: &str,
        cx: &StepContext<'_>,
    ) -> Result<Prepared> {
        let label = format!("{} {} prepare canary", cx.recipe, cx.arch);
        // The script waits for the first boot to be over, within its own limit.
        let boot_wait = self
            .timeout
            .saturating_sub(Duration::from_secs(60))
            .max(Duration::from_secs(30));
        let ran = guest
            .run(
                &label,
                crate::canary::PREPARE_SCRIPT.as_bytes(),
                &[
                    ("BAKE_IMAGE_ROOT", crate::canary::IMAGE_ROOT),
                    ("BAKE_IMAGE_DEVICES", devices),
                    ("BAKE_BOOT_WAIT", &boot_wait.as_secs().to_string()),
                ],
                self.timeout,
            )
            .await
            .map_err(|e| cx.error(STEP, format!("preparing the canary: {e}")))?;
        if ran.exit_code != 0 {
            return Err(cx.error(
                STEP,
                format!(
                    "preparing the canary exited {}: {}",
                    ran.exit_code,
                    ran.tail(8)
                ),
            ));
        }
        let prepared = Prepared::parse(&ran.stdout);
        if prepared.still_booting() {
            return Err(cx.error(
                STEP,
                format!(
                    "the canary's first boot was not over within {} (systemd: `{}`): nothing is judged on a canary still booting, as what its boot changes is part of the verdict",
                    humantime::format_duration(boot_wait),
                    prepared.boot_state.as_deref().unwrap_or_default()
                ),
            ));
        }
        tracing::info!(recipe = cx.recipe, arch = %cx.arch, os = %prepared.os(), image_root = ?prepared.image_root, "canary prepared");
        Ok(prepared)
    }

    /// The catalog's checks, in its order: those bake judges from the cluster's API first
    /// (they wait for the join), then every script in one batch (one round trip over SSM).
    ///
    /// Long because the catalog's order is kept in one pass: the cluster checks, then the batch,
    /// each verdict recorded where it is judged.
    async fn checks(
        &self,
        guest: &mut dyn Guest,
        prepared: &Prepared,
        node_name: Option<&str>,
        logs: &std::path::Path,
        cx: &StepContext<'_>,
    ) -> Result<Vec<CheckResult>> {
        let join = self.join_timeout.map(|j| j.as_secs().to_string());
        // Each validator's place in the catalog, its result once known: those bake judges from
        // the cluster's API first (they wait for the join), then every script in one batch.
        let mut results: Vec<Option<CheckResult>> = vec![None; self.validators.len()];
        // The scripts, and for each its place in the catalog and its validator.
        let (mut jobs, mut which) = (Vec::new(), Vec::new());
        let planned = crate::canary::plan(self.validators, prepared, self.no_cluster);
        for (i, planned) in planned.into_iter().enumerate() {
            let (v, extra) = match planned {
                Planned::Settled(r) => {
                    results[i] = Some(r);
                    continue;
                }
                Planned::Run(v, extra) => (v, extra),
            };
            if v.judged_by != JudgedBy::Script {
                cx.phase(&format!(
                    "validator {}/{} {} (asking the cluster, up to {})",
                    i + 1,
                    self.validators.len(),
                    v.name,
                    humantime::format_duration(self.join_timeout.unwrap_or_default())
                ));
                let result = self.judge_from_cluster(v, guest, node_name, cx).await?;
                keep_log(logs, &result, "(judged by bake from the cluster's API)\n");
                results[i] = Some(result);
                continue;
            }
            let mut env: Vec<(&str, String)> =
                cx.env().iter().map(|(k, v)| (*k, v.to_string())).collect();
            env.extend(extra);
            let mut timeout = self.timeout;
            if let (true, Some(join_timeout), Some(join)) =
                (v.needs_cluster, self.join_timeout, join.as_deref())
            {
                // A cluster check waits for the canary to join, up to join_timeout; its
                // command may take that long and a minute more.
                env.push(("BAKE_JOIN_TIMEOUT", join.to_string()));
                if let Some(node) = node_name {
                    env.push(("BAKE_NODE_NAME", node.to_string()));
                }
                timeout = timeout.max(join_timeout + Duration::from_secs(60));
            }
            jobs.push(crate::guest::Job {
                name: &v.name,
                script: &v.content,
                env,
                timeout,
            });
            which.push((i, v));
        }
        if !jobs.is_empty() {
            let names: Vec<&str> = jobs.iter().map(|j| j.name).collect();
            cx.phase(&format!(
                "validators {} ({} of {}, one after another, up to {})",
                names.join(", "),
                jobs.len(),
                self.validators.len(),
                humantime::format_duration(jobs.iter().map(|j| j.timeout).sum())
            ));
            let label = format!("{} {} validator", cx.recipe, cx.arch);
            let outcomes = guest
                .run_each(&label, &jobs)
                .await
                .map_err(|e| cx.error(STEP, format!("validators could not run: {e}")))?;
            for (&(i, v), ran) in which.iter().zip(outcomes) {
                // A validator that could not run (an agent or API error, its limit) fails the
                // bake, which retries next time; only the validator's own verdict may reject
                // the image.
                let ran = ran.map_err(|e| {
                    cx.error(STEP, format!("validator {} could not run: {e}", v.name))
                })?;
                let result = crate::verdict::judged(v, ran.exit_code, &ran.stdout, &ran.stderr)
                    .map_err(|why| cx.error(STEP, why))?;
                keep_log(
                    logs,
                    &result,
                    &format!("## stdout\n{}\n## stderr\n{}", ran.stdout, ran.stderr),
                );
                results[i] = Some(result);
            }
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// `software-as-baked`: the canary's packages against the manifest captured at bake time.
    async fn software(
        &self,
        guest: &mut dyn Guest,
        baked: Option<&str>,
        logs: &std::path::Path,
        cx: &StepContext<'_>,
    ) -> Result<CheckResult> {
        Ok(match (self.software, baked) {
            (Software::NotApplicable(why), _) => {
                CheckResult::not_applicable(SOFTWARE_AS_BAKED, why)
            }
            (Software::AsBaked, None) => CheckResult::not_applicable(
                SOFTWARE_AS_BAKED,
                "no package manifest was captured at bake time (a run resumed past its capture)",
            ),
            (Software::AsBaked, Some(baked)) => {
                cx.phase(&format!("validator {SOFTWARE_AS_BAKED}"));
                let label = format!("{} {} validator {SOFTWARE_AS_BAKED}", cx.recipe, cx.arch);
                let booted = guest
                    .read_output(&label, PACKAGES_PRODUCER, self.timeout)
                    .await
                    .map_err(|why| {
                        cx.error(
                            STEP,
                            format!("validator {SOFTWARE_AS_BAKED} could not run: {why}"),
                        )
                    })?;
                let changed = crate::packages::changed_since_bake(baked, &booted);
                let _ = std::fs::write(
                    logs.join(format!("validator-{SOFTWARE_AS_BAKED}.log")),
                    format!(
                        "# {SOFTWARE_AS_BAKED}: {} package(s) differ from the manifest captured at bake time\n{}\n## the canary's packages\n{booted}",
                        changed.len(),
                        changed.join("\n")
                    ),
                );
                software_verdict(&changed)
            }
        })
    }

    /// A check bake judges from the cluster's API: the canary's node, by the name its join
    /// gave it.
    async fn judge_from_cluster(
        &self,
        v: &Validator,
        guest: &mut dyn Guest,
        node: Option<&str>,
        cx: &StepContext<'_>,
    ) -> Result<CheckResult> {
        let no_cluster = || {
            cx.error(
                STEP,
                format!(
                    "validator {} asks the cluster about the canary's node, but this canary has no cluster to ask or no node name",
                    v.name
                ),
            )
        };
        let (Some(within), Some(node)) = (self.join_timeout, node) else {
            return Err(no_cluster());
        };
        let judged = match v.judged_by {
            JudgedBy::ClusterPod => {
                let (pods, settings) = self.pods.ok_or_else(no_cluster)?;
                let pod = ProbePod {
                    namespace: settings.namespace.clone(),
                    name: probe_name(&v.name, node),
                    node: node.to_string(),
                    image: settings.image.clone(),
                    toleration: super::node_ready::canary_taint_key().to_string(),
                };
                super::pod_network::judge(&v.name, pods, guest, &pod, within, self.poll_interval)
                    .await
            }
            _ => {
                let nodes = self.cluster.ok_or_else(no_cluster)?;
                super::node_ready::judge(&v.name, nodes, node, within, self.poll_interval).await
            }
        };
        judged.map_err(|why| cx.error(STEP, crate::verdict::not_judged(&v.name, &why)))
    }
}

/// A probe pod's name: the validator's, and a part unique to this node and moment (a pod of
/// an earlier run that could not be deleted does not stand in the way).
fn probe_name(validator: &str, node: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let digest = crate::input::recipe::sha256_hex(format!("{node} {now}").as_bytes());
    format!("bake-{validator}-{}", &digest[..10])
}

/// A validator's log in the run's log directory: its verdict, then what it said.
fn keep_log(logs: &std::path::Path, result: &CheckResult, said: &str) {
    let _ = std::fs::write(
        logs.join(format!("validator-{}.log", result.name)),
        format!(
            "# {} {:?} {}\n{said}",
            result.name,
            result.status,
            result.reason.clone().unwrap_or_default()
        ),
    );
}

/// The verdict on the packages that changed between bake and boot: any change rejects the image,
/// naming the first few.
pub fn software_verdict(changed: &[String]) -> CheckResult {
    if changed.is_empty() {
        return CheckResult::from_exit(SOFTWARE_AS_BAKED, 0, "", "");
    }
    let shown: Vec<&str> = changed.iter().take(5).map(String::as_str).collect();
    let more = changed.len().saturating_sub(shown.len());
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    CheckResult {
        status: Status::Fail,
        reason: Some(format!(
            "the booted canary does not run the software it was baked with (changed at boot): {}{more}",
            shown.join("; ")
        )),
        ..CheckResult::from_exit(SOFTWARE_AS_BAKED, 1, "", "")
    }
}
