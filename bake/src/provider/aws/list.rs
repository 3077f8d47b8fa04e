//! EC2 listings, every page of them: DescribeImages, DescribeInstances, DescribeSecurityGroups,
//! DescribeVolumes
//! and the launch-template calls answer in pages (AWS may end a page early and hand back a
//! `NextToken` at any size), so a scan that reads only the first page misses what is on the
//! others. Each page waits for the client-side rate limit like any other call.

use crate::provider::aws::sdk::{err, Limits};
use crate::Result;
use aws_sdk_ec2::types::{
    Filter, Image, Instance, LaunchTemplate, LaunchTemplateVersion, SecurityGroup, Volume,
};

/// One EC2 client in one region, for listings.
#[derive(Clone, Copy)]
pub struct Lister<'a> {
    pub ec2: &'a aws_sdk_ec2::Client,
    pub limits: &'a Limits,
    pub region: &'a str,
}

/// Every item of a paginated call: `call(token)` returns one page and the next token.
pub async fn all_pages<T, F, Fut>(mut call: F) -> Result<Vec<T>>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<String>)>>,
{
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let (items, next) = call(token.take()).await?;
        out.extend(items);
        match next {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(out),
        }
    }
}

impl Lister<'_> {
    /// Images this account owns that match every filter.
    pub async fn own_images(&self, filters: &[Filter], what: &str) -> Result<Vec<Image>> {
        all_pages(|token| async move {
            self.limits.ec2.until_ready().await;
            let r = self
                .ec2
                .describe_images()
                .owners("self")
                .set_filters(Some(filters.to_vec()))
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| err(format!("looking for {what} in {}", self.region), e))?;
            Ok((r.images().to_vec(), r.next_token().map(str::to_string)))
        })
        .await
    }

    /// Instances that match every filter.
    pub async fn instances(&self, filters: &[Filter], what: &str) -> Result<Vec<Instance>> {
        all_pages(|token| async move {
            self.limits.ec2.until_ready().await;
            let r = self
                .ec2
                .describe_instances()
                .set_filters(Some(filters.to_vec()))
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| err(format!("looking for {what} in {}", self.region), e))?;
            let items = r
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .cloned()
                .collect();
            Ok((items, r.next_token().map(str::to_string)))
        })
        .await
    }

    /// Security groups that match every filter.
    pub async fn security_groups(
        &self,
        filters: &[Filter],
        what: &str,
    ) -> Result<Vec<SecurityGroup>> {
        all_pages(|token| async move {
            self.limits.ec2.until_ready().await;
            let r = self
                .ec2
                .describe_security_groups()
                .set_filters(Some(filters.to_vec()))
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| err(format!("looking for {what} in {}", self.region), e))?;
            Ok((
                r.security_groups().to_vec(),
                r.next_token().map(str::to_string),
            ))
        })
        .await
    }

    /// Volumes that match every filter.
    pub async fn volumes(&self, filters: &[Filter], what: &str) -> Result<Vec<Volume>> {
        all_pages(|token| async move {
            self.limits.ec2.until_ready().await;
            let r = self
                .ec2
                .describe_volumes()
                .set_filters(Some(filters.to_vec()))
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| err(format!("looking for {what} in {}", self.region), e))?;
            Ok((r.volumes().to_vec(), r.next_token().map(str::to_string)))
        })
        .await
    }

    /// Every launch template of the region.
    pub async fn launch_templates(&self) -> Result<Vec<LaunchTemplate>> {
        all_pages(|token| async move {
            self.limits.ec2.until_ready().await;
            let r = self
                .ec2
                .describe_launch_templates()
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| err(format!("listing launch templates in {}", self.region), e))?;
            Ok((
                r.launch_templates().to_vec(),
                r.next_token().map(str::to_string),
            ))
        })
        .await
    }

    /// Every version of one launch template.
    pub async fn launch_template_versions(&self, id: &str) -> Result<Vec<LaunchTemplateVersion>> {
        all_pages(|token| async move {
            self.limits.ec2.until_ready().await;
            let r = self
                .ec2
                .describe_launch_template_versions()
                .launch_template_id(id)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| {
                    err(
                        format!("reading launch template {id} in {}", self.region),
                        e,
                    )
                })?;
            Ok((
                r.launch_template_versions().to_vec(),
                r.next_token().map(str::to_string),
            ))
        })
        .await
    }
}

/// The value of tag `key`, or "".
pub fn tag<'t>(tags: &'t [aws_sdk_ec2::types::Tag], key: &str) -> &'t str {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
        .unwrap_or_default()
}
