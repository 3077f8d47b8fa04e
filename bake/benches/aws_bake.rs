//! Benchmark: a two-arch AWS bake against moto behind the latency proxy, with AWS-like delays
//! scaled down (SSM agent online after A s, image available after I s, D ms per call). Reports
//! the ratio of bake's wall time to the critical path of the injected delays (both arches run
//! in parallel, so the critical path is one arch's chain: builder agent + image + canary
//! agent), and the API calls of a no-op scheduled run.
//!
//!     cargo bench --bench aws_bake

#[path = "../../tests/common/mod.rs"]
mod common;

use common::moto::Moto;
use std::process::Command;
use std::time::Instant;

const AGENT_S: f64 = 2.0;
const IMAGE_S: f64 = 3.0;
const DELAY_MS: u64 = 15;

#[tokio::main]
async fn main() {
    let moto = Moto::get();
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let mut bases = Vec::new();
    for arch in ["x86_64", "arm64"] {
        let r = ec2
            .register_image()
            .name(format!("bench-{arch}"))
            .architecture(aws_sdk_ec2::types::ArchitectureValues::from(arch))
            .root_device_name("/dev/sda1")
            .send()
            .await
            .unwrap();
        bases.push(r.image_id().unwrap().to_string());
    }
    moto.set_config(serde_json::json!({
        "parameters": {
            "/aws/service/canonical/ubuntu/eks/22.04/1.31/stable/current/amd64/hvm/ebs-gp2/ami-id": bases[0],
            "/aws/service/canonical/ubuntu/eks/22.04/1.31/stable/current/arm64/hvm/ebs-gp2/ami-id": bases[1],
        },
        "agent_online_after_s": AGENT_S,
        "image_available_after_s": IMAGE_S,
        "delay_ms": DELAY_MS,
    }));
    let p = common::Project::new();
    p.edit(
        "pipelines/aws.toml",
        "ssm_prefix = \"/bake\"",
        "ssm_prefix = \"/bench\"\npoll_interval = \"250ms\"",
    );
    let run = |label: &str| {
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_bake"))
            .current_dir(p.dir.path())
            .env("AWS_ENDPOINT_URL", &moto.endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .args(["run", "pipelines/aws.toml", "-q"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{label}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        start.elapsed().as_secs_f64()
    };
    let calls_before = moto.calls().len();
    let wall = run("bake");
    let calls = moto.calls().len() - calls_before;
    let before = moto.calls().len();
    let noop = run("no-op");
    let noop_calls = &moto.calls()[before..];
    let mutating = noop_calls
        .iter()
        .filter(|(_, a)| !a.starts_with("Get") && !a.starts_with("Describe"))
        .count();
    let critical = AGENT_S + IMAGE_S + AGENT_S;
    println!("aws bake on moto, two arches, injected delays: agent {AGENT_S} s, image {IMAGE_S} s, {DELAY_MS} ms per call");
    println!("  wall time                {wall:>7.2} s  ({calls} API calls)");
    println!("  critical path of delays  {critical:>7.2} s  (builder agent + image available + canary agent)");
    println!("  ratio wall / critical    {:>7.3}", wall / critical);
    println!(
        "  no-op scheduled run      {noop:>7.2} s, {} API calls, {mutating} mutating",
        noop_calls.len()
    );
}
