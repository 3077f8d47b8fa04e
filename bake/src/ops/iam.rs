//! `bake iam-policy`: the least-privilege IAM policy for what a pipeline does on AWS, scoped
//! by the `bake:*` tags and the registry's parameter path where AWS allows conditions.

mod image_builder;

use crate::input::names::AwsBaseRef;
use crate::input::pipeline::{AwsSettings, Pipeline};
use crate::{Error, Result};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// The policy document for `pipeline` (which must use the aws provider).
///
/// Ownership is the `bake:prefix` tag, whose value is the pipeline's `ssm_prefix`: bake may
/// create instances, volumes, security groups, images and snapshots only with that tag, and may
/// stop, terminate, tag, attach, detach, deregister, delete or command only what carries it. Tags go on at
/// creation (`ec2:CreateAction`), so nothing needs the right to tag what bake did not make, and
/// no request may change a resource's `bake:prefix`.
pub fn policy(pipeline: &Pipeline) -> Result<Value> {
    let scope = Scope::of(pipeline)?;
    let statements: Vec<Value> = [
        scope.launch(),
        scope.images(),
        scope.commands_and_registry(),
        scope.clusters(),
        scope.base_parameters(),
        scope.security_groups(),
        scope.copies(),
        scope.sharing_and_keys(),
        scope.image_builder(),
        scope.canary_account(),
        scope.instance_profile(),
        scope.pass_role(),
    ]
    .into_iter()
    .flatten()
    .collect();
    Ok(json!({"Version": "2012-10-17", "Statement": statements}))
}

/// The policy of an identity that only audits (`bake audit` of `pipeline`'s nodes): the reads
/// that find the nodes and their releases, and SendCommand of the pipeline's audit documents
/// to its nodes. IAM authorizes a command's document and instances separately, so an identity
/// that may also run AWS-RunShellScript on bake's builders could send that to a node too; one
/// with this policy alone cannot run anything on a node but the audit documents.
pub fn audit_policy(pipeline: &Pipeline) -> Result<Value> {
    let scope = Scope::of(pipeline)?;
    Ok(json!({"Version": "2012-10-17", "Statement": scope.audit_only()}))
}

/// What every statement is scoped by: the pipeline's region(s), its registry path and the
/// `bake:prefix` value that marks what it owns. Each method is one group of statements.
struct Scope<'p> {
    pipeline: &'p Pipeline,
    aws: &'p AwsSettings,
    region: String,
    /// The registry's parameter path, without a trailing `/`.
    prefix: String,
    /// The `bake:prefix` tag value of what this pipeline owns.
    owner: String,
    /// The home region and every copy region (images and snapshots live in each).
    regions: Vec<String>,
}

impl<'p> Scope<'p> {
    /// The scope of `pipeline`, which must use the aws provider.
    fn of(pipeline: &'p Pipeline) -> Result<Self> {
        let aws = pipeline.settings.aws().ok_or_else(|| {
            Error::Usage(format!(
                "{} does not use the aws provider; it needs no IAM policy",
                pipeline.file.display()
            ))
        })?;
        Ok(Scope::new(pipeline, aws))
    }

    fn new(pipeline: &'p Pipeline, aws: &'p AwsSettings) -> Self {
        let region = aws.region.clone().unwrap_or_else(|| "*".into());
        Scope {
            pipeline,
            aws,
            regions: std::iter::once(region.clone())
                .chain(aws.copy_regions.iter().cloned())
                .collect(),
            region,
            prefix: aws.ssm_prefix.as_str().trim_end_matches('/').to_string(),
            owner: aws.ssm_prefix.as_str().to_string(),
        }
    }

    fn ec2(&self, r: &str) -> String {
        format!("arn:aws:ec2:{}:*:{r}", self.region)
    }

    /// `r` (`image/*`, `snapshot/*`) in every region images live in.
    fn amis(&self, r: &str) -> Vec<String> {
        self.regions
            .iter()
            .map(|g| format!("arn:aws:ec2:{g}::{r}"))
            .collect()
    }

    /// `arn` in the home region alone (a string), or in it and each copy region (a list).
    fn in_each_region(&self, arn: impl Fn(&str) -> String) -> Value {
        match self.regions.as_slice() {
            [home] => json!(arn(home)),
            all => json!(all.iter().map(|g| arn(g)).collect::<Vec<_>>()),
        }
    }

    fn images_and_snapshots(&self) -> Vec<String> {
        [self.amis("image/*"), self.amis("snapshot/*")].concat()
    }

    /// The request creates the resource tagged as this pipeline's.
    fn requested(&self) -> Value {
        json!({"StringEquals": {"aws:RequestTag/bake:prefix": self.owner}})
    }

    /// The resource is tagged as this pipeline's.
    fn owned(&self) -> Value {
        json!({"StringEquals": {"aws:ResourceTag/bake:prefix": self.owner}})
    }

    /// Reading what bake looks at, launching the builder and the canary, their volumes.
    fn launch(&self) -> Vec<Value> {
        let (ec2, region) = (|r: &str| self.ec2(r), &self.region);
        let (requested, owned) = (self.requested(), self.owned());
        vec![
            json!({
                "Sid": "Discover",
                "Effect": "Allow",
                "Action": [
                    "ec2:DescribeImages", "ec2:DescribeInstances", "ec2:DescribeSubnets", "ec2:DescribeVpcs",
                    "ec2:DescribeSecurityGroups", "ec2:DescribeLaunchTemplates", "ec2:DescribeLaunchTemplateVersions",
                    "ec2:DescribeVolumes",
                    "ssm:DescribeInstanceInformation", "ssm:GetCommandInvocation", "sts:GetCallerIdentity"
                ],
                "Resource": "*"
            }),
            json!({
                "Sid": "LaunchOnlyOwnTaggedInstancesAndVolumes",
                "Effect": "Allow",
                "Action": "ec2:RunInstances",
                "Resource": [ec2("instance/*"), ec2("volume/*")],
                "Condition": requested
            }),
            json!({
                "Sid": "CopyOnlyOwnImagesForTheCanary",
                "Effect": "Allow",
                "Action": "ec2:CreateVolume",
                "Resource": format!("arn:aws:ec2:{region}::snapshot/*"),
                "Condition": owned
            }),
            json!({
                "Sid": "MakeOnlyOwnTaggedVolumes",
                "Effect": "Allow",
                "Action": "ec2:CreateVolume",
                "Resource": ec2("volume/*"),
                "Condition": requested
            }),
            json!({
                "Sid": "AttachDetachAndDeleteOwnVolumesOnOwnInstances",
                "Effect": "Allow",
                "Action": ["ec2:AttachVolume", "ec2:DetachVolume", "ec2:DeleteVolume"],
                "Resource": [ec2("instance/*"), ec2("volume/*")],
                "Condition": owned
            }),
            json!({
                "Sid": "LaunchFromImagesIntoTheNetwork",
                "Effect": "Allow",
                "Action": "ec2:RunInstances",
                "Resource": [
                    format!("arn:aws:ec2:{region}::image/*"), ec2("subnet/*"), ec2("security-group/*"), ec2("network-interface/*")
                ]
            }),
        ]
    }

    /// Tagging at creation, and the images and snapshots bake makes, retags, deprecates,
    /// protects and deletes — only its own.
    fn images(&self) -> Vec<Value> {
        let (ec2, region, owner) = (|r: &str| self.ec2(r), &self.region, &self.owner);
        let (requested, owned) = (self.requested(), self.owned());
        let images_and_snapshots = self.images_and_snapshots();
        let mut create_actions = vec!["RunInstances", "CreateImage", "CreateVolume"];
        if self.aws.security_group_id.is_none() {
            create_actions.push("CreateSecurityGroup");
        }
        if !self.aws.copy_regions.is_empty() {
            create_actions.push("CopyImage");
        }
        let tag_on_create: Vec<String> =
            [ec2("instance/*"), ec2("volume/*"), ec2("security-group/*")]
                .into_iter()
                .chain(images_and_snapshots.clone())
                .collect();
        vec![
            json!({
                "Sid": "TagOnlyWhenCreatingAndAsOwn",
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": tag_on_create,
                "Condition": {
                    "StringEquals": {"ec2:CreateAction": create_actions, "aws:RequestTag/bake:prefix": owner}
                }
            }),
            json!({
                "Sid": "RetagOwnImagesWithoutChangingTheirOwner",
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": images_and_snapshots.clone(),
                "Condition": {
                    "StringEquals": {"aws:ResourceTag/bake:prefix": owner},
                    "StringEqualsIfExists": {"aws:RequestTag/bake:prefix": owner}
                }
            }),
            json!({
                "Sid": "StopTerminateAndImageOwnInstances",
                "Effect": "Allow",
                "Action": ["ec2:StopInstances", "ec2:TerminateInstances", "ec2:CreateImage", "ec2:ModifyInstanceAttribute"],
                "Resource": ec2("instance/*"),
                "Condition": owned
            }),
            json!({
                "Sid": "CreateOwnTaggedImagesAndSnapshots",
                "Effect": "Allow",
                "Action": "ec2:CreateImage",
                "Resource": [format!("arn:aws:ec2:{region}::image/*"), format!("arn:aws:ec2:{region}::snapshot/*")],
                "Condition": requested
            }),
            json!({
                "Sid": "DeleteOnlyOwnImagesAndSnapshots",
                "Effect": "Allow",
                "Action": ["ec2:DeregisterImage", "ec2:DeleteSnapshot"],
                "Resource": images_and_snapshots.clone(),
                "Condition": owned
            }),
            json!({
                "Sid": "DeprecateAndProtectOwnImages",
                "Effect": "Allow",
                "Action": [
                    "ec2:EnableImageDeprecation",
                    "ec2:EnableImageDeregistrationProtection",
                    "ec2:DisableImageDeregistrationProtection"
                ],
                "Resource": self.amis("image/*"),
                "Condition": owned
            }),
        ]
    }

    /// Commands on bake's own instances and the audited nodes, and the registry.
    fn commands_and_registry(&self) -> Vec<Value> {
        let (ec2, region, owner, prefix) = (
            |r: &str| self.ec2(r),
            &self.region,
            &self.owner,
            &self.prefix,
        );
        vec![
            json!({
                "Sid": "RunShellScriptOnOwnInstancesOnly",
                "Effect": "Allow",
                "Action": "ssm:SendCommand",
                "Resource": ec2("instance/*"),
                "Condition": {"StringEquals": {"ssm:resourceTag/bake:prefix": owner}}
            }),
            // `bake audit`: the eks-node module's nodes of this pipeline's recipes (its
            // `bake:recipe` tag), in the pipeline's region and (running the copies) each copy
            // region ...
            self.audit_nodes(),
            // ... and only through the pipeline's audit documents (`bake audit-document`),
            // which take no script: an action, the node's arch and an offset.
            self.audit_documents(),
            json!({
                "Sid": "InstallTheAuditDocuments",
                "Effect": "Allow",
                "Action": ["ssm:CreateDocument", "ssm:UpdateDocument", "ssm:UpdateDocumentDefaultVersion"],
                "Resource": self.audit_document_arns()
            }),
            json!({
                "Sid": "TheRunShellScriptDocument",
                "Effect": "Allow",
                "Action": "ssm:SendCommand",
                "Resource": self.in_each_region(|g| format!("arn:aws:ssm:{g}::document/AWS-RunShellScript"))
            }),
            json!({
                "Sid": "Registry",
                "Effect": "Allow",
                "Action": [
                    "ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath", "ssm:GetParameterHistory",
                    "ssm:PutParameter", "ssm:DeleteParameter", "ssm:DeleteParameters"
                ],
                "Resource": [format!("arn:aws:ssm:{region}:*:parameter{prefix}"), format!("arn:aws:ssm:{region}:*:parameter{prefix}/*")]
            }),
            // Prune lists the release index entries' descriptions, fifty a call. DescribeParameters
            // takes no resource (Service Authorization Reference): it shows names and descriptions
            // of the account's parameters in the region, never their values.
            json!({
                "Sid": "RegistryIndexDescriptions",
                "Effect": "Allow",
                "Action": "ssm:DescribeParameters",
                "Resource": "*"
            }),
        ]
    }

    fn recipes(&self) -> Vec<String> {
        self.pipeline
            .bakes
            .iter()
            .map(|b| b.recipe.name.clone())
            .collect()
    }

    /// SendCommand on the eks-node module's nodes of this pipeline's recipes (their
    /// `bake:recipe` tag), in the pipeline's region and each copy region.
    fn audit_nodes(&self) -> Value {
        json!({
            "Sid": "AuditThePipelinesNodes",
            "Effect": "Allow",
            "Action": "ssm:SendCommand",
            "Resource": self.in_each_region(|g| format!("arn:aws:ec2:{g}:*:instance/*")),
            "Condition": {"StringEquals": {"ssm:resourceTag/bake:recipe": self.recipes()}}
        })
    }

    /// Each recipe's audit document (`bake audit-document`) in each region.
    fn audit_document_arns(&self) -> Vec<String> {
        let recipes = self.recipes();
        self.regions
            .iter()
            .flat_map(|g| {
                recipes.iter().map(move |r| {
                    format!(
                        "arn:aws:ssm:{g}:*:document/{}",
                        crate::guest::audit::document_name(&self.owner, r)
                    )
                })
            })
            .collect()
    }

    fn audit_documents(&self) -> Value {
        json!({
            "Sid": "TheAuditDocuments",
            "Effect": "Allow",
            "Action": ["ssm:SendCommand", "ssm:DescribeDocument"],
            "Resource": self.audit_document_arns()
        })
    }

    /// What `bake audit` alone needs: the reads that find the nodes and their releases, and
    /// SendCommand of the audit documents to the pipeline's nodes — nothing else, so an
    /// identity with only this cannot run a script on a node (see [`audit_policy`]).
    fn audit_only(&self) -> Vec<Value> {
        let prefix = &self.prefix;
        vec![
            json!({
                "Sid": "FindTheNodesAndAskTheirAgents",
                "Effect": "Allow",
                "Action": [
                    "ec2:DescribeInstances", "ec2:DescribeImages",
                    "ssm:DescribeInstanceInformation", "ssm:GetCommandInvocation"
                ],
                "Resource": "*"
            }),
            self.audit_nodes(),
            self.audit_documents(),
            json!({
                "Sid": "ReadTheRegistry",
                "Effect": "Allow",
                "Action": ["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"],
                "Resource": [
                    format!("arn:aws:ssm:{}:*:parameter{prefix}", self.region),
                    format!("arn:aws:ssm:{}:*:parameter{prefix}/*", self.region)
                ]
            }),
        ]
    }

    /// DescribeCluster: the canary cluster's join data, and the Kubernetes version of each
    /// cluster that names its EKS cluster but not its version (promotion checks the skew).
    fn clusters(&self) -> Vec<Value> {
        let mut described: BTreeSet<String> = self
            .pipeline
            .clusters
            .values()
            .filter(|c| c.kubernetes_version.is_none())
            .filter_map(|c| c.eks_cluster.clone())
            .collect();
        if let Some(eks) = self.pipeline.canary_eks_cluster() {
            described.insert(eks);
        }
        if described.is_empty() {
            return Vec::new();
        }
        vec![json!({
            "Sid": "DescribeTheClusters",
            "Effect": "Allow",
            "Action": "eks:DescribeCluster",
            "Resource": described
                .iter()
                .map(|eks| format!("arn:aws:eks:{}:*:cluster/{eks}", self.region))
                .collect::<Vec<_>>()
        })]
    }

    /// The public parameters the recipes name their base images by.
    fn base_parameters(&self) -> Vec<Value> {
        let mut params: BTreeSet<String> = BTreeSet::new();
        for b in &self.pipeline.bakes {
            for arch in &b.arches {
                if let Some(AwsBaseRef::Parameter(p)) = b.recipe.aws.get(arch) {
                    params.insert(format!("arn:aws:ssm:{}::parameter{p}", self.region));
                }
            }
        }
        if params.is_empty() {
            return Vec::new();
        }
        vec![json!({
            "Sid": "ResolveBaseImages",
            "Effect": "Allow",
            "Action": "ssm:GetParameter",
            "Resource": params.into_iter().collect::<Vec<_>>()
        })]
    }

    /// bake's own security group, where the pipeline names none.
    fn security_groups(&self) -> Vec<Value> {
        if self.aws.security_group_id.is_some() {
            return Vec::new();
        }
        let ec2 = |r: &str| self.ec2(r);
        vec![
            json!({
                "Sid": "OwnSecurityGroupsWithoutInboundRules",
                "Effect": "Allow",
                "Action": "ec2:CreateSecurityGroup",
                "Resource": ec2("security-group/*"),
                "Condition": self.requested()
            }),
            json!({
                "Sid": "SecurityGroupsInAVpc",
                "Effect": "Allow",
                "Action": "ec2:CreateSecurityGroup",
                "Resource": ec2("vpc/*")
            }),
            json!({
                "Sid": "DeleteOwnSecurityGroups",
                "Effect": "Allow",
                "Action": "ec2:DeleteSecurityGroup",
                "Resource": ec2("security-group/*"),
                "Condition": self.owned()
            }),
        ]
    }

    /// Copies of the images in the copy regions, and their release parameters there.
    fn copies(&self) -> Vec<Value> {
        let (aws, region, prefix) = (self.aws, &self.region, &self.prefix);
        if aws.copy_regions.is_empty() {
            return Vec::new();
        }
        let copies: Vec<String> = aws
            .copy_regions
            .iter()
            .flat_map(|c| {
                [
                    format!("arn:aws:ec2:{c}::image/*"),
                    format!("arn:aws:ec2:{c}::snapshot/*"),
                ]
            })
            .collect();
        vec![
            json!({
                "Sid": "CopyIntoTheCopyRegionsTaggedAsOwn",
                "Effect": "Allow",
                "Action": "ec2:CopyImage",
                "Resource": copies,
                "Condition": self.requested()
            }),
            json!({
                "Sid": "CopyOnlyOwnImages",
                "Effect": "Allow",
                "Action": "ec2:CopyImage",
                "Resource": format!("arn:aws:ec2:{region}::image/*"),
                "Condition": self.owned()
            }),
            json!({
                "Sid": "ReleaseParametersInTheCopyRegions",
                "Effect": "Allow",
                "Action": ["ssm:GetParameter", "ssm:GetParametersByPath", "ssm:PutParameter", "ssm:DeleteParameters"],
                "Resource": aws.copy_regions.iter().map(|c| format!("arn:aws:ssm:{c}:*:parameter{prefix}/*")).collect::<Vec<_>>()
            }),
        ]
    }

    /// Sharing with the listed accounts, and the KMS key images are encrypted with.
    fn sharing_and_keys(&self) -> Vec<Value> {
        let mut out = Vec::new();
        if !self.aws.share_accounts.is_empty() {
            // IAM cannot see which accounts a ModifyImageAttribute adds; bake adds exactly
            // `share_accounts` and never `all` (turn on EC2's block public access for AMIs as well).
            out.push(json!({
                "Sid": "ShareOwnImagesWithTheListedAccounts",
                "Effect": "Allow",
                "Action": "ec2:ModifyImageAttribute",
                "Resource": self.amis("image/*"),
                "Condition": self.owned()
            }));
        }
        if self.aws.kms_key_id.is_some() {
            out.push(json!({
                "Sid": "UseTheImageKeyThroughEc2",
                "Effect": "Allow",
                "Action": ["kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncryptFrom", "kms:ReEncryptTo"],
                "Resource": "*",
                "Condition": {"StringLike": {"kms:ViaService": "ec2.*.amazonaws.com"}}
            }));
        }
        out
    }

    /// Before a run creates anything, plan reads what the canary needs to join its cluster:
    /// the instance profile, its role's policies, the role's access entry, the cluster's
    /// security group (DescribeSecurityGroups is in Discover), and bake's own access entry
    /// (its access policies must let it read the canary's node: node-ready asks the cluster's
    /// API).
    fn canary_account(&self) -> Vec<Value> {
        let Some(eks) = self.pipeline.canary_eks_cluster() else {
            return Vec::new();
        };
        let region = &self.region;
        let mut account = vec![
            json!({
                "Sid": "ReadTheCanaryClustersAccessEntries",
                "Effect": "Allow",
                "Action": ["eks:DescribeAccessEntry", "eks:ListAssociatedAccessPolicies"],
                "Resource": format!("arn:aws:eks:{region}:*:access-entry/{eks}/*")
            }),
            json!({
                "Sid": "ListTheCanaryClustersAccessEntries",
                "Effect": "Allow",
                "Action": "eks:ListAccessEntries",
                "Resource": format!("arn:aws:eks:{region}:*:cluster/{eks}")
            }),
        ];
        if let Some(role) = self.pipeline.instance_role() {
            account.push(json!({
                "Sid": "ReadTheNodeRolesPolicies",
                "Effect": "Allow",
                "Action": "iam:ListAttachedRolePolicies",
                "Resource": format!("arn:aws:iam::*:role/{role}")
            }));
        }
        account
    }

    /// The instance profile is read before a canary joins its cluster (plan checks its role) and
    /// by CreateInfrastructureConfiguration with the `imagebuilder` engine (Service
    /// Authorization Reference: it requires iam:GetInstanceProfile).
    fn instance_profile(&self) -> Vec<Value> {
        let Some(profile) = &self.aws.instance_profile else {
            return Vec::new();
        };
        if self.pipeline.canary_eks_cluster().is_none() && !self.uses_image_builder() {
            return Vec::new();
        }
        vec![json!({
            "Sid": "ReadTheInstanceProfile",
            "Effect": "Allow",
            "Action": "iam:GetInstanceProfile",
            "Resource": format!("arn:aws:iam::*:instance-profile/{profile}")
        })]
    }

    /// The instance role, passed only to EC2 (and Image Builder, with that engine).
    fn pass_role(&self) -> Vec<Value> {
        let Some(role) = self.pipeline.instance_role() else {
            return Vec::new();
        };
        let services = if self.uses_image_builder() {
            json!(["ec2.amazonaws.com", "imagebuilder.amazonaws.com"])
        } else {
            json!("ec2.amazonaws.com")
        };
        vec![json!({
            "Sid": "PassOnlyTheInstanceRoleToEc2",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": format!("arn:aws:iam::*:role/{role}"),
            "Condition": {"StringEquals": {"iam:PassedToService": services}}
        })]
    }
}

/// Every action a policy allows (for checking it covers what bake calls).
pub fn actions(policy: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in policy["Statement"].as_array().into_iter().flatten() {
        match &s["Action"] {
            Value::String(a) => {
                out.insert(a.clone());
            }
            Value::Array(list) => {
                out.extend(list.iter().filter_map(|a| a.as_str().map(str::to_string)))
            }
            _ => {}
        }
    }
    out
}
