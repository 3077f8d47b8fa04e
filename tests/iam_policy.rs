//! The IAM policy for pipelines/aws.toml, as a snapshot: a change to what bake may do on AWS
//! shows up in review. Variants with copies, sharing and the imagebuilder engine allow what those
//! call, and nothing is granted on every resource unless it only reads.

mod common;

use common::Project;

/// Only read-only calls may be granted on `*` without a condition.
fn no_unconditioned_writes(policy: &serde_json::Value) {
    for s in policy["Statement"].as_array().unwrap() {
        if s["Resource"] == "*" && s.get("Condition").is_none() {
            let actions = bake::iam::actions(&serde_json::json!({"Statement": [s]}));
            assert!(
                actions
                    .iter()
                    .all(|a| a.contains(":Describe") || a.contains(":Get")),
                "unconditioned * for {actions:?}"
            );
        }
    }
}

#[test]
fn iam_policy_for_the_aws_pipeline() {
    let pipeline =
        bake::pipeline::Pipeline::load(&common::repo().join("pipelines/aws.toml")).unwrap();
    let policy = bake::iam::policy(&pipeline).unwrap();
    insta::assert_json_snapshot!(policy);
    no_unconditioned_writes(&policy);
    assert!(!bake::iam::actions(&policy)
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
    let pipeline = bake::pipeline::Pipeline::load(&p.path("pipelines/aws.toml")).unwrap();
    let policy = bake::iam::policy(&pipeline).unwrap();
    no_unconditioned_writes(&policy);
    let allowed = bake::iam::actions(&policy);
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
    ] {
        assert!(allowed.contains(&format!("imagebuilder:{a}")), "{a}");
    }
    let text = policy.to_string();
    assert!(text.contains("component/bake-*") && text.contains("imagebuilder.amazonaws.com"));
}

#[test]
fn a_local_pipeline_needs_no_policy() {
    let pipeline =
        bake::pipeline::Pipeline::load(&common::repo().join("pipelines/local.toml")).unwrap();
    assert!(bake::iam::policy(&pipeline).is_err());
}
