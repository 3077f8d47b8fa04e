//! The IAM policy for pipelines/aws.toml, as a snapshot: a change to what bake may do on AWS
//! shows up in review.

mod common;

#[test]
fn iam_policy_for_the_aws_pipeline() {
    let pipeline =
        bake::pipeline::Pipeline::load(&common::repo().join("pipelines/aws.toml")).unwrap();
    let policy = bake::iam::policy(&pipeline).unwrap();
    insta::assert_json_snapshot!(policy);
    // Nothing is granted on every resource without a reason: only read-only calls are `*`.
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
fn a_local_pipeline_needs_no_policy() {
    let pipeline =
        bake::pipeline::Pipeline::load(&common::repo().join("pipelines/local.toml")).unwrap();
    assert!(bake::iam::policy(&pipeline).is_err());
}
