//! `bake iam-policy`: the least-privilege IAM policy for what a pipeline does on AWS, scoped
//! by the `bake:*` tags and the registry's parameter path where AWS allows conditions.

use crate::input::names::AwsBaseRef;
use crate::input::pipeline::Pipeline;
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
    let aws = pipeline.settings.aws().ok_or_else(|| {
        Error::Usage(format!(
            "{} does not use the aws provider; it needs no IAM policy",
            pipeline.file.display()
        ))
    })?;
    let region = aws.region.clone().unwrap_or_else(|| "*".into());
    let prefix = aws.ssm_prefix.as_str().trim_end_matches('/');
    let owner = aws.ssm_prefix.as_str();
    let ec2 = |r: &str| format!("arn:aws:ec2:{region}:*:{r}");
    // Images and snapshots live in the home region and every copy region.
    let regions: Vec<String> = std::iter::once(region.clone())
        .chain(aws.copy_regions.iter().cloned())
        .collect();
    let amis = |r: &str| -> Vec<String> {
        regions
            .iter()
            .map(|g| format!("arn:aws:ec2:{g}::{r}"))
            .collect()
    };
    let images_and_snapshots: Vec<String> = amis("image/*")
        .into_iter()
        .chain(amis("snapshot/*"))
        .collect();
    let requested = json!({"StringEquals": {"aws:RequestTag/bake:prefix": owner}});
    let owned = json!({"StringEquals": {"aws:ResourceTag/bake:prefix": owner}});
    let mut base_params: BTreeSet<String> = BTreeSet::new();
    for b in &pipeline.bakes {
        for arch in &b.arches {
            if let Some(AwsBaseRef::Parameter(p)) = b.recipe.aws.get(arch) {
                base_params.insert(format!("arn:aws:ssm:{region}::parameter{p}"));
            }
        }
    }
    let mut create_actions = vec!["RunInstances", "CreateImage", "CreateVolume"];
    if aws.security_group_id.is_none() {
        create_actions.push("CreateSecurityGroup");
    }
    if !aws.copy_regions.is_empty() {
        create_actions.push("CopyImage");
    }
    let tag_on_create: Vec<String> = [ec2("instance/*"), ec2("volume/*"), ec2("security-group/*")]
        .into_iter()
        .chain(images_and_snapshots.clone())
        .collect();
    let mut statements = vec![
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
            "Resource": amis("image/*"),
            "Condition": owned
        }),
        json!({
            "Sid": "RunShellScriptOnOwnInstancesOnly",
            "Effect": "Allow",
            "Action": "ssm:SendCommand",
            "Resource": ec2("instance/*"),
            "Condition": {"StringEquals": {"ssm:resourceTag/bake:prefix": owner}}
        }),
        // `bake audit`: the eks-node module's nodes of this pipeline's recipes (its
        // `bake:recipe` tag), and only the read-only checks bake sends them.
        json!({
            "Sid": "AuditThePipelinesNodes",
            "Effect": "Allow",
            "Action": "ssm:SendCommand",
            "Resource": ec2("instance/*"),
            "Condition": {"StringEquals": {"ssm:resourceTag/bake:recipe": pipeline.bakes.iter().map(|b| b.recipe.name.clone()).collect::<Vec<_>>()}}
        }),
        json!({
            "Sid": "TheRunShellScriptDocument",
            "Effect": "Allow",
            "Action": "ssm:SendCommand",
            "Resource": format!("arn:aws:ssm:{region}::document/AWS-RunShellScript")
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
    ];
    // DescribeCluster: the canary cluster's join data, and the Kubernetes version of each
    // cluster that names its EKS cluster but not its version (promotion checks the skew).
    let mut described: BTreeSet<String> = pipeline
        .clusters
        .values()
        .filter(|c| c.kubernetes_version.is_none())
        .filter_map(|c| c.eks_cluster.clone())
        .collect();
    if let Some(eks) = pipeline.canary_eks_cluster() {
        described.insert(eks);
    }
    if !described.is_empty() {
        statements.push(json!({
            "Sid": "DescribeTheClusters",
            "Effect": "Allow",
            "Action": "eks:DescribeCluster",
            "Resource": described
                .iter()
                .map(|eks| format!("arn:aws:eks:{region}:*:cluster/{eks}"))
                .collect::<Vec<_>>()
        }));
    }
    if !base_params.is_empty() {
        statements.push(json!({
            "Sid": "ResolveBaseImages",
            "Effect": "Allow",
            "Action": "ssm:GetParameter",
            "Resource": base_params.into_iter().collect::<Vec<_>>()
        }));
    }
    if aws.security_group_id.is_none() {
        statements.push(json!({
            "Sid": "OwnSecurityGroupsWithoutInboundRules",
            "Effect": "Allow",
            "Action": "ec2:CreateSecurityGroup",
            "Resource": ec2("security-group/*"),
            "Condition": requested
        }));
        statements.push(json!({
            "Sid": "SecurityGroupsInAVpc",
            "Effect": "Allow",
            "Action": "ec2:CreateSecurityGroup",
            "Resource": ec2("vpc/*")
        }));
        statements.push(json!({
            "Sid": "DeleteOwnSecurityGroups",
            "Effect": "Allow",
            "Action": "ec2:DeleteSecurityGroup",
            "Resource": ec2("security-group/*"),
            "Condition": owned
        }));
    }
    if !aws.copy_regions.is_empty() {
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
        statements.push(json!({
            "Sid": "CopyIntoTheCopyRegionsTaggedAsOwn",
            "Effect": "Allow",
            "Action": "ec2:CopyImage",
            "Resource": copies,
            "Condition": requested
        }));
        statements.push(json!({
            "Sid": "CopyOnlyOwnImages",
            "Effect": "Allow",
            "Action": "ec2:CopyImage",
            "Resource": format!("arn:aws:ec2:{region}::image/*"),
            "Condition": owned
        }));
        statements.push(json!({
            "Sid": "ReleaseParametersInTheCopyRegions",
            "Effect": "Allow",
            "Action": ["ssm:GetParameter", "ssm:GetParametersByPath", "ssm:PutParameter", "ssm:DeleteParameters"],
            "Resource": aws.copy_regions.iter().map(|c| format!("arn:aws:ssm:{c}:*:parameter{prefix}/*")).collect::<Vec<_>>()
        }));
    }
    if !aws.share_accounts.is_empty() {
        // IAM cannot see which accounts a ModifyImageAttribute adds; bake adds exactly
        // `share_accounts` and never `all` (turn on EC2's block public access for AMIs as well).
        statements.push(json!({
            "Sid": "ShareOwnImagesWithTheListedAccounts",
            "Effect": "Allow",
            "Action": "ec2:ModifyImageAttribute",
            "Resource": amis("image/*"),
            "Condition": owned
        }));
    }
    if aws.kms_key_id.is_some() {
        statements.push(json!({
            "Sid": "UseTheImageKeyThroughEc2",
            "Effect": "Allow",
            "Action": ["kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncryptFrom", "kms:ReEncryptTo"],
            "Resource": "*",
            "Condition": {"StringLike": {"kms:ViaService": "ec2.*.amazonaws.com"}}
        }));
    }
    let imagebuilder = aws.engine == crate::input::pipeline::Engine::Imagebuilder;
    if imagebuilder {
        let ib = |r: &str| format!("arn:aws:imagebuilder:{region}:*:{r}");
        statements.push(json!({
            "Sid": "FindImageBuilderResources",
            "Effect": "Allow",
            "Action": [
                "imagebuilder:ListComponents", "imagebuilder:ListImageRecipes",
                "imagebuilder:ListInfrastructureConfigurations", "imagebuilder:ListDistributionConfigurations",
                "imagebuilder:GetImage"
            ],
            "Resource": ib("*")
        }));
        statements.push(json!({
            "Sid": "CreateAndRunOwnImageBuilderResources",
            "Effect": "Allow",
            "Action": [
                "imagebuilder:CreateComponent", "imagebuilder:CreateImageRecipe",
                "imagebuilder:CreateInfrastructureConfiguration", "imagebuilder:CreateDistributionConfiguration",
                "imagebuilder:CreateImage", "imagebuilder:CancelImageCreation", "imagebuilder:DeleteImage",
                "imagebuilder:TagResource", "imagebuilder:GetComponent", "imagebuilder:GetImageRecipe",
                "imagebuilder:GetInfrastructureConfiguration", "imagebuilder:GetDistributionConfiguration"
            ],
            "Resource": [
                ib("component/bake-*"), ib("image-recipe/bake-*"), ib("infrastructure-configuration/bake-*"),
                ib("distribution-configuration/bake-*"), ib("image/bake-*")
            ]
        }));
        // Image Builder tags the AMI it distributes (with bake:prefix) but not its snapshots:
        // bake claims them, and only snapshots that no pipeline owns yet.
        statements.push(json!({
            "Sid": "ClaimTheSnapshotsOfImageBuilderOutputs",
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": format!("arn:aws:ec2:{region}::snapshot/*"),
            "Condition": {
                "StringEquals": {"aws:RequestTag/bake:prefix": owner},
                "Null": {"aws:ResourceTag/bake:prefix": "true"}
            }
        }));
    }
    // Before a run creates anything, plan reads what the canary needs to join its cluster:
    // the instance profile, its role's policies, the role's access entry, the cluster's
    // security group (DescribeSecurityGroups is in Discover), and bake's own access entry.
    if let Some(eks) = pipeline.canary_eks_cluster() {
        // The node role's entry, and bake's own: its access policies must let it read the
        // canary's node (node-ready asks the cluster's API).
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
        if let Some(profile) = &aws.instance_profile {
            account.push(json!({
                "Sid": "ReadTheCanarysInstanceProfile",
                "Effect": "Allow",
                "Action": "iam:GetInstanceProfile",
                "Resource": format!("arn:aws:iam::*:instance-profile/{profile}")
            }));
        }
        if let Some(role) = pipeline.instance_role() {
            account.push(json!({
                "Sid": "ReadTheNodeRolesPolicies",
                "Effect": "Allow",
                "Action": "iam:ListAttachedRolePolicies",
                "Resource": format!("arn:aws:iam::*:role/{role}")
            }));
        }
        statements.extend(account);
    }
    if let Some(role) = pipeline.instance_role() {
        let services = if imagebuilder {
            json!(["ec2.amazonaws.com", "imagebuilder.amazonaws.com"])
        } else {
            json!("ec2.amazonaws.com")
        };
        statements.push(json!({
            "Sid": "PassOnlyTheInstanceRoleToEc2",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": format!("arn:aws:iam::*:role/{role}"),
            "Condition": {"StringEquals": {"iam:PassedToService": services}}
        }));
    }
    Ok(json!({"Version": "2012-10-17", "Statement": statements}))
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
