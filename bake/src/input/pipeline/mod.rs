//! Pipelines (`pipelines/<name>.toml`): which recipes × arches to bake, with which provider,
//! the clusters (channels) releases are promoted to, and retention. Loading a pipeline loads
//! and checks every recipe it names, so `plan` and `run` refuse bad input before any call.

use crate::diag::{read_toml, Diagnostic};
use crate::input::is_simple_name;
use crate::input::names::SsmPath;
use crate::input::recipe::Recipe;
use crate::input::validate::Catalog;
use crate::Arch;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

mod settings;
pub use settings::{Accel, AwsSettings, Builder, Cpus, Engine, LocalSettings, Settings};

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
    #[serde(default)]
    probe_image: Option<Spanned<String>>,
    #[serde(default)]
    probe_namespace: Option<Spanned<String>>,
}

/// The pod bake runs on a canary that joined its cluster (`cluster-pod-network`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodProbeSettings {
    /// An image with a POSIX sh, awk, cat, sleep and nslookup (busybox), pullable by the
    /// canary's node; `[canary] probe_image`.
    pub image: String,
    /// The namespace the pod runs in; `[canary] probe_namespace`.
    pub namespace: String,
}

/// busybox from ECR Public's copy of the Docker official images: nodes pull it without
/// Docker Hub's rate limit, through a NAT gateway (a node without one needs a copy in the
/// account's own ECR, named in `probe_image`).
pub const DEFAULT_PROBE_IMAGE: &str = "public.ecr.aws/docker/library/busybox:1.37";

impl Default for PodProbeSettings {
    fn default() -> Self {
        PodProbeSettings {
            image: DEFAULT_PROBE_IMAGE.into(),
            namespace: "default".into(),
        }
    }
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
    /// AWS: the EKS cluster behind this channel. A canary joins it when this is the canary
    /// cluster; promotion reads its Kubernetes version when `kubernetes_version` is not set.
    pub eks_cluster: Option<String>,
    /// The cluster's Kubernetes version ("1.31"): promotion refuses a release whose kubelet is
    /// newer, or more than three minor versions older. Unset: read from `eks_cluster`.
    pub kubernetes_version: Option<crate::kube::KubeVersion>,
}

fn all_arches() -> Vec<Arch> {
    Arch::ALL.to_vec()
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
    /// How long the images of a release that left `keep` stay deprecated before prune deletes
    /// them (AWS; "0s" deletes them at once). Nodes pinned to them keep planning meanwhile and
    /// anyone reading the image sees it is on its way out.
    #[serde(default = "default_deprecate_for", with = "humantime_serde")]
    pub deprecate_for: std::time::Duration,
}

fn default_keep() -> usize {
    5
}
fn default_history() -> usize {
    3
}
fn default_deprecate_for() -> std::time::Duration {
    std::time::Duration::from_secs(7 * 24 * 3600)
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep: default_keep(),
            history: default_history(),
            deprecate_for: default_deprecate_for(),
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

/// A loaded, checked pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub file: PathBuf,
    pub soak: Duration,
    pub bakes: Vec<Bake>,
    pub clusters: BTreeMap<String, Cluster>,
    pub canary_cluster: Option<String>,
    /// The probe pod a canary that joined the cluster runs.
    pub probe: PodProbeSettings,
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

        check_clusters(file, &src, &raw.clusters)?;
        let mut probe = PodProbeSettings::default();
        let canary_cluster = match raw.canary {
            Some(c) => {
                if !raw.clusters.contains_key(c.cluster.get_ref()) {
                    return Err(at(
                        c.cluster.span(),
                        undefined_cluster(c.cluster.get_ref(), &raw.clusters),
                    ));
                }
                if let Some(image) = c.probe_image {
                    let i = image.get_ref();
                    if i.is_empty()
                        || i.len() > 255
                        || i.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        return Err(at(image.span(), format!(
                            "probe_image `{i}` is not an image reference (like \"{DEFAULT_PROBE_IMAGE}\")"
                        )));
                    }
                    probe.image = image.into_inner();
                }
                if let Some(ns) = c.probe_namespace {
                    if !is_dns_label(ns.get_ref()) {
                        return Err(at(ns.span(), format!(
                            "probe_namespace `{}` is not a Kubernetes namespace name (lowercase letters, digits and `-`, at most 63, starting and ending with a letter or digit)",
                            ns.get_ref()
                        )));
                    }
                    probe.namespace = ns.into_inner();
                }
                Some(c.cluster.into_inner())
            }
            None => None,
        };
        let settings = match raw.provider {
            ProviderKind::Aws => Settings::Aws(Box::new(raw.aws.clone().ok_or_else(|| {
                Diagnostic::at_key(
                    file,
                    &src,
                    &["provider"],
                    "provider = \"aws\" needs an `[aws]` section",
                )
            })?)),
            ProviderKind::Local => Settings::Local(raw.local.clone().unwrap_or_default()),
        };

        if let Some(aws) = &raw.aws {
            check_aws(file, &src, aws)?;
        }
        if raw.bake.is_empty() {
            return Err(Diagnostic::at_key(
                file,
                &src,
                &["bake"],
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
            bakes.push(load_bake(
                b,
                file,
                &src,
                raw.provider,
                &raw.clusters,
                &recipes_dir,
                &catalog,
            )?);
        }

        Ok(Pipeline {
            name,
            file: file.to_path_buf(),
            soak: raw.soak,
            bakes,
            clusters: raw.clusters,
            canary_cluster,
            probe,
            settings,
            retention: raw.retention,
            recipes_dir,
            validators_dir,
        })
    }

    /// A cluster of the pipeline, or a usage error naming the clusters it defines.
    pub fn cluster(&self, name: &str) -> Result<&Cluster, crate::Error> {
        self.clusters.get(name).ok_or_else(|| {
            crate::Error::Usage(format!(
                "cluster `{name}` is not defined in {} (defined: {})",
                self.file.display(),
                self.clusters.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
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
        self.settings.aws()?.instance_role()
    }

    /// The EKS cluster the canary joins: its cluster's `eks_cluster`, by default its name.
    pub fn canary_eks_cluster(&self) -> Option<String> {
        let c = self.canary_cluster.as_ref()?;
        Some(
            self.clusters[c]
                .eks_cluster
                .clone()
                .unwrap_or_else(|| c.clone()),
        )
    }

    pub fn ssm_prefix(&self) -> Option<&SsmPath> {
        self.settings.aws().map(|a| &a.ssm_prefix)
    }
}

/// Every cluster's name is simple and its arch list not empty.
fn check_clusters(
    file: &Path,
    src: &str,
    clusters: &BTreeMap<String, Cluster>,
) -> Result<(), Diagnostic> {
    for (cluster, c) in clusters {
        if !is_simple_name(cluster) {
            return Err(Diagnostic::at_key(
                file,
                src,
                &["clusters", cluster],
                format!("cluster name `{cluster}` must be letters, digits, `-` or `_`"),
            ));
        }
        if c.arches.is_empty() {
            return Err(Diagnostic::at_key(
                file,
                src,
                &["clusters", cluster, "arches"],
                format!("cluster `{cluster}` has an empty `arches` list"),
            ));
        }
    }
    Ok(())
}

/// What `[aws]` settings require of each other: sharing a key others may use, Image Builder's
/// reused infrastructure, copy regions other than the pipeline's own.
fn check_aws(file: &Path, src: &str, aws: &AwsSettings) -> Result<(), Diagnostic> {
    let at = |span: std::ops::Range<usize>, msg: String| Diagnostic::at(file, src, span, msg);
    let span = |key: &str| crate::diag::span_of(src, &["aws", key]).unwrap_or(0..0);
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
            format!("`{r}` is the pipeline's own region; copy_regions lists the other regions"),
        ));
    }
    Ok(())
}

/// One `[[bake]]` entry: its arches, its auto-promotion targets (never prod, only clusters
/// whose arches it bakes) and its recipe, loaded and checked against the provider.
///
/// Long because each field of the entry is checked in the file's order, each error at its own
/// line; split up, the rules of one entry would scatter.
fn load_bake(
    b: RawBake,
    file: &Path,
    src: &str,
    provider: ProviderKind,
    clusters: &BTreeMap<String, Cluster>,
    recipes_dir: &Path,
    catalog: &Catalog,
) -> Result<Bake, Diagnostic> {
    let at = |span: std::ops::Range<usize>, msg: String| Diagnostic::at(file, src, span, msg);
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
        match clusters.get(target.get_ref()) {
                None => return Err(at(target.span(), undefined_cluster(target.get_ref(), clusters))),
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
    let recipe = Recipe::load(recipes_dir, b.recipe.get_ref(), catalog).map_err(|d| {
        if d.line.is_none() && !d.file.exists() {
            at(
                b.recipe.span(),
                format!("recipe `{}` not found: {}", b.recipe.get_ref(), d.message),
            )
        } else {
            d
        }
    })?;
    match provider {
        ProviderKind::Local if recipe.local.is_none() => {
            return Err(at(
                b.recipe.span(),
                format!(
                    "recipe `{}` has no `[base.local]` section, needed by provider \"local\" ({})",
                    recipe.name,
                    recipe.file.display()
                ),
            ))
        }
        ProviderKind::Aws => {
            for a in b.arches.get_ref() {
                if !recipe.aws.contains_key(a.get_ref()) {
                    return Err(at(
                        a.span(),
                        format!(
                            "recipe `{}` has no `[base.aws]` entry for {} ({})",
                            recipe.name,
                            a.get_ref(),
                            recipe.file.display()
                        ),
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(Bake {
        recipe,
        arches,
        auto_promote: b
            .auto_promote
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
    })
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

/// A DNS-1123 label, as Kubernetes names namespaces.
fn is_dns_label(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| ok(c) || c == '-')
        && s.starts_with(ok)
        && s.ends_with(ok)
}
