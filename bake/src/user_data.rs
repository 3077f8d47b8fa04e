//! User data for the instances bake launches.
//!
//! Every instance carries a dead-man's switch: it is launched with
//! `InstanceInitiatedShutdownBehavior = terminate` and its user data arms a power-off timer
//! that outlives the run's own timeouts, so a builder or canary whose run and host both died
//! terminates itself even if nobody runs `bake sweep`. The timer lives in `/run` (systemd's
//! scheduled shutdown), so it is never baked into an image.
//!
//! A canary also joins the canary cluster with a `NoSchedule` taint, so no workload lands on
//! it: nodeadm `NodeConfig` for AL2023 images, `bootstrap.sh` for Ubuntu EKS and AL2 images.
//! Both get the cluster's endpoint, CA and service CIDR from `eks:DescribeCluster`, as nodeadm
//! requires them (bootstrap.sh could look them up, but only with EKS rights on the node).

use crate::input::names::Join;
use crate::{Error, Result};
use base64::Engine as _;
use std::time::Duration;

/// The taint every canary registers with.
pub const TAINT: &str = "bake.io/canary=true:NoSchedule";
/// The label every canary registers with.
pub const LABEL: &str = "bake.io/canary=true";

/// What a node needs to join an EKS cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    /// `https://...` API server endpoint.
    pub endpoint: String,
    /// The cluster CA, base64 as DescribeCluster returns it.
    pub certificate_authority: String,
    /// The Kubernetes service CIDR (IPv4), e.g. `10.100.0.0/16`.
    pub service_cidr: String,
    /// The cluster security group EKS made with the cluster: it admits only its members, so a
    /// node (EKS managed nodes, the eks-node module's) carries it to reach the control plane.
    pub security_group: Option<String>,
}

impl Cluster {
    /// The cluster DNS service address EKS uses: the 10th address of the service CIDR.
    pub fn dns_ip(&self) -> Result<String> {
        let bad = || {
            Error::provider(
                "aws",
                format!(
                    "EKS cluster {}: service CIDR `{}` is not an IPv4 CIDR",
                    self.name, self.service_cidr
                ),
            )
        };
        let (addr, bits) = self.service_cidr.split_once('/').ok_or_else(bad)?;
        let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let bits: u32 = bits.parse().map_err(|_| bad())?;
        if bits > 28 {
            return Err(bad());
        }
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        Ok(std::net::Ipv4Addr::from((u32::from(addr) & mask) + 10).to_string())
    }
}

/// Whole minutes, rounded up, for `shutdown -P +N`.
fn minutes(d: Duration) -> u64 {
    d.as_secs().div_ceil(60).max(1)
}

/// The dead-man's timer as shell.
fn timer(lifetime: Duration) -> String {
    format!(
        "shutdown -P +{} 'bake: this instance outlived its run; it powers off and terminates itself' || true\n",
        minutes(lifetime)
    )
}

/// User data text with only the dead-man's timer, for an instance that joins nothing
/// (`role`: builder, or a canary with no cluster).
pub fn dead_man_text(role: &str, lifetime: Duration) -> String {
    format!(
        "#!/bin/bash\n# bake {role}: power off (= terminate) if the run never ends\n{}",
        timer(lifetime)
    )
}

/// Base64 user data for a builder: only the dead-man's timer.
pub fn builder(lifetime: Duration) -> String {
    base64::engine::general_purpose::STANDARD.encode(dead_man_text("builder", lifetime))
}

/// Base64 user data for a canary that joins no cluster (a pipeline without a `[canary]`
/// cluster): only the dead-man's timer.
pub fn unjoined_canary(lifetime: Duration) -> String {
    base64::engine::general_purpose::STANDARD.encode(dead_man_text("canary", lifetime))
}

/// The user data text for a canary of `cluster` (before base64).
pub fn canary_text(join: Join, cluster: &Cluster, lifetime: Duration) -> Result<String> {
    let q = crate::guest::sh_quote;
    Ok(match join {
        Join::Bootstrap => format!(
            "#!/bin/bash\nset -eu\n# bake canary: power off (= terminate) if the run never ends\n{}/etc/eks/bootstrap.sh {} --apiserver-endpoint {} --b64-cluster-ca {} --dns-cluster-ip {} --kubelet-extra-args {}\n",
            timer(lifetime),
            q(&cluster.name),
            q(&cluster.endpoint),
            q(&cluster.certificate_authority),
            cluster.dns_ip()?,
            q(&format!("--register-with-taints={TAINT} --node-labels={LABEL}")),
        ),
        Join::Nodeadm => format!(
            "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"BAKE\"\n\n\
             --BAKE\nContent-Type: application/node.eks.aws\n\n\
             ---\napiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec:\n  cluster:\n    name: {name}\n    apiServerEndpoint: {endpoint}\n    certificateAuthority: {ca}\n    cidr: {cidr}\n  kubelet:\n    flags:\n      - --register-with-taints={TAINT}\n      - --node-labels={LABEL}\n\n\
             --BAKE\nContent-Type: text/x-shellscript; charset=\"us-ascii\"\n\n#!/bin/bash\n# bake canary: power off (= terminate) if the run never ends\n{timer}\n\
             --BAKE--\n",
            name = cluster.name,
            endpoint = cluster.endpoint,
            ca = cluster.certificate_authority,
            cidr = cluster.service_cidr,
            timer = timer(lifetime),
        ),
    })
}

/// Base64 user data for a canary of `cluster`.
pub fn canary(join: Join, cluster: &Cluster, lifetime: Duration) -> Result<String> {
    Ok(base64::engine::general_purpose::STANDARD.encode(canary_text(join, cluster, lifetime)?))
}

/// How long an instance may live before its timer fires: longer than every wait the run
/// could spend on it (launch, agent, each of `commands` at its limit, stop, image) plus an
/// hour's margin for cleanups and slow APIs.
pub fn lifetime(
    settings: &crate::input::pipeline::AwsSettings,
    command_limits: &[Duration],
) -> Duration {
    settings.instance_timeout * 2
        + settings.agent_timeout
        + settings.join_timeout
        + command_limits.iter().sum::<Duration>()
        + settings.image_timeout
        + Duration::from_secs(3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bash -n` accepts the script.
    fn valid_shell(text: &str) {
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", text])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn cluster() -> Cluster {
        Cluster {
            name: "dev".into(),
            endpoint: "https://ABC.gr7.us-east-1.eks.amazonaws.com".into(),
            certificate_authority: "LS0tQ0E=".into(),
            service_cidr: "10.100.0.0/16".into(),
            security_group: Some("sg-0123456789abcdef0".into()),
        }
    }

    #[test]
    fn the_cluster_dns_is_the_tenth_address_of_the_service_cidr() {
        assert_eq!(cluster().dns_ip().unwrap(), "10.100.0.10");
        let mut c = cluster();
        c.service_cidr = "172.20.0.0/16".into();
        assert_eq!(c.dns_ip().unwrap(), "172.20.0.10");
        c.service_cidr = "10.1.2.128/25".into();
        assert_eq!(c.dns_ip().unwrap(), "10.1.2.138");
        for bad in ["fd00::/108", "10.0.0.0", "10.0.0.0/30", "x/16"] {
            c.service_cidr = bad.into();
            assert!(c.dns_ip().is_err(), "{bad}");
        }
    }

    #[test]
    fn nodeadm_gets_every_field_it_requires_and_the_timer() {
        let text = canary_text(Join::Nodeadm, &cluster(), Duration::from_secs(7201)).unwrap();
        for want in [
            "kind: NodeConfig",
            "name: dev",
            "apiServerEndpoint: https://ABC.gr7.us-east-1.eks.amazonaws.com",
            "certificateAuthority: LS0tQ0E=",
            "cidr: 10.100.0.0/16",
            TAINT,
            "shutdown -P +121 ",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }

    #[test]
    fn bootstrap_gets_endpoint_ca_dns_and_the_timer_before_joining() {
        let text = canary_text(Join::Bootstrap, &cluster(), Duration::from_secs(60)).unwrap();
        let timer = text.find("shutdown -P +1 ").unwrap();
        let join = text.find("/etc/eks/bootstrap.sh 'dev'").unwrap();
        assert!(
            timer < join,
            "the timer is armed before a join that may fail under set -e"
        );
        for want in [
            "--apiserver-endpoint 'https://ABC.gr7.us-east-1.eks.amazonaws.com'",
            "--b64-cluster-ca 'LS0tQ0E='",
            "--dns-cluster-ip 10.100.0.10",
            TAINT,
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
        valid_shell(&text);
    }

    #[test]
    fn the_builder_timer_is_valid_shell_in_whole_minutes() {
        let text = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(builder(Duration::from_secs(3 * 3600 + 1)))
                .unwrap(),
        )
        .unwrap();
        assert!(text.starts_with("#!/bin/bash\n") && text.contains("shutdown -P +181 "));
        valid_shell(&text);
    }
}
