//! Instances and security groups: their state, waits, termination and deletion.

use super::AwsProvider;
use crate::provider::aws::sdk::{code, err, Poll};
use crate::{Error, Result};
use aws_sdk_ec2::types::InstanceStateName;

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
        let poll = Poll::new(self.settings.poll_interval);
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
            if poll.elapsed() > self.settings.instance_timeout {
                return Err(Error::provider(
                    "aws",
                    format!(
                        "{id} in {} is {state:?}, not {want}, after {:?}",
                        self.region, self.settings.instance_timeout
                    ),
                ));
            }
            poll.tick().await;
        }
    }

    /// Terminates the instance and waits until EC2 says it is gone.
    pub(super) async fn terminate(&self, id: &str) -> Result<()> {
        if self.request_termination(id).await? {
            self.wait_instance(id, InstanceStateName::Terminated)
                .await?;
        }
        Ok(())
    }

    /// Asks EC2 to terminate the instance without waiting for it to end (shutting down takes
    /// tens of seconds); false if EC2 no longer knows it.
    pub(super) async fn request_termination(&self, id: &str) -> Result<bool> {
        self.ec2_slot().await;
        match self.ec2.terminate_instances().instance_ids(id).send().await {
            Ok(_) => Ok(true),
            Err(e) if code(&e) == Some("InvalidInstanceID.NotFound") => Ok(false),
            Err(e) => Err(err(format!("terminating {id} in {}", self.region), e)),
        }
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
