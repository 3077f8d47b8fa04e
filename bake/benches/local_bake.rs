//! Benchmark: per-phase wall times of a warm-cache x86_64 local bake, read from the run
//! journal, and the ratio of bake's total wall time to the sum of the VM phases it cannot
//! avoid (builder boot, provisioning, shutdown, canary boot, validators).
//!
//!     cargo bench --bench local_bake            # BAKE_BENCH_ARCH=arm64 for arm64
//!
//! The base must already be cached (run `scripts/quickstart` once); a cold cache is built
//! first and reported, not counted.

#[path = "../../tests/common/mod.rs"]
mod common;

use bake::journal::{Entry, Journal, StepStatus};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

const UNAVOIDABLE: &[&str] = &[
    "boot-builder",
    "steps",
    "shutdown",
    "boot-canary",
    "validate",
];

fn main() {
    let arch = std::env::var("BAKE_BENCH_ARCH").unwrap_or_else(|_| "x86_64".into());
    let project = common::Project::new();
    let pipeline = project.read("pipelines/local.toml").replace(
        "arches = [\"x86_64\", \"arm64\"]",
        &format!("arches = [\"{arch}\"]"),
    );
    project.write("pipelines/local.toml", pipeline);
    let bin = env!("CARGO_BIN_EXE_bake");

    let start = Instant::now();
    let out = Command::new(bin)
        .current_dir(project.dir.path())
        .env_remove("BAKE_STATE_DIR")
        .args(["run", "pipelines/local.toml", "-q"])
        .output()
        .expect("bake runs");
    let total = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "bake failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let journal = std::fs::read_dir(project.state().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .expect("a journal");
    let entries = Journal::read(&journal).unwrap();
    let mut started = BTreeMap::new();
    let mut phases: Vec<(String, f64)> = Vec::new();
    for e in &entries {
        if let Entry::Step {
            step, status, at, ..
        } = e
        {
            match status {
                StepStatus::Started => {
                    started.insert(step.clone(), *at);
                }
                StepStatus::Ok => {
                    let t0 = started[step];
                    phases.push((step.clone(), (*at - t0).num_milliseconds() as f64 / 1000.0));
                }
                _ => {}
            }
        }
    }
    let base = phases
        .iter()
        .find(|(s, _)| s == "base")
        .map(|p| p.1)
        .unwrap_or(0.0);
    let unavoidable: f64 = phases
        .iter()
        .filter(|(s, _)| UNAVOIDABLE.contains(&s.as_str()))
        .map(|p| p.1)
        .sum();
    println!("local bake, {arch}, warm base cache: per-phase wall time");
    for (step, secs) in &phases {
        let mark = if UNAVOIDABLE.contains(&step.as_str()) {
            "vm"
        } else {
            ""
        };
        println!("  {step:<15} {secs:>7.2} s  {mark}");
    }
    if base > 5.0 {
        println!("  (the base was not cached: {base:.1} s of mmdebstrap are excluded below)");
    }
    let counted = total - if base > 5.0 { base } else { 0.0 };
    println!("  total (process)  {counted:>7.2} s");
    println!("  unavoidable VM   {unavoidable:>7.2} s");
    println!("  ratio total / unavoidable = {:.3}", counted / unavoidable);
}
