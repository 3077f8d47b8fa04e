//! The canary's EKS cluster as its Kubernetes API sees the canary: the node, read with the
//! standard client (kube) at the endpoint and CA `DescribeCluster` gives, authenticated with
//! bake's own IAM identity through an EKS token (`eks_token`). bake's identity needs read
//! access to nodes in the cluster (an access entry with AmazonEKSAdminViewPolicy or
//! AmazonEKSClusterAdminPolicy; `bake plan` checks it).

use super::eks_token;
use super::AwsProvider;
use crate::steps::node_ready::{AskError, ClusterNodes, NodeSeen};
use crate::steps::pod_network::{ClusterPods, PodSeen, ProbePod};
use crate::user_data::Cluster;
use async_trait::async_trait;
use aws_credential_types::provider::ProvideCredentials;
use base64::Engine as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Mutex;

/// How long bake uses one token: EKS accepts a token for 15 minutes after it was signed.
const TOKEN_USE: Duration = Duration::from_secs(10 * 60);

/// The nodes of the cluster canaries join.
pub(super) struct EksNodes<'a> {
    pub p: &'a AwsProvider,
    pub cluster: &'a str,
    /// The client and when its token was made.
    client: Mutex<Option<(Instant, kube::Client)>>,
}

impl<'a> EksNodes<'a> {
    pub fn new(p: &'a AwsProvider, cluster: &'a str) -> Self {
        EksNodes {
            p,
            cluster,
            client: Mutex::new(None),
        }
    }

    /// A client with a fresh enough token.
    async fn client(&self) -> Result<kube::Client, AskError> {
        let mut held = self.client.lock().await;
        if let Some((made, client)) = held.as_ref() {
            if made.elapsed() < TOKEN_USE {
                return Ok(client.clone());
            }
        }
        self.p.eks_slot().await;
        let cluster = super::eks::describe_cluster(&self.p.eks, self.cluster, &self.p.region)
            .await
            .map_err(|e| AskError::Failed(e.to_string()))?;
        let token = self.token().await?;
        let config = client_config(&cluster, token).map_err(AskError::Refused)?;
        let client = kube::Client::try_from(config).map_err(|e| {
            AskError::Failed(format!("making a client for {}: {e}", cluster.endpoint))
        })?;
        *held = Some((Instant::now(), client.clone()));
        Ok(client)
    }

    async fn token(&self) -> Result<String, AskError> {
        let Some(provider) = &self.p.credentials else {
            return Err(AskError::Refused(
                "bake has no AWS credentials to sign an EKS token with".into(),
            ));
        };
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|e| AskError::Refused(format!("loading AWS credentials: {e}")))?;
        eks_token::token(self.cluster, &self.p.region, credentials, SystemTime::now())
            .map_err(AskError::Refused)
    }
}

/// kube's configuration for `cluster`: its endpoint, its CA (PEM in base64, as DescribeCluster
/// gives it) as the only root, and the token.
fn client_config(cluster: &Cluster, token: String) -> Result<kube::Config, String> {
    let url = cluster.endpoint.parse::<http::Uri>().map_err(|e| {
        format!(
            "EKS cluster {}: endpoint `{}` is not a URL: {e}",
            cluster.name, cluster.endpoint
        )
    })?;
    let roots = ca_certificates(&cluster.certificate_authority)
        .map_err(|e| format!("EKS cluster {}: certificate authority: {e}", cluster.name))?;
    let mut config = kube::Config::new(url);
    config.root_cert = Some(roots);
    config.auth_info.token = Some(secrecy::SecretString::from(token));
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(30));
    Ok(config)
}

/// The DER certificates in DescribeCluster's `certificateAuthority.data` (base64 of PEM).
fn ca_certificates(data: &str) -> Result<Vec<Vec<u8>>, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let pem = b64
        .decode(data.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let pem = String::from_utf8(pem).map_err(|_| "not PEM text".to_string())?;
    let mut certs = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        match (line, body.as_mut()) {
            ("-----BEGIN CERTIFICATE-----", None) => body = Some(String::new()),
            ("-----END CERTIFICATE-----", Some(b)) => {
                certs.push(
                    b64.decode(&*b)
                        .map_err(|e| format!("a certificate is not base64: {e}"))?,
                );
                body = None;
            }
            (l, Some(b)) => b.push_str(l),
            _ => {}
        }
    }
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

/// What bake needs of a node object.
fn seen(node: &Node) -> NodeSeen {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    NodeSeen {
        ready: ready.map(|c| c.status.clone()),
        ready_message: ready
            .map(|c| {
                [c.reason.as_deref(), c.message.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": ")
            })
            .unwrap_or_default(),
        taints: node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .map(|ts| {
                ts.iter()
                    .map(|t| match &t.value {
                        Some(v) => format!("{}={v}:{}", t.key, t.effect),
                        None => format!("{}:{}", t.key, t.effect),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

#[async_trait]
impl ClusterNodes for EksNodes<'_> {
    fn cluster(&self) -> String {
        format!("EKS cluster `{}` in {}", self.cluster, self.p.region)
    }

    async fn node(&self, name: &str) -> Result<Option<NodeSeen>, AskError> {
        let client = self.client().await?;
        let nodes: kube::Api<Node> = kube::Api::all(client);
        nodes
            .get_opt(name)
            .await
            .map(|node| node.as_ref().map(seen))
            .map_err(|e| self.ask_error(e))
    }
}

impl EksNodes<'_> {
    /// A refusal (401/403) is said with the fix; anything else may pass.
    fn ask_error(&self, e: kube::Error) -> AskError {
        refusal(&ClusterNodes::cluster(self), e)
    }

    async fn pods(&self, namespace: &str) -> Result<kube::Api<Pod>, AskError> {
        Ok(kube::Api::namespaced(self.client().await?, namespace))
    }
}

/// What a failed request to the cluster means: 401, and a 403 of authorization (RBAC's "User
/// … cannot …"), are refusals of bake's identity, said with the fix; another 403 is an
/// admission controller refusing the request (a Pod Security level, a quota), said as it is;
/// anything else may pass and is asked again.
fn refusal(cluster: &str, e: kube::Error) -> AskError {
    match e {
        kube::Error::Api(status)
            if status.code == 401 || (status.code == 403 && status.message.contains(" cannot ")) =>
        {
            AskError::Refused(format!(
                "{cluster} refused bake ({} {}: {}): bake's IAM identity needs an access entry with AmazonEKSAdminViewPolicy (or AmazonEKSClusterAdminPolicy), and AmazonEKSEditPolicy in the probe pod's namespace, in the cluster; `bake plan` names the fix",
                status.code, status.reason, status.message
            ))
        }
        kube::Error::Api(status) if status.code == 403 => AskError::Refused(format!(
            "{cluster} refused the request ({} {}): {}",
            status.code, status.reason, status.message
        )),
        e => AskError::Failed(e.to_string()),
    }
}

/// The probe pod: bound to the canary's node (the scheduler is not asked: the node is known),
/// tolerating the canary taint, never restarted, its command `pod-probe.sh`.
fn probe_pod(pod: &ProbePod) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "labels": {"app.kubernetes.io/managed-by": "bake"},
        },
        "spec": {
            "nodeName": pod.node,
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "tolerations": [{"key": pod.toleration, "operator": "Exists", "effect": "NoSchedule"}],
            // It only reads: admitted by the Pod Security Standards' `restricted` level, so a
            // namespace that enforces it runs it too.
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65534,
                "runAsGroup": 65534,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "probe",
                "image": pod.image,
                "command": ["sh", "-c", crate::steps::pod_network::PROBE_SCRIPT],
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
        },
    }))
    .expect("a Pod")
}

#[async_trait]
impl ClusterPods for EksNodes<'_> {
    fn cluster(&self) -> String {
        ClusterNodes::cluster(self)
    }

    async fn create(&self, pod: &ProbePod) -> Result<(), AskError> {
        self.pods(&pod.namespace)
            .await?
            .create(&kube::api::PostParams::default(), &probe_pod(pod))
            .await
            .map(|_| ())
            .map_err(|e| self.ask_error(e))
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<PodSeen, AskError> {
        let pod = self
            .pods(namespace)
            .await?
            .get(name)
            .await
            .map_err(|e| self.ask_error(e))?;
        let status = pod.status.unwrap_or_default();
        let state = status
            .container_statuses
            .unwrap_or_default()
            .into_iter()
            .next()
            .and_then(|c| c.state);
        let detail = match state {
            Some(s) => match (s.waiting, s.terminated) {
                (Some(w), _) => [w.reason, w.message]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": "),
                (_, Some(t)) => format!(
                    "{}: exit {}",
                    t.reason.unwrap_or_else(|| "terminated".into()),
                    t.exit_code
                ),
                _ => String::new(),
            },
            None => status.message.unwrap_or_default(),
        };
        Ok(PodSeen {
            phase: status.phase.unwrap_or_else(|| "Pending".into()),
            detail,
        })
    }

    async fn logs(&self, namespace: &str, name: &str) -> Result<String, AskError> {
        self.pods(namespace)
            .await?
            .logs(name, &kube::api::LogParams::default())
            .await
            .map_err(|e| self.ask_error(e))
    }

    async fn delete(&self, namespace: &str, name: &str) -> Result<(), AskError> {
        let gone = kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        match self.pods(namespace).await?.delete(name, &gone).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(self.ask_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error status as the API server sends it.
    fn api_error(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(
            serde_json::from_value(serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn authorization_and_admission_refusals_are_told_apart() {
        let rbac = refusal(
            "EKS cluster `dev`",
            api_error(403, "Forbidden", "pods is forbidden: User \"bake\" cannot create resource \"pods\" in API group \"\" in the namespace \"default\""),
        );
        assert!(
            matches!(&rbac, AskError::Refused(m) if m.contains("AmazonEKSEditPolicy in the probe pod's namespace")),
            "{rbac:?}"
        );
        let psa = refusal(
            "EKS cluster `dev`",
            api_error(403, "Forbidden", "pods \"p\" is forbidden: violates PodSecurity \"restricted:latest\": runAsNonRoot != true"),
        );
        assert!(
            matches!(&psa, AskError::Refused(m) if m.contains("violates PodSecurity") && !m.contains("access entry")),
            "{psa:?}"
        );
        assert!(matches!(
            refusal("c", api_error(401, "Unauthorized", "Unauthorized")),
            AskError::Refused(_)
        ));
        let other = api_error(500, "InternalError", "etcdserver: request timed out");
        assert!(matches!(refusal("c", other), AskError::Failed(_)));
    }

    /// The probe pod is admitted by the `restricted` Pod Security level: non-root, no
    /// privilege escalation, every capability dropped, the runtime's seccomp profile.
    #[test]
    fn the_probe_pod_meets_the_restricted_pod_security_level() {
        let pod = probe_pod(&ProbePod {
            namespace: "default".into(),
            name: "bake-cluster-pod-network-0".into(),
            node: "ip-10-0-1-5.ec2.internal".into(),
            image: "busybox".into(),
            toleration: "bake.io/canary".into(),
        });
        let spec = pod.spec.unwrap();
        let sc = spec.security_context.unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_ne!(sc.run_as_user, Some(0));
        assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let c = spec.containers[0].security_context.clone().unwrap();
        assert_eq!(c.allow_privilege_escalation, Some(false));
        assert_eq!(c.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
        assert_eq!(spec.node_name.as_deref(), Some("ip-10-0-1-5.ec2.internal"));
        assert_eq!(
            spec.tolerations.unwrap()[0].key.as_deref(),
            Some("bake.io/canary")
        );
    }

    #[test]
    fn the_ca_is_read_from_base64_pem() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n{}\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            b64.encode(b"first half "),
            "",
            b64.encode(b"second")
        );
        let certs = ca_certificates(&b64.encode(pem)).unwrap();
        assert_eq!(certs, vec![b"first half ".to_vec(), b"second".to_vec()]);
        assert!(ca_certificates(&b64.encode("no pem here"))
            .unwrap_err()
            .contains("no PEM certificate"));
        assert!(ca_certificates("%%%").unwrap_err().contains("not base64"));
    }
}
