//! The running nodes of bake's images, for `bake audit`: found by `image-id` filter (at most
//! 200 IDs a call, EC2's limit per filter) among running instances, reached through SSM.

use super::list::tag;
use super::usage::chunked_filters;
use super::AwsProvider;
use crate::guest::Guest;
use crate::provider::{Fleet, FleetNode};
use crate::Result;
use async_trait::async_trait;
use aws_sdk_ec2::types::Filter;
use std::time::Duration;

/// The eks-node module's tag naming the node (terraform/modules/eks-node).
pub const NODE_TAG: &str = "bake:node";
/// The eks-node module's tag naming the EKS cluster the node joined.
pub const CLUSTER_TAG: &str = "bake:cluster";

#[async_trait]
impl Fleet for AwsProvider {
    async fn nodes(&self, images: &[String], _current: &[String]) -> Result<Vec<FleetNode>> {
        let running = Filter::builder()
            .name("instance-state-name")
            .values("running")
            .build();
        let list = self.images().lister();
        let mut out = Vec::new();
        for filter in chunked_filters("image-id", images) {
            for i in list
                .instances(
                    &[filter, running.clone()],
                    "the nodes of the releases' images",
                )
                .await?
            {
                let (Some(id), Some(image)) = (i.instance_id(), i.image_id()) else {
                    continue;
                };
                let name = [tag(i.tags(), NODE_TAG), tag(i.tags(), "Name")]
                    .into_iter()
                    .find(|n| !n.is_empty())
                    .unwrap_or(id);
                let cluster = Some(tag(i.tags(), CLUSTER_TAG))
                    .filter(|c| !c.is_empty())
                    .map(str::to_string);
                out.push(FleetNode {
                    name: name.to_string(),
                    instance: id.to_string(),
                    image: image.to_string(),
                    launched: i
                        .launch_time()
                        .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
                    cluster,
                });
            }
        }
        out.sort_by(|a, b| (&a.name, &a.instance).cmp(&(&b.name, &b.instance)));
        Ok(out)
    }

    async fn guest(&self, node: &FleetNode, wait: Duration) -> Result<Box<dyn Guest>> {
        let guest = AwsProvider::guest(self, &node.instance);
        guest.wait_online(wait).await?;
        Ok(Box::new(guest))
    }
}
