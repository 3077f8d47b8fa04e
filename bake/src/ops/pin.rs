//! `bake pin`: the Terraform inputs that pin a node set to a release — named directly, or the
//! release a cluster's channel holds now. They name exactly the immutable release parameter
//! `bake` published, so `terraform/modules/eks-node` reads that image and nothing else until
//! someone changes the pin and runs `terraform apply`.
//!
//! A channel is resolved to its release rather than pinned as `<channel parameter>:<version>`:
//! SSM keeps only a parameter's last 100 versions, so a version pin stops resolving 100 moves
//! later (a nightly auto-promoted channel gets there in about three months).

use crate::input::names::SsmPath;
use crate::registry::{self, Registry};
use crate::release::ReleaseId;
use crate::{Arch, Error, Result};
use serde::Serialize;
use std::fmt::{self, Write as _};

/// A node's image in the `pins` map.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum NodePin {
    Release {
        release: String,
    },
    Channel {
        channel: String,
        channel_version: u64,
    },
}

impl fmt::Display for NodePin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodePin::Release { release } => write!(f, "release {release}"),
            NodePin::Channel {
                channel,
                channel_version,
            } => write!(f, "channel {channel} version {channel_version}"),
        }
    }
}

impl NodePin {
    fn hcl(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("strings serialize");
        match self {
            NodePin::Release { release } => format!("{{ release = {} }}", q(release)),
            NodePin::Channel {
                channel,
                channel_version,
            } => format!(
                "{{ channel = {}, channel_version = {channel_version} }}",
                q(channel)
            ),
        }
    }
}

/// One node's line: `"trade-1" = { release = "2026.11.25-1" } # <comment>`.
pub fn entry(node: &str, pin: &NodePin, comment: Option<&str>) -> String {
    let key = serde_json::to_string(node).expect("strings serialize");
    match comment {
        Some(c) => format!("{key} = {} # {c}", pin.hcl()),
        None => format!("{key} = {}", pin.hcl()),
    }
}

/// What to pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Release(ReleaseId),
    /// The release the cluster's channel holds now.
    Channel(String),
}

/// One node set's pin (one arch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pin {
    pub recipe: String,
    pub arch: Arch,
    pub ssm_prefix: String,
    /// The release the image belongs to (for a channel: the release it points at now).
    pub release: ReleaseId,
    /// For a channel pin: the channel and the version of it that was resolved (for people; the
    /// pin itself is the release).
    pub channel: Option<String>,
    pub channel_version: Option<u64>,
    /// The exact name Terraform reads: the release parameter.
    pub parameter: String,
    pub image_id: String,
}

/// The pins of `recipe` for `target`, one per arch (or only `arch`).
pub async fn pins(
    registry: &dyn Registry,
    prefix: &SsmPath,
    recipe: &str,
    target: &Target,
    arch: Option<Arch>,
) -> Result<Vec<Pin>> {
    let mut out = Vec::new();
    match target {
        Target::Release(id) => {
            let release = registry.usable_release(recipe, id).await?;
            for (a, image) in &release.images {
                if arch.is_none_or(|want| want == *a) {
                    out.push(Pin {
                        recipe: recipe.to_string(),
                        arch: *a,
                        ssm_prefix: prefix.to_string(),
                        release: id.clone(),
                        channel: None,
                        channel_version: None,
                        parameter: registry::release_parameter(prefix, recipe, id, *a),
                        image_id: image.image_id.clone(),
                    });
                }
            }
            if out.is_empty() {
                return Err(no_arch(
                    recipe,
                    &format!("release {id}"),
                    arch,
                    release.images.keys(),
                ));
            }
        }
        Target::Channel(cluster) => {
            let Some(entry) = registry.channel(recipe, cluster).await? else {
                let channels = registry.channels(recipe).await?;
                return Err(Error::Usage(format!(
                    "recipe `{recipe}` has never been promoted to channel `{cluster}` (channels: {}); see `bake status`",
                    if channels.is_empty() { "none".to_string() } else { channels.keys().cloned().collect::<Vec<_>>().join(", ") }
                )));
            };
            // A channel that still points at a revoked release is not pinned: move it first.
            registry.usable_release(recipe, &entry.release).await?;
            for a in entry.images.keys() {
                if arch.is_some_and(|want| want != *a) {
                    continue;
                }
                let name = registry::channel_parameter(prefix, recipe, cluster, *a);
                let current = registry.channel_image(recipe, cluster, *a).await?;
                let Some(current) = current.filter(|c| c.image_id == entry.images[a]) else {
                    return Err(Error::Conflict(format!(
                        "{name} does not hold {} as the history of channel `{cluster}` says (release {}): it was changed outside bake; move the channel again with `bake promote` before pinning it",
                        entry.images[a], entry.release
                    )));
                };
                out.push(Pin {
                    recipe: recipe.to_string(),
                    arch: *a,
                    ssm_prefix: prefix.to_string(),
                    release: entry.release.clone(),
                    channel: Some(cluster.clone()),
                    channel_version: Some(current.version),
                    parameter: registry::release_parameter(prefix, recipe, &entry.release, *a),
                    image_id: current.image_id,
                });
            }
            if out.is_empty() {
                return Err(no_arch(
                    recipe,
                    &format!("channel `{cluster}`"),
                    arch,
                    entry.images.keys(),
                ));
            }
        }
    }
    Ok(out)
}

fn no_arch<'a>(
    recipe: &str,
    what: &str,
    arch: Option<Arch>,
    has: impl Iterator<Item = &'a Arch>,
) -> Error {
    let has: Vec<String> = has.map(Arch::to_string).collect();
    Error::Usage(format!(
        "{recipe} {what} has no {} image (it has: {})",
        arch.map(|a| a.to_string()).unwrap_or_default(),
        has.join(", ")
    ))
}

/// An HCL string literal. Recipe names, prefixes, clusters and release IDs are limited to
/// characters that need no escaping beyond what JSON does (no `${`).
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

impl Pin {
    /// The node set's inputs of the eks-node module as a `.tfvars` file, and the line that pins
    /// a node to this release (each node has its own pin: `--node`).
    pub fn tfvars(&self) -> String {
        let vars: Vec<(&str, String)> = vec![
            ("ssm_prefix", quote(&self.ssm_prefix)),
            ("recipe", quote(&self.recipe)),
            ("arch", quote(&self.arch.to_string())),
        ];
        let width = vars.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = format!("# {}\n", self.comment());
        for (k, v) in vars {
            let _ = writeln!(out, "{k:<width$} = {v}");
        }
        let _ = writeln!(
            out,
            "# pin each node (its line of `pins`): {}",
            self.node_entry("<node>")
        );
        out
    }

    /// One node's line of the module's `pins` map.
    pub fn node_entry(&self, node: &str) -> String {
        entry(
            node,
            &NodePin::Release {
                release: self.release.to_string(),
            },
            None,
        )
    }

    /// The lines of `pins` for these nodes, under the comment naming the image.
    pub fn node_entries(&self, nodes: &[String]) -> String {
        let mut out = format!("# {}\n", self.comment());
        for n in nodes {
            let _ = writeln!(out, "{}", self.node_entry(n));
        }
        out
    }

    /// A `data "aws_ssm_parameter"` block reading the image, for configurations without the
    /// module.
    pub fn data_source(&self) -> String {
        format!(
            "# {}\ndata \"aws_ssm_parameter\" \"{}_{}\" {{\n  name = {}\n}}\n",
            self.comment(),
            self.recipe.replace(['-', '.'], "_"),
            self.arch,
            quote(&self.parameter)
        )
    }

    fn comment(&self) -> String {
        match &self.channel {
            Some(c) => format!(
                "bake pin: {} {} = {} (release {}, what channel {c} held at version {}; {})",
                self.recipe,
                self.arch,
                self.image_id,
                self.release,
                self.channel_version.unwrap_or_default(),
                self.parameter
            ),
            None => format!(
                "bake pin: {} {} = {} (release {}; {})",
                self.recipe, self.arch, self.image_id, self.release, self.parameter
            ),
        }
    }
}
