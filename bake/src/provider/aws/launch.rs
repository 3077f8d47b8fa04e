//! The instance lifecycle of an AWS bake: the security group with no inbound rules, builder
//! and canary launches (IMDSv2 required, no key pair, encrypted volumes, the dead-man's
//! switch), their SSM agents, stopping and terminating the builder.

use super::state::State;
use super::AwsProvider;
use crate::journal::Kind;
use crate::provider::aws::sdk::err;
use crate::provider::{BakeJob, Role};
use crate::steps::{Outcome, Step, StepContext};
use crate::user_data;
use crate::{Arch, Result};
use async_trait::async_trait;
use aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceStateName, InstanceType,
    ResourceType, ShutdownBehavior, TagSpecification, VolumeType,
};
use std::time::Duration;

pub(super) struct SecurityGroup<'a> {
    pub p: &'a AwsProvider,
    pub job: &'a BakeJob<'a>,
}

#[async_trait]
impl Step<State> for SecurityGroup<'_> {
    fn name(&self) -> &str {
        "security-group"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        if let Some(sg) = &self.p.settings.security_group_id {
            state.security_group = Some(sg.clone());
            return Ok(());
        }
        cx.phase("security group (no inbound rules)");
        let p = self.p;
        let vpc = match &p.settings.subnet_id {
            Some(subnet) => {
                p.ec2_slot().await;
                let r = p
                    .ec2
                    .describe_subnets()
                    .subnet_ids(subnet)
                    .send()
                    .await
                    .map_err(|e| err(format!("describing subnet {subnet} in {}", p.region), e))?;
                r.subnets()
                    .first()
                    .and_then(|s| s.vpc_id())
                    .map(str::to_string)
            }
            None => {
                p.ec2_slot().await;
                let r = p
                    .ec2
                    .describe_vpcs()
                    .filters(Filter::builder().name("is-default").values("true").build())
                    .send()
                    .await
                    .map_err(|e| err(format!("looking for the default VPC in {}", p.region), e))?;
                r.vpcs()
                    .first()
                    .and_then(|v| v.vpc_id())
                    .map(str::to_string)
            }
        };
        let name = format!("bake-{}-{}-{}", self.job.run_id, cx.recipe, cx.arch);
        p.ec2_slot().await;
        let r = p
            .ec2
            .create_security_group()
            .group_name(&name)
            .description("bake builder and canary: no inbound rules")
            .set_vpc_id(vpc)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::SecurityGroup)
                    .set_tags(Some(p.tags(self.job, "security-group")))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| err(format!("creating security group {name} in {}", p.region), e))?;
        let id = r.group_id().unwrap_or_default().to_string();
        cx.created(Kind::SecurityGroup, &id)?;
        state.security_group = Some(id);
        state.created_group = true;
        Ok(())
    }
    async fn cleanup(
        &self,
        state: &mut State,
        _outcome: Outcome,
        cx: &StepContext<'_>,
    ) -> Result<()> {
        if !state.created_group {
            return Ok(());
        }
        if let Some(id) = state.security_group.take() {
            self.p.delete_security_group(&id).await?;
            cx.removed(Kind::SecurityGroup, &id)?;
        }
        Ok(())
    }
}

pub(super) struct Launch<'a> {
    pub p: &'a AwsProvider,
    pub job: &'a BakeJob<'a>,
    pub role: Role,
}

#[async_trait]
impl Step<State> for Launch<'_> {
    fn name(&self) -> &str {
        match self.role {
            Role::Builder => "launch-builder",
            Role::Canary => "launch-canary",
        }
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let p = self.p;
        let image = self.image(state, cx)?;
        cx.phase(&format!("launch {} from {image}", self.role.as_str()));
        let req = self.hardened(&image, state, cx).await?;
        let req = self.with_user_data(req, cx).await?;
        let r = req.send().await.map_err(|e| {
            err(
                format!(
                    "launching the {} from {image} in {}",
                    self.role.as_str(),
                    p.region
                ),
                e,
            )
        })?;
        let id = r
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .ok_or_else(|| cx.error(self.name(), "RunInstances returned no instance"))?
            .to_string();
        cx.created(Kind::Instance, &id)?;
        *state.instances.slot(self.role) = Some(id.clone());
        p.wait_instance(&id, InstanceStateName::Running).await?;
        if self.role == Role::Canary {
            let (zone, dns) = p.placement(&id).await?;
            (state.canary_zone, state.canary_dns) = (Some(zone), dns);
        }
        Ok(())
    }
    async fn cleanup(
        &self,
        state: &mut State,
        _outcome: Outcome,
        cx: &StepContext<'_>,
    ) -> Result<()> {
        if let Some(id) = state.instances.slot(self.role).take() {
            self.p.terminate(&id).await?;
            cx.removed(Kind::Instance, &id)?;
        }
        Ok(())
    }
}

impl Launch<'_> {
    /// What this role boots: the base (builder) or the image just made (canary).
    fn image(&self, state: &State, cx: &StepContext<'_>) -> Result<String> {
        match self.role {
            Role::Builder => Ok(self.job.base.id.clone()),
            Role::Canary => state
                .image
                .clone()
                .ok_or_else(|| cx.error(self.name(), "no image to launch")),
        }
    }

    /// The instance type of `arch`: the pipeline's, else a current general-purpose one.
    fn instance_type(&self, arch: Arch) -> String {
        self.p
            .settings
            .instance_type
            .get(&arch)
            .cloned()
            .unwrap_or_else(|| match arch {
                Arch::X86_64 => "m6i.large".into(),
                Arch::Arm64 => "m7g.large".into(),
            })
    }

    /// RunInstances of `image` as every bake instance is launched: one instance, idempotent
    /// (its client token), IMDSv2 required, no key pair, bake's security group, an encrypted
    /// root volume deleted with it, tagged, the instance profile, and the dead-man's switch
    /// (an instance that powers itself off terminates).
    async fn hardened(
        &self,
        image: &str,
        state: &State,
        cx: &StepContext<'_>,
    ) -> Result<RunInstancesFluentBuilder> {
        let p = self.p;
        let root_volume = p.root_volume(image).await?;
        // The builder's volume: what the recipe asks (checked at plan) or the base's own size;
        // the canary's: its image's, which is the builder's.
        let size = match self.role {
            Role::Builder => {
                self.job
                    .recipe
                    .volume_size_for(cx.arch, image, root_volume.size_gib)?
            }
            Role::Canary => root_volume
                .size_gib
                .unwrap_or(crate::input::recipe::DEFAULT_SIZE_GIB),
        };
        let volume = &self.job.recipe.volume;
        let tags = |kind: ResourceType| {
            TagSpecification::builder()
                .resource_type(kind)
                .set_tags(Some(p.tags(self.job, self.role.as_str())))
                .build()
        };
        let token = format!(
            "{}-{}-{}-{}",
            self.job.run_id,
            cx.recipe,
            cx.arch,
            self.role.as_str()
        );
        let req = p
            .ec2
            .run_instances()
            .image_id(image)
            .instance_type(InstanceType::from(self.instance_type(cx.arch).as_str()))
            .min_count(1)
            .max_count(1)
            // Idempotent: a retried RunInstances never starts a second instance.
            .client_token(token.chars().take(64).collect::<String>())
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .build(),
            )
            .set_security_group_ids(state.security_group.clone().map(|s| vec![s]))
            .set_subnet_id(p.settings.subnet_id.clone())
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(root_volume.device.clone())
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(size as i32)
                            .volume_type(VolumeType::from(volume.volume_type.as_str()))
                            .encrypted(true)
                            .set_kms_key_id(p.settings.kms_key_id.clone())
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .tag_specifications(tags(ResourceType::Instance))
            .tag_specifications(tags(ResourceType::Volume))
            .set_iam_instance_profile(p.settings.instance_profile.as_ref().map(|profile| {
                IamInstanceProfileSpecification::builder()
                    .name(profile)
                    .build()
            }))
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate);
        Ok(req)
    }

    /// The user data of this role: the builder's dead-man's timer, sized to outlive every wait
    /// of its files and steps; the canary's timer and, where the pipeline names a canary
    /// cluster, the base's way of joining it (and the cluster's security group beside bake's).
    async fn with_user_data(
        &self,
        req: RunInstancesFluentBuilder,
        cx: &StepContext<'_>,
    ) -> Result<RunInstancesFluentBuilder> {
        let p = self.p;
        let timeout = p.settings.command_timeout;
        let recipe = self.job.recipe;
        match self.role {
            Role::Builder => {
                let limits: Vec<Duration> = recipe
                    .files
                    .iter()
                    .map(|_| timeout)
                    .chain(recipe.steps.iter().map(|s| s.timeout.unwrap_or(timeout)))
                    .chain([timeout])
                    .collect();
                Ok(req.user_data(user_data::builder(user_data::lifetime(
                    &p.settings,
                    &limits,
                ))))
            }
            Role::Canary => {
                let limits: Vec<Duration> = recipe
                    .validators
                    .iter()
                    .map(|_| timeout)
                    .chain([timeout])
                    .collect();
                let lifetime = user_data::lifetime(&p.settings, &limits);
                // A pipeline that names no canary cluster (a rehearsal) boots the canary with
                // the dead-man's timer only; its cluster checks are skipped and say so.
                let Some(name) = p.canary_cluster.clone() else {
                    return Ok(req.user_data(user_data::unjoined_canary(lifetime)));
                };
                let join = self.job.base.join.ok_or_else(|| {
                    cx.error(
                        self.name(),
                        "the base does not say how its nodes join a cluster",
                    )
                })?;
                p.eks_slot().await;
                let cluster = super::eks::describe_cluster(&p.eks, &name, &p.region).await?;
                // Beside bake's own group (no inbound rules): the cluster's, which admits only
                // its members, as the nodes of the cluster have it.
                let req = match &cluster.security_group {
                    Some(sg) => req.security_group_ids(sg),
                    None => req,
                };
                Ok(req.user_data(user_data::canary(join, &cluster, lifetime)?))
            }
        }
    }
}

/// Waits for the instance's SSM agent; from then on the instance is reached as a guest.
pub(super) struct Agent<'a> {
    pub p: &'a AwsProvider,
    pub role: Role,
}

#[async_trait]
impl Step<State> for Agent<'_> {
    fn name(&self) -> &str {
        match self.role {
            Role::Builder => "builder-agent",
            Role::Canary => "canary-agent",
        }
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let id = state
            .instances
            .get(self.role)
            .cloned()
            .ok_or_else(|| cx.error(self.name(), "no instance"))?;
        cx.phase(&format!("waiting for the SSM agent on {id}"));
        let guest = self.p.guest(&id);
        guest.wait_online(self.p.settings.agent_timeout).await?;
        *state.guests.slot(self.role) = Some(guest);
        Ok(())
    }
}

pub(super) struct StopBuilder<'a> {
    pub p: &'a AwsProvider,
}

#[async_trait]
impl Step<State> for StopBuilder<'_> {
    fn name(&self) -> &str {
        "stop-builder"
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        let id = state
            .instances
            .get(Role::Builder)
            .cloned()
            .ok_or_else(|| cx.error(self.name(), "no builder"))?;
        cx.phase(&format!("stopping builder {id}"));
        self.p.ec2_slot().await;
        self.p
            .ec2
            .stop_instances()
            .instance_ids(&id)
            .send()
            .await
            .map_err(|e| err(format!("stopping {id} in {}", self.p.region), e))?;
        self.p.wait_instance(&id, InstanceStateName::Stopped).await
    }
}

/// Starts an instance's termination once it has served (the builder when its image exists,
/// the canary when it has been judged). Shutting down takes tens of seconds on EC2 and runs
/// meanwhile (the canary launching, the copies): the instance stays in its slot, and the
/// launch step's cleanup at the end of the chain confirms it is gone before the journal says so.
pub(super) struct Terminate<'a> {
    pub p: &'a AwsProvider,
    pub role: Role,
}

#[async_trait]
impl Step<State> for Terminate<'_> {
    fn name(&self) -> &str {
        match self.role {
            Role::Builder => "terminate-builder",
            Role::Canary => "terminate-canary",
        }
    }
    async fn run(&self, state: &mut State, cx: &StepContext<'_>) -> Result<()> {
        if let Some(id) = state.instances.get(self.role) {
            cx.phase(&format!("terminating {} {id}", self.role.as_str()));
            self.p.request_termination(id).await?;
        }
        Ok(())
    }
}
