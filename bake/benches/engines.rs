//! Benchmark: the two AWS engines side by side on the same recipe, in the rehearsal's emulator
//! (real VMs under TCG: the local Debian base as the base AMI, tests/moto/machines.py; Image
//! Builder is the emulator's stand-in, tests/moto/imagebuilder.py). One x86_64 `bake run` of
//! eks-node per engine and round, alternating (ec2 first), each in a project of its own so
//! nothing is reused; per run: the wall, bake's API calls by service, and where the time went —
//! from the run's start to its canary's RunInstances (the build: bake's builder with the `ec2`
//! engine; Image Builder's build instance, its test instance and its distribution with
//! `imagebuilder`) and from there to the end (canary, validators, publish, identical in both).
//!
//!     cargo bench --bench engines                 # BAKE_BENCH_ROUNDS=N (default 1)

#[path = "../../tests/common/mod.rs"]
mod common;

use common::moto::{bake_command, Moto};
use common::standin::{rehearsal_emulator, rehearsal_project, use_image_builder};
use common::Project;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Instant;

struct Run {
    wall: f64,
    calls: Vec<Value>,
    /// Seconds from the start to the canary's launch.
    build: f64,
}

async fn engine_project(prefix: &str, moto: &Moto, engine: &str) -> Project {
    let p = rehearsal_project(prefix);
    if engine == "imagebuilder" {
        use_image_builder(&p, moto).await;
    }
    p
}

fn run(moto: &Moto, p: &Project) -> Run {
    let key = p.access_key();
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = Instant::now();
    let out = bake_command(p, moto)
        .args(["run", "pipelines/aws.toml", "-q"])
        .output()
        .unwrap();
    let wall = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "bake run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls: Vec<Value> = moto
        .records()
        .into_iter()
        .filter(|r| r["key"] == key.as_str())
        .collect();
    let canary = calls
        .iter()
        .rev()
        .filter(|r| r["action"] == "RunInstances")
        .find_map(|r| r["t"].as_f64())
        .expect("a canary was launched");
    Run {
        wall,
        build: canary - t0,
        calls,
    }
}

fn by_service(calls: &[Value]) -> String {
    let mut n: BTreeMap<String, usize> = BTreeMap::new();
    for c in calls {
        *n.entry(c["service"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    n.iter()
        .map(|(s, k)| format!("{s} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("BAKE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let warm = rehearsal_project("/bench-engines-warm");
    let (moto, _) = rehearsal_emulator(&warm).await;
    let mut results: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    for round in 0..rounds {
        for engine in ["ec2", "imagebuilder"] {
            let p = engine_project(&format!("/bench-{engine}-{round}"), moto, engine).await;
            let r = run(moto, &p);
            eprintln!(
                "round {round} {engine}: {:.1} s ({:.1} s to the canary), {} calls ({})",
                r.wall,
                r.build,
                r.calls.len(),
                by_service(&r.calls)
            );
            results.entry(engine).or_default().push(r);
        }
    }
    println!("| engine | wall (median) | build: start → canary launch | canary → published | bake's API calls |");
    println!("|---|---:|---:|---:|---|");
    for (engine, runs) in &results {
        let mut sorted: Vec<&Run> = runs.iter().collect();
        sorted.sort_by(|a, b| a.wall.total_cmp(&b.wall));
        let mid = sorted[sorted.len() / 2];
        let median = mid.wall;
        println!(
            "| {engine} | {median:.1} s | {:.1} s | {:.1} s | {} ({}) |",
            mid.build,
            mid.wall - mid.build,
            mid.calls.len(),
            by_service(&mid.calls)
        );
    }
}
