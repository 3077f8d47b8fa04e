//! The statements the `imagebuilder` engine adds: its resources named `bake-*`, the workflow
//! reads progress makes, and the claims bake makes on what Image Builder leaves untagged.

use super::Scope;
use serde_json::{json, Value};

impl Scope<'_> {
    pub(super) fn uses_image_builder(&self) -> bool {
        self.aws.engine == crate::input::pipeline::Engine::Imagebuilder
    }

    /// With `engine = "imagebuilder"`: its resources named `bake-*`, and the snapshots of its
    /// outputs.
    pub(super) fn image_builder(&self) -> Vec<Value> {
        if !self.uses_image_builder() {
            return Vec::new();
        }
        let (region, owner) = (&self.region, &self.owner);
        let ib = |r: &str| format!("arn:aws:imagebuilder:{region}:*:{r}");
        vec![
            json!({
                // The List calls take no resource (Service Authorization Reference): they are
                // granted on `*` or not at all, and show names and ARNs, nothing inside.
                "Sid": "FindImageBuilderResources",
                "Effect": "Allow",
                "Action": [
                    "imagebuilder:ListComponents", "imagebuilder:ListImageRecipes",
                    "imagebuilder:ListInfrastructureConfigurations", "imagebuilder:ListDistributionConfigurations",
                    "imagebuilder:ListImages"
                ],
                "Resource": "*"
            }),
            json!({
                "Sid": "CreateAndRunOwnImageBuilderResources",
                "Effect": "Allow",
                "Action": [
                    "imagebuilder:CreateComponent", "imagebuilder:CreateImageRecipe",
                    "imagebuilder:CreateInfrastructureConfiguration", "imagebuilder:CreateDistributionConfiguration",
                    "imagebuilder:CreateImage", "imagebuilder:GetImage", "imagebuilder:CancelImageCreation",
                    "imagebuilder:DeleteImage", "imagebuilder:ListWorkflowExecutions",
                    "imagebuilder:ListImageBuildVersions",
                    "imagebuilder:TagResource", "imagebuilder:GetComponent", "imagebuilder:GetImageRecipe",
                    "imagebuilder:GetInfrastructureConfiguration", "imagebuilder:GetDistributionConfiguration"
                ],
                "Resource": [
                    ib("component/bake-*"), ib("image-recipe/bake-*"), ib("infrastructure-configuration/bake-*"),
                    ib("distribution-configuration/bake-*"), ib("image/bake-*")
                ]
            }),
            // Progress names the workflow step a build is in; its executions' IDs are Image
            // Builder's, not known beforehand (read-only).
            json!({
                "Sid": "FollowImageBuilderWorkflows",
                "Effect": "Allow",
                "Action": "imagebuilder:ListWorkflowStepExecutions",
                "Resource": ib("workflow-execution/*")
            }),
            // An AMI a build made and never distributed (its test phase failed, or it was
            // cancelled) carries only Image Builder's own tags: bake claims it to deregister it,
            // and only the outputs of bake's image recipes that no pipeline owns yet.
            json!({
                "Sid": "ClaimTheAmisOfFailedImageBuilderBuilds",
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": format!("arn:aws:ec2:{region}::image/*"),
                "Condition": {
                    "StringEquals": {"aws:RequestTag/bake:prefix": owner},
                    "StringLike": {"aws:ResourceTag/Ec2ImageBuilderArn": ib("image/bake-*")},
                    "Null": {"aws:ResourceTag/bake:prefix": "true"},
                    "ForAllValues:StringEquals": {"aws:TagKeys": ["bake:prefix"]}
                }
            }),
            // Image Builder tags the AMI it distributes (with bake:prefix) but not its snapshots:
            // bake claims them, and only snapshots that no pipeline owns yet.
            json!({
                "Sid": "ClaimTheSnapshotsOfImageBuilderOutputs",
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": format!("arn:aws:ec2:{region}::snapshot/*"),
                "Condition": {
                    "StringEquals": {"aws:RequestTag/bake:prefix": owner},
                    "Null": {"aws:ResourceTag/bake:prefix": "true"}
                }
            }),
        ]
    }
}
