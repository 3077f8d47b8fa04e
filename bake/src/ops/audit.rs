//! `bake audit`: are the running nodes still what their image was? Read-only: it finds the
//! nodes built from a recipe's releases, and on each runs the checks the catalog declares safe
//! on a live node (`audit = true`, run with `BAKE_AUDIT=1`) and compares the node's software
//! with the package manifest captured when its image was baked. It changes no node.

use crate::canary::Prepared;
use crate::guest::audit::{AuditProgram, DocumentState, Installed};
use crate::input::pipeline::Pipeline;
use crate::provider::{Fleet, FleetNode};
use crate::registry::Registry;
use crate::release::ReleaseId;
use crate::verdict::{CheckResult, Status};
use crate::{error::exit, Arch, Error, Result};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Nodes audited at once: each is a few SSM commands, paced by the client's rate limit.
const AT_ONCE: usize = 8;

/// What to audit, and how long to wait for each node.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub recipe: Option<&'a str>,
    /// A cluster of the pipeline: only the nodes joined to its EKS cluster.
    pub cluster: Option<&'a str>,
    /// A node's name or instance ID.
    pub node: Option<&'a str>,
    /// How long a node's agent may take to answer before the node is not judged.
    pub wait: Duration,
}

/// One node's audit.
#[derive(Debug, Clone, Serialize)]
pub struct NodeAudit {
    pub node: String,
    pub instance: String,
    pub recipe: String,
    pub arch: Arch,
    pub release: ReleaseId,
    pub image: String,
    /// Where the node runs when not in the pipeline's region: a copy region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The copy of `image` it runs there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy: Option<String>,
    /// The channels whose current release is the node's.
    pub channels: Vec<String>,
    pub launched: Option<DateTime<Utc>>,
    pub checks: Vec<CheckResult>,
    /// Packages added, removed or changed since the image was baked.
    pub changed: Vec<String>,
    /// Why the node could not be judged (agent offline, a check that did not finish).
    pub not_judged: Option<String>,
}

impl NodeAudit {
    /// The node is no longer what its image was: a check failed or its software changed.
    pub fn drifted(&self) -> bool {
        !self.changed.is_empty() || self.checks.iter().any(|c| c.status == Status::Fail)
    }
}

/// Every audited node, by recipe then name.
#[derive(Debug, Clone, Serialize)]
pub struct Audit {
    pub nodes: Vec<NodeAudit>,
}

impl Audit {
    /// 3 when any node drifted, else 1 when any could not be judged, else 0.
    pub fn exit_code(&self) -> u8 {
        if self.nodes.iter().any(NodeAudit::drifted) {
            exit::REJECTED
        } else if self.nodes.iter().any(|n| n.not_judged.is_some()) {
            exit::FAILURE
        } else {
            exit::OK
        }
    }
}

/// Where each of a recipe's images comes from: release and arch.
type Origins = BTreeMap<String, (ReleaseId, Arch)>;

/// Audits the nodes `req` selects. `progress` hears of each node as it is done.
pub async fn audit(
    registry: &dyn Registry,
    fleet: &dyn Fleet,
    pipeline: &Pipeline,
    req: &Request<'_>,
    progress: &(dyn Fn(usize, usize, &NodeAudit) + Sync),
) -> Result<Audit> {
    let work = select(registry, fleet, pipeline, req).await?;
    // The audit program of each recipe with a node to judge, installed as this pipeline would.
    let programs: Vec<AuditProgram> = pipeline
        .bakes
        .iter()
        .filter(|b| work.iter().any(|(_, a)| a.recipe == b.recipe.name))
        .map(|b| AuditProgram::new(&b.recipe.name, &b.recipe.validators))
        .collect();
    if !programs.is_empty() {
        installed(fleet, pipeline, &programs).await?;
    }
    let total = work.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let mut nodes: Vec<NodeAudit> = futures::stream::iter(work)
        .map(|(node, mut audit)| {
            let (done, programs) = (&done, &programs);
            async move {
                if audit.not_judged.is_none() {
                    let program = programs
                        .iter()
                        .find(|p| p.recipe == audit.recipe)
                        .expect("a program for each recipe with a node");
                    let judged = judge(registry, fleet, &node, program, req, &mut audit);
                    if let Err(why) = judged.await {
                        audit.not_judged = Some(why);
                    }
                }
                let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                progress(n, total, &audit);
                audit
            }
        })
        .buffer_unordered(AT_ONCE)
        .collect()
        .await;
    nodes.sort_by(|a, b| (&a.recipe, &a.node).cmp(&(&b.recipe, &b.node)));
    Ok(Audit { nodes })
}

/// The running nodes `req` selects, each with its audit, not yet judged: its recipe, release,
/// arch and channels from the registry.
async fn select(
    registry: &dyn Registry,
    fleet: &dyn Fleet,
    pipeline: &Pipeline,
    req: &Request<'_>,
) -> Result<Vec<(FleetNode, NodeAudit)>> {
    let eks_cluster = match req.cluster {
        Some(c) => Some(
            pipeline
                .cluster(c)?
                .eks_cluster
                .clone()
                .unwrap_or_else(|| c.to_string()),
        ),
        None => None,
    };
    let mut work = Vec::new();
    for bake in &pipeline.bakes {
        let recipe = bake.recipe.name.as_str();
        if req.recipe.is_some_and(|r| r != recipe) {
            continue;
        }
        let mut origins = Origins::new();
        for m in registry.releases(recipe).await? {
            for (arch, image) in &m.images {
                origins.insert(image.image_id.clone(), (m.release.clone(), *arch));
            }
        }
        let channels = registry.channels(recipe).await?;
        let images: Vec<String> = origins.keys().cloned().collect();
        let mut current: Vec<String> = channels
            .values()
            .flat_map(|e| e.images.values().cloned())
            .filter(|i| origins.contains_key(i))
            .collect();
        current.sort();
        current.dedup();
        for node in fleet.nodes(&images, &current).await? {
            let other_node = req
                .node
                .is_some_and(|n| n != node.name && n != node.instance);
            // A node whose tags name another cluster is not asked for; one whose tags name
            // none (launched by an eks-node module before it tagged the cluster) may be in the
            // one asked for: named, not judged, never silently left out.
            let other_cluster = eks_cluster
                .as_deref()
                .is_some_and(|c| node.cluster.as_deref().is_some_and(|n| n != c));
            if other_node || other_cluster {
                continue;
            }
            let untagged = eks_cluster
                .as_deref()
                .filter(|_| node.cluster.is_none())
                .map(|c| {
                    format!(
                        "its tags name no EKS cluster (`{}`), so it may be in `{c}`: apply its eks-node module again (the tag is added in place, the node stays) or audit without --cluster",
                        crate::provider::CLUSTER_TAG
                    )
                });
            let (release, arch) = origins[&node.image].clone();
            let audit = NodeAudit {
                node: node.name.clone(),
                instance: node.instance.clone(),
                recipe: recipe.to_string(),
                arch,
                channels: channels
                    .iter()
                    .filter(|(_, e)| e.release == release)
                    .map(|(c, _)| c.clone())
                    .collect(),
                release,
                image: node.image.clone(),
                region: node.region.clone(),
                copy: node.copy.clone(),
                launched: node.launched,
                checks: Vec::new(),
                changed: Vec::new(),
                not_judged: untagged,
            };
            work.push((node, audit));
        }
    }
    if let Some(n) = req.node.filter(|_| work.is_empty()) {
        return Err(Error::Usage(format!(
            "no running node named `{n}` (or with that instance ID) runs an image of {}",
            req.recipe.unwrap_or("the pipeline's recipes")
        )));
    }
    Ok(work)
}

/// The checks and the software comparison on one node; an error is why it was not judged.
async fn judge(
    registry: &dyn Registry,
    fleet: &dyn Fleet,
    node: &FleetNode,
    program: &AuditProgram,
    req: &Request<'_>,
    audit: &mut NodeAudit,
) -> std::result::Result<(), String> {
    let mut probe = fleet
        .probe(node, program, audit.arch, req.wait)
        .await
        .map_err(|e| e.to_string())?;
    let (os, outcomes) = probe.checks().await?;
    let os = Prepared::parse(&os);
    for (v, ran) in program.checks().iter().zip(outcomes) {
        // A check for another distribution did not run there (the program's guard).
        if !os.applies(v) {
            let why = format!(
                "applies to {}; this node runs {}",
                v.applies_to.join(", "),
                os.os()
            );
            audit.checks.push(CheckResult::not_applicable(&v.name, why));
            continue;
        }
        let ran = ran.map_err(|why| format!("{}: {why}", v.name))?;
        let result = crate::verdict::judged(v, ran.exit_code, &ran.stdout, &ran.stderr)?;
        audit.checks.push(result);
    }
    let baked = registry
        .package_manifest(&audit.recipe, &audit.release, audit.arch)
        .await
        .map_err(|e| e.to_string())?;
    let Some(baked) = baked else {
        let why = format!(
            "the registry keeps no package manifest of {} {}",
            audit.release, audit.arch
        );
        let name = crate::steps::validators::SOFTWARE_AS_BAKED;
        audit.checks.push(CheckResult::not_applicable(name, why));
        return Ok(());
    };
    let now = probe.packages().await?;
    audit.changed = crate::packages::changed_since_bake(&baked, &now);
    Ok(())
}

/// Refuses to audit where a recipe's audit program is not installed as this pipeline would
/// install it (AWS: its SSM document missing or with other content in a region), naming each
/// and the command that installs them. Nothing is sent to a node before.
async fn installed(
    fleet: &dyn Fleet,
    pipeline: &Pipeline,
    programs: &[AuditProgram],
) -> Result<()> {
    let wrong: Vec<String> = fleet
        .documents(programs, false)
        .await?
        .into_iter()
        .filter(|d| d.state != DocumentState::Current)
        .map(|d| {
            let how = match d.state {
                DocumentState::Missing => "does not exist",
                _ => "has other content than this pipeline's checks (they changed since it was installed)",
            };
            format!("the audit document {} of {} in {} {how}", d.name, d.recipe, d.region)
        })
        .collect();
    if wrong.is_empty() {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "{}; install it with `bake audit-document {} --apply` (or apply it as its content from `bake audit-document`), then audit again",
        wrong.join("; "),
        pipeline.file.display()
    )))
}

/// `bake audit-document`: each recipe's audit program (or `recipe`'s alone), and where its
/// installed form stands in each region; with `apply`, installed where missing or stale.
pub async fn documents(
    fleet: &dyn Fleet,
    pipeline: &Pipeline,
    recipe: Option<&str>,
    apply: bool,
) -> Result<(Vec<AuditProgram>, Vec<Installed>)> {
    let programs: Vec<AuditProgram> = pipeline
        .bakes
        .iter()
        .filter(|b| recipe.is_none_or(|r| r == b.recipe.name))
        .map(|b| AuditProgram::new(&b.recipe.name, &b.recipe.validators))
        .collect();
    let installed = fleet.documents(&programs, apply).await?;
    Ok((programs, installed))
}
