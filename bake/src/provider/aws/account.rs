//! What the account must hold for a canary to join its cluster, checked read-only before a run
//! creates anything: the instance profile and its role, the role's policies, the role's
//! authorization in the cluster (an EKS access entry, or aws-auth), and the cluster security
//! group the canary is given. From the EKS user guide ("Amazon EKS node IAM role", "Grant IAM
//! users access to Kubernetes with EKS access entries", "View Amazon EKS security group
//! requirements for clusters"): nodes need AmazonEKSWorkerNodePolicy and ECR read access, the
//! VPC CNI needs AmazonEKS_CNI_Policy unless it gets it through IRSA or Pod Identity, a node role
//! needs an access entry of type EC2_LINUX (or an aws-auth mapping), and the cluster security
//! group admits only its own members.

use super::AwsProvider;
use crate::provider::aws::sdk::{code, err};
use crate::{Error, Result};
use aws_sdk_eks::types::AuthenticationMode;

/// A managed policy the canary's role needs, and why.
struct Needed {
    /// Any one of these policy names will do.
    any_of: &'static [&'static str],
    why: &'static str,
}

const NEEDED: &[Needed] = &[
    Needed {
        any_of: &["AmazonSSMManagedInstanceCore"],
        why: "bake reaches the canary only through its SSM agent",
    },
    Needed {
        any_of: &["AmazonEKSWorkerNodePolicy"],
        why: "the kubelet describes its instance and registers the node",
    },
    Needed {
        any_of: &[
            "AmazonEC2ContainerRegistryReadOnly",
            "AmazonEC2ContainerRegistryPullOnly",
        ],
        why: "the node pulls its system pods' images from ECR",
    },
];

/// The EKS access policies that grant reading nodes (a cluster-scoped resource): the user
/// guide's access policy reference lists `nodes` for these two only (AmazonEKSViewPolicy and
/// AmazonEKSAdminPolicy cover namespaced resources).
const NODE_READERS: &[&str] = &["AmazonEKSAdminViewPolicy", "AmazonEKSClusterAdminPolicy"];

/// The EKS access policies that let bake create, read (with its log) and delete its probe pod:
/// the access policy reference gives AmazonEKSEditPolicy and AmazonEKSAdminPolicy the `pods`
/// and `pods/log` permissions in their scope (cluster, or the namespaces named), and
/// AmazonEKSClusterAdminPolicy everything.
const POD_RUNNERS: &[&str] = &[
    "AmazonEKSEditPolicy",
    "AmazonEKSAdminPolicy",
    "AmazonEKSClusterAdminPolicy",
];

/// The IAM principal EKS sees for a caller's ARN (aws-iam-authenticator `arn.Canonicalize`): an
/// assumed-role session is its role, without the session; anything else is itself.
pub(crate) fn canonical_principal(arn: &str) -> String {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if let [arn_, partition, "sts", _, account, resource] = parts[..] {
        if let Some(rest) = resource.strip_prefix("assumed-role/") {
            if let Some((role, _session)) = rest.rsplit_once('/') {
                return format!("{arn_}:{partition}:iam::{account}:role/{role}");
            }
        }
    }
    arn.to_string()
}

/// A role or user ARN without its path: `role/a/b/name` is `role/name`.
fn without_path(arn: &str) -> String {
    match arn
        .split_once(":role/")
        .or_else(|| arn.split_once(":user/"))
    {
        Some((head, name)) => {
            let kind = if arn.contains(":role/") {
                "role"
            } else {
                "user"
            };
            format!("{head}:{kind}/{}", name.rsplit('/').next().unwrap_or(name))
        }
        None => arn.to_string(),
    }
}

/// What the canary's node role is, as IAM has it.
struct NodeRole {
    name: String,
    arn: String,
}

/// The findings of one check: what is missing (each with its fix) and what bake cannot see.
#[derive(Debug, Default)]
struct AccountCheck {
    missing: Vec<String>,
    warnings: Vec<String>,
}

impl AwsProvider {
    /// Checks, read-only, what the canary needs to join its cluster. Missing pieces are one
    /// error (exit 2) naming each and its fix; what bake cannot read is returned as warnings.
    pub(super) async fn check_canary_account(&self) -> Result<Vec<String>> {
        let Some(cluster) = self.canary_cluster.clone() else {
            return Ok(Vec::new());
        };
        let mut found = AccountCheck::default();
        let role = self.node_role(&mut found).await?;
        if let Some(role) = &role {
            self.role_policies(role, &mut found).await?;
        }
        if let Some(mode) = self
            .cluster_access(&cluster, role.as_ref(), &mut found)
            .await?
        {
            self.bake_access(&cluster, &mode, &mut found).await?;
        }
        if found.missing.is_empty() {
            return Ok(found.warnings);
        }
        for w in &found.warnings {
            tracing::warn!("{w}");
        }
        Err(Error::Usage(format!(
            "the canary cannot join EKS cluster `{cluster}` in {}; nothing was created. Missing:\n{}",
            self.region,
            found
                .missing
                .iter()
                .map(|m| format!("  - {m}"))
                .collect::<Vec<_>>()
                .join("\n")
        )))
    }

    /// The role inside `[aws] instance_profile`.
    async fn node_role(&self, found: &mut AccountCheck) -> Result<Option<NodeRole>> {
        let Some(profile) = self.settings.instance_profile.as_deref() else {
            found.missing.push(
                "[aws] instance_profile: the canary needs a node role to join a cluster; set \
                 instance_profile to a profile whose role has AmazonSSMManagedInstanceCore, \
                 AmazonEKSWorkerNodePolicy and AmazonEC2ContainerRegistryReadOnly"
                    .into(),
            );
            return Ok(None);
        };
        let r = match self
            .iam
            .get_instance_profile()
            .instance_profile_name(profile)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) if code(&e) == Some("NoSuchEntity") => {
                found.missing.push(format!(
                    "instance profile `{profile}` ([aws] instance_profile) does not exist: \
                     aws iam create-instance-profile --instance-profile-name {profile}, then \
                     aws iam add-role-to-instance-profile --instance-profile-name {profile} --role-name <node role>"
                ));
                return Ok(None);
            }
            Err(e) => return Err(err(format!("reading instance profile {profile}"), e)),
        };
        let roles = r.instance_profile().map(|p| p.roles()).unwrap_or_default();
        // The one role bake may pass (the printed policy's PassRole).
        let wanted = self.settings.instance_role().unwrap_or(profile);
        let Some(role) = roles.iter().find(|r| r.role_name() == wanted) else {
            let held: Vec<&str> = roles.iter().map(|r| r.role_name()).collect();
            found.missing.push(if held.is_empty() {
                format!(
                    "instance profile `{profile}` holds no role, so the canary has no identity: \
                     aws iam add-role-to-instance-profile --instance-profile-name {profile} --role-name {wanted}"
                )
            } else {
                format!(
                    "instance profile `{profile}` holds {}, not `{wanted}` ([aws] instance_role, by default the profile's name): set instance_role = \"{}\" in the pipeline",
                    held.join(", "),
                    held[0]
                )
            });
            return Ok(None);
        };
        Ok(Some(NodeRole {
            name: role.role_name().to_string(),
            arn: role.arn().to_string(),
        }))
    }

    /// The managed policies attached to the node role.
    async fn role_policies(&self, role: &NodeRole, found: &mut AccountCheck) -> Result<()> {
        let mut attached = std::collections::BTreeSet::new();
        let mut marker = None;
        loop {
            let r = self
                .iam
                .list_attached_role_policies()
                .role_name(&role.name)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| err(format!("listing the policies of role {}", role.name), e))?;
            attached.extend(
                r.attached_policies()
                    .iter()
                    .filter_map(|p| p.policy_name())
                    .map(str::to_string),
            );
            match r.marker() {
                Some(m) if r.is_truncated() => marker = Some(m.to_string()),
                _ => break,
            }
        }
        for n in NEEDED {
            if !n.any_of.iter().any(|p| attached.contains(*p)) {
                found.missing.push(format!(
                    "role `{}` lacks {} ({}): aws iam attach-role-policy --role-name {} --policy-arn arn:aws:iam::aws:policy/{}",
                    role.name,
                    n.any_of.join(" or "),
                    n.why,
                    role.name,
                    n.any_of[0]
                ));
            }
        }
        if !attached.contains("AmazonEKS_CNI_Policy") {
            found.warnings.push(format!(
                "role `{}` lacks AmazonEKS_CNI_Policy: the VPC CNI on the canary cannot assign pod addresses unless it gets that policy through IRSA or EKS Pod Identity",
                role.name
            ));
        }
        Ok(())
    }

    /// The cluster exists, has a cluster security group, and lets the node role in. Returns the
    /// cluster's authentication mode, or None when there is no cluster to check further.
    ///
    /// Long because each missing piece (cluster, its security group, an access entry or aws-auth,
    /// the node policies) is its own error with its fix, in the order a join needs them.
    async fn cluster_access(
        &self,
        cluster: &str,
        role: Option<&NodeRole>,
        found: &mut AccountCheck,
    ) -> Result<Option<AuthenticationMode>> {
        self.eks_slot().await;
        let described = match self.eks.describe_cluster().name(cluster).send().await {
            Ok(r) => r,
            Err(e) if code(&e) == Some("ResourceNotFoundException") => {
                found.missing.push(format!(
                    "EKS cluster `{cluster}` does not exist in {} (the pipeline's [canary] cluster)",
                    self.region
                ));
                return Ok(None);
            }
            Err(e) => {
                return Err(err(
                    format!("describing EKS cluster {cluster} in {}", self.region),
                    e,
                ))
            }
        };
        let c = described.cluster();
        match c
            .and_then(|c| c.resources_vpc_config())
            .and_then(|v| v.cluster_security_group_id())
        {
            Some(sg) => {
                if !self.security_group_exists(sg).await? {
                    found.missing.push(format!(
                        "the cluster security group {sg} of `{cluster}` does not exist; bake gives it to the canary, as EKS managed nodes have it"
                    ));
                }
            }
            None => found.missing.push(format!(
                "EKS cluster `{cluster}` reports no cluster security group; the canary needs it to reach the control plane"
            )),
        }
        // The API's default when a cluster was made without one (CreateAccessConfigRequest).
        let mode = c
            .and_then(|c| c.access_config())
            .and_then(|a| a.authentication_mode())
            .cloned()
            .unwrap_or(AuthenticationMode::ConfigMap);
        // bake reads the canary's node from where it runs: a cluster whose API endpoint is
        // private only answers inside its VPC (EKS user guide, "Cluster API server endpoint").
        if c.and_then(|c| c.resources_vpc_config())
            .is_some_and(|v| !v.endpoint_public_access())
        {
            found.warnings.push(format!(
                "EKS cluster `{cluster}` has no public API endpoint: bake asks it about the canary's node, so bake must run where its private endpoint answers (inside the VPC), or node-ready never gets an answer"
            ));
        }
        let Some(role) = role else {
            return Ok(Some(mode));
        };
        let aws_auth = format!(
            "bake cannot read aws-auth: make sure its mapRoles maps {} to system:bootstrappers and system:nodes, or the canary never joins (node-ready then gives no verdict)",
            role.arn
        );
        if mode == AuthenticationMode::ConfigMap {
            found.warnings.push(format!(
                "EKS cluster `{cluster}` authenticates only through the aws-auth ConfigMap; {aws_auth}"
            ));
            return Ok(Some(mode));
        }
        self.eks_slot().await;
        match self
            .eks
            .describe_access_entry()
            .cluster_name(cluster)
            .principal_arn(&role.arn)
            .send()
            .await
        {
            Ok(r) => {
                let kind = r
                    .access_entry()
                    .and_then(|e| e.r#type())
                    .unwrap_or("STANDARD");
                if kind != "EC2_LINUX" {
                    found.missing.push(format!(
                        "the access entry of {} in `{cluster}` is of type {kind}; a node's must be EC2_LINUX: delete it and run aws eks create-access-entry --cluster-name {cluster} --principal-arn {} --type EC2_LINUX",
                        role.arn, role.arn
                    ));
                }
            }
            Err(e) if code(&e) == Some("ResourceNotFoundException") => {
                let fix = format!(
                    "aws eks create-access-entry --cluster-name {cluster} --principal-arn {} --type EC2_LINUX",
                    role.arn
                );
                if mode == AuthenticationMode::Api {
                    found.missing.push(format!(
                        "role {} has no access entry in `{cluster}` (authentication mode API): {fix}",
                        role.arn
                    ));
                } else {
                    found.warnings.push(format!(
                        "role {} has no access entry in `{cluster}`; {aws_auth} (or: {fix})",
                        role.arn
                    ));
                }
            }
            Err(e) => {
                return Err(err(
                    format!("reading the access entry of {} in {cluster}", role.arn),
                    e,
                ))
            }
        }
        Ok(Some(mode))
    }

    /// bake's own identity may read the canary's node in the cluster (node-ready asks the
    /// cluster's API): an access entry with an access policy that covers nodes, at cluster
    /// scope; and run its probe pod in the probe namespace (cluster-pod-network).
    ///
    /// Long because each way bake may be let in (cluster creator, an access entry, its policy's
    /// scope) is checked in turn, each failure with its fix.
    async fn bake_access(
        &self,
        cluster: &str,
        mode: &AuthenticationMode,
        found: &mut AccountCheck,
    ) -> Result<()> {
        let me = self
            .sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| err("asking STS who bake runs as", e))?;
        let arn = me.arn().unwrap_or_default();
        let principal = canonical_principal(arn);
        let fix = format!(
            "aws eks create-access-entry --cluster-name {cluster} --principal-arn {principal}, then \
             aws eks associate-access-policy --cluster-name {cluster} --principal-arn {principal} \
             --policy-arn arn:aws:eks::aws:cluster-access-policy/{} --access-scope type=cluster",
            NODE_READERS[0]
        );
        let why = "bake reads the canary's node from the cluster's API (node-ready)";
        if *mode == AuthenticationMode::ConfigMap {
            found.warnings.push(format!(
                "EKS cluster `{cluster}` authenticates only through aws-auth, which bake cannot read: {why}, so aws-auth must map {principal} to a group that may get nodes"
            ));
            return Ok(());
        }
        let Some(entry) = self.access_entry_of(cluster, &principal).await? else {
            let missing = format!("{principal} (bake's own identity) has no access entry in `{cluster}`; {why}: {fix}");
            if *mode == AuthenticationMode::Api {
                found.missing.push(missing);
            } else {
                found
                    .warnings
                    .push(format!("{missing} (or map it in aws-auth)"));
            }
            return Ok(());
        };
        let mut policies = Vec::new();
        let mut token = None;
        loop {
            self.eks_slot().await;
            let r = self
                .eks
                .list_associated_access_policies()
                .cluster_name(cluster)
                .principal_arn(&entry)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| {
                    err(
                        format!("listing the access policies of {entry} in {cluster}"),
                        e,
                    )
                })?;
            policies.extend(r.associated_access_policies().iter().map(|p| {
                let scope = p.access_scope();
                let cluster_wide = scope
                    .and_then(|s| s.r#type())
                    .is_some_and(|t| t.as_str() == "cluster");
                let in_probe_namespace = cluster_wide
                    || scope.is_some_and(|s| s.namespaces().contains(&self.probe.namespace));
                (
                    p.policy_arn().unwrap_or_default().to_string(),
                    cluster_wide,
                    in_probe_namespace,
                )
            }));
            match r.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        let named =
            |arn: &str, names: &[&str]| names.iter().any(|n| arn.rsplit('/').next() == Some(*n));
        let reads_nodes = policies
            .iter()
            .any(|(arn, cluster_wide, _)| *cluster_wide && named(arn, NODE_READERS));
        let runs_probe = policies
            .iter()
            .any(|(arn, _, in_ns)| *in_ns && named(arn, POD_RUNNERS));
        let held = || {
            if policies.is_empty() {
                return "none".to_string();
            }
            policies
                .iter()
                .map(|(a, c, _)| {
                    format!(
                        "{}{}",
                        a.rsplit('/').next().unwrap_or(a),
                        if *c { "" } else { " (namespaces only)" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !runs_probe {
            let ns = &self.probe.namespace;
            found.missing.push(format!(
                "the access entry of {entry} (bake's own identity) in `{cluster}` has no access policy that runs pods in namespace `{ns}` ({} there, or {} at cluster scope; it has {}); bake runs its probe pod on the canary (cluster-pod-network): aws eks associate-access-policy --cluster-name {cluster} --principal-arn {entry} --policy-arn arn:aws:eks::aws:cluster-access-policy/{} --access-scope type=namespace,namespaces={ns}",
                POD_RUNNERS[..2].join(" or "),
                POD_RUNNERS[2],
                held(),
                POD_RUNNERS[0]
            ));
        }
        if !reads_nodes {
            found.missing.push(format!(
                "the access entry of {entry} (bake's own identity) in `{cluster}` has no access policy that reads nodes ({} at cluster scope; it has {}); {why}: aws eks associate-access-policy --cluster-name {cluster} --principal-arn {entry} --policy-arn arn:aws:eks::aws:cluster-access-policy/{} --access-scope type=cluster",
                NODE_READERS.join(" or "),
                held(),
                NODE_READERS[0]
            ));
        }
        Ok(())
    }

    /// The ARN of the access entry that holds `principal` in `cluster`, compared without paths on
    /// either side (an assumed role's ARN has none; a user's has its own), as
    /// aws-iam-authenticator's mapper strips them.
    async fn access_entry_of(&self, cluster: &str, principal: &str) -> Result<Option<String>> {
        let mut token = None;
        loop {
            self.eks_slot().await;
            let r = self
                .eks
                .list_access_entries()
                .cluster_name(cluster)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| err(format!("listing the access entries of {cluster}"), e))?;
            if let Some(e) = r
                .access_entries()
                .iter()
                .find(|e| without_path(e).eq_ignore_ascii_case(&without_path(principal)))
            {
                return Ok(Some(e.clone()));
            }
            match r.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(None),
            }
        }
    }

    async fn security_group_exists(&self, id: &str) -> Result<bool> {
        self.ec2_slot().await;
        match self
            .ec2
            .describe_security_groups()
            .group_ids(id)
            .send()
            .await
        {
            Ok(r) => Ok(!r.security_groups().is_empty()),
            Err(e) if code(&e) == Some("InvalidGroup.NotFound") => Ok(false),
            Err(e) => Err(err(format!("describing security group {id}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assumed_role_is_its_role_and_paths_are_dropped() {
        assert_eq!(
            canonical_principal("arn:aws:sts::123456789012:assumed-role/ci-bake/session-1"),
            "arn:aws:iam::123456789012:role/ci-bake"
        );
        assert_eq!(
            canonical_principal("arn:aws:iam::123456789012:user/alice"),
            "arn:aws:iam::123456789012:user/alice"
        );
        assert_eq!(
            without_path("arn:aws:iam::123456789012:role/teams/infra/ci-bake"),
            "arn:aws:iam::123456789012:role/ci-bake"
        );
        assert_eq!(
            without_path("arn:aws:iam::123456789012:user/team/alice"),
            without_path("arn:aws:iam::123456789012:user/alice"),
        );
        assert_eq!(
            without_path("arn:aws:iam::123456789012:user/alice"),
            "arn:aws:iam::123456789012:user/alice"
        );
    }
}
