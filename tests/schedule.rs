//! The scheduling examples in pipelines/schedule/ and terraform/examples/scheduled-bake/ say what
//! they mean: each runs `bake run` on the AWS pipeline on a schedule, gives the cleanups time on
//! SIGTERM, and none promotes (prod channels move only by hand). The notify hook gets the JSON
//! summary on stdin.

use crate::common;

use common::repo;
use std::collections::BTreeMap;

/// A systemd unit as section → key → values.
fn unit(name: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(repo().join("pipelines/schedule").join(name)).unwrap();
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{name}:{}: not key=value: {line}", n + 1));
        assert!(
            !section.is_empty(),
            "{name}:{}: key outside a section",
            n + 1
        );
        out.entry(section.clone())
            .or_default()
            .entry(k.to_string())
            .or_default()
            .push(v.to_string());
    }
    out
}

#[test]
fn the_systemd_units_run_the_pipeline_nightly_and_give_cleanups_time() {
    let service = unit("bake-aws.service");
    let exec = &service["Service"]["ExecStart"][0];
    assert!(exec.contains(" run pipelines/aws.toml"), "{exec}");
    assert!(!exec.contains("promote"));
    assert_eq!(service["Service"]["Type"], ["oneshot"]);
    assert_eq!(service["Service"]["KillSignal"], ["SIGTERM"]);
    assert_eq!(
        service["Service"]["SuccessExitStatus"],
        ["4"],
        "a held lock is not a failure"
    );
    let timer = unit("bake-aws.timer");
    assert_eq!(timer["Timer"]["Unit"], ["bake-aws.service"]);
    assert_eq!(timer["Timer"]["Persistent"], ["true"]);
    assert!(timer["Timer"].contains_key("OnCalendar"));
}

#[test]
fn the_github_workflow_is_scheduled_uses_oidc_and_one_run_per_pipeline() {
    let text =
        std::fs::read_to_string(repo().join("pipelines/schedule/github-actions.yml")).unwrap();
    let wf: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let cron = wf["on"]["schedule"][0]["cron"].as_str().unwrap();
    assert_eq!(cron.split_whitespace().count(), 5, "{cron}");
    assert_eq!(wf["permissions"]["id-token"].as_str(), Some("write"));
    let group = wf["concurrency"]["group"].as_str().unwrap();
    assert!(group.contains("aws"), "one group per pipeline: {group}");
    assert_eq!(
        wf["concurrency"]["cancel-in-progress"].as_bool(),
        Some(false)
    );
    let steps = wf["jobs"]["bake"]["steps"].as_sequence().unwrap();
    let runs: Vec<&str> = steps.iter().filter_map(|s| s["run"].as_str()).collect();
    assert!(
        runs.iter()
            .any(|r| r.contains("bake run pipelines/aws.toml")),
        "{runs:?}"
    );
    assert!(!runs.iter().any(|r| r.contains("promote")));
    assert!(steps.iter().any(|s| s["uses"]
        .as_str()
        .is_some_and(|u| u.starts_with("aws-actions/configure-aws-credentials"))));
    assert!(!text.contains("AWS_SECRET_ACCESS_KEY"), "no stored keys");
}

#[test]
fn the_eventbridge_schedule_starts_a_bake_run_task_that_never_promotes() {
    let text =
        std::fs::read_to_string(repo().join("terraform/examples/scheduled-bake/main.tf")).unwrap();
    let body = hcl::parse(&text).unwrap();
    let schedule = body
        .blocks()
        .find(|b| {
            b.identifier() == "resource"
                && b.labels()
                    .iter()
                    .any(|l| l.as_str() == "aws_scheduler_schedule")
        })
        .expect("an aws_scheduler_schedule");
    let expr = schedule
        .body()
        .attributes()
        .find(|a| a.key() == "schedule_expression")
        .unwrap();
    let expr = hcl::format::to_string(expr.expr()).unwrap();
    assert!(
        expr.starts_with("\"cron(") && expr.matches(' ').count() == 5,
        "{expr}"
    );
    let task = body
        .blocks()
        .find(|b| {
            b.labels()
                .iter()
                .any(|l| l.as_str() == "aws_ecs_task_definition")
        })
        .unwrap();
    let containers = hcl::format::to_string(
        task.body()
            .attributes()
            .find(|a| a.key() == "container_definitions")
            .unwrap()
            .expr(),
    )
    .unwrap();
    assert!(
        containers.contains("\"run\", \"pipelines/aws.toml\""),
        "{containers}"
    );
    assert!(!containers.contains("promote"));
    assert!(
        containers.contains("stopTimeout"),
        "time for the cleanups on SIGTERM"
    );
}

#[test]
fn the_notify_hook_posts_the_summary_it_gets_on_stdin() {
    use std::io::Write;
    // A webhook that records what it receives.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Read};
        let (mut s, _) = listener.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut len = 0;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        String::from_utf8(body).unwrap()
    });
    let mut child = std::process::Command::new(repo().join("pipelines/schedule/notify.sh"))
        .env("CHAT_WEBHOOK", &url)
        .env("BAKE_EXIT_CODE", "3")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"published": [], "results": [{"outcome": "rejected"}]}"#)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let posted: serde_json::Value = serde_json::from_str(&server.join().unwrap()).unwrap();
    let text = posted["text"].as_str().unwrap();
    assert!(
        text.contains("failed (exit 3)") && text.contains("rejected"),
        "{text}"
    );
}
