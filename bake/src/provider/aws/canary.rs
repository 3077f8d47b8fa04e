//! User data that makes a canary join its cluster with a `NoSchedule` taint, so no workload
//! lands on it: nodeadm `NodeConfig` for AL2023-based images, `bootstrap.sh` for Ubuntu EKS.

use crate::names::AwsBaseRef;
use base64::Engine as _;

/// The taint every canary registers with.
pub const TAINT: &str = "bake.io/canary=true:NoSchedule";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// Amazon Linux 2023 EKS AMIs: nodeadm reads a NodeConfig.
    Nodeadm,
    /// Canonical's Ubuntu EKS AMIs: /etc/eks/bootstrap.sh.
    Bootstrap,
}

/// How images from this base join a cluster.
pub fn join_for(base: &AwsBaseRef) -> Join {
    match base {
        AwsBaseRef::Parameter(p) if p.as_str().contains("/canonical/") => Join::Bootstrap,
        _ => Join::Nodeadm,
    }
}

/// Base64 user data for a canary of `cluster`.
pub fn user_data(join: Join, cluster: &str) -> String {
    let text = match join {
        Join::Bootstrap => format!(
            "#!/bin/bash\nset -eu\n/etc/eks/bootstrap.sh '{cluster}' --kubelet-extra-args '--register-with-taints={TAINT} --node-labels=bake.io/canary=true'\n"
        ),
        Join::Nodeadm => format!(
            "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"BAKE\"\n\n--BAKE\nContent-Type: application/node.eks.aws\n\n\
             ---\napiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec:\n  cluster:\n    name: {cluster}\n  kubelet:\n    flags:\n      - --register-with-taints={TAINT}\n      - --node-labels=bake.io/canary=true\n\n--BAKE--\n"
        ),
    };
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::SsmPath;

    fn decode(s: &str) -> String {
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).unwrap()).unwrap()
    }

    #[test]
    fn user_data_joins_with_the_canary_taint() {
        let ubuntu = AwsBaseRef::Parameter(SsmPath::parse("/aws/service/canonical/ubuntu/eks/22.04/1.31/stable/current/amd64/hvm/ebs-gp2/ami-id").unwrap());
        let al2023 = AwsBaseRef::Parameter(SsmPath::parse("/aws/service/eks/optimized-ami/1.31/amazon-linux-2023/x86_64/standard/recommended/image_id").unwrap());
        assert_eq!(join_for(&ubuntu), Join::Bootstrap);
        assert_eq!(join_for(&al2023), Join::Nodeadm);
        let b = decode(&user_data(Join::Bootstrap, "dev"));
        assert!(b.contains("/etc/eks/bootstrap.sh 'dev'") && b.contains(TAINT));
        let n = decode(&user_data(Join::Nodeadm, "dev"));
        assert!(n.contains("kind: NodeConfig") && n.contains("name: dev") && n.contains(TAINT));
    }
}
