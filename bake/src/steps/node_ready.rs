//! `node-ready`, judged by bake from the API of the cluster the canary joined rather than by a
//! script on the canary: the node is found by the name its join gave it (nodeadm and
//! Canonical's bootstrap name it after the instance's private DNS name), and it must be `Ready`
//! and carry the canary taint (without it, workloads could land on a canary). Nothing runs on
//! the canary, so it needs no `kubectl` there (AL2023 EKS installs the kubelet only) and no
//! guess at a hostname.
//!
//! A node that never registers, or never gets Ready, within the join timeout is no verdict on
//! the image (the run fails and is tried again): the cluster, the account or the network may
//! be what stopped it. A cluster that refuses bake (401/403) is the same, said at once: waiting
//! does not give bake access.

use crate::verdict::{CheckResult, Status};
use async_trait::async_trait;
use std::time::{Duration, Instant};

/// The canary's node as its cluster's API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSeen {
    /// The `Ready` condition's status (`True`, `False`, `Unknown`), None before the kubelet
    /// posted one.
    pub ready: Option<String>,
    /// The `Ready` condition's reason and message, for the log.
    pub ready_message: String,
    /// `key=value:Effect` (or `key:Effect`) of each taint.
    pub taints: Vec<String>,
}

/// Why the cluster gave no answer about the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskError {
    /// The cluster refused bake (authentication or authorization): waiting will not help.
    Refused(String),
    /// Anything else (unreachable, a 5xx): asked again until the join timeout.
    Failed(String),
}

/// Reads nodes from a cluster's API.
#[async_trait]
pub trait ClusterNodes: Send + Sync {
    /// The cluster, for messages: "EKS cluster `dev` in us-east-1".
    fn cluster(&self) -> String;
    /// The node called `name`, or None while it has not registered.
    async fn node(&self, name: &str) -> Result<Option<NodeSeen>, AskError>;
}

/// The taint key every canary registers with (from `user_data::TAINT`).
pub fn canary_taint_key() -> &'static str {
    crate::user_data::TAINT
        .split(['=', ':'])
        .next()
        .unwrap_or(crate::user_data::TAINT)
}

/// Asks for `node` every `every` until it is Ready or `within` has passed. Ok is a verdict
/// (pass, or fail for a Ready node without the canary taint); Err is why there is none.
pub async fn judge(
    name: &str,
    nodes: &dyn ClusterNodes,
    node: &str,
    within: Duration,
    every: Duration,
) -> Result<CheckResult, String> {
    let start = Instant::now();
    let mut last = format!("node {node} has not registered with {}", nodes.cluster());
    loop {
        match nodes.node(node).await {
            Ok(Some(seen)) if seen.ready.as_deref() == Some("True") => {
                let key = canary_taint_key();
                let tainted = seen
                    .taints
                    .iter()
                    .any(|t| t.split(['=', ':']).next() == Some(key) && t.ends_with(":NoSchedule"));
                let waited = start.elapsed().as_secs();
                return Ok(if tainted {
                    CheckResult::from_exit(
                        name,
                        0,
                        &format!(
                            "note: node {node} is Ready in {} with the canary taint after {waited}s\n",
                            nodes.cluster()
                        ),
                        "",
                    )
                } else {
                    CheckResult {
                        status: Status::Fail,
                        reason: Some(format!(
                            "node {node} is Ready but without the {} taint (taints: {}): workloads could land on a canary",
                            crate::user_data::TAINT,
                            if seen.taints.is_empty() {
                                "none".to_string()
                            } else {
                                seen.taints.join(", ")
                            }
                        )),
                        ..CheckResult::from_exit(name, 1, "", "")
                    }
                });
            }
            Ok(Some(seen)) => {
                last = format!(
                    "node {node} is registered but not Ready ({}{})",
                    seen.ready.as_deref().unwrap_or("no Ready condition yet"),
                    if seen.ready_message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", seen.ready_message)
                    }
                );
            }
            Ok(None) => {}
            Err(AskError::Refused(why)) => return Err(why),
            Err(AskError::Failed(why)) => {
                last = format!("{} did not answer: {why}", nodes.cluster());
            }
        }
        if start.elapsed() >= within {
            return Err(format!(
                "the canary did not become a Ready node within {}: {last}",
                humantime::format_duration(within)
            ));
        }
        tracing::debug!("{name}: waiting: {last}");
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A cluster that answers a script of replies, one per ask, the last repeated.
    struct Script(Mutex<Vec<Result<Option<NodeSeen>, AskError>>>);

    #[async_trait]
    impl ClusterNodes for Script {
        fn cluster(&self) -> String {
            "EKS cluster `dev` in us-east-1".into()
        }
        async fn node(&self, _: &str) -> Result<Option<NodeSeen>, AskError> {
            let mut s = self.0.lock().unwrap();
            if s.len() > 1 {
                s.remove(0)
            } else {
                s[0].clone()
            }
        }
    }

    fn seen(ready: Option<&str>, taints: &[&str]) -> Option<NodeSeen> {
        Some(NodeSeen {
            ready: ready.map(str::to_string),
            ready_message: String::new(),
            taints: taints.iter().map(|t| t.to_string()).collect(),
        })
    }

    async fn judged(
        replies: Vec<Result<Option<NodeSeen>, AskError>>,
    ) -> Result<CheckResult, String> {
        let nodes = Script(Mutex::new(replies));
        judge(
            "node-ready",
            &nodes,
            "ip-10-0-1-5.ec2.internal",
            Duration::from_millis(300),
            Duration::from_millis(10),
        )
        .await
    }

    #[tokio::test]
    async fn a_node_that_registers_then_gets_ready_with_the_taint_passes() {
        let r = judged(vec![
            Ok(None),
            Err(AskError::Failed("connection refused".into())),
            Ok(seen(Some("False"), &[])),
            Ok(seen(Some("True"), &["bake.io/canary=true:NoSchedule"])),
        ])
        .await
        .unwrap();
        assert_eq!(r.status, Status::Pass, "{r:?}");
    }

    #[tokio::test]
    async fn a_ready_node_without_the_canary_taint_fails() {
        let r = judged(vec![Ok(seen(
            Some("True"),
            &[
                "node.kubernetes.io/not-ready:NoSchedule",
                "bake.io/canary=true:NoExecute",
            ],
        ))])
        .await
        .unwrap();
        assert_eq!(r.status, Status::Fail);
        assert!(r
            .reason
            .unwrap()
            .contains("without the bake.io/canary=true:NoSchedule taint"));
    }

    #[tokio::test]
    async fn a_node_that_never_gets_ready_is_no_verdict_naming_the_last_state() {
        let why = judged(vec![Ok(None), Ok(seen(Some("False"), &[]))])
            .await
            .unwrap_err();
        assert!(
            why.contains("did not become a Ready node within 300ms"),
            "{why}"
        );
        assert!(why.contains("registered but not Ready (False)"), "{why}");
        let why = judged(vec![Ok(None)]).await.unwrap_err();
        assert!(
            why.contains("has not registered with EKS cluster `dev`"),
            "{why}"
        );
    }

    #[tokio::test]
    async fn a_cluster_that_refuses_bake_is_no_verdict_at_once() {
        let start = Instant::now();
        let why = judged(vec![Err(AskError::Refused("Unauthorized".into()))])
            .await
            .unwrap_err();
        assert_eq!(why, "Unauthorized");
        assert!(start.elapsed() < Duration::from_millis(300));
    }
}
