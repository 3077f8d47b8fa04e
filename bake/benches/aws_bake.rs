//! Benchmark: the AWS engine against moto behind the latency proxy, with AWS's delays scaled to
//! a tenth (SSM agent online 4 s after launch, a new image available after 30 s, a copy in
//! another region after 60 s, 20 ms a call) and the pipeline's default poll interval scaled
//! alike (5 s → 500 ms).
//!
//! Reports, per arch alone: the API calls of its chain and the calls left once every repeated
//! poll is counted once (what the chain cannot do without: each request, and one answer per
//! wait). The critical path of a two-arch bake is then one arch's chain — builder agent +
//! image + canary agent + copy, plus its unavoidable calls at 20 ms each — since the arches run
//! side by side. Then the two-arch wall over `BAKE_BENCH_ROUNDS` rounds (default 3; min,
//! median, max), its ratio to that critical path, and a no-op scheduled run (nothing changed:
//! its calls, whether any mutates, its wall).
//!
//!     cargo bench --bench aws_bake
//!
//! `BAKE_BENCH_CALLS=<dir>` writes each single-arch chain's calls, timed, to `<dir>/<arch>.jsonl`.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::moto::{bake_command, Moto, UBUNTU_ARM, UBUNTU_X86};
use common::Project;
use serde_json::Value;
use std::time::Instant;

const AGENT_S: f64 = 4.0;
const IMAGE_S: f64 = 30.0;
const COPY_S: f64 = 60.0;
const DELAY_MS: u64 = 20;
const POLL: &str = "500ms";

/// A project writing under `prefix`, copying to us-west-2, polling at the bench's scale.
fn project(prefix: &str, arches: &str) -> Project {
    let p = Project::new();
    p.edit(
        "pipelines/aws.toml",
        "ssm_prefix = \"/bake\"",
        &format!("ssm_prefix = \"{prefix}\"\npoll_interval = \"{POLL}\""),
    );
    p.edit(
        "pipelines/aws.toml",
        "copy_regions = []",
        "copy_regions = [\"us-west-2\"]",
    );
    p.edit(
        "pipelines/aws.toml",
        "arches = [\"x86_64\", \"arm64\"]",
        &format!("arches = {arches}"),
    );
    for c in ["dev", "staging", "prod"] {
        p.edit(
            "pipelines/aws.toml",
            &format!("[clusters.{c}]\n"),
            &format!("[clusters.{c}]\narches = {arches}\n"),
        );
    }
    p
}

/// Runs `bake run` in the project; its wall time and the calls it made.
fn run(moto: &Moto, p: &Project, extra: &[&str]) -> (f64, Vec<Value>) {
    let key = p.access_key();
    let start = Instant::now();
    let out = bake_command(p, moto)
        .args(["run", "pipelines/aws.toml", "-q"])
        .args(extra)
        .output()
        .unwrap();
    let wall = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "bake run {extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = moto
        .records()
        .into_iter()
        .filter(|r| r["key"] == key.as_str())
        .collect();
    (wall, calls)
}

/// A call that changes nothing (the proxy logs reads by their action's verb).
fn read_only(r: &Value) -> bool {
    let action = r["action"].as_str().unwrap_or_default();
    ["Get", "Describe", "List"]
        .iter()
        .any(|verb| action.starts_with(verb))
}

/// The calls left when consecutive identical reads (one wait's polls) count once.
fn unavoidable(calls: &[Value]) -> usize {
    let ask = |r: &Value| {
        (
            r["service"].clone(),
            r["action"].clone(),
            r["params"].clone(),
            r["body"].clone(),
        )
    };
    calls
        .iter()
        .enumerate()
        .filter(|(i, r)| !(read_only(r) && *i > 0 && ask(&calls[i - 1]) == ask(r)))
        .count()
}

/// What one call through the proxy takes here: the injected delay plus the emulator's own
/// work (reads of an image, an instance list and a parameter; the median of 60).
async fn call_latency(moto: &Moto, image: &str) -> f64 {
    let conf = moto.sdk_via_proxy().await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let ssm = aws_sdk_ssm::Client::new(&conf);
    let mut times = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        ec2.describe_images().image_ids(image).send().await.unwrap();
        times.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        ec2.describe_instances().send().await.unwrap();
        times.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        ssm.get_parameter().name(UBUNTU_X86).send().await.unwrap();
        times.push(start.elapsed().as_secs_f64());
    }
    stats(times).1
}

fn stats(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(|a, b| a.total_cmp(b));
    (xs[0], xs[xs.len() / 2], xs[xs.len() - 1])
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("BAKE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let moto = Moto::get();
    let (x86, arm) = common::moto::bases(moto).await;
    moto.set_config(serde_json::json!({
        "parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm},
        "agent_online_after_s": AGENT_S,
        "image_available_after_s": IMAGE_S,
        "copy_available_after_s": COPY_S,
        "delay_ms": DELAY_MS,
    }));
    let call_s = call_latency(moto, &x86).await;
    let delays = AGENT_S + IMAGE_S + AGENT_S + COPY_S;
    let injected = DELAY_MS as f64 / 1000.0;
    println!(
        "aws bake on moto, injected delays: agent {AGENT_S} s, image {IMAGE_S} s, copy {COPY_S} s, {DELAY_MS} ms per call; poll_interval {POLL}"
    );
    println!(
        "a call through the proxy takes {:.0} ms here (the injected {DELAY_MS} ms and the emulator's own work)",
        call_s * 1000.0
    );
    // The critical path: the delays, plus the unavoidable calls at what a call costs, counted
    // two ways — at the injected latency only (as if the emulator answered instantly), and at
    // what a call through this emulator takes.
    let path = |calls: usize, per_call: f64| delays + calls as f64 * per_call;
    println!("one arch alone (its chain; the run's own reads and publication included):");
    let mut path_calls = 0;
    for arch in ["x86_64", "arm64"] {
        let p = project(&format!("/bench-{arch}"), &format!("[\"{arch}\"]"));
        let (wall, calls) = run(moto, &p, &[]);
        if let Ok(dir) = std::env::var("BAKE_BENCH_CALLS") {
            // Each call as the proxy logged it, with its time: where the chain spends its wall.
            let lines: Vec<String> = calls.iter().map(Value::to_string).collect();
            std::fs::write(format!("{dir}/{arch}.jsonl"), lines.join("\n") + "\n").unwrap();
        }
        let needed = unavoidable(&calls);
        path_calls = path_calls.max(needed);
        println!(
            "  {arch:<7} {wall:>7.2} s  {:>4} API calls, {needed:>3} unavoidable  ratio {:.3} (injected) / {:.3} (measured)",
            calls.len(),
            wall / path(needed, injected),
            wall / path(needed, call_s),
        );
    }
    println!("both arches side by side, {rounds} round(s):");
    let p = project("/bench", "[\"x86_64\", \"arm64\"]");
    let mut walls = Vec::new();
    let mut calls = 0;
    for round in 0..rounds {
        let force: &[&str] = if round == 0 { &[] } else { &["--force"] };
        let before = moto
            .records()
            .iter()
            .filter(|r| r["key"] == p.access_key().as_str())
            .count();
        let (wall, all) = run(moto, &p, force);
        calls = all.len() - before;
        walls.push(wall);
    }
    let (min, median, max) = stats(walls);
    let (at_injected, at_measured) = (path(path_calls, injected), path(path_calls, call_s));
    println!("  wall time                 min {min:.2} s, median {median:.2} s, max {max:.2} s  ({calls} API calls)");
    println!("  critical path             {at_injected:.2} s at {DELAY_MS} ms a call, {at_measured:.2} s at {:.0} ms  ({delays} s of delays + {path_calls} unavoidable calls)", call_s * 1000.0);
    println!(
        "  ratio median / critical   {:.3} (injected), {:.3} (measured)",
        median / at_injected,
        median / at_measured
    );
    let before = moto
        .records()
        .iter()
        .filter(|r| r["key"] == p.access_key().as_str())
        .count();
    let (noop, all) = run(moto, &p, &[]);
    let noop_calls = &all[before..];
    let mutating = noop_calls.iter().filter(|r| !read_only(r)).count();
    println!(
        "  no-op scheduled run       {noop:.2} s, {} API calls, {mutating} mutating: {}",
        noop_calls.len(),
        noop_calls
            .iter()
            .map(|r| r["action"].as_str().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(", ")
    );
}
