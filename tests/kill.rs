//! SIGKILL at each step boundary of an AWS bake (moto): afterwards `bake sweep --apply` leaves
//! zero leftovers (no instance, volume or security group, no unpublished image, nothing half
//! published), and `bake resume` completes the run. Prints kill points × leaks found.

use crate::common;

use common::moto::{bake_command, register_x86, Moto};
use common::Project;
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant};

const X86: &str =
    "/aws/service/canonical/ubuntu/eks/22.04/1.31/stable/current/amd64/hvm/ebs-gp2/ami-id";

/// A project whose aws pipeline bakes x86_64 only, under `prefix`, polling fast.
fn x86_project(prefix: &str) -> Project {
    let p = Project::new();
    common::moto::x86_only(&p);
    p.edit(
        "pipelines/aws.toml",
        "ssm_prefix = \"/bake\"",
        &format!("ssm_prefix = \"{prefix}\"\npoll_interval = \"20ms\""),
    );
    p
}

fn json_of(out: std::process::Output) -> (i32, Value, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v, stderr)
}

/// Live bake instances, bake security groups and unpublished bake images of the pipeline that
/// publishes under `prefix` (each kill point has its own), and its half-written releases.
async fn leaks(moto: &Moto, prefix: &str) -> Vec<String> {
    let cfg = moto.sdk().await;
    let ec2 = aws_sdk_ec2::Client::new(&cfg);
    let params = common::moto::parameters_under(moto, prefix).await;
    // Image IDs: each arch's parameter (the manifest, its index entry and the package
    // manifest chunks sit beside them).
    let published: Vec<String> = params
        .iter()
        .filter(|p| {
            let name = p.name().unwrap();
            name.contains("/releases/") && (name.ends_with("/x86_64") || name.ends_with("/arm64"))
        })
        .map(|p| p.value().unwrap().to_string())
        .collect();
    let manifests = params
        .iter()
        .filter(|p| p.name().unwrap().ends_with("/manifest"))
        .count();
    let ours = |tags: &[aws_sdk_ec2::types::Tag]| {
        tags.iter().any(|t| t.key() == Some("bake:run-id"))
            && tags
                .iter()
                .any(|t| t.key() == Some("bake:prefix") && t.value() == Some(prefix))
    };
    let mut out = Vec::new();
    if published.len() != manifests {
        out.push(format!(
            "half-published release: {} image parameters, {manifests} manifests",
            published.len()
        ));
    }
    let r = ec2.describe_instances().send().await.unwrap();
    for i in r.reservations().iter().flat_map(|r| r.instances()) {
        let live = i.state().and_then(|s| s.name())
            != Some(&aws_sdk_ec2::types::InstanceStateName::Terminated);
        if ours(i.tags()) && live {
            out.push(format!("instance {}", i.instance_id().unwrap()));
        }
    }
    let r = ec2.describe_security_groups().send().await.unwrap();
    for g in r.security_groups() {
        if ours(g.tags()) {
            out.push(format!("security group {}", g.group_id().unwrap()));
        }
    }
    let r = ec2.describe_volumes().send().await.unwrap();
    for v in r.volumes() {
        if ours(v.tags()) {
            out.push(format!("volume {}", v.volume_id().unwrap()));
        }
    }
    let r = ec2.describe_images().owners("self").send().await.unwrap();
    for i in r.images() {
        let id = i.image_id().unwrap().to_string();
        if ours(i.tags()) && !published.contains(&id) {
            out.push(format!("unpublished image {id}"));
        }
    }
    out
}

#[tokio::test]
async fn sigkill_at_each_step_then_sweep_leaves_nothing_and_resume_completes() {
    let moto = Moto::get();
    // (action, occurrence): kill when the n-th call of the action reaches the proxy; the
    // proxy still forwards it (AWS got the request), as when a process dies mid-call.
    let points = [
        ("CreateSecurityGroup", 1),
        ("RunInstances", 1),
        ("SendCommand", 2),
        ("StopInstances", 1),
        ("CreateImage", 1),
        ("TerminateInstances", 1),
        ("RunInstances", 2),
        // The canary's copy of its image: made but not yet attached, then attached but not
        // yet deleted with the canary.
        ("CreateVolume", 1),
        ("AttachVolume", 1),
        ("SendCommand", 6),
        // The lock is PutParameter #1; #2 is the release's arch parameter, before the manifest.
        ("PutParameter", 2),
    ];
    let mut report = Vec::new();
    for (n, (action, occurrence)) in points.iter().enumerate() {
        let prefix = format!("/kill{n}");
        // A new base per kill point: a new bake key, so nothing is reused from the last one.
        let base = register_x86(moto, &format!("kill-base-{n}")).await;
        let p = x86_project(&prefix);
        // The release's arch parameter is followed at once by its manifest: the proxy holds it
        // until the test has killed bake, so the kill lands between the two however busy the
        // host is. The other points are followed by waits.
        let mut config = json!({"parameters": {X86: base}, "delay_ms": 40});
        if *action == "PutParameter" {
            config["hold"] = json!({"action": "PutParameter", "contains": "/releases/"});
        }
        moto.set_config(config);

        let start_calls = moto.calls().len();
        let mut child = bake_command(&p, moto)
            .args(["run", "pipelines/aws.toml", "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        loop {
            let seen = moto.calls()[start_calls..]
                .iter()
                .filter(|(_, a)| a == action)
                .count();
            if seen >= *occurrence {
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "{action}#{occurrence}: the run ended before the kill point"
            );
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "{action}#{occurrence} never happened"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // The call the kill interrupted is still held by the proxy (40 ms): let it land.
        std::thread::sleep(Duration::from_millis(200));
        moto.set_config(json!({"parameters": {X86: base}}));

        let (code, swept, stderr) = json_of(
            bake_command(&p, moto)
                .args(["sweep", "-p", "pipelines/aws.toml", "--apply", "-o", "json"])
                .output()
                .unwrap(),
        );
        assert_eq!(code, 0, "sweep after {action}#{occurrence}: {stderr}");
        let left = leaks(moto, &prefix).await;
        report.push(format!(
            "{action:>20} #{occurrence}: swept {}, leaks after sweep: {}",
            swept["leftovers"].as_array().map(|a| a.len()).unwrap_or(0),
            left.len()
        ));
        assert!(
            left.is_empty(),
            "after SIGKILL at {action}#{occurrence} and sweep --apply: {left:?}"
        );

        // The run can be resumed and finishes: one complete release.
        let run_id = p.run_ids().pop().unwrap();
        let (code, resumed, stderr) = json_of(
            bake_command(&p, moto)
                .args(["resume", &run_id, "-o", "json"])
                .output()
                .unwrap(),
        );
        assert_eq!(code, 0, "resume after {action}#{occurrence}: {stderr}");
        assert_eq!(
            resumed["published"].as_array().map(|a| a.len()),
            Some(1),
            "{resumed:#}"
        );
        assert!(leaks(moto, &prefix).await.is_empty());
        common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
    }
    eprintln!("kill points × leaks found:\n{}", report.join("\n"));
}

#[tokio::test]
async fn two_concurrent_runs_of_one_recipe_one_bakes_the_other_exits_4() {
    let moto = Moto::get();
    let base = register_x86(moto, "lock-base").await;
    let p = x86_project("/locktest");
    moto.set_config(json!({"parameters": {X86: base}, "delay_ms": 20}));
    let spawn = || {
        bake_command(&p, moto)
            .args(["run", "pipelines/aws.toml", "-q", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn();
    let b = spawn();
    let (ca, _, ea) = json_of(a.wait_with_output().unwrap());
    let (cb, _, eb) = json_of(b.wait_with_output().unwrap());
    let mut codes = vec![ca, cb];
    codes.sort();
    assert_eq!(
        codes,
        vec![0, 4],
        "one bakes, the other finds the lock:\n{ea}\n{eb}"
    );
    let loser = if ca == 4 { &ea } else { &eb };
    assert!(loser.contains("is locked by"), "{loser}");
    let launches = moto
        .calls()
        .iter()
        .filter(|(_, a)| a == "RunInstances")
        .count();
    assert!(launches >= 2);
    assert!(leaks(moto, "/locktest").await.is_empty());
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
}

#[tokio::test]
async fn a_run_killed_between_release_parameters_is_finished_by_resume_under_the_same_id() {
    let moto = Moto::get();
    let cfg = moto.sdk().await;
    let ssm = aws_sdk_ssm::Client::new(&cfg);
    let base = register_x86(moto, "half-publish-base").await;
    let prefix = "/halfpub";
    let p = x86_project(prefix);
    moto.set_config(json!({"parameters": {X86: base}, "delay_ms": 40}));
    let start_calls = moto.calls().len();
    let mut child = bake_command(&p, moto)
        .args(["run", "pipelines/aws.toml", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    // PutParameter #1 is the lock, #2 the release's x86_64 parameter, #3 would be the manifest.
    while moto.calls()[start_calls..]
        .iter()
        .filter(|(_, a)| a == "PutParameter")
        .count()
        < 2
    {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(t.elapsed() < Duration::from_secs(120), "never published");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200)); // the held PutParameter lands
    moto.set_config(json!({"parameters": {X86: base}}));

    let params = |ssm: aws_sdk_ssm::Client| async move {
        ssm.get_parameters_by_path()
            .path(format!("{prefix}/eks-node/releases"))
            .recursive(true)
            .send()
            .await
            .unwrap()
            .parameters()
            .iter()
            .map(|p| {
                (
                    p.name().unwrap().to_string(),
                    (p.value().unwrap().to_string(), p.version()),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let half = params(ssm.clone()).await;
    assert_eq!(half.len(), 1, "one arch parameter, no manifest: {half:?}");
    let (arch_param, (image, version)) = half.iter().next().unwrap();
    assert!(arch_param.ends_with("/x86_64"), "{arch_param}");
    let release = arch_param.split('/').rev().nth(1).unwrap().to_string();

    // Readers never see it.
    let (code, listed, stderr) = json_of(
        bake_command(&p, moto)
            .args([
                "releases",
                "eks-node",
                "-p",
                "pipelines/aws.toml",
                "-o",
                "json",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(!listed.to_string().contains(&release), "{listed:#}");

    let run_id = p.run_ids().pop().unwrap();
    let (code, resumed, stderr) = json_of(
        bake_command(&p, moto)
            .args(["resume", &run_id, "-o", "json"])
            .output()
            .unwrap(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        resumed["published"][0]["release"].as_str(),
        Some(release.as_str()),
        "{resumed:#}"
    );
    assert_eq!(
        resumed["published"][0]["images"]["x86_64"].as_str(),
        Some(image.as_str())
    );
    let done = params(ssm.clone()).await;
    assert_eq!(
        done.get(arch_param),
        Some(&(image.clone(), *version)),
        "the parameter written before the kill is unchanged"
    );
    assert!(
        done.contains_key(&arch_param.replace("/x86_64", "/manifest")),
        "{done:?}"
    );
    // The release's index entry, written after its manifest.
    assert!(
        done.contains_key(arch_param.trim_end_matches("/x86_64")),
        "{done:?}"
    );
    assert_eq!(done.len(), 3, "no second release: {done:?}");
    assert!(leaks(moto, prefix).await.is_empty());
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
}

#[tokio::test]
async fn a_second_interrupt_lists_what_is_left_and_the_journal_then_cleanup_finishes() {
    let moto = Moto::get();
    let base = register_x86(moto, "double-interrupt-base").await;
    let prefix = "/interrupt2";
    let p = x86_project(prefix);
    // Slow calls, so the cleanup is still running when the second signal comes.
    moto.set_config(json!({"parameters": {X86: base}, "delay_ms": 150}));
    let child = bake_command(&p, moto)
        .args(["run", "pipelines/aws.toml", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let t = Instant::now();
    loop {
        let journal = std::fs::read_dir(p.state().join("runs"))
            .ok()
            .and_then(|mut d| {
                d.find(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "jsonl")
                })
            })
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
            .unwrap_or_default();
        if journal.contains("\"kind\":\"instance\"") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no instance launched"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    std::thread::sleep(Duration::from_millis(100));
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    moto.set_config(json!({"parameters": {X86: base}}));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("still cleaning up run"), "{stderr}");
    assert!(
        stderr.contains("  instance i-"),
        "lists the instance: {stderr}"
    );
    assert!(stderr.contains(".jsonl"), "names the journal: {stderr}");
    assert!(
        leaks(moto, prefix).await.is_empty(),
        "the cleanup still finished"
    );
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
}
