//! The `imagebuilder` engine: AWS EC2 Image Builder runs the build (and the validators that need
//! no cluster, as a test component); bake then proves the output AMI on its own canary and
//! publishes it exactly as the `ec2` engine does. Components, the image recipe and the
//! infrastructure and distribution configurations are named from digests of their content, so
//! a rerun reuses them instead of creating duplicates. The distribution is the pipeline's own
//! region only: copies and launch permissions come after bake's canary has validated the image.

mod build;
mod builds;
pub use build::{ended, Built};
pub use builds::{is_over, BuildSummary};

use super::toe::{self, Component};
use crate::input::pipeline::AwsSettings;
use crate::input::recipe::{sha256_hex, Recipe};
use crate::key::BakeKey;
use crate::provider::aws::sdk::{err, Limits};
use crate::{Arch, Error, Result};
use aws_sdk_imagebuilder::types::{
    AmiDistributionConfiguration, ComponentConfiguration, Distribution,
    EbsInstanceBlockDeviceSpecification, EbsVolumeType, Filter, InstanceBlockDeviceMapping,
    InstanceMetadataOptions, Platform,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// What a bake of one recipe × arch needs in Image Builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resources {
    pub components: Vec<Component>,
    pub image_recipe: ImageRecipe,
    pub infrastructure: Infrastructure,
    pub distribution: DistributionConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRecipe {
    /// `bake-<recipe>-<arch>-<key>`: one per bake key.
    pub name: String,
    pub version: String,
    pub parent_image: String,
    pub root_device: String,
    pub volume_size_gib: u32,
    pub volume_type: String,
    pub kms_key_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Infrastructure {
    pub name: String,
    pub instance_type: String,
    pub instance_profile: String,
    pub subnet_id: String,
    pub security_group_id: String,
    /// Always true: a failed build leaves no instance behind.
    pub terminate_on_failure: bool,
    /// Always `required` (IMDSv2); no key pair is ever set.
    pub http_tokens: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DistributionConfig {
    pub name: String,
    pub region: String,
    pub ami_name: String,
    pub kms_key_id: Option<String>,
    pub ami_tags: BTreeMap<String, String>,
}

fn digest(v: &impl Serialize) -> String {
    sha256_hex(serde_json::to_string(v).expect("serializes").as_bytes())[..12].to_string()
}

/// The Image Builder resources for one recipe × arch on `base`, in `region`. Fails if the
/// pipeline lacks what the engine needs (checked at load too).
#[allow(clippy::too_many_arguments)]
pub fn resources(
    recipe: &Recipe,
    arch: Arch,
    base: &str,
    key: &BakeKey,
    root_device: &str,
    volume_size_gib: u32,
    settings: &AwsSettings,
    region: &str,
) -> Result<Resources> {
    let need = |v: &Option<String>, field: &str| {
        v.clone().ok_or_else(|| {
            Error::Usage(format!(
                "engine \"imagebuilder\" needs [aws] {field} (Image Builder reuses it across runs)"
            ))
        })
    };
    let components = toe::components(recipe, settings.command_timeout.as_secs());
    if let Some(why) = toe::too_long(&components) {
        return Err(Error::Usage(format!(
            "recipe {} ({arch}) cannot be built by Image Builder: {why} (a step's script travels inline, base64-encoded: split the step, or use engine = \"ec2\")",
            recipe.name
        )));
    }
    let image_recipe = ImageRecipe {
        name: format!("bake-{}-{arch}-{}", recipe.name, key.short()),
        version: "1.0.0".into(),
        parent_image: base.to_string(),
        root_device: root_device.to_string(),
        volume_size_gib,
        volume_type: recipe.volume.volume_type.clone(),
        kms_key_id: settings.kms_key_id.clone(),
    };
    let instance_type = settings
        .instance_type
        .get(&arch)
        .cloned()
        .unwrap_or_else(|| match arch {
            Arch::X86_64 => "m6i.large".into(),
            Arch::Arm64 => "m7g.large".into(),
        });
    let mut infrastructure = Infrastructure {
        name: String::new(),
        instance_type,
        instance_profile: need(&settings.instance_profile, "instance_profile")?,
        subnet_id: need(&settings.subnet_id, "subnet_id")?,
        security_group_id: need(&settings.security_group_id, "security_group_id")?,
        terminate_on_failure: true,
        http_tokens: "required".into(),
    };
    infrastructure.name = format!("bake-{}-{arch}-{}", recipe.name, digest(&infrastructure));
    let mut distribution = DistributionConfig {
        name: String::new(),
        region: region.to_string(),
        ami_name: format!("bake-{}-{arch}-{{{{imagebuilder:buildDate}}}}", recipe.name),
        kms_key_id: settings.kms_key_id.clone(),
        ami_tags: BTreeMap::from([
            ("bake:recipe".to_string(), recipe.name.clone()),
            ("bake:arch".to_string(), arch.to_string()),
            ("bake:status".to_string(), "pending".to_string()),
            (
                super::OWNER_TAG.to_string(),
                settings.ssm_prefix.as_str().to_string(),
            ),
        ]),
    };
    distribution.name = format!("bake-{}-{arch}-{}", recipe.name, digest(&distribution));
    Ok(Resources {
        components,
        image_recipe,
        infrastructure,
        distribution,
    })
}

pub use crate::provider::PlannedResource as Planned;

/// The Image Builder API in one region.
pub struct ImageBuilder<'a> {
    pub client: &'a aws_sdk_imagebuilder::Client,
    pub limits: &'a Limits,
    pub region: &'a str,
}

fn name_filter(name: &str) -> Filter {
    Filter::builder().name("name").values(name).build()
}

/// The ARN of the resource called `$name` among what a List call filtered by that name returns.
macro_rules! find_arn {
    ($self:ident, $list:ident, $items:ident, $what:literal, $name:expr $(, $owner:expr)?) => {{
        $self.slot().await;
        let r = $self
            .client
            .$list()
            $(.owner($owner))?
            .filters(name_filter($name))
            .send()
            .await
            .map_err(|e| err(format!("looking for {} {} in {}", $what, $name, $self.region), e))?;
        Ok(r.$items()
            .iter()
            .find(|c| c.name() == Some($name))
            .and_then(|c| c.arn().map(str::to_string)))
    }};
}

impl ImageBuilder<'_> {
    async fn slot(&self) {
        // Image Builder's control plane allows a few calls per second; share EC2's budget.
        self.limits.ec2.until_ready().await;
    }

    async fn component_arn(&self, name: &str) -> Result<Option<String>> {
        find_arn!(
            self,
            list_components,
            component_version_list,
            "component",
            name,
            aws_sdk_imagebuilder::types::Ownership::SelfValue
        )
    }

    async fn image_recipe_arn(&self, name: &str) -> Result<Option<String>> {
        find_arn!(
            self,
            list_image_recipes,
            image_recipe_summary_list,
            "image recipe",
            name,
            aws_sdk_imagebuilder::types::Ownership::SelfValue
        )
    }

    async fn infrastructure_arn(&self, name: &str) -> Result<Option<String>> {
        find_arn!(
            self,
            list_infrastructure_configurations,
            infrastructure_configuration_summary_list,
            "infrastructure configuration",
            name
        )
    }

    async fn distribution_arn(&self, name: &str) -> Result<Option<String>> {
        find_arn!(
            self,
            list_distribution_configurations,
            distribution_configuration_summary_list,
            "distribution configuration",
            name
        )
    }

    /// What exists already and what a bake would create (read-only; `bake plan`).
    pub async fn plan(&self, res: &Resources) -> Result<Vec<Planned>> {
        let mut out = Vec::new();
        let mut push = |kind: &str, name: &str, exists: bool| {
            out.push(Planned {
                kind: kind.into(),
                name: name.into(),
                action: if exists { "reuse" } else { "create" }.into(),
            })
        };
        for c in &res.components {
            push(
                "component",
                &c.name,
                self.component_arn(&c.name).await?.is_some(),
            );
        }
        push(
            "image-recipe",
            &res.image_recipe.name,
            self.image_recipe_arn(&res.image_recipe.name)
                .await?
                .is_some(),
        );
        push(
            "infrastructure-configuration",
            &res.infrastructure.name,
            self.infrastructure_arn(&res.infrastructure.name)
                .await?
                .is_some(),
        );
        push(
            "distribution-configuration",
            &res.distribution.name,
            self.distribution_arn(&res.distribution.name)
                .await?
                .is_some(),
        );
        Ok(out)
    }

    /// Finds or creates every resource; returns (image recipe, infrastructure, distribution)
    /// ARNs and what was created or reused.
    pub async fn ensure(
        &self,
        res: &Resources,
        tags: &BTreeMap<String, String>,
    ) -> Result<((String, String, String), Vec<Planned>)> {
        let tags: HashMap<String, String> =
            tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut done = Vec::new();
        let mut said = |kind: &str, name: &str, found: bool| {
            done.push(planned(kind, name, if found { "reuse" } else { "create" }));
        };
        let mut component_arns = Vec::new();
        for c in &res.components {
            let found = self.component_arn(&c.name).await?;
            said("component", &c.name, found.is_some());
            component_arns.push(match found {
                Some(arn) => arn,
                None => self.create_component(c, &tags).await?,
            });
        }
        let ir = &res.image_recipe;
        let found = self.image_recipe_arn(&ir.name).await?;
        said("image-recipe", &ir.name, found.is_some());
        let recipe_arn = match found {
            Some(arn) => arn,
            None => self.create_image_recipe(ir, &component_arns, &tags).await?,
        };
        let inf = &res.infrastructure;
        let found = self.infrastructure_arn(&inf.name).await?;
        said("infrastructure-configuration", &inf.name, found.is_some());
        let infra_arn = match found {
            Some(arn) => arn,
            None => self.create_infrastructure(inf, &tags).await?,
        };
        let d = &res.distribution;
        let found = self.distribution_arn(&d.name).await?;
        said("distribution-configuration", &d.name, found.is_some());
        let dist_arn = match found {
            Some(arn) => arn,
            None => self.create_distribution(d, &tags).await?,
        };
        Ok(((recipe_arn, infra_arn, dist_arn), done))
    }

    /// Creates a component (immutable: a version is never created twice); its build version ARN.
    async fn create_component(
        &self,
        c: &super::toe::Component,
        tags: &HashMap<String, String>,
    ) -> Result<String> {
        self.slot().await;
        let r = self
            .client
            .create_component()
            .name(&c.name)
            .semantic_version(&c.version)
            .platform(Platform::Linux)
            .data(&c.data)
            .description(format!("bake {} phase", c.phase))
            .set_tags(Some(tags.clone()))
            .client_token(super::client_token(&[&c.name]))
            .send()
            .await
            .map_err(|e| {
                err(
                    format!("creating component {} in {}", c.name, self.region),
                    e,
                )
            })?;

        Ok(r.component_build_version_arn()
            .unwrap_or_default()
            .to_string())
    }

    /// Creates the image recipe of `components` (their ARNs, in order); its ARN.
    async fn create_image_recipe(
        &self,
        ir: &ImageRecipe,
        component_arns: &[String],
        tags: &HashMap<String, String>,
    ) -> Result<String> {
        let components = component_arns
            .iter()
            .map(|arn| {
                ComponentConfiguration::builder()
                    .component_arn(arn)
                    .build()
                    .map_err(|e| Error::provider("aws", format!("component {arn}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        self.slot().await;
        let r = self
            .client
            .create_image_recipe()
            .name(&ir.name)
            .semantic_version(&ir.version)
            .parent_image(&ir.parent_image)
            .set_components(Some(components))
            .block_device_mappings(
                InstanceBlockDeviceMapping::builder()
                    .device_name(&ir.root_device)
                    .ebs(
                        EbsInstanceBlockDeviceSpecification::builder()
                            .encrypted(true)
                            .delete_on_termination(true)
                            .volume_size(ir.volume_size_gib as i32)
                            .volume_type(EbsVolumeType::from(ir.volume_type.as_str()))
                            .set_kms_key_id(ir.kms_key_id.clone())
                            .build(),
                    )
                    .build(),
            )
            .set_tags(Some(tags.clone()))
            .client_token(super::client_token(&[&ir.name]))
            .send()
            .await
            .map_err(|e| {
                err(
                    format!("creating image recipe {} in {}", ir.name, self.region),
                    e,
                )
            })?;

        Ok(r.image_recipe_arn().unwrap_or_default().to_string())
    }

    /// Creates the infrastructure configuration; its ARN.
    async fn create_infrastructure(
        &self,
        inf: &Infrastructure,
        tags: &HashMap<String, String>,
    ) -> Result<String> {
        self.slot().await;
        let r = self
            .client
            .create_infrastructure_configuration()
            .name(&inf.name)
            .instance_types(&inf.instance_type)
            .instance_profile_name(&inf.instance_profile)
            .subnet_id(&inf.subnet_id)
            .security_group_ids(&inf.security_group_id)
            .terminate_instance_on_failure(inf.terminate_on_failure)
            .instance_metadata_options(
                InstanceMetadataOptions::builder()
                    .http_tokens(&inf.http_tokens)
                    .http_put_response_hop_limit(1)
                    .build(),
            )
            .set_resource_tags(Some(tags.clone()))
            .set_tags(Some(tags.clone()))
            .client_token(super::client_token(&[&inf.name]))
            .send()
            .await
            .map_err(|e| {
                err(
                    format!(
                        "creating infrastructure configuration {} in {}",
                        inf.name, self.region
                    ),
                    e,
                )
            })?;

        Ok(r.infrastructure_configuration_arn()
            .unwrap_or_default()
            .to_string())
    }

    /// Creates the distribution configuration; its ARN.
    async fn create_distribution(
        &self,
        d: &DistributionConfig,
        tags: &HashMap<String, String>,
    ) -> Result<String> {
        let dist = Distribution::builder()
            .region(&d.region)
            .ami_distribution_configuration(
                AmiDistributionConfiguration::builder()
                    .name(&d.ami_name)
                    .set_kms_key_id(d.kms_key_id.clone())
                    .set_ami_tags(Some(d.ami_tags.clone().into_iter().collect()))
                    .build(),
            )
            .build()
            .map_err(|e| Error::provider("aws", format!("distribution {}: {e}", d.name)))?;
        self.slot().await;
        let r = self
            .client
            .create_distribution_configuration()
            .name(&d.name)
            .distributions(dist)
            .set_tags(Some(tags.clone()))
            .client_token(super::client_token(&[&d.name]))
            .send()
            .await
            .map_err(|e| {
                err(
                    format!(
                        "creating distribution configuration {} in {}",
                        d.name, self.region
                    ),
                    e,
                )
            })?;

        Ok(r.distribution_configuration_arn()
            .unwrap_or_default()
            .to_string())
    }
}

fn planned(kind: &str, name: &str, action: &str) -> Planned {
    Planned {
        kind: kind.into(),
        name: name.into(),
        action: action.into(),
    }
}
