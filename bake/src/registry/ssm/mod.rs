//! The registry on SSM Parameter Store, exactly the contract in the README:
//! `<prefix>/<recipe>/releases/<release>/<arch>` (AMI ID, `aws:ec2:image`, written once and
//! read back), `.../manifest` (written last, so readers only see complete releases),
//! `<prefix>/<recipe>/channels/<cluster>/<arch>` and `.../release` (one parameter version per
//! move; the history is the parameter history), and `<prefix>/<recipe>/lock`.
//!
//! Listing releases reads one parameter per release, not every part of every one: beside its
//! `manifest`, each release has an index entry, `<prefix>/<recipe>/releases/<release>` itself
//! (the same manifest), written right after it. A listing of `releases/` one level deep
//! returns exactly those, ten to a page; their descriptions (each release's images, all that
//! prune needs) are listed without the values, fifty a page. `<prefix>/<recipe>/indexed` says every complete
//! release has its entry: a registry written before the index existed is listed part by part
//! until its next publish writes the missing entries (and the marker), under the recipe's lock.
//! Channels likewise: `<prefix>/<recipe>/channels/<cluster>` names a channel that moved
//! (`channels-indexed` once all have one), and where a channel points now is its `release`
//! parameter and that move's durable entry — two reads, however long its history.

use super::{ChannelImage, LockInfo, Registry};
use crate::input::names::SsmPath;
use crate::provider::aws::list::all_pages;
use crate::provider::aws::sdk::{code, err, Limits};
use crate::release::{ChannelEntry, ChannelMove, Manifest, ReleaseId, ReleaseImages, Revocation};
use crate::{Arch, Error, Result};
use async_trait::async_trait;
use aws_sdk_ssm::types::{ParameterTier, ParameterType};
use std::collections::BTreeMap;
use std::time::Duration;

/// DescribeParameters' largest page (AWS: MaxResults 1–50).
const DESCRIBE_PAGE: i32 = 50;

mod channels;
mod lock;
mod releases;

pub use releases::entry_description;

/// What a parameter holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Data {
    Text,
    /// An AMI ID: `DataType=aws:ec2:image`, validated by AWS and read back.
    Image,
}

/// Whether a write may replace an existing value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Create only (`Overwrite=false`): releases, manifests, history entries, locks.
    Once,
    /// A new version of a parameter that moves (channels, a lock refresh).
    Overwrite,
}

pub struct SsmRegistry {
    client: aws_sdk_ssm::Client,
    prefix: SsmPath,
    region: String,
    limits: Limits,
    /// The same prefix in each of the pipeline's copy regions: release parameters there hold
    /// that region's copy, so Terraform in any region reads its own AMI ID.
    replicas: Vec<SsmRegistry>,
}

impl SsmRegistry {
    pub fn new(config: &aws_config::SdkConfig, prefix: SsmPath, limits: Limits) -> SsmRegistry {
        SsmRegistry {
            client: aws_sdk_ssm::Client::new(config),
            prefix,
            region: config
                .region()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "(no region)".into()),
            limits,
            replicas: Vec::new(),
        }
    }

    /// Also writes release parameters (with each region's copy) in `regions`.
    pub fn with_replicas(mut self, config: &aws_config::SdkConfig, regions: &[String]) -> Self {
        self.replicas = regions
            .iter()
            .map(|r| {
                let conf = config
                    .to_builder()
                    .region(aws_config::Region::new(r.clone()))
                    .build();
                SsmRegistry::new(&conf, self.prefix.clone(), self.limits.clone())
            })
            .collect();
        self
    }

    /// Writes `value` at `name` unless it is there already with that value (a run finishing a
    /// release it started); a different value is a conflict.
    async fn put_once(&self, name: &str, value: &str) -> Result<()> {
        self.put_once_as(name, value, Data::Image, None).await
    }

    async fn put_once_as(
        &self,
        name: &str,
        value: &str,
        data: Data,
        description: Option<String>,
    ) -> Result<()> {
        match self.get(name).await? {
            Some(p) if p.value() == Some(value) => Ok(()),
            Some(p) => Err(Error::Conflict(format!(
                "{name} in {} holds {} but this release has {value}; published parameters are never overwritten",
                self.region,
                p.value().unwrap_or_default()
            ))),
            None => self
                .put(name, value, data, Write::Once, description)
                .await
                .map(|_| ()),
        }
    }

    fn path(&self, recipe: &str, rest: &str) -> String {
        super::under(&self.prefix, recipe, rest)
    }

    async fn wait(&self) {
        self.limits.ssm.until_ready().await;
    }

    /// Every parameter under `path`, recursively.
    async fn list(&self, path: &str) -> Result<Vec<aws_sdk_ssm::types::Parameter>> {
        self.list_at(path, true).await
    }

    /// Every parameter under `path`: one level down, or (`recursive`) at any depth.
    async fn list_at(
        &self,
        path: &str,
        recursive: bool,
    ) -> Result<Vec<aws_sdk_ssm::types::Parameter>> {
        all_pages(|token| async move {
            self.wait().await;
            let page = self
                .client
                .get_parameters_by_path()
                .path(path)
                .recursive(recursive)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| err(format!("listing {path} in {}", self.region), e))?;
            Ok((
                page.parameters().to_vec(),
                page.next_token().map(str::to_string),
            ))
        })
        .await
    }

    /// `text` (a parameter's value or description) as JSON; what bake cannot read is named
    /// with the parameter and region it came from.
    fn json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        text: &str,
        what: &str,
    ) -> Result<T> {
        serde_json::from_str(text).map_err(|source| Error::Corrupt {
            location: format!("{name} in {}", self.region),
            what: what.into(),
            source,
        })
    }

    /// The parameters one level under `path`, names and descriptions without their values:
    /// DescribeParameters, fifty a page (GetParametersByPath answers ten).
    async fn describe_level(
        &self,
        path: &str,
    ) -> Result<Vec<aws_sdk_ssm::types::ParameterMetadata>> {
        let filter = aws_sdk_ssm::types::ParameterStringFilter::builder()
            .key("Path")
            .option("OneLevel")
            .values(path)
            .build()
            .expect("the Path filter has its key");
        let filter = &filter;
        all_pages(|token| async move {
            self.wait().await;
            let page = self
                .client
                .describe_parameters()
                .parameter_filters(filter.clone())
                .max_results(DESCRIBE_PAGE)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| err(format!("describing {path} in {}", self.region), e))?;
            Ok((
                page.parameters().to_vec(),
                page.next_token().map(str::to_string),
            ))
        })
        .await
    }

    /// `names`' parameters (those that exist), ten a GetParameters (its limit).
    async fn get_many(
        &self,
        names: &[String],
        what: &str,
    ) -> Result<Vec<aws_sdk_ssm::types::Parameter>> {
        let mut out = Vec::new();
        for chunk in names.chunks(10) {
            self.wait().await;
            let page = self
                .client
                .get_parameters()
                .set_names(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| err(format!("reading {what} in {}", self.region), e))?;
            out.extend(page.parameters().iter().cloned());
        }
        Ok(out)
    }

    async fn get(&self, name: &str) -> Result<Option<aws_sdk_ssm::types::Parameter>> {
        self.wait().await;
        match self.client.get_parameter().name(name).send().await {
            Ok(r) => Ok(r.parameter().cloned()),
            Err(e) if code(&e) == Some("ParameterNotFound") => Ok(None),
            Err(e) => Err(err(format!("reading {name} in {}", self.region), e)),
        }
    }

    /// Writes a parameter. An image ID gets the data type `aws:ec2:image` and is read back
    /// (AWS validates the AMI asynchronously).
    async fn put(
        &self,
        name: &str,
        value: &str,
        data: Data,
        write: Write,
        description: Option<String>,
    ) -> Result<i64> {
        self.wait().await;
        let mut req = self
            .client
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(ParameterType::String)
            .overwrite(write == Write::Overwrite)
            .set_description(description);
        if data == Data::Image {
            req = req.data_type("aws:ec2:image");
        }
        if value.len() > 4096 {
            req = req.tier(ParameterTier::Advanced);
        }
        let version = match req.send().await {
            Ok(r) => r.version(),
            Err(e) if code(&e) == Some("ParameterAlreadyExists") => {
                return Err(Error::Conflict(format!(
                    "{name} already exists in {}; published parameters are never overwritten",
                    self.region
                )))
            }
            Err(e) => return Err(err(format!("writing {name} in {}", self.region), e)),
        };
        if data == Data::Image {
            // Read back: the data type is validated asynchronously.
            let mut delay = Duration::from_millis(200);
            for _ in 0..8 {
                match self.get(name).await? {
                    Some(p) if p.value() == Some(value) => return Ok(version),
                    _ => {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
            return Err(Error::provider(
                "aws",
                format!(
                    "{name} in {}: wrote {value} but could not read it back",
                    self.region
                ),
            ));
        }
        Ok(version)
    }

    /// Deletes every parameter under `path`.
    async fn delete_under(&self, path: &str) -> Result<()> {
        let names: Vec<String> = self
            .list(path)
            .await?
            .iter()
            .filter_map(|p| p.name().map(str::to_string))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        self.delete(&names).await
    }

    async fn delete(&self, names: &[String]) -> Result<()> {
        for chunk in names.chunks(10) {
            self.wait().await;
            self.client
                .delete_parameters()
                .set_names(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| {
                    err(
                        format!("deleting {} in {}", chunk.join(", "), self.region),
                        e,
                    )
                })?;
        }
        Ok(())
    }
}

#[async_trait]
impl Registry for SsmRegistry {
    fn describe(&self) -> String {
        format!("ssm {} in {}", self.prefix, self.region)
    }

    async fn releases(&self, recipe: &str) -> Result<Vec<Manifest>> {
        SsmRegistry::releases(self, recipe).await
    }

    async fn release_images(&self, recipe: &str) -> Result<Vec<ReleaseImages>> {
        SsmRegistry::release_images(self, recipe).await
    }

    async fn publish(&self, manifest: Manifest) -> Result<Manifest> {
        SsmRegistry::publish(self, manifest).await
    }

    async fn release(&self, recipe: &str, id: &ReleaseId) -> Result<Option<Manifest>> {
        SsmRegistry::release(self, recipe, id).await
    }

    async fn newest_release(&self, recipe: &str) -> Result<Option<Manifest>> {
        SsmRegistry::newest_release(self, recipe).await
    }

    async fn package_manifest(
        &self,
        recipe: &str,
        id: &ReleaseId,
        arch: Arch,
    ) -> Result<Option<String>> {
        SsmRegistry::package_manifest(self, recipe, id, arch).await
    }

    async fn incomplete_releases(&self, recipe: &str) -> Result<Vec<ReleaseId>> {
        SsmRegistry::incomplete_releases(self, recipe).await
    }

    async fn delete_release(&self, recipe: &str, id: &ReleaseId) -> Result<()> {
        SsmRegistry::delete_release(self, recipe, id).await
    }

    async fn revoke(&self, recipe: &str, id: &ReleaseId, revocation: &Revocation) -> Result<()> {
        SsmRegistry::revoke(self, recipe, id, revocation).await
    }

    async fn revocation(&self, recipe: &str, id: &ReleaseId) -> Result<Option<Revocation>> {
        SsmRegistry::revocation(self, recipe, id).await
    }

    async fn channel_history(&self, recipe: &str, cluster: &str) -> Result<Vec<ChannelEntry>> {
        SsmRegistry::channel_history(self, recipe, cluster).await
    }

    async fn channel_names(&self, recipe: &str) -> Result<Vec<String>> {
        SsmRegistry::channel_names(self, recipe).await
    }

    async fn channels(&self, recipe: &str) -> Result<BTreeMap<String, ChannelEntry>> {
        SsmRegistry::channels(self, recipe).await
    }

    async fn move_channel(
        &self,
        recipe: &str,
        cluster: &str,
        change: ChannelMove,
    ) -> Result<ChannelEntry> {
        SsmRegistry::move_channel(self, recipe, cluster, change).await
    }

    async fn channel(&self, recipe: &str, cluster: &str) -> Result<Option<ChannelEntry>> {
        SsmRegistry::channel(self, recipe, cluster).await
    }

    async fn recent_moves(
        &self,
        recipe: &str,
        cluster: &str,
        n: usize,
    ) -> Result<Vec<ChannelEntry>> {
        SsmRegistry::recent_moves(self, recipe, cluster, n).await
    }

    async fn channel_image(
        &self,
        recipe: &str,
        cluster: &str,
        arch: Arch,
    ) -> Result<Option<ChannelImage>> {
        SsmRegistry::channel_image(self, recipe, cluster, arch).await
    }

    async fn lock(
        &self,
        recipe: &str,
        owner: &str,
        ttl: Duration,
        break_lock: bool,
    ) -> Result<LockInfo> {
        self.take_lock(recipe, owner, ttl, break_lock).await
    }

    async fn lock_holder(&self, recipe: &str) -> Result<Option<LockInfo>> {
        Ok(self.held(recipe).await?.map(|h| h.info(recipe)))
    }

    async fn refresh_lock(&self, recipe: &str, owner: &str, ttl: Duration) -> Result<LockInfo> {
        match self.held(recipe).await? {
            Some(h) if h.owner == owner => self.take_lock(recipe, owner, ttl, false).await,
            _ => Err(Error::Conflict(format!(
                "lost the lock on recipe `{recipe}`: someone broke it or it expired and was taken over"
            ))),
        }
    }

    async fn unlock(&self, recipe: &str, owner: &str) -> Result<()> {
        if self.held(recipe).await?.is_some_and(|h| h.owner == owner) {
            self.delete(&[self.path(recipe, "lock")]).await?;
        }
        Ok(())
    }
}
