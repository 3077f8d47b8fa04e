//! Reads that do not grow with the registry: the emulator's registry grows from 10 releases to
//! 1,000 (2,000 images), written directly as bake writes them (each arch's AMI parameter, the
//! package manifests, the release manifest and its described index entry, the newest copy),
//! and the calls each reading command makes are counted at the proxy at both sizes. Pages are
//! the sizes AWS answers (GetParametersByPath: 10; DescribeParameters: 50; EC2 Describe: up to
//! 1,000), so the counts are what an account would see. Growth shows up here as a number, not
//! as a slow test.

use crate::common::moto::{self, Moto};
use crate::common::Project;
use bake::release::{Manifest, ReleaseId, ReleaseImage};
use bake::Arch;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const PREFIX: &str = "/reads";
const RECIPE: &str = "eks-node";

/// Moves of the dev channel between the two measurements: six pages of its durable history.
const MOVES: usize = 60;

/// Writes releases `from..to` of eks-node (both arches, an AMI each) straight to the emulator
/// (not through the proxy, so no count includes them), as `SsmRegistry::publish` lays them out.
async fn grow(moto: &Moto, from: u32, to: u32) -> Vec<ReleaseId> {
    let sdk = moto.sdk().await;
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let date = chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    for n in from..to {
        let (ec2, ssm, gate) = (ec2.clone(), ssm.clone(), gate.clone());
        tasks.spawn(async move {
            let _slot = gate.acquire().await.unwrap();
            let id = ReleaseId::new(date, n + 1);
            let dir = format!("{PREFIX}/{RECIPE}/releases/{id}");
            let mut images = BTreeMap::new();
            for arch in [Arch::X86_64, Arch::Arm64] {
                let image = moto::register_image(
                    &ec2,
                    &format!("bake-{RECIPE}-{id}-{arch}"),
                    &arch.to_string(),
                )
                .await;
                let put = |name: String, value: String| {
                    ssm.put_parameter()
                        .name(name)
                        .value(value)
                        .r#type(aws_sdk_ssm::types::ParameterType::String)
                };
                put(format!("{dir}/{arch}"), image.clone())
                    .data_type("aws:ec2:image")
                    .send()
                    .await
                    .unwrap();
                let packages = bake::packages::encode("base-files 12.4 amd64\nudev 252.30 amd64\n");
                for (i, chunk) in packages.iter().enumerate() {
                    put(format!("{dir}/packages/{arch}/{i:02}"), chunk.clone())
                        .send()
                        .await
                        .unwrap();
                }
                images.insert(
                    arch,
                    ReleaseImage {
                        image_id: image,
                        key: bake::key::BakeKey::from_hex(&format!("{n:064x}")),
                        base: "ami-0base".into(),
                        validated_at: chrono::Utc::now(),
                        validators: BTreeMap::new(),
                        packages_sha256: None,
                        kubelet: Some("1.31.2".into()),
                        packages: None,
                        run_id: format!("run-{n}"),
                        copies: BTreeMap::new(),
                    },
                );
            }
            let manifest = Manifest {
                recipe: RECIPE.into(),
                release: id.clone(),
                provider: "aws".into(),
                tool_version: "test".into(),
                created_at: chrono::Utc::now(),
                images,
            };
            // The manifest, then the release's index entry (the parameter named after it),
            // described with its images as bake describes it; the first ten as a bake before
            // descriptions wrote them, so prune reads those whole.
            let described = (n >= 10).then(|| {
                bake::registry::entry_description(&bake::release::ReleaseImages::from(&manifest))
            });
            for (name, description) in [(format!("{dir}/manifest"), None), (dir.clone(), described)]
            {
                ssm.put_parameter()
                    .name(name)
                    .value(serde_json::to_string(&manifest).unwrap())
                    .r#type(aws_sdk_ssm::types::ParameterType::String)
                    .set_description(description)
                    .send()
                    .await
                    .unwrap();
            }
            manifest
        });
    }
    let mut written: Vec<Manifest> = Vec::new();
    while let Some(m) = tasks.join_next().await {
        written.push(m.unwrap());
    }
    written.sort_by(|a, b| a.release.cmp(&b.release));
    let newest = serde_json::to_string(written.last().unwrap()).unwrap();
    for (leaf, value) in [
        ("newest", newest.as_str()),
        ("indexed", "every complete release has its index entry"),
    ] {
        ssm.put_parameter()
            .name(format!("{PREFIX}/{RECIPE}/{leaf}"))
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .unwrap();
    }
    written.into_iter().map(|m| m.release).collect()
}

/// Runs `bake <args>` and returns its JSON and the calls it made (actions, in order).
fn counted(p: &Project, moto: &Moto, args: &[&str]) -> (Value, Vec<String>) {
    let before = moto.records().len();
    let started = std::time::Instant::now();
    let (code, out, stderr) = moto::bake(p, moto, args);
    // Shown, never asserted: the wall on the emulator (issue 31 wants prune under 30 s).
    eprintln!("bake {}: {:.1?}", args.join(" "), started.elapsed());
    assert_eq!(code, 0, "{args:?}: {out:#}\n{stderr}");
    let key = p.access_key();
    let calls = moto.records()[before..]
        .iter()
        .filter(|r| r["key"] == key.as_str())
        .map(|r| r["action"].as_str().unwrap_or_default().to_string())
        .collect();
    (out, calls)
}

/// The calls of each command on the registry as it is now. The promotion goes first, so the
/// reads after it see the same channels at both sizes.
fn measure(p: &Project, moto: &Moto, release: &str) -> BTreeMap<&'static str, Vec<String>> {
    let pipeline = ["-p", "pipelines/aws.toml"];
    let mut out = BTreeMap::new();
    let (_, calls) = counted(
        p,
        moto,
        &[
            &["promote", RECIPE, release, "--to", "staging"][..],
            &pipeline,
        ]
        .concat(),
    );
    out.insert("promote", calls);
    let (_, calls) = counted(p, moto, &["status", "-p", "pipelines/aws.toml"]);
    out.insert("status", calls);
    let (_, calls) = counted(p, moto, &[&["releases", RECIPE][..], &pipeline].concat());
    out.insert("releases", calls);
    let (_, calls) = counted(
        p,
        moto,
        &[&["prune", RECIPE, "--keep", "5"][..], &pipeline].concat(),
    );
    out.insert("prune", calls);
    let (_, calls) = counted(
        p,
        moto,
        &[&["pin", RECIPE, release][..], &pipeline].concat(),
    );
    out.insert("pin", calls);
    let (_, calls) = counted(
        p,
        moto,
        &[&["history", RECIPE, "--cluster", "staging"][..], &pipeline].concat(),
    );
    out.insert("history", calls);
    out
}

/// Moves dev to `release` once per `n`, by bake's own registry (not through the proxy, so no
/// count includes them), as a nightly `bake run` with `promote_to = "dev"` does.
async fn nightly(moto: &Moto, release: &ReleaseId, n: std::ops::Range<usize>) {
    use bake::registry::Registry;
    let registry = bake::registry::SsmRegistry::new(
        &moto.sdk().await,
        bake::input::names::SsmPath::parse(PREFIX).unwrap(),
        Default::default(),
    );
    let manifest = registry.release(RECIPE, release).await.unwrap().unwrap();
    for n in n {
        let images = manifest
            .images
            .iter()
            .map(|(a, i)| (*a, i.image_id.clone()))
            .collect();
        let change = bake::release::ChannelMove {
            release: release.clone(),
            images,
            from: None,
            who: "scheduler@ci".into(),
            reason: Some(format!("nightly {n}")),
        };
        registry.move_channel(RECIPE, "dev", change).await.unwrap();
    }
}

/// How many calls of each action.
fn tally(calls: &[String]) -> BTreeMap<&str, usize> {
    let mut out = BTreeMap::new();
    for c in calls {
        *out.entry(c.as_str()).or_default() += 1;
    }
    out
}

/// 10 releases, then 1,000 and 60 more moves of one channel: each reading command makes the
/// same number of calls at both sizes (or stays within what the issue sets), however many
/// releases, images and moves there are — except `history`, which shows them all.
#[tokio::test(flavor = "multi_thread")]
async fn reading_commands_make_as_many_calls_at_1000_releases_as_at_10() {
    let moto = Moto::get();
    moto.set_config(json!({"ec2_page": 1000, "ssm_page": 10, "ssm_describe_page": 50}));
    let p = moto::project(PREFIX);
    moto::x86_only(&p);
    let first = grow(moto, 0, 10).await;
    let (older, newer) = (first[4].to_string(), first[5].to_string());
    // A channel that has moved once already, as in any registry in use.
    counted(
        &p,
        moto,
        &[
            "promote",
            RECIPE,
            &older,
            "--to",
            "staging",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    // Dev moved by a nightly schedule, as in any registry in use: once before the first
    // measurement, so both sizes show the same channels and releases.
    nightly(moto, &first[3], 0..1).await;
    let small = measure(&p, moto, &newer);
    let started = std::time::Instant::now();
    // The nightly promotions to dev of three years, then its releases.
    nightly(moto, &first[3], 1..MOVES).await;
    grow(moto, 10, 1000).await;
    eprintln!(
        "wrote {MOVES} moves and 990 releases in {:?}",
        started.elapsed()
    );
    let big = measure(&p, moto, &older);
    let report: Vec<String> = big
        .keys()
        .map(|c| {
            format!(
                "{c}: {} → {} {:?} → {:?}",
                small[c].len(),
                big[c].len(),
                tally(&small[c]),
                tally(&big[c])
            )
        })
        .collect();
    eprintln!("calls at 10 → 1,000 releases:\n{}", report.join("\n"));
    // Flat: the same calls at both sizes, within the bounds.
    for (command, bound) in [("status", 20), ("pin", 10), ("history", 10)] {
        assert!(
            big[command].len() <= bound && big[command].len() <= small[command].len(),
            "{command} grew: {report:#?}"
        );
    }
    // A promotion reads at most 10 (besides its lock and the move it writes), at any size.
    let reads = |calls: &[String]| {
        calls
            .iter()
            .filter(|a| a.starts_with("Get") || a.starts_with("Describe"))
            .count()
    };
    assert!(
        reads(&big["promote"]) <= 10 && big["promote"].len() <= small["promote"].len(),
        "promote grew: {report:#?}"
    );
    // Listing releases reads one index entry per release, ten to a page.
    assert!(big["releases"].len() <= 110, "{report:#?}");
    // Prune's EC2 reads do not grow with the images beyond one call per 200 (the filter limit)
    // per listing: the images (what protects them, when they were deprecated), the instances;
    // the launch templates once.
    let ec2 = big["prune"]
        .iter()
        .filter(|a| a.starts_with("Describe") && *a != "DescribeParameters")
        .count();
    assert!(
        ec2 <= 2 * 2000 / 200 + 3,
        "prune's EC2 reads grew: {report:#?}"
    );
    let ssm = big["prune"].len() - ec2;
    // The releases from their index entries' descriptions (the marker, 1,000 / 50 pages and
    // the empty last one, and the ten entries an older bake wrote without a description, read
    // whole in one GetParameters), the
    // channels' names (the marker and one listing), and per channel (three) its last moves:
    // the parameter, its durable entry and the moves before it in one GetParameters (a channel
    // that never moved reads its parameter, that parameter's history and the empty listing).
    assert!(
        ssm <= 1 + 1000 / 50 + 1 + 1 + 2 + 3 * 3,
        "prune's registry reads grew: {report:#?}"
    );
    assert!(big["prune"].len() <= 60, "{report:#?}");
    // Every one of those calls, batched filters and one-level listings included, is allowed by
    // the printed policy.
    moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
}
