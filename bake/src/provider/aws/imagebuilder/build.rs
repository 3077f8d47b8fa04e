//! One Image Builder build: started with its test phase, watched through its states (and the
//! workflow step it is running, for progress), cancelled and deleted when a run cleans up.

use super::ImageBuilder;
use crate::provider::aws::sdk::err;
use crate::{Error, Result};
use aws_sdk_imagebuilder::types::{ImageStatus, ImageTestsConfiguration};
use std::collections::BTreeMap;

/// How a build ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Built {
    /// The AMI in the pipeline's region.
    Available(String),
    Failed {
        status: String,
        reason: String,
    },
}

impl ImageBuilder<'_> {
    /// Starts a build (with the test phase) and returns its image build version ARN.
    pub async fn start(
        &self,
        arns: &(String, String, String),
        tags: &BTreeMap<String, String>,
        client_token: &str,
    ) -> Result<String> {
        self.slot().await;
        let r = self
            .client
            .create_image()
            .image_recipe_arn(&arns.0)
            .infrastructure_configuration_arn(&arns.1)
            .distribution_configuration_arn(&arns.2)
            .image_tests_configuration(
                ImageTestsConfiguration::builder()
                    .image_tests_enabled(true)
                    .build(),
            )
            .set_tags(Some(
                tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            ))
            .client_token(crate::provider::aws::client_token(&[client_token]))
            .send()
            .await
            .map_err(|e| {
                err(
                    format!("starting an Image Builder build in {}", self.region),
                    e,
                )
            })?;
        r.image_build_version_arn()
            .map(str::to_string)
            .ok_or_else(|| {
                Error::provider(
                    "aws",
                    format!("CreateImage in {} returned no ARN", self.region),
                )
            })
    }

    /// The build's status, and its AMI in this region once it is available.
    pub async fn status(&self, arn: &str) -> Result<(ImageStatus, Option<String>, Option<String>)> {
        self.slot().await;
        let r = self
            .client
            .get_image()
            .image_build_version_arn(arn)
            .send()
            .await
            .map_err(|e| err(format!("reading build {arn} in {}", self.region), e))?;
        let image = r.image();
        let state = image.and_then(|i| i.state());
        let status = state
            .and_then(|s| s.status().cloned())
            .unwrap_or(ImageStatus::Pending);
        let reason = state.and_then(|s| s.reason().map(str::to_string));
        let ami = image.and_then(|i| i.output_resources()).and_then(|o| {
            o.amis()
                .iter()
                .find(|a| a.region() == Some(self.region))
                .and_then(|a| a.image().map(str::to_string))
        });
        Ok((status, reason, ami))
    }

    /// The workflow step the build is running now (`build/purge_unattended_upgrades`), for
    /// progress. Progress is best effort: a failed lookup shows no step, it fails nothing.
    pub async fn current_step(&self, arn: &str) -> Option<String> {
        use aws_sdk_imagebuilder::types::{WorkflowExecutionStatus, WorkflowStepExecutionStatus};
        self.slot().await;
        let executions = self
            .client
            .list_workflow_executions()
            .image_build_version_arn(arn)
            .send()
            .await
            .map_err(|e| {
                tracing::debug!(
                    "listing the workflows of {arn}: {}",
                    crate::provider::aws::sdk::describe(&e)
                )
            })
            .ok()?;
        let running = executions
            .workflow_executions()
            .iter()
            .rev()
            .find(|w| w.status() == Some(&WorkflowExecutionStatus::Running))?;
        let id = running.workflow_execution_id()?;
        self.slot().await;
        let steps = self
            .client
            .list_workflow_step_executions()
            .workflow_execution_id(id)
            .send()
            .await
            .map_err(|e| {
                tracing::debug!(
                    "listing the steps of workflow {id}: {}",
                    crate::provider::aws::sdk::describe(&e)
                )
            })
            .ok()?;
        let step = steps
            .steps()
            .iter()
            .find(|s| s.status() == Some(&WorkflowStepExecutionStatus::Running))?;
        let kind = running
            .r#type()
            .map(|t| t.as_str().to_lowercase())
            .unwrap_or_else(|| "workflow".into());
        Some(format!("{kind}/{}", step.name().unwrap_or("?")))
    }

    /// Stops a build that is still running (cleanup after a failure or an interrupt).
    pub async fn cancel(&self, arn: &str) -> Result<()> {
        self.slot().await;
        match self
            .client
            .cancel_image_creation()
            .image_build_version_arn(arn)
            .client_token(crate::provider::aws::client_token(&["cancel", arn]))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Already finished: nothing to cancel.
            Err(e)
                if crate::provider::aws::sdk::code(&e) == Some("ResourceDependencyException") =>
            {
                Ok(())
            }
            Err(e) if crate::provider::aws::sdk::code(&e) == Some("InvalidRequestException") => {
                Ok(())
            }
            Err(e) => Err(err(format!("cancelling build {arn} in {}", self.region), e)),
        }
    }

    /// Deletes the build's Image Builder record (its AMI is deregistered separately).
    pub async fn delete(&self, arn: &str) -> Result<()> {
        self.slot().await;
        match self
            .client
            .delete_image()
            .image_build_version_arn(arn)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if crate::provider::aws::sdk::code(&e) == Some("ResourceNotFoundException") => {
                Ok(())
            }
            Err(e) => Err(err(format!("deleting build {arn} in {}", self.region), e)),
        }
    }
}

/// A build's end from its last status.
pub fn ended(
    status: &ImageStatus,
    reason: Option<String>,
    ami: Option<String>,
    region: &str,
) -> Option<Result<Built>> {
    match status {
        ImageStatus::Available => Some(match ami {
            Some(a) => Ok(Built::Available(a)),
            None => Err(Error::provider(
                "aws",
                format!("Image Builder says AVAILABLE but lists no AMI in {region}"),
            )),
        }),
        // Every other status a build ends in (the one list of them: builds::is_over).
        s if super::is_over(s) => Some(Ok(Built::Failed {
            status: status.as_str().to_string(),
            reason: reason.unwrap_or_else(|| "no reason given".into()),
        })),
        _ => None,
    }
}
