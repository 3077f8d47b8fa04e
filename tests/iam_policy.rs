//! The IAM policy for pipelines/aws.toml, as a snapshot: a change to what bake may do on AWS
//! shows up in review. Variants with copies, sharing and the imagebuilder engine allow what those
//! call, and nothing is granted on every resource unless it only reads.

use crate::common;

use common::Project;

/// Only read-only calls may be granted on `*` without a condition.
/// Only reads (Describe, Get, List: what the Service Authorization Reference files as Read or
/// List) may be granted on `*` without a condition.
fn no_unconditioned_writes(policy: &serde_json::Value) {
    for s in policy["Statement"].as_array().unwrap() {
        if s["Resource"] == "*" && s.get("Condition").is_none() {
            let actions = bake::ops::iam::actions(&serde_json::json!({"Statement": [s]}));
            assert!(
                actions
                    .iter()
                    .all(|a| a.contains(":Describe") || a.contains(":Get") || a.contains(":List")),
                "unconditioned * for {actions:?}"
            );
        }
    }
}

#[test]
fn iam_policy_for_the_aws_pipeline() {
    let pipeline =
        bake::input::pipeline::Pipeline::load(&common::repo().join("pipelines/aws.toml")).unwrap();
    let policy = bake::ops::iam::policy(&pipeline).unwrap();
    insta::assert_json_snapshot!(policy);
    no_unconditioned_writes(&policy);
    assert!(!bake::ops::iam::actions(&policy)
        .iter()
        .any(|a| a.starts_with("imagebuilder:")));
}

#[test]
fn the_imagebuilder_engine_may_call_image_builder_on_its_own_resources_only() {
    let p = Project::new();
    p.edit(
        "pipelines/aws.toml",
        "engine = \"ec2\"",
        "engine = \"imagebuilder\"\nsubnet_id = \"subnet-0abc\"\nsecurity_group_id = \"sg-0abc\"",
    );
    let pipeline = bake::input::pipeline::Pipeline::load(&p.path("pipelines/aws.toml")).unwrap();
    let policy = bake::ops::iam::policy(&pipeline).unwrap();
    no_unconditioned_writes(&policy);
    let allowed = bake::ops::iam::actions(&policy);
    // Every Image Builder call the engine makes (see provider/aws/imagebuilder.rs).
    for a in [
        "ListComponents",
        "CreateComponent",
        "ListImageRecipes",
        "CreateImageRecipe",
        "ListInfrastructureConfigurations",
        "CreateInfrastructureConfiguration",
        "ListDistributionConfigurations",
        "CreateDistributionConfiguration",
        "CreateImage",
        "GetImage",
        "CancelImageCreation",
        "DeleteImage",
        "ListWorkflowExecutions",
        "ListWorkflowStepExecutions",
    ] {
        assert!(allowed.contains(&format!("imagebuilder:{a}")), "{a}");
    }
    let text = policy.to_string();
    assert!(text.contains("component/bake-*") && text.contains("imagebuilder.amazonaws.com"));
    // Evaluated: another team's Image Builder resources and any other role are denied; bake's
    // own (named bake-*) are allowed, so a denial is the policy's doing.
    let ib = |r: &str| format!("arn:aws:imagebuilder:us-east-1:123456789012:{r}");
    let req = |action: &str, resource: String, context: serde_json::Value| serde_json::json!({"action": action, "resource": resource, "context": context});
    let none = serde_json::json!({});
    let to_ib = serde_json::json!({"iam:PassedToService": "imagebuilder.amazonaws.com"});
    let denied = [
        req(
            "imagebuilder:CreateComponent",
            ib("component/team-b-hardening/1.0.0/1"),
            none.clone(),
        ),
        req(
            "imagebuilder:GetComponent",
            ib("component/team-b-hardening/1.0.0/1"),
            none.clone(),
        ),
        req(
            "imagebuilder:CreateImageRecipe",
            ib("image-recipe/team-b-node/1.0.0"),
            none.clone(),
        ),
        req(
            "imagebuilder:CreateImage",
            ib("image/team-b-node/1.0.0/1"),
            none.clone(),
        ),
        req(
            "imagebuilder:DeleteImage",
            ib("image/team-b-node/1.0.0/1"),
            none.clone(),
        ),
        req(
            "imagebuilder:CancelImageCreation",
            ib("image/team-b-node/1.0.0/1"),
            none.clone(),
        ),
        req(
            "iam:PassRole",
            "arn:aws:iam::123456789012:role/admin".into(),
            to_ib.clone(),
        ),
    ];
    let allowed = [
        req(
            "imagebuilder:CreateComponent",
            ib("component/bake-eks-node-x86-64-purge/1.0.0/1"),
            none.clone(),
        ),
        req(
            "imagebuilder:CreateImage",
            ib("image/bake-eks-node-x86-64/1.0.0/1"),
            none.clone(),
        ),
        req(
            "imagebuilder:DeleteImage",
            ib("image/bake-eks-node-x86-64/1.0.0/1"),
            none.clone(),
        ),
        req("imagebuilder:ListComponents", "*".into(), none.clone()),
        req(
            "iam:PassRole",
            "arn:aws:iam::123456789012:role/bake-builder".into(),
            to_ib,
        ),
    ];
    let verdicts = common::moto::simulate(&policy, &[], &[&denied[..], &allowed[..]].concat());
    for (v, r) in verdicts.iter().zip(denied.iter()) {
        assert_ne!(v["result"], "Allowed", "{r}");
    }
    for (v, r) in verdicts[denied.len()..].iter().zip(allowed.iter()) {
        assert_eq!(v["result"], "Allowed", "{r}");
    }
}

#[test]
fn a_local_pipeline_needs_no_policy() {
    let pipeline =
        bake::input::pipeline::Pipeline::load(&common::repo().join("pipelines/local.toml"))
            .unwrap();
    assert!(bake::ops::iam::policy(&pipeline).is_err());
}

/// Requests bake must never be able to make, evaluated against the printed policy by a real IAM
/// evaluator (tests/iam/simulate.mjs): each must be denied. The same requests with bake's own
/// tags are allowed, so a denial is the policy's doing and not a broken request.
#[test]
fn what_bake_must_never_do_is_denied_by_the_printed_policy() {
    use serde_json::json;
    let pipeline =
        bake::input::pipeline::Pipeline::load(&common::repo().join("pipelines/aws.toml")).unwrap();
    let policy = bake::ops::iam::policy(&pipeline).unwrap();
    let ec2 = |t: &str, id: &str| {
        if t == "image" || t == "snapshot" {
            format!("arn:aws:ec2:us-east-1::{t}/{id}")
        } else {
            format!("arn:aws:ec2:us-east-1:123456789012:{t}/{id}")
        }
    };
    let req = |action: &str, resource: String, context: serde_json::Value| json!({"action": action, "resource": resource, "context": context});
    let ours =
        json!({"aws:ResourceTag/bake:prefix": "/bake", "ssm:resourceTag/bake:prefix": "/bake"});
    let theirs =
        json!({"aws:ResourceTag/bake:prefix": "/team-b", "ssm:resourceTag/bake:prefix": "/team-b"});
    let untagged = json!({});
    let denied = [
        (
            "launch without bake's tags",
            req(
                "ec2:RunInstances",
                ec2("instance", "i-0000000000000new0"),
                untagged.clone(),
            ),
        ),
        (
            "launch tagged as another pipeline's",
            req(
                "ec2:RunInstances",
                ec2("instance", "i-0000000000000new0"),
                json!({"aws:RequestTag/bake:prefix": "/team-b", "aws:TagKeys": ["bake:prefix"]}),
            ),
        ),
        (
            "terminate an untagged instance",
            req(
                "ec2:TerminateInstances",
                ec2("instance", "i-0123456789abcdef0"),
                untagged.clone(),
            ),
        ),
        (
            "terminate another pipeline's instance",
            req(
                "ec2:TerminateInstances",
                ec2("instance", "i-0123456789abcdef0"),
                theirs.clone(),
            ),
        ),
        (
            "stop an untagged instance",
            req(
                "ec2:StopInstances",
                ec2("instance", "i-0123456789abcdef0"),
                untagged.clone(),
            ),
        ),
        (
            "deregister an untagged image",
            req(
                "ec2:DeregisterImage",
                ec2("image", "ami-0123456789abcdef0"),
                untagged.clone(),
            ),
        ),
        (
            "deregister another pipeline's image",
            req(
                "ec2:DeregisterImage",
                ec2("image", "ami-0123456789abcdef0"),
                theirs.clone(),
            ),
        ),
        (
            "deprecate another pipeline's image",
            req(
                "ec2:EnableImageDeprecation",
                ec2("image", "ami-0123456789abcdef0"),
                theirs.clone(),
            ),
        ),
        (
            "lift the deregistration protection of another pipeline's image",
            req(
                "ec2:DisableImageDeregistrationProtection",
                ec2("image", "ami-0123456789abcdef0"),
                theirs.clone(),
            ),
        ),
        (
            "deprecate an untagged image",
            req(
                "ec2:EnableImageDeprecation",
                ec2("image", "ami-0123456789abcdef0"),
                untagged.clone(),
            ),
        ),
        (
            "delete an untagged snapshot",
            req(
                "ec2:DeleteSnapshot",
                ec2("snapshot", "snap-0123456789abcdef0"),
                untagged.clone(),
            ),
        ),
        (
            "claim an untagged image by tagging it",
            req(
                "ec2:CreateTags",
                ec2("image", "ami-0123456789abcdef0"),
                json!({"aws:RequestTag/bake:prefix": "/bake", "aws:TagKeys": ["bake:prefix"]}),
            ),
        ),
        (
            "hand its own image to another pipeline",
            req(
                "ec2:CreateTags",
                ec2("image", "ami-0123456789abcdef0"),
                json!({"aws:ResourceTag/bake:prefix": "/bake", "aws:RequestTag/bake:prefix": "/team-b", "aws:TagKeys": ["bake:prefix"]}),
            ),
        ),
        (
            "run a command on an untagged instance",
            req(
                "ssm:SendCommand",
                ec2("instance", "i-0123456789abcdef0"),
                untagged.clone(),
            ),
        ),
        (
            "run a command on another pipeline's instance",
            req(
                "ssm:SendCommand",
                ec2("instance", "i-0123456789abcdef0"),
                theirs.clone(),
            ),
        ),
        (
            "run a command on a node of a recipe this pipeline does not bake",
            req(
                "ssm:SendCommand",
                ec2("instance", "i-0123456789abcdef0"),
                json!({"aws:ResourceTag/bake:recipe": "team-b-node", "ssm:resourceTag/bake:recipe": "team-b-node"}),
            ),
        ),
        (
            "run another document of the account (one that takes a script)",
            req(
                "ssm:SendCommand",
                "arn:aws:ssm:us-east-1:123456789012:document/ops-run-anything".into(),
                json!({}),
            ),
        ),
        (
            "run another pipeline's audit document",
            req(
                "ssm:SendCommand",
                "arn:aws:ssm:us-east-1:123456789012:document/bake-audit.team-b.eks-node".into(),
                json!({}),
            ),
        ),
        (
            "rewrite a document that is not its audit document",
            req(
                "ssm:UpdateDocument",
                "arn:aws:ssm:us-east-1:123456789012:document/ops-run-anything".into(),
                json!({}),
            ),
        ),
        (
            "delete an untagged security group",
            req(
                "ec2:DeleteSecurityGroup",
                ec2("security-group", "sg-0123456789abcdef0"),
                untagged.clone(),
            ),
        ),
        (
            "pass an administrator role",
            req(
                "iam:PassRole",
                "arn:aws:iam::123456789012:role/admin".into(),
                json!({"iam:PassedToService": "ec2.amazonaws.com"}),
            ),
        ),
        (
            "pass the instance role to another service",
            req(
                "iam:PassRole",
                "arn:aws:iam::123456789012:role/bake-builder".into(),
                json!({"iam:PassedToService": "lambda.amazonaws.com"}),
            ),
        ),
        (
            "write a parameter outside ssm_prefix",
            req(
                "ssm:PutParameter",
                "arn:aws:ssm:us-east-1:123456789012:parameter/team-b/eks-node/channels/prod/x86_64"
                    .into(),
                untagged.clone(),
            ),
        ),
        (
            "write a parameter beside ssm_prefix",
            req(
                "ssm:PutParameter",
                "arn:aws:ssm:us-east-1:123456789012:parameter/bakery/x".into(),
                untagged.clone(),
            ),
        ),
        (
            "make an image public (no shares configured)",
            req(
                "ec2:ModifyImageAttribute",
                ec2("image", "ami-0123456789abcdef0"),
                ours.clone(),
            ),
        ),
        (
            "copy an image (no copy regions configured)",
            req(
                "ec2:CopyImage",
                ec2("image", "ami-0123456789abcdef0"),
                ours.clone(),
            ),
        ),
        (
            "launch with a volume from another pipeline's snapshot",
            req(
                "ec2:RunInstances",
                ec2("snapshot", "snap-0123456789abcdef0"),
                theirs.clone(),
            ),
        ),
        (
            "launch with a volume from an untagged snapshot",
            req(
                "ec2:RunInstances",
                ec2("snapshot", "snap-0123456789abcdef0"),
                untagged.clone(),
            ),
        ),
        (
            "make a volume of another pipeline's snapshot",
            req(
                "ec2:CreateVolume",
                ec2("snapshot", "snap-0123456789abcdef0"),
                theirs.clone(),
            ),
        ),
        (
            "attach a volume to another pipeline's instance",
            req(
                "ec2:AttachVolume",
                ec2("instance", "i-0123456789abcdef0"),
                theirs.clone(),
            ),
        ),
        (
            "delete a volume that is not its own",
            req(
                "ec2:DeleteVolume",
                ec2("volume", "vol-0123456789abcdef0"),
                untagged.clone(),
            ),
        ),
        (
            "read the access entries of a cluster the canary does not join",
            req(
                "eks:DescribeAccessEntry",
                "arn:aws:eks:us-east-1:123456789012:access-entry/prod/role/123456789012/bake-builder/00000000-0000-0000-0000-000000000000".into(),
                untagged.clone(),
            ),
        ),
        (
            "describe a cluster the pipeline does not name",
            req(
                "eks:DescribeCluster",
                "arn:aws:eks:us-east-1:123456789012:cluster/payments".into(),
                untagged.clone(),
            ),
        ),
    ];
    let allowed = [
        ("tag its own image with a verdict", req("ec2:CreateTags", ec2("image", "ami-0123456789abcdef0"), json!({"aws:ResourceTag/bake:prefix": "/bake", "aws:RequestTag/bake:status": "validated", "aws:TagKeys": ["bake:status"]}))),
        ("make the canary's copy of its own image", req("ec2:CreateVolume", ec2("snapshot", "snap-0123456789abcdef0"), ours.clone())),
        ("read the node role's access entry in the canary's cluster", req("eks:DescribeAccessEntry", "arn:aws:eks:us-east-1:123456789012:access-entry/dev/role/123456789012/bake-builder/00000000-0000-0000-0000-000000000000".into(), untagged.clone())),
        ("terminate its own instance", req("ec2:TerminateInstances", ec2("instance", "i-0123456789abcdef0"), ours.clone())),
        ("pass the instance role to EC2", req("iam:PassRole", "arn:aws:iam::123456789012:role/bake-builder".into(), json!({"iam:PassedToService": "ec2.amazonaws.com"}))),
        ("read prod's Kubernetes version (promotion's skew check)", req("eks:DescribeCluster", "arn:aws:eks:us-east-1:123456789012:cluster/prod".into(), untagged.clone())),
        ("write a release parameter", req("ssm:PutParameter", "arn:aws:ssm:us-east-1:123456789012:parameter/bake/eks-node/releases/2026.12.01-1/x86_64".into(), untagged.clone())),
    ];
    let requests: Vec<serde_json::Value> = denied
        .iter()
        .chain(allowed.iter())
        .map(|(_, r)| r.clone())
        .collect();
    let verdicts = common::moto::simulate(&policy, &[], &requests);
    assert_eq!(verdicts.len(), requests.len());
    for ((what, _), v) in denied.iter().zip(&verdicts) {
        assert!(
            v["result"] == "ImplicitlyDenied" || v["result"] == "ExplicitlyDenied",
            "{what}: {v}"
        );
    }
    for ((what, _), v) in allowed.iter().zip(&verdicts[denied.len()..]) {
        assert_eq!(v["result"], "Allowed", "{what}: {v}");
    }
    eprintln!(
        "IAM: {} forbidden requests denied, {} of bake's allowed",
        denied.len(),
        allowed.len()
    );
}
