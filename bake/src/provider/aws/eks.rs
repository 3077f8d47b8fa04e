//! EKS's answers bake builds on: what a node needs to join a cluster, read with
//! `eks:DescribeCluster`.

use crate::user_data::Cluster;
use crate::{Error, Result};

/// Reads the join data of `name` with `eks:DescribeCluster`; a cluster that is not ACTIVE
/// or lacks any of the fields cannot take a canary.
pub async fn describe_cluster(
    eks: &aws_sdk_eks::Client,
    name: &str,
    region: &str,
) -> Result<Cluster> {
    let r = eks
        .describe_cluster()
        .name(name)
        .send()
        .await
        .map_err(|e| super::sdk::err(format!("describing EKS cluster {name} in {region}"), e))?;
    let c = r.cluster().ok_or_else(|| {
        Error::provider(
            "aws",
            format!("EKS cluster {name} in {region}: no cluster in the answer"),
        )
    })?;
    let missing = |what: &str| {
        Error::provider(
            "aws",
            format!("EKS cluster {name} in {region} has no {what}; a canary cannot join it"),
        )
    };
    if let Some(status) = c.status() {
        if status.as_str() != "ACTIVE" {
            return Err(Error::provider(
                "aws",
                format!(
                    "EKS cluster {name} in {region} is {}, not ACTIVE; a canary cannot join it",
                    status.as_str()
                ),
            ));
        }
    }
    Ok(Cluster {
        name: name.to_string(),
        endpoint: c.endpoint().ok_or_else(|| missing("endpoint"))?.to_string(),
        certificate_authority: c
            .certificate_authority()
            .and_then(|a| a.data())
            .ok_or_else(|| missing("certificate authority"))?
            .to_string(),
        service_cidr: c
            .kubernetes_network_config()
            .and_then(|k| k.service_ipv4_cidr())
            .ok_or_else(|| missing("IPv4 service CIDR"))?
            .to_string(),
        security_group: c
            .resources_vpc_config()
            .and_then(|v| v.cluster_security_group_id())
            .map(str::to_string),
    })
}
