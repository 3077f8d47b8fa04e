//! `cluster-pod-network`, judged by bake with the cluster's own CNI: a pod bake schedules on
//! the canary (bound to its node, tolerating the canary taint) reports the pod end of its veth,
//! its gateway and the neighbour entry the CNI pinned for it, and asks the cluster DNS service
//! for the API server's service every 2 seconds (`pod-probe.sh`). Once it runs, bake lets udev
//! settle on the canary and reads the node's links (`pod-host-links.sh`): the MAC the pod pinned
//! for its gateway must still be on the node (the VPC CNI pins the host veth's own MAC), and the
//! pod must still reach the cluster DNS service after that. The incident this catches: an OS
//! update set `MACAddressPolicy=persistent` for every link, udev rewrote the MAC of each new
//! host veth after the CNI had pinned it, and pods lost their network.
//!
//! Without a cluster the local `pod-network` script stays (it wires a pod the VPC CNI's way
//! with iproute2). A probe that cannot start (an image the node cannot pull, a cluster that
//! refuses bake) is no verdict on the image; a pod whose network fails is a rejection.

use super::node_ready::AskError;
use crate::guest::Guest;
use crate::verdict::{CheckResult, Status};
use async_trait::async_trait;
use std::time::{Duration, Instant};

/// The probe pod's command (run by `sh -c` in the probe image).
pub const PROBE_SCRIPT: &str = include_str!("pod-probe.sh");
/// What bake runs on the canary once the probe runs.
pub const HOST_LINKS_SCRIPT: &str = include_str!("pod-host-links.sh");

/// The pod bake asks the cluster to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePod {
    pub namespace: String,
    pub name: String,
    /// The canary's node: the pod is bound to it (`spec.nodeName`).
    pub node: String,
    pub image: String,
    /// The canary taint's key, tolerated with effect NoSchedule.
    pub toleration: String,
}

/// The probe pod as the cluster reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSeen {
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    pub phase: String,
    /// Why the container is not running yet or any more (`ErrImagePull: …`, `Error: exit 1`).
    pub detail: String,
}

/// Runs, reads and removes a pod in a cluster.
#[async_trait]
pub trait ClusterPods: Send + Sync {
    /// The cluster, for messages.
    fn cluster(&self) -> String;
    async fn create(&self, pod: &ProbePod) -> Result<(), AskError>;
    async fn get(&self, namespace: &str, name: &str) -> Result<PodSeen, AskError>;
    /// The container's output so far ("" before it started).
    async fn logs(&self, namespace: &str, name: &str) -> Result<String, AskError>;
    /// Deletes it at once (grace period 0); a pod already gone is fine.
    async fn delete(&self, namespace: &str, name: &str) -> Result<(), AskError>;
}

/// What the probe said, from its log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProbeSaid {
    /// The interface index of the host end of the pod's veth (`eth0`'s `iflink`).
    pub iflink: Option<u32>,
    /// The pod's default gateway, and the MAC and flags of its neighbour entry.
    pub gateway: Option<(String, Option<String>, Option<String>)>,
    /// Each DNS attempt in order: its number and whether it was answered.
    pub dns: Vec<(u32, bool)>,
}

impl ProbeSaid {
    pub fn parse(log: &str) -> ProbeSaid {
        let mut said = ProbeSaid::default();
        for line in log.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["bake-probe", "iflink", n] => said.iflink = n.parse().ok(),
                ["bake-probe", "gateway", ip, rest @ ..] if *ip != "none" => {
                    said.gateway = Some((
                        ip.to_string(),
                        rest.first().map(|m| m.to_ascii_lowercase()),
                        rest.get(1).map(|f| f.to_string()),
                    ));
                }
                ["bake-probe", "dns", n, outcome] => {
                    if let Ok(n) = n.parse() {
                        said.dns.push((n, *outcome == "ok"));
                    }
                }
                _ => {}
            }
        }
        said
    }

    /// The number of the last DNS attempt reported.
    fn last_attempt(&self) -> u32 {
        self.dns.last().map_or(0, |d| d.0)
    }
}

/// One link of the canary's own network namespace: (index, name, MAC).
pub fn host_links(stdout: &str) -> Vec<(u32, String, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("bake-link")).then_some(())?;
            let index = w.next()?.parse().ok()?;
            let name = w.next()?.to_string();
            let mac = w.next().unwrap_or("").to_ascii_lowercase();
            Some((index, name, mac))
        })
        .collect()
}

/// The verdict from what the probe said before and after udev settled, and the node's links
/// after it. Err: nothing to judge (the probe did not report its veth or gateway).
pub fn verdict(
    name: &str,
    pod: &ProbePod,
    said: &ProbeSaid,
    after: u32,
    links: &[(u32, String, String)],
) -> Result<CheckResult, String> {
    let fail = |reason: String| CheckResult {
        status: Status::Fail,
        reason: Some(reason),
        ..CheckResult::from_exit(name, 1, "", "")
    };
    let (Some(iflink), Some((gw, Some(pinned), flags))) = (said.iflink, said.gateway.as_ref())
    else {
        return Err(format!(
            "the probe pod {} did not report its veth and its gateway's neighbour entry (is `{}` a busybox-like image with sh, awk and nslookup?)",
            pod.name, pod.image
        ));
    };
    let Some((_, veth, veth_mac)) = links.iter().find(|l| l.0 == iflink) else {
        return Err(format!(
            "the host end of pod {}'s veth (index {iflink}) is not in the canary's own network namespace: this check reads a veth CNI",
            pod.name
        ));
    };
    if !links.iter().any(|l| &l.2 == pinned) {
        return Ok(fail(format!(
            "the pod's gateway {gw} is pinned to MAC {pinned} (flags {}), which no link of the node has any more: the host veth {veth} now has {veth_mac} (udev rewrote it after the CNI pinned it: a MACAddressPolicy that applies to veths), so the pod's traffic goes nowhere",
            flags.as_deref().unwrap_or("?")
        )));
    }
    let before = said.dns.iter().filter(|d| d.0 <= after).any(|d| d.1);
    match said.dns.iter().find(|d| d.0 > after) {
        Some((_, true)) => Ok(CheckResult::from_exit(
            name,
            0,
            &format!(
                "note: pod {} on {} (cluster CNI, host veth {veth}): gateway {gw} pinned to {pinned}, kept after udev settled; the cluster DNS service answered\n",
                pod.name, pod.node
            ),
            "",
        )),
        Some((n, false)) => Ok(fail(format!(
            "the pod could not resolve kubernetes.default through the cluster DNS service after udev settled (attempt {n}; {} before)",
            if before { "it could" } else { "nor could it" }
        ))),
        None => Err("the probe pod stopped reporting before udev had settled".into()),
    }
}

/// Where the check stands while it waits, for the message when it gives up.
fn waiting(pods: &dyn ClusterPods, pod: &ProbePod, seen: &PodSeen) -> String {
    format!(
        "probe pod {}/{} in {} is {}{}",
        pod.namespace,
        pod.name,
        pods.cluster(),
        seen.phase,
        if seen.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", seen.detail)
        }
    )
}

/// Reads the pod until `ready(said)` or `within` has passed; the pod must keep running.
async fn read_until(
    pods: &dyn ClusterPods,
    pod: &ProbePod,
    deadline: Instant,
    every: Duration,
    ready: impl Fn(&ProbeSaid) -> bool,
) -> Result<ProbeSaid, String> {
    let mut last = format!("probe pod {} not created yet", pod.name);
    loop {
        match pods.get(&pod.namespace, &pod.name).await {
            Ok(seen) if seen.phase == "Running" => {
                let log = pods
                    .logs(&pod.namespace, &pod.name)
                    .await
                    .map_err(|e| ask_error(pods, e))?;
                let said = ProbeSaid::parse(&log);
                if ready(&said) {
                    return Ok(said);
                }
                last = format!("{}; it said: {}", waiting(pods, pod, &seen), tail(&log));
            }
            Ok(seen) if matches!(seen.phase.as_str(), "Succeeded" | "Failed") => {
                let log = pods
                    .logs(&pod.namespace, &pod.name)
                    .await
                    .unwrap_or_default();
                return Err(format!(
                    "{} before bake had read it; it said: {}",
                    waiting(pods, pod, &seen),
                    tail(&log)
                ));
            }
            Ok(seen) => last = waiting(pods, pod, &seen),
            Err(AskError::Refused(why)) => return Err(why),
            Err(failed) => last = ask_error(pods, failed),
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(every).await;
    }
}

fn ask_error(pods: &dyn ClusterPods, e: AskError) -> String {
    match e {
        AskError::Refused(why) => why,
        AskError::Failed(why) => format!("{} did not answer: {why}", pods.cluster()),
    }
}

/// The last lines of a log, on one line.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().rev().take(3).collect();
    if lines.is_empty() {
        return "nothing".into();
    }
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Runs the probe on the canary's node and judges it; the pod is deleted whatever happens. Ok
/// is a verdict, Err why there is none.
pub async fn judge(
    name: &str,
    pods: &dyn ClusterPods,
    guest: &mut dyn Guest,
    pod: &ProbePod,
    within: Duration,
    every: Duration,
) -> Result<CheckResult, String> {
    pods.create(pod).await.map_err(|e| {
        format!(
            "creating probe pod {}/{} ({}): {}",
            pod.namespace,
            pod.name,
            pod.image,
            ask_error(pods, e)
        )
    })?;
    let judged = probe(name, pods, guest, pod, within, every).await;
    if let Err(e) = pods.delete(&pod.namespace, &pod.name).await {
        tracing::warn!(
            "{name}: deleting probe pod {}/{} in {}: {}",
            pod.namespace,
            pod.name,
            pods.cluster(),
            ask_error(pods, e)
        );
    }
    judged
}

async fn probe(
    name: &str,
    pods: &dyn ClusterPods,
    guest: &mut dyn Guest,
    pod: &ProbePod,
    within: Duration,
    every: Duration,
) -> Result<CheckResult, String> {
    let deadline = Instant::now() + within;
    // Running, its veth and gateway reported, and one DNS attempt over.
    let started = read_until(pods, pod, deadline, every, |s| {
        s.gateway.is_some() && !s.dns.is_empty()
    })
    .await?;
    let ran = guest
        .run(
            &format!("{name} node links"),
            HOST_LINKS_SCRIPT.as_bytes(),
            &[],
            Duration::from_secs(120),
        )
        .await
        .map_err(|e| format!("reading the canary's links: {e}"))?;
    if ran.exit_code != 0 {
        return Err(format!(
            "reading the canary's links exited {}: {}",
            ran.exit_code,
            ran.tail(5)
        ));
    }
    // The attempt under way while udev settled may have started before it: only those after
    // it count.
    let after = started.last_attempt() + 1;
    let said = read_until(
        pods,
        pod,
        Instant::now().max(deadline) + Duration::from_secs(60),
        every,
        |s| s.last_attempt() > after,
    )
    .await?;
    verdict(name, pod, &said, after, &host_links(&ran.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> ProbePod {
        ProbePod {
            namespace: "default".into(),
            name: "bake-pod-network-1".into(),
            node: "ip-10-0-1-5.ec2.internal".into(),
            image: "busybox".into(),
            toleration: "bake.io/canary".into(),
        }
    }

    const LINKS: &str =
        "bake-link 1 lo 00:00:00:00:00:00\nbake-link 7 eni0123456789a 22:71:6b:47:fe:88\n";

    #[test]
    fn the_probe_log_and_the_links_are_read() {
        let said = ProbeSaid::parse(
            "bake-probe iflink 7\nbake-probe gateway 169.254.1.1 22:71:6B:47:FE:88 0x6\nnoise\nbake-probe dns 1 fail\nbake-probe dns 2 ok\n",
        );
        assert_eq!(said.iflink, Some(7));
        assert_eq!(
            said.gateway,
            Some((
                "169.254.1.1".into(),
                Some("22:71:6b:47:fe:88".into()),
                Some("0x6".into())
            ))
        );
        assert_eq!(said.dns, vec![(1, false), (2, true)]);
        assert_eq!(
            host_links(LINKS)[1],
            (7, "eni0123456789a".into(), "22:71:6b:47:fe:88".into())
        );
    }

    #[test]
    fn a_kept_mac_and_an_answer_after_udev_settled_pass() {
        let said = ProbeSaid::parse(
            "bake-probe iflink 7\nbake-probe gateway 169.254.1.1 22:71:6b:47:fe:88 0x6\nbake-probe dns 1 ok\nbake-probe dns 2 fail\nbake-probe dns 3 ok\n",
        );
        let r = verdict("cluster-pod-network", &pod(), &said, 2, &host_links(LINKS)).unwrap();
        assert_eq!(r.status, Status::Pass, "{r:?}");
        // Only the attempts after udev settled count.
        let r = verdict("cluster-pod-network", &pod(), &said, 1, &host_links(LINKS)).unwrap();
        assert_eq!(r.status, Status::Fail, "{r:?}");
        assert!(r.reason.unwrap().contains("attempt 2; it could before"));
    }

    #[test]
    fn a_rewritten_host_veth_mac_fails_naming_both() {
        let said = ProbeSaid::parse(
            "bake-probe iflink 7\nbake-probe gateway 169.254.1.1 aa:aa:aa:aa:aa:aa 0x6\nbake-probe dns 1 ok\nbake-probe dns 2 fail\n",
        );
        let r = verdict("cluster-pod-network", &pod(), &said, 1, &host_links(LINKS)).unwrap();
        assert_eq!(r.status, Status::Fail);
        let reason = r.reason.unwrap();
        assert!(
            reason.contains("aa:aa:aa:aa:aa:aa")
                && reason.contains("eni0123456789a now has 22:71:6b:47:fe:88"),
            "{reason}"
        );
    }

    /// A cluster whose probe pod is Pending `pending` times, then Running, printing one more
    /// line of `log` at each read; it records the deletion.
    struct Cluster {
        pending: std::sync::Mutex<usize>,
        waiting: &'static str,
        log: Vec<String>,
        shown: std::sync::Mutex<usize>,
        deleted: std::sync::Mutex<Vec<String>>,
    }

    impl Cluster {
        fn new(pending: usize, waiting: &'static str, log: &str) -> Cluster {
            Cluster {
                pending: std::sync::Mutex::new(pending),
                waiting,
                log: log.lines().map(|l| format!("{l}\n")).collect(),
                shown: std::sync::Mutex::new(0),
                deleted: std::sync::Mutex::new(Vec::new()),
            }
        }
    }

    #[async_trait]
    impl ClusterPods for Cluster {
        fn cluster(&self) -> String {
            "EKS cluster `dev` in us-east-1".into()
        }
        async fn create(&self, _: &ProbePod) -> Result<(), AskError> {
            Ok(())
        }
        async fn get(&self, _: &str, _: &str) -> Result<PodSeen, AskError> {
            let mut p = self.pending.lock().unwrap();
            if *p > 0 {
                *p -= 1;
                return Ok(PodSeen {
                    phase: "Pending".into(),
                    detail: self.waiting.into(),
                });
            }
            Ok(PodSeen {
                phase: "Running".into(),
                detail: String::new(),
            })
        }
        async fn logs(&self, _: &str, _: &str) -> Result<String, AskError> {
            let mut n = self.shown.lock().unwrap();
            *n = (*n + 1).min(self.log.len());
            Ok(self.log[..*n].concat())
        }
        async fn delete(&self, _: &str, name: &str) -> Result<(), AskError> {
            self.deleted.lock().unwrap().push(name.to_string());
            Ok(())
        }
    }

    /// A canary whose links are `LINKS`; it counts what ran.
    struct Canary(usize);

    #[async_trait]
    impl Guest for Canary {
        fn transport(&self) -> &'static str {
            "test"
        }
        fn stdout_limit(&self) -> Option<usize> {
            None
        }
        async fn put(
            &mut self,
            _: &str,
            _: &str,
            _: &[u8],
            _: u32,
            _: Duration,
        ) -> crate::Result<()> {
            unreachable!("the check writes nothing on the canary")
        }
        async fn run(
            &mut self,
            _: &str,
            script: &[u8],
            _: &[(&str, &str)],
            _: Duration,
        ) -> crate::Result<crate::guest::Ran> {
            assert_eq!(script, HOST_LINKS_SCRIPT.as_bytes());
            self.0 += 1;
            Ok(crate::guest::Ran {
                exit_code: 0,
                stdout: LINKS.into(),
                stderr: String::new(),
            })
        }
    }

    async fn judged(
        cluster: &Cluster,
        canary: &mut Canary,
        within: Duration,
    ) -> Result<CheckResult, String> {
        let every = Duration::from_millis(1);
        judge(
            "cluster-pod-network",
            cluster,
            canary,
            &pod(),
            within,
            every,
        )
        .await
    }

    #[tokio::test]
    async fn the_probe_is_read_before_and_after_udev_settles_then_deleted() {
        let cluster = Cluster::new(
            2,
            "ContainerCreating",
            "bake-probe iflink 7\nbake-probe gateway 169.254.1.1 22:71:6b:47:fe:88 0x6\nbake-probe dns 1 ok\nbake-probe dns 2 ok\nbake-probe dns 3 ok\nbake-probe dns 4 ok\n",
        );
        let mut canary = Canary(0);
        let r = judged(&cluster, &mut canary, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.status, Status::Pass, "{r:?}");
        assert_eq!(canary.0, 1);
        // Read on: the links were read once attempt 1 was over; attempt 2 may have begun
        // before udev settled, so attempt 3 decides.
        assert_eq!(*cluster.shown.lock().unwrap(), 5);
        assert_eq!(*cluster.deleted.lock().unwrap(), vec![pod().name]);
    }

    #[tokio::test]
    async fn a_probe_that_never_starts_is_no_verdict_naming_why_and_is_deleted() {
        let cluster = Cluster::new(
            usize::MAX,
            "ImagePullBackOff: Back-off pulling image \"busybox\"",
            "",
        );
        let mut canary = Canary(0);
        let e = judged(&cluster, &mut canary, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(
            e.contains("is Pending (ImagePullBackOff: Back-off pulling image"),
            "{e}"
        );
        assert_eq!(canary.0, 0, "nothing ran on the canary");
        assert_eq!(cluster.deleted.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_probe_that_reports_nothing_or_no_veth_is_no_verdict() {
        let said = ProbeSaid::parse("sh: nslookup: not found\n");
        assert!(verdict("n", &pod(), &said, 0, &host_links(LINKS))
            .unwrap_err()
            .contains("busybox-like"));
        let said = ProbeSaid::parse(
            "bake-probe iflink 99\nbake-probe gateway 169.254.1.1 22:71:6b:47:fe:88 0x6\nbake-probe dns 1 ok\n",
        );
        assert!(verdict("n", &pod(), &said, 0, &host_links(LINKS))
            .unwrap_err()
            .contains("not in the canary's own network namespace"));
    }
}
