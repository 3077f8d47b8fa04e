//! The `imagebuilder` engine. The AWSTOE documents compiled from the recipe are parsed back and
//! snapshot-tested; Image Builder itself (which moto 5.2.5 does not have) answers through
//! `aws-smithy-mocks` — the state sequence PENDING → BUILDING → TESTING → DISTRIBUTING →
//! AVAILABLE, a FAILED build with its reason, and reuse of existing resources — while the canary
//! and publish half runs against moto_server with the AMI the mocked build reports registered
//! there.

use crate::common;

use aws_sdk_imagebuilder::operation::{
    create_component::CreateComponentOutput,
    create_distribution_configuration::CreateDistributionConfigurationOutput,
    create_image::CreateImageOutput, create_image_recipe::CreateImageRecipeOutput,
    create_infrastructure_configuration::CreateInfrastructureConfigurationOutput,
    delete_image::DeleteImageOutput, get_image::GetImageOutput,
    list_components::ListComponentsOutput,
    list_distribution_configurations::ListDistributionConfigurationsOutput,
    list_image_recipes::ListImageRecipesOutput,
    list_infrastructure_configurations::ListInfrastructureConfigurationsOutput,
};
use aws_sdk_imagebuilder::operation::{
    list_workflow_executions::ListWorkflowExecutionsOutput,
    list_workflow_step_executions::ListWorkflowStepExecutionsOutput,
};
use aws_sdk_imagebuilder::types::{
    Ami, ComponentVersion, DistributionConfigurationSummary, Image, ImageRecipeSummary, ImageState,
    ImageStatus, InfrastructureConfigurationSummary, OutputResources,
};
use aws_sdk_imagebuilder::types::{
    WorkflowExecutionMetadata, WorkflowExecutionStatus, WorkflowStepExecutionStatus,
    WorkflowStepMetadata, WorkflowType,
};
use aws_smithy_mocks::{mock, MockResponseInterceptor, Rule, RuleMode};
use bake::key::BakeKey;
use bake::provider::aws::imagebuilder::{self, Resources};
use bake::provider::aws::toe::{self, Document};
use bake::report::Reporter;
use bake::Arch;
use common::moto::{register_x86, Moto, UBUNTU_X86};
use common::Project;
use serde_json::json;
use std::sync::Mutex;

fn recipe() -> bake::input::recipe::Recipe {
    let pipeline =
        bake::input::pipeline::Pipeline::load(&common::repo().join("pipelines/aws.toml")).unwrap();
    pipeline.bake("eks-node").unwrap().recipe.clone()
}

#[test]
fn the_awstoe_documents_parse_back_with_one_build_component_per_step_and_a_test_component() {
    let r = recipe();
    let components = toe::components(&r, 1800);
    let docs: Vec<Document> = components
        .iter()
        .map(|c| {
            serde_norway::from_str(&c.data)
                .unwrap_or_else(|e| panic!("{}: {e}\n{}", c.name, c.data))
        })
        .collect();
    // files, each step, then each validator a test instance can judge: in the recipe's order.
    let judged: Vec<_> = r
        .validators
        .iter()
        .filter(|v| !v.needs_cluster && !v.reads_image)
        .collect();
    assert_eq!(components.len(), 1 + r.steps.len() + judged.len());
    assert_eq!(
        toe::too_long(&components),
        None,
        "each document within 16,000 characters"
    );
    assert_eq!(components[0].phase, "build");
    assert_eq!(docs[0].phases[0].steps.len(), r.files.len());
    for (step, (c, d)) in r.steps.iter().zip(components[1..].iter().zip(&docs[1..])) {
        assert_eq!(c.phase, "build");
        assert_eq!(d.schema_version, "1.0");
        assert_eq!(d.phases.len(), 1);
        assert_eq!(d.phases[0].name, "build");
        let s = &d.phases[0].steps[0];
        assert_eq!(s.name, step.name.replace('-', "_"));
        assert_eq!(s.action, "ExecuteBash");
        assert_eq!(s.on_failure, "Abort");
        assert!(
            s.inputs.commands[0].contains("base64 -d"),
            "{}",
            s.inputs.commands[0]
        );
        assert!(c.name.starts_with(&format!("bake-eks-node-{}-", step.name)));
    }
    let tests = &docs[1 + r.steps.len()..];
    assert!(tests.iter().all(|d| d.phases.len() == 1
        && d.phases[0].name == "test"
        && d.phases[0].steps.len() == 1));
    let names: Vec<&str> = tests
        .iter()
        .map(|d| d.phases[0].steps[0].name.as_str())
        .collect();
    let expected: Vec<String> = r
        .validators
        .iter()
        .filter(|v| !v.needs_cluster && !v.reads_image)
        .map(|v| format!("validate_{}", v.name.replace('-', "_")))
        .collect();
    assert_eq!(
        names, expected,
        "every validator but those of the cluster and of the image as shipped"
    );
    for absent in ["node_ready", "machine_id", "host_keys", "leftovers"] {
        assert!(!names.iter().any(|n| n.contains(absent)), "{absent}");
    }
    assert!(names.contains(&"validate_pod_network"));
    assert!(tests
        .iter()
        .all(|d| d.phases[0].steps[0].on_failure == "Abort"));
    // The documents themselves, for review when they change.
    let all: Vec<String> = components
        .iter()
        .map(|c| {
            format!(
                "# component {} {} ({})\n{}",
                c.name, c.version, c.phase, c.data
            )
        })
        .collect();
    insta::assert_snapshot!("awstoe_documents", all.join("---\n"));
    // Content-addressed: the same recipe gives the same names; a changed script a new one.
    assert_eq!(toe::components(&r, 1800), components);
    let mut changed = r.clone();
    changed.steps[0]
        .content
        .extend_from_slice(b"\necho changed\n");
    let again = toe::components(&changed, 1800);
    assert_ne!(again[1].name, components[1].name);
    assert_eq!(again[2].name, components[2].name);
}

fn settings() -> bake::input::pipeline::AwsSettings {
    let mut s = bake::input::pipeline::Pipeline::load(&common::repo().join("pipelines/aws.toml"))
        .unwrap()
        .settings
        .aws()
        .cloned()
        .unwrap();
    s.subnet_id = Some("subnet-0abc".into());
    s.security_group_id = Some("sg-0abc".into());
    s
}

#[test]
fn the_resources_are_hardened_and_named_from_their_content() {
    let key = BakeKey::from_hex("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
    let res: Resources = imagebuilder::resources(
        &recipe(),
        Arch::Arm64,
        "ami-0base",
        &key,
        "/dev/sda1",
        20,
        &settings(),
        "us-east-1",
    )
    .unwrap();
    assert!(res.infrastructure.terminate_on_failure);
    assert_eq!(res.infrastructure.http_tokens, "required");
    assert_eq!(
        res.distribution.region, "us-east-1",
        "the home region only: copies come after the canary"
    );
    assert_eq!(
        res.image_recipe.name,
        format!("bake-eks-node-arm64-{}", key.short())
    );
    let without_data = json!({
        "components": res.components.iter().map(|c| json!({"name": c.name, "version": c.version, "phase": c.phase})).collect::<Vec<_>>(),
        "image_recipe": res.image_recipe,
        "infrastructure": res.infrastructure,
        "distribution": res.distribution,
    });
    insta::assert_json_snapshot!("imagebuilder_resources", without_data);
    let mut s = settings();
    s.security_group_id = None;
    let e = imagebuilder::resources(
        &recipe(),
        Arch::Arm64,
        "ami-0base",
        &key,
        "/dev/sda1",
        20,
        &s,
        "us-east-1",
    )
    .unwrap_err();
    assert!(e.to_string().contains("security_group_id"), "{e}");
}

#[test]
fn an_imagebuilder_pipeline_without_its_settings_is_refused_at_load() {
    let p = Project::new();
    p.edit(
        "pipelines/aws.toml",
        "engine = \"ec2\"",
        "engine = \"imagebuilder\"",
    );
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("bake"))
        .current_dir(p.dir.path())
        .args(["plan", "pipelines/aws.toml"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(
        e.contains("pipelines/aws.toml:") && e.contains("subnet_id, security_group_id"),
        "{e}"
    );
}

/// Every Image Builder request bake made in this test (each test is its own process), as the
/// IAM request the Service Authorization Reference makes of it: `imagebuilder:<Action>` on the
/// resource it is authorized on (`*` for the List calls, which take no resource).
static IB_REQUESTS: Mutex<Vec<serde_json::Value>> = Mutex::new(Vec::new());

#[derive(Debug)]
struct IamRecorder;

impl aws_smithy_runtime_api::client::interceptors::Intercept for IamRecorder {
    fn name(&self) -> &'static str {
        "IamRecorder"
    }

    fn read_before_execution(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        use aws_sdk_imagebuilder::operation::*;
        let input = context.input();
        let ib = |r: String| format!("arn:aws:imagebuilder:us-east-1:123456789012:{r}");
        let lower = |n: Option<&str>| n.unwrap_or_default().to_lowercase();
        let own = |arn: Option<&str>| arn.unwrap_or_default().to_string();
        // The operation is told by its input's type.
        macro_rules! each {
            ($($op:literal: $t:ty => |$i:ident| $resource:expr;)*) => {
                $(if let Some($i) = input.downcast_ref::<$t>() {
                    Some(($op, $resource))
                } else)* {
                    None
                }
            };
        }
        let (op, resource): (&str, String) = each! {
            "ListComponents": list_components::ListComponentsInput => |_i| "*".to_string();
            "ListImageRecipes": list_image_recipes::ListImageRecipesInput => |_i| "*".to_string();
            "ListInfrastructureConfigurations": list_infrastructure_configurations::ListInfrastructureConfigurationsInput => |_i| "*".to_string();
            "ListDistributionConfigurations": list_distribution_configurations::ListDistributionConfigurationsInput => |_i| "*".to_string();
            "CreateComponent": create_component::CreateComponentInput => |i| ib(format!("component/{}/{}/1", lower(i.name()), i.semantic_version().unwrap_or_default()));
            "CreateImageRecipe": create_image_recipe::CreateImageRecipeInput => |i| ib(format!("image-recipe/{}/{}", lower(i.name()), i.semantic_version().unwrap_or_default()));
            "CreateInfrastructureConfiguration": create_infrastructure_configuration::CreateInfrastructureConfigurationInput => |i| ib(format!("infrastructure-configuration/{}", lower(i.name())));
            "CreateDistributionConfiguration": create_distribution_configuration::CreateDistributionConfigurationInput => |i| ib(format!("distribution-configuration/{}", lower(i.name())));
            // The image a build makes is named after its recipe: image/<recipe>/<version>/<build>.
            "CreateImage": create_image::CreateImageInput => |i| ib(format!("image/{}/1", i.image_recipe_arn().unwrap_or_default().split_once(":image-recipe/").map(|(_, n)| n).unwrap_or_default()));
            "GetImage": get_image::GetImageInput => |i| own(i.image_build_version_arn());
            "CancelImageCreation": cancel_image_creation::CancelImageCreationInput => |i| own(i.image_build_version_arn());
            "DeleteImage": delete_image::DeleteImageInput => |i| own(i.image_build_version_arn());
            "ListWorkflowExecutions": list_workflow_executions::ListWorkflowExecutionsInput => |i| own(i.image_build_version_arn());
            "ListWorkflowStepExecutions": list_workflow_step_executions::ListWorkflowStepExecutionsInput => |i| ib(format!("workflow-execution/{}", i.workflow_execution_id().unwrap_or_default()));
        }
        .unwrap_or_else(|| panic!("bake made an Image Builder call this test cannot map to its IAM request: add it ({input:?})"));
        IB_REQUESTS.lock().unwrap().push(json!({
            "action": format!("imagebuilder:{op}"),
            "resource": resource,
            "context": {},
        }));
        Ok(())
    }
}

/// Every Image Builder request of this test is allowed by the policy `bake iam-policy` prints
/// for `p`'s pipeline.
fn assert_image_builder_calls_allowed(p: &Project) {
    let requests = IB_REQUESTS.lock().unwrap().clone();
    assert!(!requests.is_empty(), "no Image Builder call was recorded");
    let pipeline = bake::input::pipeline::Pipeline::load(&p.path("pipelines/aws.toml")).unwrap();
    let policy = bake::ops::iam::policy(&pipeline).unwrap();
    let verdicts = common::moto::simulate(&policy, &[], &requests);
    let denied: Vec<String> = verdicts
        .iter()
        .filter(|v| v["result"] != "Allowed")
        .map(|v| v.to_string())
        .collect();
    assert!(
        denied.is_empty(),
        "the printed policy does not allow {} of {} Image Builder requests:\n{}",
        denied.len(),
        requests.len(),
        denied.join("\n")
    );
}

/// An Image Builder client answered by `rules`; its requests are recorded for the IAM check.
fn imagebuilder_client(rules: &[&Rule]) -> aws_sdk_imagebuilder::Client {
    let mut mocks = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
    for r in rules {
        mocks = mocks.with_rule(r);
    }
    let conf = aws_sdk_imagebuilder::Config::builder()
        .behavior_version(aws_sdk_imagebuilder::config::BehaviorVersion::latest())
        .region(aws_sdk_imagebuilder::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_imagebuilder::config::Credentials::new(
            "A", "S", None, None, "mocks",
        ))
        .http_client(aws_smithy_mocks::create_mock_http_client())
        .interceptor(IamRecorder)
        .interceptor(mocks)
        .build();
    aws_sdk_imagebuilder::Client::from_conf(conf)
}

const BUILD: &str =
    "arn:aws:imagebuilder:us-east-1:123456789012:image/bake-eks-node-x86-64/1.0.0/1";

fn image(status: ImageStatus, reason: Option<&str>, ami: Option<&str>) -> GetImageOutput {
    let mut img = Image::builder().arn(BUILD).state(
        ImageState::builder()
            .status(status)
            .set_reason(reason.map(str::to_string))
            .build(),
    );
    if let Some(a) = ami {
        img = img.output_resources(
            OutputResources::builder()
                .amis(Ami::builder().region("us-east-1").image(a).build())
                .build(),
        );
    }
    GetImageOutput::builder().image(img.build()).build()
}

/// Mocks for the resource calls: `existing` makes every List answer with the resource asked for.
struct ResourceMocks {
    rules: Vec<Rule>,
}

/// The ARN a mocked resource gets.
fn arn(kind: &str, name: &str) -> String {
    format!(
        "arn:aws:imagebuilder:us-east-1:123456789012:{kind}/{}/1.0.0",
        name.to_lowercase()
    )
}

/// A List rule answering with the resource it is asked for (when `existing`), by name.
macro_rules! list_rule {
    ($op:ident, $out:ident, $add:ident, $item:ident, $kind:literal, $existing:expr) => {{
        let existing = $existing;
        mock!(aws_sdk_imagebuilder::Client::$op).then_compute_output(move |r| {
            let name = r
                .filters()
                .first()
                .map(|f| f.values()[0].clone())
                .unwrap_or_default();
            let mut out = $out::builder();
            if existing {
                out = out.$add($item::builder().name(&name).arn(arn($kind, &name)).build());
            }
            out.build()
        })
    }};
}

/// A Create rule answering with the new resource's ARN.
macro_rules! create_rule {
    ($op:ident, $out:ident, $set:ident, $kind:literal, $suffix:literal) => {
        mock!(aws_sdk_imagebuilder::Client::$op).then_compute_output(move |r| {
            $out::builder()
                .$set(format!("{}{}", arn($kind, r.name().unwrap()), $suffix))
                .build()
        })
    };
}

impl ResourceMocks {
    fn new(existing: bool) -> ResourceMocks {
        let rules = vec![
            list_rule!(
                list_components,
                ListComponentsOutput,
                component_version_list,
                ComponentVersion,
                "component",
                existing
            ),
            create_rule!(
                create_component,
                CreateComponentOutput,
                component_build_version_arn,
                "component",
                "/1"
            ),
            list_rule!(
                list_image_recipes,
                ListImageRecipesOutput,
                image_recipe_summary_list,
                ImageRecipeSummary,
                "image-recipe",
                existing
            ),
            create_rule!(
                create_image_recipe,
                CreateImageRecipeOutput,
                image_recipe_arn,
                "image-recipe",
                ""
            ),
            list_rule!(
                list_infrastructure_configurations,
                ListInfrastructureConfigurationsOutput,
                infrastructure_configuration_summary_list,
                InfrastructureConfigurationSummary,
                "infrastructure-configuration",
                existing
            ),
            create_rule!(
                create_infrastructure_configuration,
                CreateInfrastructureConfigurationOutput,
                infrastructure_configuration_arn,
                "infrastructure-configuration",
                ""
            ),
            list_rule!(
                list_distribution_configurations,
                ListDistributionConfigurationsOutput,
                distribution_configuration_summary_list,
                DistributionConfigurationSummary,
                "distribution-configuration",
                existing
            ),
            create_rule!(
                create_distribution_configuration,
                CreateDistributionConfigurationOutput,
                distribution_configuration_arn,
                "distribution-configuration",
                ""
            ),
            // While it builds: the running workflow and its running step, for progress.
            mock!(aws_sdk_imagebuilder::Client::list_workflow_executions).then_compute_output(
                |_| {
                    ListWorkflowExecutionsOutput::builder()
                        .workflow_executions(
                            WorkflowExecutionMetadata::builder()
                                .workflow_execution_id("wf-1")
                                .r#type(WorkflowType::Build)
                                .status(WorkflowExecutionStatus::Running)
                                .build(),
                        )
                        .build()
                },
            ),
            mock!(aws_sdk_imagebuilder::Client::list_workflow_step_executions).then_compute_output(
                |r| {
                    assert_eq!(r.workflow_execution_id(), Some("wf-1"));
                    ListWorkflowStepExecutionsOutput::builder()
                        .steps(
                            WorkflowStepMetadata::builder()
                                .name("purge_unattended_upgrades")
                                .status(WorkflowStepExecutionStatus::Running)
                                .build(),
                        )
                        .build()
                },
            ),
        ];
        ResourceMocks { rules }
    }

    fn creates(&self) -> usize {
        [1, 3, 5, 7]
            .iter()
            .map(|i| self.rules[*i].num_calls())
            .sum()
    }
}

/// Records phases, so the test can see the build's progress.
#[derive(Default)]
struct Phases(Mutex<Vec<String>>);

impl Reporter for Phases {
    fn phase(&self, _: &str, _: Arch, phase: &str) {
        self.0.lock().unwrap().push(phase.to_string());
    }
    fn finish(&self, _: &str, _: Arch, _: &str) {}
    fn note(&self, _: &str) {}
}

/// An x86_64-only imagebuilder project on moto's default subnet and a group without inbound
/// rules, under `prefix`.
async fn project(moto: &Moto, prefix: &str) -> Project {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let subnet = ec2.describe_subnets().send().await.unwrap().subnets()[0]
        .subnet_id()
        .unwrap()
        .to_string();
    let vpc = ec2.describe_subnets().send().await.unwrap().subnets()[0]
        .vpc_id()
        .unwrap()
        .to_string();
    let sg = ec2
        .create_security_group()
        .group_name(format!("ib-{}", common::moto::rand_suffix()))
        .description("no inbound")
        .vpc_id(vpc)
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_string();
    let p = common::moto::project(prefix);
    common::moto::x86_only(&p);
    p.edit(
        "pipelines/aws.toml",
        "engine = \"ec2\"",
        &format!(
            "engine = \"imagebuilder\"\nsubnet_id = \"{subnet}\"\nsecurity_group_id = \"{sg}\""
        ),
    );
    p
}

/// Runs the pipeline through the library with the mocked Image Builder.
async fn run(
    moto: &Moto,
    p: &Project,
    ib: aws_sdk_imagebuilder::Client,
    reporter: &dyn Reporter,
) -> (bake::ops::run::RunSummary, bake::Result<()>) {
    run_cancellable(moto, p, ib, reporter, Default::default()).await
}

async fn run_cancellable(
    moto: &Moto,
    p: &Project,
    ib: aws_sdk_imagebuilder::Client,
    reporter: &dyn Reporter,
    cancel: tokio_util::sync::CancellationToken,
) -> (bake::ops::run::RunSummary, bake::Result<()>) {
    let pipeline = bake::input::pipeline::Pipeline::load(&p.path("pipelines/aws.toml")).unwrap();
    let config = moto.sdk_via_proxy().await;
    let settings = pipeline.settings.aws().cloned().unwrap();
    let provider = bake::provider::aws::AwsProvider::new(&config, &pipeline, Default::default())
        .unwrap()
        .with_imagebuilder(ib);
    let registry =
        bake::registry::SsmRegistry::new(&config, settings.ssm_prefix.clone(), Default::default());
    let cx = bake::ops::run::RunContext {
        pipeline: &pipeline,
        provider: &provider,
        registry: &registry,
        reporter,
        state_dir: &p.state(),
        cancel,
    };
    bake::ops::run::run(&cx, &bake::ops::run::RunOptions::default()).await
}

/// The AMI an Image Builder build distributes: tagged by the distribution configuration
/// (recipe, arch, status pending, and the pipeline's prefix), its snapshots untagged.
async fn distributed(moto: &Moto, name: &str, prefix: &str) -> String {
    let id = register_x86(moto, name).await;
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let tag = |k: &str, v: &str| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build();
    ec2.create_tags()
        .resources(&id)
        .tags(tag("bake:recipe", "eks-node"))
        .tags(tag("bake:arch", "x86_64"))
        .tags(tag("bake:status", "pending"))
        .tags(tag("bake:prefix", prefix))
        .send()
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn an_image_builder_build_is_followed_to_available_then_proven_on_a_canary_and_published() {
    let moto = Moto::get();
    let base = register_x86(moto, "ib-base").await;
    let built = distributed(moto, "ib-output", "/ib1").await;
    moto.set_config(json!({"parameters": {UBUNTU_X86: base}}));
    let p = project(moto, "/ib1").await;
    let resources = ResourceMocks::new(false);
    let create_image = mock!(aws_sdk_imagebuilder::Client::create_image)
        .match_requests(|r| {
            r.image_tests_configuration()
                .and_then(|t| t.image_tests_enabled())
                == Some(true)
                && r.tags().is_some_and(|t| t.contains_key("bake:run-id"))
        })
        .then_output(|| {
            CreateImageOutput::builder()
                .image_build_version_arn(BUILD)
                .build()
        });
    let b = built.clone();
    let get_image = mock!(aws_sdk_imagebuilder::Client::get_image)
        .sequence()
        .output(|| image(ImageStatus::Pending, None, None))
        .output(|| image(ImageStatus::Building, None, None))
        .output(|| image(ImageStatus::Testing, None, None))
        .output(|| image(ImageStatus::Distributing, None, None))
        .output(move || image(ImageStatus::Available, None, Some(&b)))
        .build();
    let mut rules: Vec<&Rule> = resources.rules.iter().collect();
    rules.extend([&create_image, &get_image]);
    let phases = Phases::default();
    let (summary, result) = run(moto, &p, imagebuilder_client(&rules), &phases).await;
    result.unwrap_or_else(|e| panic!("{e}\n{summary:#?}"));

    assert_eq!(create_image.num_calls(), 1);
    assert_eq!(get_image.num_calls(), 5, "followed every state");
    assert_eq!(
        resources.creates(),
        toe::components(&recipe(), 1800).len() + 3
    );
    let seen = phases.0.lock().unwrap().clone();
    for s in [
        "PENDING",
        "BUILDING",
        "TESTING",
        "DISTRIBUTING",
        "AVAILABLE",
    ] {
        assert!(
            seen.iter()
                .any(|p| p.starts_with(&format!("image builder: {s}"))),
            "{s} not shown: {seen:?}"
        );
    }
    assert!(
        seen.iter()
            .any(|p| p == "image builder: BUILDING (build/purge_unattended_upgrades)"),
        "the running workflow step is shown: {seen:?}"
    );
    // The output AMI went through bake's canary and was published.
    assert_eq!(summary.published.len(), 1);
    assert_eq!(summary.published[0].images[&Arch::X86_64], built);
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk().await);
    let rel = &summary.published[0].release;
    let param = ssm
        .get_parameter()
        .name(format!("/ib1/eks-node/releases/{rel}/x86_64"))
        .send()
        .await
        .unwrap();
    assert_eq!(param.parameter().unwrap().value(), Some(built.as_str()));
    let canaries = moto.params_of("RunInstances");
    assert!(
        canaries.iter().any(|l| l.get("ImageId") == Some(&built)),
        "a canary ran the output AMI"
    );
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let img = ec2
        .describe_images()
        .image_ids(&built)
        .send()
        .await
        .unwrap();
    let status = img.images()[0]
        .tags()
        .iter()
        .find(|t| t.key() == Some("bake:status"))
        .and_then(|t| t.value())
        .map(str::to_string);
    assert_eq!(status.as_deref(), Some("validated"));
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
    assert_image_builder_calls_allowed(&p);
}

#[tokio::test]
async fn a_failed_build_reports_image_builders_reason_cleans_up_and_publishes_nothing() {
    let moto = Moto::get();
    let base = register_x86(moto, "ib-base-fail").await;
    moto.set_config(json!({"parameters": {UBUNTU_X86: base}}));
    let p = project(moto, "/ib2").await;
    let resources = ResourceMocks::new(false);
    let create_image = mock!(aws_sdk_imagebuilder::Client::create_image).then_output(|| {
        CreateImageOutput::builder()
            .image_build_version_arn(BUILD)
            .build()
    });
    let get_image = mock!(aws_sdk_imagebuilder::Client::get_image)
        .sequence()
        .output(|| image(ImageStatus::Pending, None, None))
        .output(|| image(ImageStatus::Building, None, None))
        .output(|| {
            image(
                ImageStatus::Failed,
                Some("Step failed: purge_unattended_upgrades exited 100"),
                None,
            )
        })
        .repeatedly()
        .build();
    let delete = mock!(aws_sdk_imagebuilder::Client::delete_image)
        .then_output(|| DeleteImageOutput::builder().build());
    let mut rules: Vec<&Rule> = resources.rules.iter().collect();
    rules.extend([&create_image, &get_image, &delete]);
    let launches_before = moto.params_of("RunInstances").len();
    let (summary, result) = run(moto, &p, imagebuilder_client(&rules), &Phases::default()).await;
    let e = result.unwrap_err();
    assert_eq!(e.exit_code(), 1);
    let msg = e.to_string();
    assert!(
        msg.contains("FAILED") && msg.contains("purge_unattended_upgrades exited 100"),
        "{msg}"
    );
    assert!(summary.published.is_empty());
    assert_eq!(
        delete.num_calls(),
        1,
        "the failed build's record is deleted"
    );
    assert_eq!(
        moto.params_of("RunInstances").len(),
        launches_before,
        "no canary for a failed build"
    );
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
    assert_image_builder_calls_allowed(&p);
}

#[tokio::test]
async fn a_rerun_reuses_the_components_recipe_and_configurations() {
    let moto = Moto::get();
    let base = register_x86(moto, "ib-base-reuse").await;
    let built = distributed(moto, "ib-output-reuse", "/ib3").await;
    moto.set_config(json!({"parameters": {UBUNTU_X86: base}}));
    let p = project(moto, "/ib3").await;
    let resources = ResourceMocks::new(true);
    let create_image = mock!(aws_sdk_imagebuilder::Client::create_image).then_output(|| {
        CreateImageOutput::builder()
            .image_build_version_arn(BUILD)
            .build()
    });
    let b = built.clone();
    let get_image = mock!(aws_sdk_imagebuilder::Client::get_image)
        .then_output(move || image(ImageStatus::Available, None, Some(&b)));
    let mut rules: Vec<&Rule> = resources.rules.iter().collect();
    rules.extend([&create_image, &get_image]);
    let (summary, result) = run(moto, &p, imagebuilder_client(&rules), &Phases::default()).await;
    result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resources.creates(), 0, "nothing created twice");
    assert_eq!(create_image.num_calls(), 1);
    assert_eq!(summary.published[0].images[&Arch::X86_64], built);
}

#[tokio::test]
async fn plan_shows_the_image_builder_resources_it_would_create_or_reuse() {
    let moto = Moto::get();
    let base = register_x86(moto, "ib-base-plan").await;
    moto.set_config(json!({"parameters": {UBUNTU_X86: base}}));
    let p = project(moto, "/ib4").await;
    let pipeline = bake::input::pipeline::Pipeline::load(&p.path("pipelines/aws.toml")).unwrap();
    let config = moto.sdk_via_proxy().await;
    let registry = bake::registry::SsmRegistry::new(
        &config,
        pipeline.settings.aws().cloned().unwrap().ssm_prefix,
        Default::default(),
    );
    for (existing, action) in [(false, "create"), (true, "reuse")] {
        let mocks = ResourceMocks::new(existing);
        let rules: Vec<&Rule> = mocks.rules.iter().collect();
        let provider =
            bake::provider::aws::AwsProvider::new(&config, &pipeline, Default::default())
                .unwrap()
                .with_imagebuilder(imagebuilder_client(&rules));
        let mut items = bake::ops::plan::plan(&pipeline, &provider, &registry, &Default::default())
            .await
            .unwrap();
        bake::ops::plan::with_resources(&mut items, &pipeline, &provider)
            .await
            .unwrap();
        let res = &items[0].resources;
        let kinds: Vec<&str> = res.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                vec!["component"; toe::components(&recipe(), 1800).len()],
                vec![
                    "image-recipe",
                    "infrastructure-configuration",
                    "distribution-configuration"
                ]
            ]
            .concat()
        );
        assert!(res.iter().all(|r| r.action == action), "{res:?}");
        assert_eq!(mocks.creates(), 0, "plan changes nothing");
    }
}

#[tokio::test]
async fn an_interrupt_mid_build_cancels_and_deletes_the_build() {
    use aws_sdk_imagebuilder::operation::cancel_image_creation::CancelImageCreationOutput;
    let moto = Moto::get();
    let base = register_x86(moto, "ib-base-cancel").await;
    moto.set_config(json!({"parameters": {UBUNTU_X86: base}}));
    let p = project(moto, "/ib5").await;
    let resources = ResourceMocks::new(true);
    let create_image = mock!(aws_sdk_imagebuilder::Client::create_image).then_output(|| {
        CreateImageOutput::builder()
            .image_build_version_arn(BUILD)
            .build()
    });
    // Building until it is cancelled; then, as Image Builder stops its instances, CANCELLED.
    let cancelled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = cancelled.clone();
    let get_image = mock!(aws_sdk_imagebuilder::Client::get_image).then_output(move || {
        if seen.load(std::sync::atomic::Ordering::SeqCst) {
            image(ImageStatus::Cancelled, None, None)
        } else {
            image(ImageStatus::Building, None, None)
        }
    });
    let cancel = mock!(aws_sdk_imagebuilder::Client::cancel_image_creation)
        .match_requests(|r| r.image_build_version_arn() == Some(BUILD))
        .then_output(move || {
            cancelled.store(true, std::sync::atomic::Ordering::SeqCst);
            CancelImageCreationOutput::builder().build()
        });
    let delete = mock!(aws_sdk_imagebuilder::Client::delete_image)
        .then_output(|| DeleteImageOutput::builder().build());
    let mut rules: Vec<&Rule> = resources.rules.iter().collect();
    rules.extend([&create_image, &get_image, &cancel, &delete]);
    let token = tokio_util::sync::CancellationToken::new();
    let stop = token.clone();
    let client = imagebuilder_client(&rules);
    let phases = Phases::default();
    let (run, ()) = tokio::join!(run_cancellable(moto, &p, client, &phases, token), async {
        // Ctrl-C once the build is being followed.
        while get_image.num_calls() < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        stop.cancel();
    });
    let (summary, result) = run;
    let e = result.unwrap_err();
    assert_eq!(e.exit_code(), 130, "{e}");
    assert!(summary.published.is_empty());
    assert_eq!(cancel.num_calls(), 1, "the running build is cancelled");
    assert_eq!(delete.num_calls(), 1, "and its record deleted");
}

#[tokio::test]
async fn sweep_finds_the_untagged_output_of_a_build_whose_run_died_once_it_is_old() {
    use bake::provider::Provider;
    let moto = Moto::get();
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    // What a finished build of a SIGKILLed run leaves: the distribution's tags, no bake:run-id.
    let orphan = register_x86(moto, "ib-orphan").await;
    let tag = |k: &str, v: &str| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build();
    ec2.create_tags()
        .resources(&orphan)
        .tags(tag("bake:recipe", "eks-node"))
        .tags(tag("bake:status", "pending"))
        .tags(tag("bake:prefix", "/ib6"))
        .send()
        .await
        .unwrap();
    // The same output of another pipeline's build (its own prefix) is never ours to sweep.
    let theirs = register_x86(moto, "ib-orphan-other").await;
    ec2.create_tags()
        .resources(&theirs)
        .tags(tag("bake:recipe", "eks-node"))
        .tags(tag("bake:status", "pending"))
        .tags(tag("bake:prefix", "/ib6-other"))
        .send()
        .await
        .unwrap();
    let p = project(moto, "/ib6").await;
    let found = |p: Project| async move {
        let pipeline =
            bake::input::pipeline::Pipeline::load(&p.path("pipelines/aws.toml")).unwrap();
        let provider = bake::provider::aws::AwsProvider::new(
            &moto.sdk_via_proxy().await,
            &pipeline,
            Default::default(),
        )
        .unwrap();
        provider
            .leftovers(&Default::default(), &Default::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.kind == bake::journal::Kind::Image)
            .map(|l| l.id)
            .collect::<Vec<_>>()
    };
    // Fresh: a live run may be about to tag it.
    assert!(!found(p).await.contains(&orphan));
    let p = project(moto, "/ib6").await;
    p.edit(
        "pipelines/aws.toml",
        "poll_interval",
        "orphan_age = \"0s\"\npoll_interval",
    );
    let found = found(p).await;
    assert!(found.contains(&orphan));
    assert!(
        !found.contains(&theirs),
        "another pipeline's output: {found:?}"
    );
}
