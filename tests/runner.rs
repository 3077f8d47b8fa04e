//! The step runner: cleanup order, cleanup on each failing step, outcome-dependent cleanup,
//! interrupts, cleanup timeouts, and the journal of a process killed with SIGKILL.

use crate::common;

use async_trait::async_trait;
use bake::input::recipe::Recipe;
use bake::input::validate::Catalog;
use bake::journal::{Journal, Resource};
use bake::key::bake_key;
use bake::provider::{BakeJob, ImageStatus, Provider};
use bake::report::LogReporter;
use bake::steps::{Outcome, Runner, Step, StepContext};
use bake::{Arch, Error};
use common::fake::{FakeProvider, STEPS};
use common::repo;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn recipe() -> Recipe {
    let catalog = Catalog::load(&repo().join("validators")).unwrap();
    Recipe::load(&repo().join("recipes"), "eks-node", &catalog).unwrap()
}

async fn bake_once(
    p: &FakeProvider,
    state: &Path,
    cancel: CancellationToken,
) -> (Result<bake::provider::ImageRecord, Error>, Journal) {
    let recipe = recipe();
    let run_id = bake::journal::new_run_id();
    let journal = Journal::create(state, &run_id).unwrap();
    let base = p.resolve_base(&recipe, Arch::X86_64).await.unwrap();
    let job = BakeJob {
        recipe: &recipe,
        arch: Arch::X86_64,
        key: bake_key(&recipe, Arch::X86_64, &base.id),
        base,
        run_id: &run_id,
    };
    let cx = StepContext {
        recipe: "eks-node",
        arch: Arch::X86_64,
        journal: &journal,
        reporter: &LogReporter,
        cancel,
    };
    let r = p.bake(&job, &cx).await;
    (r, journal)
}

fn outstanding(journal: &Journal) -> Vec<Resource> {
    Journal::outstanding(&Journal::read(journal.path()).unwrap())
}

#[tokio::test]
async fn cleanups_run_last_first_on_success_and_keep_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let p = FakeProvider::new();
    let (r, journal) = bake_once(&p, dir.path(), CancellationToken::new()).await;
    let image = r.unwrap();
    assert_eq!(image.status, ImageStatus::Validated);
    let events = p.shared().events.clone();
    let mut expected: Vec<String> = STEPS.iter().map(|s| format!("run {s} x86_64")).collect();
    expected.extend(
        STEPS
            .iter()
            .rev()
            .map(|s| format!("cleanup {s} x86_64 succeeded")),
    );
    assert_eq!(events, expected);
    assert!(p.leaked().is_empty(), "leaked {:?}", p.leaked());
    assert_eq!(p.live_images(), 1);
    // Only the kept image is outstanding in the journal.
    let left = outstanding(&journal);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].kind, bake::journal::Kind::Image);
}

#[tokio::test]
async fn a_failing_step_cleans_up_every_step_that_ran_and_deletes_the_image() {
    for (i, failing) in STEPS.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let p = FakeProvider::new();
        p.fail_at(None, failing);
        let (r, journal) = bake_once(&p, dir.path(), CancellationToken::new()).await;
        match r {
            Err(Error::Step { step, .. }) => assert_eq!(step, *failing),
            other => panic!("step {failing}: expected a step error, got {other:?}"),
        }
        let cleanups: Vec<String> = p
            .shared()
            .events
            .iter()
            .filter(|e| e.starts_with("cleanup"))
            .cloned()
            .collect();
        let expected: Vec<String> = STEPS[..=i]
            .iter()
            .rev()
            .map(|s| format!("cleanup {s} x86_64 failed"))
            .collect();
        assert_eq!(cleanups, expected, "failing at {failing}");
        assert!(
            p.leaked().is_empty(),
            "failing at {failing}: leaked {:?}",
            p.leaked()
        );
        assert_eq!(
            p.live_images(),
            0,
            "failing at {failing}: an image survived a failed bake"
        );
        assert!(outstanding(&journal).is_empty(), "failing at {failing}");
    }
}

#[tokio::test]
async fn a_rejected_image_is_kept_marked_rejected_and_everything_else_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let p = FakeProvider::new();
    p.reject(Some(Arch::X86_64));
    let (r, _journal) = bake_once(&p, dir.path(), CancellationToken::new()).await;
    let image = r.unwrap();
    assert_eq!(image.status, ImageStatus::Rejected);
    assert!(!image.verdict.accepted);
    assert!(p
        .shared()
        .events
        .iter()
        .any(|e| e == "cleanup create-image x86_64 rejected"));
    assert!(p.leaked().is_empty());
    assert_eq!(p.live_images(), 1);
}

#[tokio::test]
async fn an_interrupt_cleans_up_with_an_uncancelled_context() {
    let dir = tempfile::tempdir().unwrap();
    let p = FakeProvider::new();
    *p.hang_at.lock().unwrap() = Some("launch-canary".into());
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.cancel();
    });
    let (r, journal) = bake_once(&p, dir.path(), cancel).await;
    assert!(matches!(r, Err(Error::Interrupted { .. })), "{r:?}");
    let cleanups: Vec<String> = p
        .shared()
        .events
        .iter()
        .filter(|e| e.starts_with("cleanup"))
        .cloned()
        .collect();
    let expected: Vec<String> = STEPS[..4]
        .iter()
        .rev()
        .map(|s| format!("cleanup {s} x86_64 cancelled"))
        .collect();
    assert_eq!(cleanups, expected);
    assert!(p.leaked().is_empty(), "leaked {:?}", p.leaked());
    assert_eq!(p.live_images(), 0);
    assert!(outstanding(&journal).is_empty());
}

/// Steps that record their cleanups; one cleanup hangs.
struct Slow {
    name: &'static str,
    hang: bool,
    log: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Step<()> for Slow {
    fn name(&self) -> &str {
        self.name
    }
    async fn run(&self, _: &mut (), _: &StepContext<'_>) -> bake::Result<()> {
        Ok(())
    }
    async fn cleanup(&self, _: &mut (), _: Outcome, _: &StepContext<'_>) -> bake::Result<()> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        self.log.lock().unwrap().push(self.name.to_string());
        Ok(())
    }
}

#[tokio::test]
async fn a_cleanup_that_hangs_times_out_and_the_others_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::create(dir.path(), "t").unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let steps: Vec<Box<dyn Step<()>>> = vec![
        Box::new(Slow {
            name: "a",
            hang: false,
            log: log.clone(),
        }),
        Box::new(Slow {
            name: "b",
            hang: true,
            log: log.clone(),
        }),
        Box::new(Slow {
            name: "c",
            hang: false,
            log: log.clone(),
        }),
    ];
    let cx = StepContext {
        recipe: "r",
        arch: Arch::Arm64,
        journal: &journal,
        reporter: &LogReporter,
        cancel: CancellationToken::new(),
    };
    let runner = Runner {
        cleanup_timeout: Duration::from_millis(100),
    };
    let report = runner.run(&steps, &mut (), &cx, |_| true).await;
    assert_eq!(report.outcome, Outcome::Succeeded);
    assert_eq!(*log.lock().unwrap(), vec!["c".to_string(), "a".to_string()]);
    assert_eq!(report.cleanup_errors.len(), 1);
    assert!(report.cleanup_errors[0]
        .to_string()
        .contains("cleanup timed out"));
    assert!(
        report.into_result().is_err(),
        "a failed cleanup must fail the bake"
    );
}

/// The victim of the SIGKILL test. Run on its own (no env), it is a plain test: a bake
/// interrupted after creating its resources leaves nothing outstanding. Run by the kill test
/// (BAKE_VICTIM_DIR set), it stops at the same point and waits to be killed.
#[tokio::test]
async fn journal_victim() {
    let victim = std::env::var_os("BAKE_VICTIM_DIR");
    let dir = tempfile::tempdir().unwrap();
    let state = victim
        .as_ref()
        .map(|d| Path::new(d).to_path_buf())
        .unwrap_or_else(|| dir.path().to_path_buf());
    let p = FakeProvider::new();
    *p.hang_at.lock().unwrap() = Some("validate".into());
    let cancel = CancellationToken::new();
    let watcher = {
        let cancel = cancel.clone();
        let shared = p.shared.clone();
        let state = state.clone();
        let killed = victim.is_some();
        tokio::spawn(async move {
            // Wait until the hanging step is reached.
            loop {
                if shared
                    .lock()
                    .unwrap()
                    .events
                    .iter()
                    .any(|e| e.starts_with("run validate"))
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if killed {
                std::fs::write(state.join("ready"), "ready").unwrap();
            } else {
                cancel.cancel();
            }
        })
    };
    let (r, journal) = bake_once(&p, &state, cancel).await;
    watcher.await.unwrap();
    assert!(matches!(r, Err(Error::Interrupted { .. })));
    assert!(outstanding(&journal).is_empty());
}

#[test]
fn the_journal_of_a_killed_process_lists_every_resource_it_created() {
    let dir = tempfile::tempdir().unwrap();
    // The victim is a test of this module in this binary: its name is the module path without
    // the crate's own name.
    let victim = format!(
        "{}::journal_victim",
        module_path!().split_once("::").unwrap().1
    );
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &victim, "--nocapture", "--test-threads=1"])
        .env("BAKE_VICTIM_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !dir.path().join("ready").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the victim never got ready"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the victim exited early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup runs.
    child.wait().unwrap();

    let runs: Vec<_> = std::fs::read_dir(dir.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    assert_eq!(runs.len(), 1);
    let left = Journal::outstanding(&Journal::read(&runs[0]).unwrap());
    let kinds: Vec<&str> = left.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, vec!["instance", "image", "instance"], "{left:?}");
    assert!(left
        .iter()
        .all(|r| r.recipe == "eks-node" && r.arch == Arch::X86_64));
}

#[test]
fn a_journal_cut_short_by_a_crash_is_still_readable() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::create(dir.path(), "cut").unwrap();
    journal
        .created("r", Arch::X86_64, bake::journal::Kind::Instance, "i-1")
        .unwrap();
    journal
        .created("r", Arch::X86_64, bake::journal::Kind::Image, "img-1")
        .unwrap();
    journal
        .removed(bake::journal::Kind::Instance, "i-1")
        .unwrap();
    let mut text = std::fs::read_to_string(journal.path()).unwrap();
    text.push_str("{\"event\":\"created\",\"recipe\":\"r\",\"ar");
    std::fs::write(journal.path(), text).unwrap();
    let left = Journal::outstanding(&Journal::read(journal.path()).unwrap());
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, "img-1");
}
