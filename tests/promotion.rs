//! Promotion, rollback, history, diff and prune, written against the registry and provider
//! traits (here: the SQLite registry and the in-process provider), plus the CLI's refusals
//! and lock contention between two processes.

use crate::common;

use bake::input::pipeline::Pipeline;
use bake::ops::diff;
use bake::ops::promote::{self, Promotion, Request};
use bake::ops::prune;
use bake::ops::run::{run, RunContext, RunOptions};
use bake::registry::{Registry, SqliteRegistry};
use bake::release::ReleaseId;
use bake::report::LogReporter;
use bake::{Arch, Error};
use common::fake::FakeProvider;
use common::Project;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(crate) struct World {
    pub(crate) project: Project,
    pipeline: Pipeline,
    provider: FakeProvider,
    registry: SqliteRegistry,
}

impl World {
    pub(crate) fn new(soak: &str) -> World {
        let project = Project::new();
        project.edit(
            "pipelines/local.toml",
            "soak = \"1h\"",
            &format!("soak = \"{soak}\""),
        );
        let pipeline = Pipeline::load(&project.path("pipelines/local.toml")).unwrap();
        let registry = SqliteRegistry::open(&project.state()).unwrap();
        World {
            project,
            pipeline,
            provider: FakeProvider::new(),
            registry,
        }
    }

    /// Publishes a new release (a new base for both arches) and returns its ID.
    pub(crate) async fn release(&self, n: usize) -> ReleaseId {
        self.provider.set_base(Arch::X86_64, &format!("x{n}"));
        self.provider.set_base(Arch::Arm64, &format!("a{n}"));
        let state = self.project.state();
        let cx = RunContext {
            pipeline: &self.pipeline,
            provider: &self.provider,
            registry: &self.registry,
            reporter: &LogReporter,
            state_dir: &state,
            cancel: CancellationToken::new(),
        };
        let (summary, r) = run(
            &cx,
            &RunOptions {
                who: "ci@host".into(),
                ..RunOptions::default()
            },
        )
        .await;
        r.unwrap();
        summary.published[0].release.clone()
    }

    async fn promote(
        &self,
        release: &ReleaseId,
        to: &str,
        from: Option<&str>,
        dry_run: bool,
    ) -> Result<Promotion, Error> {
        let req = Request {
            recipe: "eks-node",
            release,
            to,
            from,
            reason: Some("tested"),
            who: "alice@laptop",
            dry_run,
        };
        promote::promote(&self.registry, &self.pipeline, &req).await
    }

    async fn on(&self, cluster: &str) -> Option<ReleaseId> {
        self.registry
            .channels("eks-node")
            .await
            .unwrap()
            .get(cluster)
            .map(|e| e.release.clone())
    }
}

#[tokio::test]
async fn dev_to_staging_to_prod_with_from_and_soak() {
    let w = World::new("0s");
    let r1 = w.release(1).await;
    assert_eq!(w.on("dev").await, Some(r1.clone()), "auto-promoted to dev");
    assert_eq!(w.on("prod").await, None);

    assert!(matches!(
        w.promote(&r1, "staging", Some("dev"), false).await.unwrap(),
        Promotion::Moved { .. }
    ));
    assert!(matches!(
        w.promote(&r1, "prod", Some("staging"), false)
            .await
            .unwrap(),
        Promotion::Moved { .. }
    ));
    assert_eq!(w.on("prod").await, Some(r1.clone()));

    let prod = w
        .registry
        .channel_history("eks-node", "prod")
        .await
        .unwrap();
    assert_eq!(prod.len(), 1);
    assert_eq!(prod[0].from.as_deref(), Some("staging"));
    assert_eq!(prod[0].who, "alice@laptop");
    assert_eq!(prod[0].reason.as_deref(), Some("tested"));
    assert_eq!(prod[0].images.len(), 2);

    // Promoting what the channel holds is a no-op that says so.
    assert!(matches!(
        w.promote(&r1, "prod", None, false).await.unwrap(),
        Promotion::AlreadyThere { .. }
    ));
    assert_eq!(
        w.registry
            .channel_history("eks-node", "prod")
            .await
            .unwrap()
            .len(),
        1
    );

    // A new release goes to dev by itself, never to prod.
    let r2 = w.release(2).await;
    assert_eq!(w.on("dev").await, Some(r2.clone()));
    assert_eq!(w.on("prod").await, Some(r1.clone()));

    // Dry run shows the change and writes nothing.
    match w.promote(&r2, "prod", Some("dev"), true).await.unwrap() {
        Promotion::WouldMove { change } => {
            assert_eq!(change.from_release, Some(r1.clone()));
            assert_eq!(change.to_release, r2);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.on("prod").await, Some(r1));
}

#[tokio::test]
async fn refusals() {
    let w = World::new("1h");
    let r1 = w.release(1).await;
    let unknown: ReleaseId = "2001.01.01-1".parse().unwrap();
    let e = w
        .promote(&unknown, "staging", None, false)
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("has no release 2001.01.01-1"), "{e}");

    // Not soaked long enough on dev.
    let e = w
        .promote(&r1, "staging", Some("dev"), false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("soak time is 1h"), "{e}");
    // Never on staging.
    let e = w
        .promote(&r1, "prod", Some("staging"), false)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("never been on channel `staging`"),
        "{e}"
    );
    // Undefined cluster.
    let e = w.promote(&r1, "qa", None, false).await.unwrap_err();
    assert!(e.to_string().contains("cluster `qa` is not defined"), "{e}");

    // A release without an image for an arch the cluster uses.
    let mut partial = w.registry.release("eks-node", &r1).await.unwrap().unwrap();
    partial.images.remove(&Arch::Arm64);
    let partial = w.registry.publish(partial).await.unwrap();
    let e = w
        .promote(&partial.release, "staging", None, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no image for arm64"), "{e}");
    assert_eq!(w.on("staging").await, None, "nothing moved");
}

#[test]
fn soak_counts_the_longest_stint_on_the_source_channel() {
    use bake::release::ChannelEntry;
    let t = |h: i64| chrono::DateTime::from_timestamp(1_800_000_000 + h * 3600, 0).unwrap();
    let entry = |r: &str, h: i64| ChannelEntry {
        version: 0,
        release: r.parse().unwrap(),
        images: Default::default(),
        from: None,
        who: "x".into(),
        reason: None,
        at: t(h),
    };
    let a: ReleaseId = "2026.11.01-1".parse().unwrap();
    let history = vec![
        entry("2026.11.01-1", 0),
        entry("2026.11.02-1", 2),
        entry("2026.11.01-1", 3),
    ];
    let soak = Duration::from_secs(3 * 3600);
    // Stints of 2h and (now - 3h).
    assert!(promote::check_soak(&history, "dev", &a, soak, t(4)).is_err());
    assert!(promote::check_soak(&history, "dev", &a, soak, t(6)).is_ok());
    assert!(
        promote::check_soak(&history[..2], "dev", &a, Duration::from_secs(7200), t(99)).is_ok()
    );
    let b: ReleaseId = "2026.11.03-1".parse().unwrap();
    assert!(promote::check_soak(&history, "dev", &b, soak, t(9))
        .unwrap_err()
        .contains("never been"));
}

#[tokio::test]
async fn rollback_goes_to_the_previous_distinct_release_or_a_named_one_from_history() {
    let w = World::new("0s");
    let r1 = w.release(1).await;
    let r2 = w.release(2).await;
    let r3 = w.release(3).await;
    assert_eq!(w.on("dev").await, Some(r3.clone()));
    // History is r1, r2, r3: the previous distinct release is r2.
    let back = promote::rollback(
        &w.registry,
        &w.pipeline,
        &promote::Rollback {
            recipe: "eks-node",
            cluster: "dev",
            to: None,
            who: "bob@host",
            reason: Some("pods crash"),
            dry_run: false,
        },
    )
    .await
    .unwrap();
    match back {
        Promotion::Moved { entry, .. } => {
            assert_eq!(entry.release, r2);
            assert_eq!(
                entry.reason.as_deref(),
                Some(&*format!("rollback from {r3}: pods crash"))
            );
        }
        other => panic!("{other:?}"),
    }
    // Or straight to a named release from the history.
    promote::rollback(
        &w.registry,
        &w.pipeline,
        &promote::Rollback {
            recipe: "eks-node",
            cluster: "dev",
            to: Some(&r1),
            who: "bob@host",
            reason: None,
            dry_run: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(w.on("dev").await, Some(r1.clone()));
    let e = promote::rollback(
        &w.registry,
        &w.pipeline,
        &promote::Rollback {
            recipe: "eks-node",
            cluster: "prod",
            to: None,
            who: "bob",
            reason: None,
            dry_run: false,
        },
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("never pointed anywhere"), "{e}");
    let other: ReleaseId = "2001.01.01-1".parse().unwrap();
    let e = promote::rollback(
        &w.registry,
        &w.pipeline,
        &promote::Rollback {
            recipe: "eks-node",
            cluster: "dev",
            to: Some(&other),
            who: "bob",
            reason: None,
            dry_run: false,
        },
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("was never on channel `dev`"), "{e}");
    let history = w.registry.channel_history("eks-node", "dev").await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|e| e.release.clone())
            .collect::<Vec<_>>(),
        vec![r1.clone(), r2.clone(), r3, r2, r1]
    );
}

#[tokio::test]
async fn diff_reports_package_kernel_base_and_key_changes() {
    let w = World::new("0s");
    let r1 = w.release(1).await;
    let r2 = w.release(2).await;
    let d = diff::diff(&w.registry, &w.provider, "eks-node", &r1, &r2)
        .await
        .unwrap();
    assert_eq!(d.arches.len(), 2);
    let x = &d.arches[0];
    assert_eq!(x.arch, Arch::X86_64);
    assert!(x.key_changed);
    assert_eq!(x.base, (Some("x1".into()), Some("x2".into())));
    assert!(x.packages.changed.iter().any(|c| c.package == "udev"));
    assert!(
        x.highlights
            .iter()
            .any(|c| c.package.starts_with("linux-image-")),
        "{:?}",
        x.highlights
    );
    let same = diff::diff(&w.registry, &w.provider, "eks-node", &r2, &r2)
        .await
        .unwrap();
    assert!(same
        .arches
        .iter()
        .all(|a| !a.key_changed && a.packages.changed.is_empty()));
}

#[tokio::test]
async fn sbom_lists_every_package_of_the_image_and_refuses_what_it_cannot_describe() {
    let w = World::new("0s");
    let r1 = w.release(1).await;
    let bom = bake::ops::sbom::of_release(&w.registry, &w.provider, "eks-node", &r1, Arch::X86_64)
        .await
        .unwrap();
    let image = w
        .registry
        .release("eks-node", &r1)
        .await
        .unwrap()
        .unwrap()
        .images[&Arch::X86_64]
        .image_id
        .clone();
    let subject = bom.metadata.as_ref().unwrap().component.as_ref().unwrap();
    assert_eq!(subject.bom_ref.as_deref(), Some(image.as_str()));
    let names: Vec<String> = bom
        .components
        .as_ref()
        .unwrap()
        .0
        .iter()
        .map(|c| c.purl.as_ref().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(
        // (The fake names the arch as rpm does, so these are rpm packages.)
        names.contains(&"pkg:rpm/apt@2.6.1?arch=x86_64".to_string()),
        "{names:?}"
    );
    // A release unknown, or without that arch: refused, naming what exists.
    let err = bake::ops::sbom::of_release(
        &w.registry,
        &w.provider,
        "eks-node",
        &"2020.01.01-1".parse().unwrap(),
        Arch::X86_64,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("has no release 2020.01.01-1"),
        "{err}"
    );
    // The manifest kept must be the one the release recorded.
    w.provider
        .shared()
        .manifests
        .insert(image.clone(), "apt\t9.9\tx86_64\n".into());
    let err = bake::ops::sbom::of_release(&w.registry, &w.provider, "eks-node", &r1, Arch::X86_64)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not the"), "{err}");
}

#[tokio::test]
async fn prune_plans_then_applies_and_keeps_what_is_referenced_or_in_use() {
    let w = World::new("0s");
    let mut ids = Vec::new();
    for n in 1..=7 {
        ids.push(w.release(n).await);
        if n == 1 {
            w.promote(&ids[0], "prod", None, false).await.unwrap();
        }
    }
    // An instance runs from release 2's x86_64 image.
    let r2 = w
        .registry
        .release("eks-node", &ids[1])
        .await
        .unwrap()
        .unwrap();
    let busy = r2.images[&Arch::X86_64].image_id.clone();
    w.provider
        .shared()
        .in_use
        .insert(busy.clone(), "is used by instance i-0abc".into());

    let inputs = prune::inputs(
        &w.registry,
        &w.provider,
        "eks-node",
        w.pipeline.clusters.keys(),
        &bake::input::pipeline::Retention {
            history: 3,
            ..Default::default()
        },
        2,
    )
    .await
    .unwrap();
    let plan = prune::plan(&inputs);
    let kept: Vec<&ReleaseId> = plan.kept.iter().map(|k| &k.release).collect();
    // prod points at r1; r2's image is in use; dev's last entries (r4..r7) are protected; r6, r7 newest.
    assert!(kept.contains(&&ids[0]) && kept.contains(&&ids[1]));
    let deleted: Vec<&ReleaseId> = plan.delete.iter().map(|d| &d.release).collect();
    assert_eq!(deleted, vec![&ids[2]], "{plan:#?}");
    let why_r1 = &plan
        .kept
        .iter()
        .find(|k| k.release == ids[0])
        .unwrap()
        .reasons;
    assert!(
        why_r1
            .iter()
            .any(|r| r.contains("channel `prod` points at it")),
        "{why_r1:?}"
    );

    // The plan changed nothing.
    assert_eq!(w.registry.releases("eks-node").await.unwrap().len(), 7);
    assert!(w.provider.shared().deleted.is_empty());

    prune::apply(&w.registry, &w.provider, "eks-node", &plan)
        .await
        .unwrap();
    let left: Vec<ReleaseId> = w
        .registry
        .releases("eks-node")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.release)
        .collect();
    assert_eq!(left.len(), 6);
    assert!(!left.contains(&ids[2]));
    assert_eq!(
        w.provider.shared().deleted.len(),
        2,
        "both arches' images of the pruned release"
    );
}

mod cli {
    use super::*;
    use assert_cmd::Command;

    fn bake(p: &Project, args: &[&str]) -> std::process::Output {
        Command::cargo_bin("bake")
            .unwrap()
            .current_dir(p.dir.path())
            .env_remove("BAKE_STATE_DIR")
            .env("BAKE_CACHE_DIR", p.path("cache"))
            .env("USER", "carol")
            .args(args)
            .output()
            .unwrap()
    }

    #[tokio::test]
    async fn promote_history_and_lock_contention_through_the_cli() {
        let w = World::new("0s");
        let r1 = w.release(1).await.to_string();
        let p = &w.project;

        let out = bake(
            p,
            &[
                "promote", "eks-node", &r1, "--to", "staging", "--from", "dev", "--reason",
                "soaked", "-o", "json",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["result"], "moved");
        assert!(v["entry"]["who"].as_str().unwrap().starts_with("carol@"));

        let out = bake(p, &["history", "eks-node", "--cluster", "staging"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&r1) && text.contains("soaked") && text.contains("dev"),
            "{text}"
        );

        // Another process holds the lock: exit 4, naming the holder.
        w.registry
            .lock(
                "eks-node",
                "dave@ci pid 1 run x",
                Duration::from_secs(600),
                false,
            )
            .await
            .unwrap();
        let out = bake(p, &["promote", "eks-node", &r1, "--to", "prod"]);
        assert_eq!(out.status.code(), Some(4));
        assert!(String::from_utf8_lossy(&out.stderr).contains("dave@ci"));
        assert!(w
            .registry
            .channel_history("eks-node", "prod")
            .await
            .unwrap()
            .is_empty());
        // --dry-run reads only; --break-lock is explicit.
        assert!(bake(
            p,
            &["promote", "eks-node", &r1, "--to", "prod", "--dry-run"]
        )
        .status
        .success());
        let out = bake(
            p,
            &["promote", "eks-node", &r1, "--to", "prod", "--break-lock"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // Bad input is exit 2.
        assert_eq!(
            bake(p, &["promote", "eks-node", "not-a-release", "--to", "prod"])
                .status
                .code(),
            Some(2)
        );
        assert_eq!(
            bake(p, &["promote", "eks-node", "2001.01.01-1", "--to", "prod"])
                .status
                .code(),
            Some(2)
        );
        assert_eq!(
            bake(p, &["prune", "eks-node", "--keep", "0"]).status.code(),
            Some(2)
        );
    }

    #[tokio::test]
    async fn a_revoked_release_is_refused_by_promote_pin_and_rollback_and_flagged_by_status() {
        let w = World::new("0s");
        let r1 = w.release(1).await;
        let r2 = w.release(2).await;
        let (r1s, r2s) = (r1.to_string(), r2.to_string());
        let p = &w.project;
        // dev holds r2 (auto-promoted); staging went r1 -> r2.
        w.promote(&r1, "staging", None, false).await.unwrap();
        w.promote(&r2, "staging", None, false).await.unwrap();

        // A reason is required; an unknown release is refused; nothing is written either time.
        assert_eq!(
            bake(p, &["revoke", "eks-node", &r2s]).status.code(),
            Some(2)
        );
        let out = bake(p, &["revoke", "eks-node", "2001.01.01-1", "--reason", "x"]);
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(w.registry.revocation("eks-node", &r2).await.unwrap(), None);

        let out = bake(
            p,
            &[
                "revoke",
                "eks-node",
                &r2s,
                "--reason",
                "kubelet 1.31.2 leaks",
                "-o",
                "json",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["reason"], "kubelet 1.31.2 leaks");
        assert!(v["who"].as_str().unwrap().starts_with("carol@"));
        assert_eq!(
            v["channels"],
            serde_json::json!(["dev", "staging"]),
            "the channels that still point at it"
        );
        // The release itself is unchanged and still listed.
        assert_eq!(w.registry.releases("eks-node").await.unwrap().len(), 2);

        // Written once: a second revocation is a conflict naming the first.
        let out = bake(p, &["revoke", "eks-node", &r2s, "--reason", "again"]);
        assert_eq!(out.status.code(), Some(4));
        assert!(String::from_utf8_lossy(&out.stderr).contains("kubelet 1.31.2 leaks"));

        // Promote refuses it, naming the revocation; nothing moves.
        let out = bake(p, &["promote", "eks-node", &r2s, "--to", "prod"]);
        assert_eq!(out.status.code(), Some(4));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("revoked") && err.contains("kubelet 1.31.2 leaks"),
            "{err}"
        );
        assert!(w.on("prod").await.is_none());
        // Staging goes back to r1; a rollback from there would land on r2: refused.
        let out = bake(
            p,
            &["rollback", "eks-node", "--cluster", "staging", "--to", &r1s],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = bake(p, &["rollback", "eks-node", "--cluster", "staging"]);
        assert_eq!(
            out.status.code(),
            Some(4),
            "never back onto a revoked release"
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
        assert_eq!(w.on("staging").await, Some(r1.clone()));

        // Status flags the channel that still runs it.
        let out = bake(p, &["status", "-o", "json"]);
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let dev: Vec<&serde_json::Value> = rows
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["channel"] == "dev")
            .collect();
        assert!(!dev.is_empty());
        for r in dev {
            assert_eq!(r["release"], r2s.as_str());
            assert_eq!(r["revoked"], "kubelet 1.31.2 leaks", "{r}");
        }
        let out = bake(p, &["status"]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("REVOKED: move this channel"));

        // Moving dev back to r1 is allowed; the revoked release stays revoked.
        let out = bake(
            p,
            &["rollback", "eks-node", "--cluster", "dev", "--to", &r1s],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(w
            .registry
            .revocation("eks-node", &r2)
            .await
            .unwrap()
            .is_some());
    }
}

/// Promotion refuses a release whose kubelet the target cluster's Kubernetes version does not
/// allow (newer, or more than three minors older), naming both versions; a release that
/// records no kubelet is refused where a version is declared, and allowed where none is.
#[tokio::test]
async fn promotion_refuses_a_kubelet_outside_the_clusters_version_skew() {
    let w = World::new("0s");
    w.project.edit(
        "pipelines/local.toml",
        "[clusters.prod]\nprod = true",
        "[clusters.prod]\nprod = true\nkubernetes_version = \"1.31\"",
    );
    let w = World {
        pipeline: Pipeline::load(&w.project.path("pipelines/local.toml")).unwrap(),
        ..w
    };
    let mut releases = Vec::new();
    for (n, kubelet) in [
        (1, Some("1.32.0-1.1")),
        (2, Some("1.27.9-1.1")),
        (3, None),
        (4, Some("1:1.28.3-eks-1-28-9")),
    ] {
        w.provider.shared().kubelet = kubelet.map(str::to_string);
        releases.push(w.release(n).await);
    }
    // Newer than the control plane.
    let e = w
        .promote(&releases[0], "prod", None, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Kubernetes 1.31") && e.contains("kubelet 1.32.0-1.1") && e.contains("newer"),
        "{e}"
    );
    // Four minors older.
    let e = w
        .promote(&releases[1], "prod", None, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("kubelet 1.27.9-1.1") && e.contains("4 minor versions older"),
        "{e}"
    );
    // No kubelet recorded: nothing to check against a declared version.
    let e = w
        .promote(&releases[2], "prod", None, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("records no kubelet version"), "{e}");
    assert_eq!(w.on("prod").await, None, "nothing moved");
    // Three minors older is within the policy; staging declares no version, so any goes.
    assert!(matches!(
        w.promote(&releases[3], "prod", None, false).await.unwrap(),
        Promotion::Moved { .. }
    ));
    assert!(matches!(
        w.promote(&releases[0], "staging", None, false)
            .await
            .unwrap(),
        Promotion::Moved { .. }
    ));
}

#[test]
fn a_kubernetes_version_that_does_not_parse_is_refused_with_its_line() {
    let p = Project::new();
    p.edit(
        "pipelines/local.toml",
        "[clusters.prod]\nprod = true",
        "[clusters.prod]\nprod = true\nkubernetes_version = \"1.31.2\"",
    );
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("bake"))
        .current_dir(p.dir.path())
        .args(["plan", "pipelines/local.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("pipelines/local.toml:")
            && e.contains("is not a Kubernetes version like \"1.31\""),
        "{e}"
    );
    assert!(!p.state().exists(), "nothing created");
}
