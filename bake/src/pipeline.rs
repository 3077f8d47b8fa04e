//! Pipelines (`pipelines/<name>.toml`): which recipes × arches to bake, with which provider,
//! the clusters (channels) releases are promoted to, and retention. Loading a pipeline loads
//! and checks every recipe it names, so `plan` and `run` refuse bad input before any call.

use crate::diag::{read_toml, Diagnostic};
use crate::input::is_simple_name;
use crate::names::SsmPath;
use crate::recipe::Recipe;
use crate::validate::Catalog;
use crate::Arch;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Local,
    Aws,
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProviderKind::Local => "local",
            ProviderKind::Aws => "aws",
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    provider: ProviderKind,
    #[serde(default = "default_recipes_dir")]
    recipes_dir: String,
    #[serde(default = "default_validators_dir")]
    validators_dir: String,
    #[serde(default = "default_soak", with = "humantime_serde")]
    soak: Duration,
    bake: Vec<RawBake>,
    #[serde(default)]
    clusters: BTreeMap<String, Cluster>,
    canary: Option<RawCanary>,
    local: Option<LocalSettings>,
    aws: Option<AwsSettings>,
    #[serde(default)]
    retention: Retention,
}

fn default_recipes_dir() -> String {
    "../recipes".into()
}
fn default_validators_dir() -> String {
    "../validators".into()
}
fn default_soak() -> Duration {
    Duration::from_secs(24 * 3600)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBake {
    recipe: Spanned<String>,
    arches: Spanned<Vec<Spanned<Arch>>>,
    #[serde(default)]
    auto_promote: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCanary {
    cluster: Spanned<String>,
}

/// A cluster, and the channel of the same name that points it at a release.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Prod channels move only by an explicit `bake promote`.
    #[serde(default)]
    pub prod: bool,
    /// Arches this cluster's nodes use; promotion refuses a release that lacks one.
    #[serde(default = "all_arches")]
    pub arches: Vec<Arch>,
    /// AWS: the EKS cluster a canary joins when this cluster is the canary cluster.
    pub eks_cluster: Option<String>,
}

fn all_arches() -> Vec<Arch> {
    Arch::ALL.to_vec()
}

/// How the local provider runs its VMs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {
    /// A Debian mirror URI or a sources file passed to mmdebstrap; its defaults otherwise.
    pub mirror: Option<String>,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    #[serde(default)]
    pub cpus: Cpus,
    #[serde(default)]
    pub accel: Accel,
    #[serde(default = "default_boot_timeout", with = "humantime_serde")]
    pub boot_timeout: Duration,
    #[serde(default = "default_step_timeout", with = "humantime_serde")]
    pub step_timeout: Duration,
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    #[serde(default = "default_base_timeout", with = "humantime_serde")]
    pub base_timeout: Duration,
}

fn default_memory() -> u32 {
    1024
}
fn default_boot_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_step_timeout() -> Duration {
    Duration::from_secs(900)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(180)
}
fn default_base_timeout() -> Duration {
    Duration::from_secs(3600)
}

impl Default for LocalSettings {
    fn default() -> Self {
        LocalSettings {
            mirror: None,
            memory_mib: default_memory(),
            cpus: Cpus::Auto,
            accel: Accel::Auto,
            boot_timeout: default_boot_timeout(),
            step_timeout: default_step_timeout(),
            shutdown_timeout: default_shutdown_timeout(),
            base_timeout: default_base_timeout(),
        }
    }
}

/// vCPUs per VM: a count, or `"auto"`: the host's cores shared among the VMs the pipeline can
/// run at once (one per arch it bakes; an arch's builder and canary take turns), at least 1 and
/// at most [`Cpus::AUTO_MAX`]. Under TCG a second vCPU cuts a bake by about a third when the
/// host has the core to spare, and costs when it does not, hence the sharing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Cpus {
    #[default]
    Auto,
    Count(u32),
}

impl Cpus {
    /// The most `auto` gives one VM: past it a 1 GiB builder gains nothing measurable.
    pub const AUTO_MAX: u32 = 4;

    /// The vCPU count for each VM when `vms_at_once` run together on `host_cores` cores.
    pub fn resolve(self, host_cores: usize, vms_at_once: usize) -> u32 {
        match self {
            Cpus::Count(n) => n,
            Cpus::Auto => {
                let share = host_cores / vms_at_once.max(1);
                (share as u32).clamp(1, Self::AUTO_MAX)
            }
        }
    }
}

impl Serialize for Cpus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cpus::Auto => s.serialize_str("auto"),
            Cpus::Count(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Cpus;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a vCPU count of at least 1, or \"auto\"")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Cpus, E> {
                match u32::try_from(n) {
                    Ok(n) if n >= 1 => Ok(Cpus::Count(n)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Signed(n), &self)),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Cpus, E> {
                match u32::try_from(n) {
                    Ok(n) if n >= 1 => Ok(Cpus::Count(n)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Unsigned(n), &self)),
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Cpus, E> {
                match v {
                    "auto" => Ok(Cpus::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM if a probe boot succeeds quickly, TCG otherwise.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// Where and how the AWS provider works.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    pub region: Option<String>,
    #[serde(default = "default_prefix", deserialize_with = "writable_prefix")]
    pub ssm_prefix: SsmPath,
    #[serde(default)]
    pub engine: Engine,
    pub subnet_id: Option<String>,
    pub security_group_id: Option<String>,
    pub instance_profile: Option<String>,
    /// The IAM role inside `instance_profile` (default: the profile's name). The printed IAM
    /// policy lets bake pass this role and no other.
    #[serde(default, deserialize_with = "role_name")]
    pub instance_role: Option<String>,
    #[serde(default)]
    pub instance_type: BTreeMap<Arch, String>,
    /// Regions the validated image is copied to (encrypted); each gets the release parameters
    /// with its own AMI ID.
    #[serde(default, deserialize_with = "regions")]
    pub copy_regions: Vec<String>,
    /// Accounts given launch permission on the image and its copies (never public).
    #[serde(default, deserialize_with = "accounts")]
    pub share_accounts: Vec<String>,
    /// KMS key (ID, ARN or `alias/...`, which must exist in every region) for the volumes and
    /// image copies; needed to share (an image under the default EBS key cannot be shared).
    pub kms_key_id: Option<String>,
    /// How often to poll instance, agent, command and image states.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Limit for an instance to run, stop or terminate.
    #[serde(default = "default_instance_timeout", with = "humantime_serde")]
    pub instance_timeout: Duration,
    /// Limit for the SSM agent of a new instance to come online.
    #[serde(default = "default_agent_timeout", with = "humantime_serde")]
    pub agent_timeout: Duration,
    /// Limit for one step or validator command.
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// How long a cluster check (`node-ready`) waits for the canary to join and be Ready; a
    /// canary that never does fails the run (exit 1) without rejecting the image.
    #[serde(default = "default_join_timeout", with = "humantime_serde")]
    pub join_timeout: Duration,
    /// Limit for a new image to become available.
    #[serde(default = "default_image_timeout", with = "humantime_serde")]
    pub image_timeout: Duration,
    /// Longest pause between the SDK's retries of a throttled or failed call.
    #[serde(default = "default_retry_max_backoff", with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// `imagebuilder` engine: an untagged Image Builder output older than this belongs to a
    /// run that died (a live run tags its output seconds after the build); sweep removes it.
    #[serde(default = "default_orphan_age", with = "humantime_serde")]
    pub orphan_age: Duration,
}

fn regions<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    let mut seen = BTreeSet::new();
    for r in &v {
        let parts: Vec<&str> = r.split('-').collect();
        let ok = parts.len() >= 3
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            })
            && parts
                .last()
                .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()));
        if !ok {
            return Err(serde::de::Error::custom(format!(
                "`{r}` is not an AWS region name (e.g. \"us-west-2\")"
            )));
        }
        if !seen.insert(r) {
            return Err(serde::de::Error::custom(format!(
                "region `{r}` is listed twice"
            )));
        }
    }
    Ok(v)
}

fn role_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = String::deserialize(d)?;
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
    if !ok {
        return Err(serde::de::Error::custom(format!(
            "`{v}` is not an IAM role name (1-64 of letters, digits and +=,.@_-)"
        )));
    }
    Ok(Some(v))
}

fn accounts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    let mut seen = BTreeSet::new();
    for a in &v {
        if a.eq_ignore_ascii_case("all") {
            return Err(serde::de::Error::custom(
                "images are never made public: list 12-digit account IDs, not `all`",
            ));
        }
        if a.len() != 12 || !a.chars().all(|c| c.is_ascii_digit()) {
            return Err(serde::de::Error::custom(format!(
                "`{a}` is not a 12-digit AWS account ID"
            )));
        }
        if !seen.insert(a) {
            return Err(serde::de::Error::custom(format!(
                "account `{a}` is listed twice"
            )));
        }
    }
    Ok(v)
}

fn default_join_timeout() -> Duration {
    Duration::from_secs(600)
}

fn default_orphan_age() -> Duration {
    Duration::from_secs(3600)
}

fn default_retry_max_backoff() -> Duration {
    Duration::from_secs(20)
}

fn default_poll() -> Duration {
    Duration::from_secs(5)
}
fn default_instance_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_agent_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_command_timeout() -> Duration {
    Duration::from_secs(1800)
}
fn default_image_timeout() -> Duration {
    Duration::from_secs(3600)
}

fn default_prefix() -> SsmPath {
    SsmPath::parse("/bake").expect("static prefix is valid")
}

fn writable_prefix<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SsmPath, D::Error> {
    let s = String::deserialize(d)?;
    // Every resource bake creates carries the prefix as its `bake:prefix` tag, and an EC2 tag
    // value holds 256 characters; release and channel names must still fit under it.
    if s.chars().count() > 200 {
        return Err(serde::de::Error::custom(format!(
            "`{}…` is {} characters; ssm_prefix may have at most 200 (it is also the value of an EC2 tag)",
            s.chars().take(24).collect::<String>(),
            s.chars().count()
        )));
    }
    SsmPath::parse_writable(&s).map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[default]
    Ec2,
    Imagebuilder,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Releases to keep per recipe.
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// Channel history entries whose images are protected from prune.
    #[serde(default = "default_history")]
    pub history: usize,
}

fn default_keep() -> usize {
    5
}
fn default_history() -> usize {
    3
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep: default_keep(),
            history: default_history(),
        }
    }
}

/// One recipe of a pipeline and the arches it is baked for.
#[derive(Debug, Clone)]
pub struct Bake {
    pub recipe: Recipe,
    pub arches: Vec<Arch>,
    pub auto_promote: Vec<String>,
}

/// Where a pipeline's work happens, with that provider's settings (and only that one's).
#[derive(Debug, Clone)]
pub enum Settings {
    Local(LocalSettings),
    Aws(Box<AwsSettings>),
}

impl Settings {
    pub fn kind(&self) -> ProviderKind {
        match self {
            Settings::Local(_) => ProviderKind::Local,
            Settings::Aws(_) => ProviderKind::Aws,
        }
    }

    /// The AWS settings of an aws pipeline.
    pub fn aws(&self) -> Option<&AwsSettings> {
        match self {
            Settings::Aws(a) => Some(a),
            Settings::Local(_) => None,
        }
    }
}

/// A loaded, checked pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub file: PathBuf,
    pub soak: Duration,
    pub bakes: Vec<Bake>,
    pub clusters: BTreeMap<String, Cluster>,
    pub canary_cluster: Option<String>,
    /// The provider and its settings.
    pub settings: Settings,
    pub retention: Retention,
    pub recipes_dir: PathBuf,
    pub validators_dir: PathBuf,
}

impl Pipeline {
    pub fn load(file: &Path) -> Result<Pipeline, Diagnostic> {
        let (raw, src) = read_toml::<RawPipeline>(file)?;
        let at = |span: std::ops::Range<usize>, msg: String| Diagnostic::at(file, &src, span, msg);
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("pipeline")
            .to_string();
        let dir = file.parent().unwrap_or(Path::new("."));
        let recipes_dir = dir.join(&raw.recipes_dir);
        let validators_dir = dir.join(&raw.validators_dir);

        for (cluster, c) in &raw.clusters {
            if !is_simple_name(cluster) {
                return Err(Diagnostic::file(
                    file,
                    format!("cluster name `{cluster}` must be letters, digits, `-` or `_`"),
                ));
            }
            if c.arches.is_empty() {
                return Err(Diagnostic::file(
                    file,
                    format!("cluster `{cluster}` has an empty `arches` list"),
                ));
            }
        }
        let canary_cluster = match raw.canary {
            Some(c) => {
                if !raw.clusters.contains_key(c.cluster.get_ref()) {
                    return Err(at(
                        c.cluster.span(),
                        undefined_cluster(c.cluster.get_ref(), &raw.clusters),
                    ));
                }
                Some(c.cluster.into_inner())
            }
            None => None,
        };
        let settings = match raw.provider {
            ProviderKind::Aws => Settings::Aws(Box::new(raw.aws.clone().ok_or_else(|| {
                Diagnostic::file(file, "provider = \"aws\" needs an `[aws]` section")
            })?)),
            ProviderKind::Local => Settings::Local(raw.local.clone().unwrap_or_default()),
        };

        if let Some(aws) = &raw.aws {
            let span = |key: &str| crate::diag::span_of(&src, &["aws", key]).unwrap_or(0..0);
            if !aws.share_accounts.is_empty() && aws.kms_key_id.is_none() {
                return Err(at(
                    span("share_accounts"),
                    "sharing needs `kms_key_id` in [aws]: an image encrypted with the default EBS key cannot be shared; use a customer managed key the listed accounts may use".into(),
                ));
            }
            if aws.engine == Engine::Imagebuilder {
                let missing: Vec<&str> = [
                    ("instance_profile", aws.instance_profile.is_none()),
                    ("subnet_id", aws.subnet_id.is_none()),
                    ("security_group_id", aws.security_group_id.is_none()),
                ]
                .into_iter()
                .filter(|(_, m)| *m)
                .map(|(f, _)| f)
                .collect();
                if !missing.is_empty() {
                    return Err(at(
                        span("engine"),
                        format!("engine \"imagebuilder\" needs {} in [aws]: Image Builder's infrastructure configuration is reused across runs, so bake does not create a per-run security group for it (give one with no inbound rules)", missing.join(", ")),
                    ));
                }
            }
            if let Some(r) = aws.region.as_ref().filter(|r| aws.copy_regions.contains(r)) {
                return Err(at(
                    span("copy_regions"),
                    format!(
                        "`{r}` is the pipeline's own region; copy_regions lists the other regions"
                    ),
                ));
            }
        }
        if raw.bake.is_empty() {
            return Err(Diagnostic::file(
                file,
                "a pipeline needs at least one `[[bake]]` entry",
            ));
        }
        let catalog = Catalog::load(&validators_dir)?;
        let mut bakes = Vec::new();
        let mut seen = BTreeSet::new();
        for b in raw.bake {
            if !seen.insert(b.recipe.get_ref().clone()) {
                return Err(at(
                    b.recipe.span(),
                    format!("recipe `{}` is listed twice", b.recipe.get_ref()),
                ));
            }
            if b.arches.get_ref().is_empty() {
                return Err(at(
                    b.arches.span(),
                    "the arch list is empty; name at least one of `x86_64`, `arm64`".into(),
                ));
            }
            let mut arches = Vec::new();
            for a in b.arches.get_ref() {
                if arches.contains(a.get_ref()) {
                    return Err(at(
                        a.span(),
                        format!("arch `{}` is listed twice", a.get_ref()),
                    ));
                }
                arches.push(*a.get_ref());
            }
            for target in &b.auto_promote {
                match raw.clusters.get(target.get_ref()) {
                    None => return Err(at(target.span(), undefined_cluster(target.get_ref(), &raw.clusters))),
                    Some(c) if c.prod => {
                        return Err(at(
                            target.span(),
                            format!("cluster `{}` is prod: prod channels move only by `bake promote`, never automatically", target.get_ref()),
                        ))
                    }
                    Some(c) => {
                        if let Some(a) = c.arches.iter().find(|a| !arches.contains(a)) {
                            return Err(at(
                                target.span(),
                                format!("cluster `{}` uses {a}, which this recipe is not baked for; a release could never be promoted there", target.get_ref()),
                            ));
                        }
                    }
                }
            }
            let recipe = Recipe::load(&recipes_dir, b.recipe.get_ref(), &catalog).map_err(|d| {
                if d.line.is_none() && !d.file.exists() {
                    at(
                        b.recipe.span(),
                        format!("recipe `{}` not found: {}", b.recipe.get_ref(), d.message),
                    )
                } else {
                    d
                }
            })?;
            match raw.provider {
                ProviderKind::Local if recipe.local.is_none() => {
                    return Err(at(
                        b.recipe.span(),
                        format!("recipe `{}` has no `[base.local]` section, needed by provider \"local\" ({})", recipe.name, recipe.file.display()),
                    ))
                }
                ProviderKind::Aws => {
                    for a in b.arches.get_ref() {
                        if !recipe.aws.contains_key(a.get_ref()) {
                            return Err(at(
                                a.span(),
                                format!("recipe `{}` has no `[base.aws]` entry for {} ({})", recipe.name, a.get_ref(), recipe.file.display()),
                            ));
                        }
                    }
                }
                _ => {}
            }
            bakes.push(Bake {
                recipe,
                arches,
                auto_promote: b
                    .auto_promote
                    .into_iter()
                    .map(Spanned::into_inner)
                    .collect(),
            });
        }

        Ok(Pipeline {
            name,
            file: file.to_path_buf(),
            soak: raw.soak,
            bakes,
            clusters: raw.clusters,
            canary_cluster,
            settings,
            retention: raw.retention,
            recipes_dir,
            validators_dir,
        })
    }

    /// The bake entry of a recipe, or a usage error naming the recipes the pipeline has.
    pub fn bake(&self, recipe: &str) -> Result<&Bake, crate::Error> {
        self.bakes
            .iter()
            .find(|b| b.recipe.name == recipe)
            .ok_or_else(|| {
                crate::Error::Usage(format!(
                    "pipeline {} has no recipe `{recipe}` (it has: {})",
                    self.file.display(),
                    self.bakes
                        .iter()
                        .map(|b| b.recipe.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// The role the builder and canary instances run as, if they get an instance profile.
    pub fn instance_role(&self) -> Option<&str> {
        let aws = self.settings.aws()?;
        aws.instance_role
            .as_deref()
            .or(aws.instance_profile.as_deref())
    }

    pub fn ssm_prefix(&self) -> Option<&SsmPath> {
        self.settings.aws().map(|a| &a.ssm_prefix)
    }
}

fn undefined_cluster(name: &str, clusters: &BTreeMap<String, Cluster>) -> String {
    let known: Vec<&str> = clusters.keys().map(String::as_str).collect();
    format!(
        "cluster `{name}` is not defined (define `[clusters.{name}]`; defined: {})",
        if known.is_empty() {
            "none".into()
        } else {
            known.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::Cpus;

    #[test]
    fn auto_shares_the_host_cores_among_the_vms_of_a_run() {
        assert_eq!(Cpus::Auto.resolve(2, 1), 2);
        assert_eq!(Cpus::Auto.resolve(2, 2), 1);
        assert_eq!(Cpus::Auto.resolve(2, 3), 1, "never below one");
        assert_eq!(Cpus::Auto.resolve(64, 1), Cpus::AUTO_MAX);
        assert_eq!(Cpus::Auto.resolve(8, 2), 4);
        assert_eq!(
            Cpus::Count(3).resolve(2, 2),
            3,
            "a count is taken as written"
        );
    }
}
