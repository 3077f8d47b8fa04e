//! Benchmark: the local bake beside Packer's qemu builder, on the same base, the same recipe
//! files and steps, the same vCPUs, memory, machine, CPU model and accelerator, alternating
//! round by round (the order flips each round, so a slow spell of the host hits both).
//!
//!     cargo bench --bench local_bake      # BAKE_BENCH_ARCH=arm64, BAKE_BENCH_ROUNDS=5
//!
//! Packer comes from the distribution (`scripts/setup-host --bench` installs it). What each
//! side does:
//! - Packer (its defaults): copy the base disk, boot it, wait for SSH, upload the recipe's files,
//!   run its steps over SSH (the same scripts, the same environment), print the package list,
//!   power off, compact the disk. No canary: Packer proves nothing about the image it made.
//! - bake (`bake run --arch A --force`, the shipped pipeline's settings): the build phase
//!   (builder disk → image stored) from the run journal, and the whole command to a validated,
//!   published release: canary boot and validators included.
//!
//! Prints min, median and max of each and the ratios (median of per-round ratios). Nothing is
//! asserted: figures go to BENCHMARKS.md.

#[path = "../../tests/common/mod.rs"]
mod common;

use bake::journal::{Entry, Journal, StepStatus};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

struct Round {
    packer: f64,
    build: f64,
    validated: f64,
}

fn main() {
    let arch = std::env::var("BAKE_BENCH_ARCH").unwrap_or_else(|_| "x86_64".into());
    let rounds: usize = std::env::var("BAKE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let repo = common::repo();
    let setup = Command::new(repo.join("scripts/setup-host"))
        .arg("--bench")
        .status()
        .expect("scripts/setup-host runs");
    assert!(setup.success(), "scripts/setup-host --bench failed");
    let packer_version = output(Command::new("packer").arg("version"));

    let project = common::Project::new();
    let pipeline = project.read("pipelines/local.toml").replace(
        "arches = [\"x86_64\", \"arm64\"]",
        &format!("arches = [\"{arch}\"]"),
    );
    project.write("pipelines/local.toml", pipeline);
    let bin = env!("CARGO_BIN_EXE_bake");

    // Warm-up, not counted: the base is built if it is not cached, KVM probed once.
    eprintln!("warm-up: bake run (builds the base if it is not cached)");
    let warm = bake_run(bin, project.dir.path());
    assert!(warm.0, "the warm-up bake failed");

    let cache = bake::provider::local::cache_dir();
    let base = base_dir(bin, project.dir.path(), &cache, &arch);
    let accel = std::fs::read_to_string(cache.join("kvm-probe"))
        .ok()
        .and_then(|p| p.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "tcg".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // What `cpus = "auto"` gives the one VM of a one-arch run.
    let cpus = bake::input::pipeline::Cpus::Auto.resolve(cores, 1);
    let memory = 1024;
    let packer = Packer::prepare(&repo, &project, &base, &arch, &accel, cpus, memory);

    let mut results = Vec::new();
    for round in 0..rounds {
        let (p, b) = if round % 2 == 0 {
            let p = packer.build(round);
            (p, bake_round(bin, &project))
        } else {
            let b = bake_round(bin, &project);
            (packer.build(round), b)
        };
        eprintln!(
            "round {}: packer {p:.1} s, bake build {:.1} s, bake to validated {:.1} s",
            round + 1,
            b.0,
            b.1
        );
        results.push(Round {
            packer: p,
            build: b.0,
            validated: b.1,
        });
    }

    println!(
        "local bake vs Packer, {arch}, {rounds} rounds alternating; {cpus} vCPUs, {memory} MiB, {accel}; host {cores} cores; {}",
        packer_version.lines().next().unwrap_or_default()
    );
    println!();
    println!("| | min | median | max | ratio to Packer (median of rounds) |");
    println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, f: &dyn Fn(&Round) -> f64, ratio: bool| {
        let mut v: Vec<f64> = results.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let r = if ratio {
            let mut r: Vec<f64> = results.iter().map(|x| f(x) / x.packer).collect();
            r.sort_by(f64::total_cmp);
            format!("**{:.2}×**", median(&r))
        } else {
            String::new()
        };
        println!(
            "| {name} | {:.1} s | {:.1} s | {:.1} s | {r} |",
            v[0],
            median(&v),
            v[v.len() - 1]
        );
    };
    row("Packer build (no canary)", &|r| r.packer, false);
    row(
        "bake build phase (builder-disk → store-image)",
        &|r| r.build,
        true,
    );
    row(
        "bake to validated (canary + validators, published)",
        &|r| r.validated,
        true,
    );
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `bake run --force` of the project's one arch: (succeeded, wall seconds).
fn bake_run(bin: &str, dir: &Path) -> (bool, f64) {
    let start = Instant::now();
    let out = Command::new(bin)
        .current_dir(dir)
        .env_remove("BAKE_STATE_DIR")
        .args(["run", "pipelines/local.toml", "--force", "-q"])
        .output()
        .expect("bake runs");
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), secs)
}

/// One counted bake: (build phase, whole command) in seconds.
fn bake_round(bin: &str, project: &common::Project) -> (f64, f64) {
    let runs = project.state().join("runs");
    let before = journals(&runs);
    let (ok, wall) = bake_run(bin, project.dir.path());
    assert!(ok, "bake failed");
    let journal = journals(&runs)
        .into_iter()
        .find(|j| !before.contains(j))
        .expect("the round's journal");
    let mut start = None;
    let mut stored = None;
    for e in Journal::read(&journal).unwrap() {
        if let Entry::Step {
            step, status, at, ..
        } = e
        {
            match (step.as_str(), status) {
                ("builder-disk", StepStatus::Started) => start = Some(at),
                ("store-image", StepStatus::Ok) => stored = Some(at),
                _ => {}
            }
        }
    }
    let build = (stored.expect("store-image done") - start.expect("builder-disk started"))
        .num_milliseconds() as f64
        / 1000.0;
    (build, wall)
}

fn journals(runs: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(runs)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                .collect()
        })
        .unwrap_or_default()
}

/// The cached base of `arch` the plan names (`base-<digest prefix>`).
fn base_dir(bin: &str, dir: &Path, cache: &Path, arch: &str) -> PathBuf {
    let plan: serde_json::Value = serde_json::from_str(&output(
        Command::new(bin)
            .current_dir(dir)
            .env_remove("BAKE_STATE_DIR")
            .args(["plan", "pipelines/local.toml", "-o", "json"]),
    ))
    .unwrap();
    let id = plan
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["arch"] == arch)
        .and_then(|p| p["base"]["id"].as_str())
        .expect("the plan names the base")
        .trim_start_matches("base-")
        .to_string();
    std::fs::read_dir(cache.join("bases"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&id) && !n.contains(".tmp-"))
        })
        .expect("the base is cached")
}

/// A Packer qemu-builder template for the recipe, and what it boots from.
struct Packer {
    dir: PathBuf,
}

impl Packer {
    fn prepare(
        repo: &Path,
        project: &common::Project,
        base: &Path,
        arch: &str,
        accel: &str,
        cpus: u32,
        memory: u32,
    ) -> Packer {
        let dir = project.dir.path().join("packer");
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        output(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key),
        );
        let public = std::fs::read_to_string(dir.join("key.pub")).unwrap();

        // The NoCloud seed: root's key and a static address on QEMU's user network (the
        // base, like bake's VMs, has no network configuration of its own).
        let seed = dir.join("seed");
        std::fs::create_dir_all(&seed).unwrap();
        std::fs::write(
            seed.join("meta-data"),
            "instance-id: i-packer\nlocal-hostname: packer\n",
        )
        .unwrap();
        std::fs::write(
            seed.join("network-config"),
            "network:\n  config: disabled\n",
        )
        .unwrap();
        std::fs::write(
            seed.join("user-data"),
            format!(
                "#cloud-config\nbootcmd:\n  - [sh, -c, 'for i in /sys/class/net/e*; do n=${{i##*/}}; ip link set \"$n\" up; ip addr add 10.0.2.15/24 dev \"$n\"; ip route add default via 10.0.2.2; break; done']\n  - [sh, -c, 'mkdir -p -m 0700 /root/.ssh && echo \"{}\" > /root/.ssh/authorized_keys && chmod 0600 /root/.ssh/authorized_keys']\n",
                public.trim()
            ),
        )
        .unwrap();
        let seed_img = dir.join("seed.img");
        output(
            Command::new("mkfs.vfat")
                .args(["-n", "CIDATA", "-C"])
                .arg(&seed_img)
                .arg("1024"),
        );
        for f in ["meta-data", "user-data", "network-config"] {
            output(
                Command::new("mcopy")
                    .arg("-i")
                    .arg(&seed_img)
                    .arg(seed.join(f))
                    .arg("::"),
            );
        }

        // The recipe's files and steps, as bake runs them.
        let recipe: toml::Value =
            toml::from_str(&std::fs::read_to_string(repo.join("recipes/eks-node.toml")).unwrap())
                .unwrap();
        let recipes = repo.join("recipes");
        let mut provisioners = Vec::new();
        for (i, f) in recipe["files"].as_array().unwrap().iter().enumerate() {
            let tmp = format!("/tmp/bake-file-{i}");
            provisioners.push(json!({
                "type": "file",
                "source": recipes.join(f["source"].as_str().unwrap()),
                "destination": tmp,
            }));
            provisioners.push(json!({
                "type": "shell",
                "inline": [format!(
                    "install -D -m {} {tmp} {} && rm -f {tmp}",
                    f["mode"].as_str().unwrap(),
                    f["dest"].as_str().unwrap()
                )],
            }));
        }
        let scripts: Vec<PathBuf> = recipe["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| recipes.join(s["script"].as_str().unwrap()))
            .collect();
        provisioners.push(json!({
            "type": "shell",
            "scripts": scripts,
            "environment_vars": [
                "DEBIAN_FRONTEND=noninteractive",
                "BAKE_RECIPE=eks-node",
                format!("BAKE_ARCH={arch}"),
            ],
        }));
        // bake captures the package manifest; Packer prints the same list.
        provisioners.push(json!({
            "type": "shell",
            "inline": ["dpkg-query -W -f='${Package}\\t${Version}\\t${Architecture}\\n' | sort"],
        }));

        let (binary, machine, cpu, console) = match arch {
            "arm64" => ("qemu-system-aarch64", "virt", "max", "ttyAMA0"),
            _ => ("qemu-system-x86_64", "q35", "qemu64", "ttyS0"),
        };
        let out = dir.join("out");
        let template = json!({
            "builders": [{
                "type": "qemu",
                "qemu_binary": binary,
                "machine_type": machine,
                "accelerator": accel,
                "cpus": cpus,
                "memory": memory,
                "disk_image": true,
                "iso_url": base.join("disk.qcow2"),
                "iso_checksum": "none",
                "use_backing_file": false,
                "format": "qcow2",
                "headless": true,
                "net_device": "virtio-net",
                "output_directory": out,
                "vm_name": "image.qcow2",
                "qemuargs": [
                    ["-cpu", cpu],
                    ["-kernel", base.join("vmlinuz")],
                    ["-initrd", base.join("initrd.img")],
                    ["-append", format!("root=/dev/vda rw console={console} panic=-1 quiet")],
                    ["-drive", format!("file={},if=virtio,cache=unsafe,format=qcow2", out.join("image.qcow2").display())],
                    ["-drive", format!("file={},if=virtio,format=raw,readonly=on", seed_img.display())],
                    ["-serial", format!("file:{}", dir.join("serial.log").display())],
                ],
                "communicator": "ssh",
                "ssh_username": "root",
                "ssh_private_key_file": key,
                "ssh_timeout": "20m",
                "ssh_handshake_attempts": 1000,
                "shutdown_command": "poweroff",
                "shutdown_timeout": "5m",
            }],
            "provisioners": provisioners,
        });
        std::fs::write(
            dir.join("template.json"),
            serde_json::to_string_pretty(&template).unwrap(),
        )
        .unwrap();
        Packer { dir }
    }

    /// One `packer build`, wall seconds.
    fn build(&self, round: usize) -> f64 {
        let _ = std::fs::remove_dir_all(self.dir.join("out"));
        let start = Instant::now();
        let out = Command::new("packer")
            .current_dir(&self.dir)
            .env("PACKER_CACHE_DIR", self.dir.join("cache"))
            .env("CHECKPOINT_DISABLE", "1")
            .args(["build", "-force", "template.json"])
            .output()
            .expect("packer runs");
        let secs = start.elapsed().as_secs_f64();
        let log = self.dir.join(format!("packer-{round}.log"));
        std::fs::write(&log, &out.stdout).unwrap();
        assert!(
            out.status.success(),
            "packer build failed (log {}):\n{}\n{}",
            log.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        secs
    }
}
