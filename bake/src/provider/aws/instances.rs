//! Instances and security groups: their state, waits, termination and deletion.

use super::AwsProvider;
use crate::aws::{code, err};
use crate::{Error, Result};
use aws_sdk_ec2::types::InstanceStateName;
use std::time::Instant;

impl AwsProvider {
    pub(super) async fn instance_state(&self, id: &str) -> Result<Option<InstanceStateName>> {
        self.ec2_slot().await;
        let r = self.ec2.describe_instances().instance_ids(id).send().await;
        match r {
            Ok(r) => Ok(r
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find(|i| i.instance_id() == Some(id))
                .and_then(|i| i.state())
                .and_then(|s| s.name())
                .cloned()),
            Err(e) if code(&e) == Some("InvalidInstanceID.NotFound") => Ok(None),
            Err(e) => Err(err(format!("describing {id} in {}", self.region), e)),
        }
    }

    /// Polls until the instance reaches `want`; fails at once on a state it cannot leave for it.
    pub(super) async fn wait_instance(&self, id: &str, want: InstanceStateName) -> Result<()> {
        let start = Instant::now();
        loop {
            let state = self.instance_state(id).await?;
            match &state {
                Some(s) if *s == want => return Ok(()),
                None if want == InstanceStateName::Terminated => return Ok(()),
                Some(InstanceStateName::Terminated) => {
                    return Err(Error::provider(
                        "aws",
                        format!(
                            "{id} in {} terminated while waiting for {want}",
                            self.region
                        ),
                    ))
                }
                _ => {}
            }
            if start.elapsed() > self.settings.instance_timeout {
                return Err(Error::provider(
                    "aws",
                    format!(
                        "{id} in {} is {state:?}, not {want}, after {:?}",
                        self.region, self.settings.instance_timeout
                    ),
                ));
            }
            tokio::time::sleep(self.settings.poll_interval).await;
        }
    }

    pub(super) async fn terminate(&self, id: &str) -> Result<()> {
        self.ec2_slot().await;
        match self.ec2.terminate_instances().instance_ids(id).send().await {
            Ok(_) => {}
            Err(e) if code(&e) == Some("InvalidInstanceID.NotFound") => return Ok(()),
            Err(e) => return Err(err(format!("terminating {id} in {}", self.region), e)),
        }
        self.wait_instance(id, InstanceStateName::Terminated).await
    }
    /// The ID of the EBS volume attached to `instance` at `device`, if any.
    pub(super) async fn volume_at(&self, instance: &str, device: &str) -> Result<Option<String>> {
        self.ec2_slot().await;
        let r = self
            .ec2
            .describe_instances()
            .instance_ids(instance)
            .send()
            .await
            .map_err(|e| err(format!("describing {instance} in {}", self.region), e))?;
        Ok(r.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .flat_map(|i| i.block_device_mappings())
            .find(|m| m.device_name() == Some(device))
            .and_then(|m| m.ebs())
            .and_then(|e| e.volume_id())
            .map(str::to_string))
    }

    /// Deletes a security group, waiting out the ENIs of just-terminated instances.
    pub(super) async fn delete_security_group(&self, id: &str) -> Result<()> {
        let mut attempt = 0;
        loop {
            self.ec2_slot().await;
            match self.ec2.delete_security_group().group_id(id).send().await {
                Ok(_) => return Ok(()),
                Err(e) if code(&e) == Some("InvalidGroup.NotFound") => return Ok(()),
                Err(e) if code(&e) == Some("DependencyViolation") && attempt < 30 => {
                    attempt += 1;
                    tokio::time::sleep(self.settings.poll_interval).await;
                }
                Err(e) => {
                    return Err(err(
                        format!("deleting security group {id} in {}", self.region),
                        e,
                    ))
                }
            }
        }
    }
}
