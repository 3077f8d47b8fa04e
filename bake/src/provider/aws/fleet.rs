//! The running nodes of bake's images, for `bake audit`: found by `image-id` filter (at most
//! 200 IDs a call, EC2's limit per filter) among running instances, in the pipeline's region
//! and, running the images' copies, in each copy region; reached through SSM in their region.

use super::audit_document::DocumentProbe;
use super::list::tag;
use super::usage::chunked_filters;
use super::AwsProvider;
use crate::guest::audit::{AuditProgram, Installed, NodeProbe};
use crate::provider::{Fleet, FleetNode};
use crate::{Arch, Error, Result};
use async_trait::async_trait;
use aws_sdk_ec2::types::Filter;
use std::time::Duration;

/// The eks-node module's tag naming the node (terraform/modules/eks-node).
pub const NODE_TAG: &str = "bake:node";
pub use crate::provider::CLUSTER_TAG;

#[async_trait]
impl Fleet for AwsProvider {
    async fn nodes(&self, images: &[String], _current: &[String]) -> Result<Vec<FleetNode>> {
        let mut out = Vec::new();
        for (image, i) in running(&self.images(), images).await? {
            out.push(node(&i, image, None));
        }
        // In each copy region, the nodes of the images' copies there.
        for copies in self.copy_regions() {
            let region = copies.region().to_string();
            let mut source_of = std::collections::BTreeMap::new();
            for (source, those) in copies.copies_of_many(images).await? {
                for copy in those {
                    source_of.insert(copy, source.clone());
                }
            }
            let ids: Vec<String> = source_of.keys().cloned().collect();
            for (copy, i) in running(&copies, &ids).await? {
                let mut n = node(&i, source_of[&copy].clone(), Some(region.clone()));
                n.copy = Some(copy);
                out.push(n);
            }
        }
        out.sort_by(|a, b| (&a.name, &a.instance).cmp(&(&b.name, &b.instance)));
        Ok(out)
    }

    async fn probe(
        &self,
        node: &FleetNode,
        program: &AuditProgram,
        arch: Arch,
        wait: Duration,
    ) -> Result<Box<dyn NodeProbe>> {
        let guest = match &node.region {
            Some(region) => self.guest_in(region, &node.instance)?,
            None => AwsProvider::guest(self, &node.instance),
        };
        guest.wait_online(wait).await?;
        let content = program.document().map_err(Error::Usage)?;
        Ok(Box::new(DocumentProbe {
            guest,
            document: program.document_name(self.owner()),
            hash: AuditProgram::hash(&content),
            program: program.clone(),
            arch,
            label: format!("{} {arch} audit {}", program.recipe, node.instance),
        }))
    }

    async fn documents(&self, programs: &[AuditProgram], apply: bool) -> Result<Vec<Installed>> {
        self.audit_documents(programs, apply).await
    }
}

/// The running instances of `images` in one region, with the image each runs: by `image-id`
/// filter, 200 a call.
async fn running(
    region: &super::image::Images<'_>,
    images: &[String],
) -> Result<Vec<(String, aws_sdk_ec2::types::Instance)>> {
    let state = Filter::builder()
        .name("instance-state-name")
        .values("running")
        .build();
    let list = region.lister();
    let mut out = Vec::new();
    for filter in chunked_filters("image-id", images) {
        for i in list
            .instances(
                &[filter, state.clone()],
                "the nodes of the releases' images",
            )
            .await?
        {
            if let (Some(_), Some(image)) = (i.instance_id(), i.image_id()) {
                out.push((image.to_string(), i));
            }
        }
    }
    Ok(out)
}

/// A node as the eks-node module tags it: its name (`bake:node`, else `Name`, else its ID),
/// its cluster (`bake:cluster`), running `image` (a release's image) in `region` (None: the
/// pipeline's own).
fn node(i: &aws_sdk_ec2::types::Instance, image: String, region: Option<String>) -> FleetNode {
    let id = i.instance_id().unwrap_or_default();
    let name = [tag(i.tags(), NODE_TAG), tag(i.tags(), "Name")]
        .into_iter()
        .find(|n| !n.is_empty())
        .unwrap_or(id);
    FleetNode {
        name: name.to_string(),
        instance: id.to_string(),
        image,
        launched: i
            .launch_time()
            .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
        cluster: Some(tag(i.tags(), CLUSTER_TAG))
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        region,
        copy: None,
    }
}
