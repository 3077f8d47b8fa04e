//! `bake run` over the pipeline, with the in-process provider: publish, up to date, reuse,
//! rejection, failure, partial runs, locks and auto-promotion.

use crate::common;

use bake::input::pipeline::Pipeline;
use bake::ops::plan::Filter;
use bake::ops::run::{run, ArchOutcome, RunContext, RunOptions, RunSummary};
use bake::registry::{Registry, SqliteRegistry};
use bake::report::LogReporter;
use bake::{Arch, Error};
use common::fake::FakeProvider;
use common::Project;
use tokio_util::sync::CancellationToken;

struct World {
    project: Project,
    pipeline: Pipeline,
    provider: FakeProvider,
    registry: SqliteRegistry,
}

impl World {
    fn new() -> World {
        let project = Project::new();
        let pipeline = Pipeline::load(&project.path("pipelines/local.toml")).unwrap();
        let registry = SqliteRegistry::open(&project.state()).unwrap();
        World {
            project,
            pipeline,
            provider: FakeProvider::new(),
            registry,
        }
    }

    async fn run(&self, opts: RunOptions) -> (RunSummary, Result<(), Error>) {
        let state = self.project.state();
        let cx = RunContext {
            pipeline: &self.pipeline,
            provider: &self.provider,
            registry: &self.registry,
            reporter: &LogReporter,
            state_dir: &state,
            cancel: CancellationToken::new(),
        };
        run(&cx, &opts).await
    }

    fn journals(&self) -> usize {
        std::fs::read_dir(self.project.state().join("runs"))
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "jsonl")
                })
                .count()
            })
            .unwrap_or(0)
    }
}

fn opts() -> RunOptions {
    RunOptions {
        who: "tester@host".into(),
        ..RunOptions::default()
    }
}

#[tokio::test]
async fn a_run_publishes_both_arches_then_a_rerun_is_up_to_date_and_creates_nothing() {
    let w = World::new();
    let (summary, r) = w.run(opts()).await;
    r.unwrap();
    assert_eq!(summary.published.len(), 1);
    let published = &summary.published[0];
    assert_eq!(published.images.len(), 2);
    assert_eq!(published.promoted_to, vec!["dev".to_string()]);
    assert!(summary
        .results
        .iter()
        .all(|r| r.outcome == ArchOutcome::Validated));
    assert!(w.provider.leaked().is_empty());

    let channels = w.registry.channels("eks-node").await.unwrap();
    assert_eq!(channels["dev"].release, published.release);
    assert!(!channels.contains_key("prod"), "prod never moves by itself");
    assert!(channels["dev"]
        .reason
        .as_deref()
        .unwrap()
        .contains("auto-promotion"));

    let bakes = w.provider.shared().bakes;
    let journals = w.journals();
    let (summary, r) = w.run(opts()).await;
    r.unwrap();
    assert!(summary.up_to_date);
    assert!(summary.published.is_empty());
    assert_eq!(
        w.provider.shared().bakes,
        bakes,
        "an up-to-date run bakes nothing"
    );
    assert_eq!(
        w.journals(),
        journals,
        "an up-to-date run writes no journal"
    );
    assert_eq!(w.registry.releases("eks-node").await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_new_base_for_one_arch_rebakes_it_and_carries_the_other() {
    let w = World::new();
    w.run(opts()).await.1.unwrap();
    w.provider.set_base(Arch::Arm64, "base-arm64-2");
    let (summary, r) = w.run(opts()).await;
    r.unwrap();
    let arm = summary
        .results
        .iter()
        .find(|r| r.arch == Arch::Arm64)
        .unwrap();
    assert_eq!(arm.decision, "base changed");
    assert_eq!(arm.outcome, ArchOutcome::Validated);
    let x86 = summary
        .results
        .iter()
        .find(|r| r.arch == Arch::X86_64)
        .unwrap();
    assert_eq!(x86.outcome, ArchOutcome::UpToDate);
    let releases = w.registry.releases("eks-node").await.unwrap();
    assert_eq!(releases.len(), 2);
    assert_eq!(
        releases[0].images[&Arch::X86_64],
        releases[1].images[&Arch::X86_64],
        "x86_64 carried over"
    );
    assert_ne!(
        releases[0].images[&Arch::Arm64].image_id,
        releases[1].images[&Arch::Arm64].image_id
    );
}

#[tokio::test]
async fn a_rejected_arch_publishes_nothing_and_exits_3() {
    let w = World::new();
    w.provider.reject(Some(Arch::Arm64));
    let (summary, r) = w.run(opts()).await;
    let e = r.unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
    assert!(e.to_string().contains("arm64"));
    assert!(summary.published.is_empty());
    assert!(w.registry.releases("eks-node").await.unwrap().is_empty());
    assert!(w.registry.channels("eks-node").await.unwrap().is_empty());
    let arm = summary
        .results
        .iter()
        .find(|r| r.arch == Arch::Arm64)
        .unwrap();
    assert_eq!(arm.outcome, ArchOutcome::Rejected);
    assert!(arm
        .error
        .as_deref()
        .unwrap()
        .contains("udev rewrote the veth MAC"));
    assert!(w.provider.leaked().is_empty());

    // A rerun does not bake the same rejected key again; it says so and still exits 3.
    let bakes = w.provider.shared().bakes;
    let (_, r) = w.run(opts()).await;
    assert_eq!(r.unwrap_err().exit_code(), 3);
    assert_eq!(
        w.provider.shared().bakes,
        bakes,
        "the validated x86_64 image is reused and the rejected arm64 key is not baked again"
    );
}

#[tokio::test]
async fn a_failed_arch_publishes_nothing_exits_1_and_a_rerun_reuses_the_validated_arch() {
    let w = World::new();
    w.provider.fail_at(Some(Arch::X86_64), "provision");
    let (summary, r) = w.run(opts()).await;
    assert_eq!(r.unwrap_err().exit_code(), 1);
    assert!(summary.published.is_empty());
    assert!(w.registry.releases("eks-node").await.unwrap().is_empty());
    assert!(w.provider.leaked().is_empty());
    assert_eq!(
        w.provider.live_images(),
        1,
        "only arm64's validated image is kept"
    );

    *w.provider.fail_at.lock().unwrap() = None;
    let bakes = w.provider.shared().bakes;
    let (summary, r) = w.run(opts()).await;
    r.unwrap();
    assert_eq!(
        w.provider.shared().bakes,
        bakes + 1,
        "only x86_64 is baked again"
    );
    let arm = summary
        .results
        .iter()
        .find(|r| r.arch == Arch::Arm64)
        .unwrap();
    assert_eq!(arm.outcome, ArchOutcome::Reused);
    assert_eq!(summary.published.len(), 1);
}

#[tokio::test]
async fn an_arch_filter_never_publishes_a_partial_release() {
    let w = World::new();
    let (summary, r) = w
        .run(RunOptions {
            filter: Filter {
                arch: Some(Arch::X86_64),
                ..Filter::default()
            },
            ..opts()
        })
        .await;
    r.unwrap();
    assert_eq!(summary.results.len(), 1);
    assert!(summary.published.is_empty());
    assert!(w.registry.releases("eks-node").await.unwrap().is_empty());
    // The full run completes it, reusing the validated x86_64 image.
    let (summary, r) = w.run(opts()).await;
    r.unwrap();
    assert_eq!(summary.published.len(), 1);
    let x86 = summary
        .results
        .iter()
        .find(|r| r.arch == Arch::X86_64)
        .unwrap();
    assert_eq!(x86.outcome, ArchOutcome::Reused);
}

#[tokio::test]
async fn a_held_lock_stops_the_run_with_exit_4_and_break_lock_takes_it() {
    let w = World::new();
    w.registry
        .lock(
            "eks-node",
            "someone-else",
            std::time::Duration::from_secs(600),
            false,
        )
        .await
        .unwrap();
    let (summary, r) = w.run(opts()).await;
    let e = r.unwrap_err();
    assert_eq!(e.exit_code(), 4);
    assert!(e.to_string().contains("someone-else"));
    assert!(summary
        .results
        .iter()
        .all(|r| r.outcome == ArchOutcome::Locked));
    assert_eq!(w.provider.shared().bakes, 0);

    let (_, r) = w
        .run(RunOptions {
            break_lock: true,
            ..opts()
        })
        .await;
    r.unwrap();
    // The run released the lock it took.
    w.registry
        .lock("eks-node", "next", std::time::Duration::from_secs(1), false)
        .await
        .unwrap();
}

#[tokio::test]
async fn arches_bake_in_parallel() {
    let mut w = World::new();
    w.provider.step_delay = std::time::Duration::from_millis(200);
    w.run(opts()).await.1.unwrap();
    let events = w.provider.shared().events.clone();
    let first_arm = events.iter().position(|e| e.contains("arm64")).unwrap();
    let last_x86_run = events
        .iter()
        .rposition(|e| e.starts_with("run") && e.contains("x86_64"))
        .unwrap();
    assert!(
        first_arm < last_x86_run,
        "arm64 started only after x86_64 finished: {events:?}"
    );
}
