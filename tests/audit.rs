//! `bake audit` against the emulator: nodes launched from a published image as the eks-node
//! module launches them (its tags) are found by image, judged through SSM by the checks the
//! catalog declares safe on a live node and by their packages; a drift is reported on exactly
//! the node, check and package it is on (exit 3); a node whose agent does not answer is not
//! judged (exit 1), never counted as clean; every call is allowed by the printed policy.

use crate::common;

use common::moto::{bake, bases, project, Moto, UBUNTU_ARM, UBUNTU_X86};
use serde_json::{json, Value};

/// Launches a node of `image` tagged as terraform/modules/eks-node tags it.
async fn node(ec2: &aws_sdk_ec2::Client, image: &str, name: &str, cluster: &str) -> String {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    let tags = [
        ("Name", format!("pets-{name}")),
        ("bake:node", name.to_string()),
        ("bake:recipe", "eks-node".to_string()),
        ("bake:arch", "x86_64".to_string()),
        ("bake:cluster", cluster.to_string()),
    ];
    let spec = tags.iter().fold(
        TagSpecification::builder().resource_type(ResourceType::Instance),
        |s, (k, v)| s.tags(Tag::builder().key(*k).value(v).build()),
    );
    let run = ec2
        .run_instances()
        .image_id(image)
        .min_count(1)
        .max_count(1)
        .tag_specifications(spec.build())
        .send()
        .await
        .unwrap();
    run.instances()[0].instance_id().unwrap().to_string()
}

fn audited<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == name)
        .unwrap_or_else(|| panic!("{name} not audited: {report:#}"))
}

fn check<'a>(node: &'a Value, name: &str) -> &'a Value {
    node["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {node:#}"))
}

/// What a node answers for its package list, scripted per node: each slice of the audit
/// document's `packages` action.
fn packages_of(instance: &str, list: &str) -> Vec<Value> {
    common::moto::audit_package_rules(list)
        .into_iter()
        .map(|mut rule| {
            rule["instance"] = json!(instance);
            rule
        })
        .collect()
}

/// Every call of the audits since record `from` is allowed by `bake iam-policy --audit-only`,
/// and what an audit identity must never do is denied by it: run a script on a node (IAM
/// authorizes a command's document apart from its instances, so only a policy without
/// AWS-RunShellScript keeps a shell off the nodes), install documents, write the registry,
/// stop a node.
fn audit_only_identity_suffices(p: &common::Project, moto: &Moto, from: usize, node: &str) {
    let policy = common::moto::printed_policy(p, moto, "pipelines/aws.toml", &["--audit-only"]);
    let key = p.access_key();
    let calls: Vec<Value> = moto.records()[from..]
        .iter()
        .filter(|r| r["key"] == key.as_str())
        .cloned()
        .collect();
    let instance = format!("arn:aws:ec2:us-east-1:123456789012:instance/{node}");
    let tags = json!({"aws:ResourceTag/bake:recipe": "eks-node", "ssm:resourceTag/bake:recipe": "eks-node"});
    let req = |action: &str, resource: &str, context: Value| json!({"action": action, "resource": resource, "context": context});
    let forbidden = [
        req(
            "ssm:SendCommand",
            "arn:aws:ssm:us-east-1::document/AWS-RunShellScript",
            json!({}),
        ),
        req(
            "ssm:CreateDocument",
            "arn:aws:ssm:us-east-1:123456789012:document/bake-audit.audit1.eks-node",
            json!({}),
        ),
        req(
            "ssm:UpdateDocument",
            "arn:aws:ssm:us-east-1:123456789012:document/bake-audit.audit1.eks-node",
            json!({}),
        ),
        req(
            "ssm:PutParameter",
            "arn:aws:ssm:us-east-1:123456789012:parameter/audit1/eks-node/channels/dev",
            json!({}),
        ),
        req("ec2:StopInstances", &instance, tags.clone()),
        req("ec2:TerminateInstances", &instance, tags),
    ];
    let verdicts = common::moto::simulate(&policy, &calls, &forbidden);
    let (said, asked) = verdicts.split_at(verdicts.len() - forbidden.len());
    let denied: Vec<&Value> = said.iter().filter(|v| v["result"] != "Allowed").collect();
    assert!(
        denied.is_empty(),
        "the audit-only policy does not allow: {denied:#?}"
    );
    for (r, v) in forbidden.iter().zip(asked) {
        assert_ne!(v["result"], "Allowed", "{r} under the audit-only policy");
    }
}

/// `bake <args>` exits 2 (what it refuses to do, it does not start); its stderr.
fn refused(p: &common::Project, moto: &Moto, args: &[&str]) -> String {
    let out = common::moto::bake_command(p, moto)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

/// `bake audit-document --apply` of the project's pipeline: (exit code, report, stderr).
fn install_audit_documents(p: &common::Project, moto: &Moto) -> (i32, Value, String) {
    bake(
        p,
        moto,
        &["audit-document", "-p", "pipelines/aws.toml", "--apply"],
    )
}

/// A node's answer to the os-release job of the audit program: Ubuntu 22.04.
fn os_rule() -> Value {
    json!({"match": "printf 'os_id=%s", "stdout": "os_id=ubuntu\nos_like=debian\nos_version=22.04\n"})
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_finds_the_pets_of_a_release_and_reports_drift_on_exactly_its_node() {
    let moto = Moto::get();
    let (x86, arm) = bases(moto).await;
    let os = os_rule();
    let parameters = json!({UBUNTU_X86: x86, UBUNTU_ARM: arm});
    moto.set_config(json!({"parameters": parameters, "commands": [os]}));
    let p = project("/audit1");
    common::moto::x86_only(&p);
    let (code, summary, stderr) = bake(&p, moto, &["run", "pipelines/aws.toml"]);
    assert_eq!(code, 0, "{summary:#}\n{stderr}");
    let release = summary["published"][0]["release"]
        .as_str()
        .unwrap()
        .to_string();
    let image = summary["published"][0]["images"]["x86_64"]
        .as_str()
        .unwrap()
        .to_string();

    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let web1 = node(&ec2, &image, "web-1", "dev").await;
    let web2 = node(&ec2, &image, "web-2", "staging").await;
    // Not bake's image: never audited.
    node(&ec2, &x86, "other", "dev").await;
    let audit = ["audit", "-p", "pipelines/aws.toml", "--wait", "5s"];

    // Before its document is installed the audit sends nothing: exit 2, the fix named.
    let before = moto.records().len();
    let stderr = refused(&p, moto, &audit);
    assert!(
        stderr.contains("bake-audit.audit1.eks-node")
            && stderr.contains("does not exist")
            && stderr.contains("bake audit-document pipelines/aws.toml --apply"),
        "{stderr}"
    );
    assert!(!moto.records()[before..]
        .iter()
        .any(|r| r["action"] == "SendCommand"));
    let (code, docs, stderr) = install_audit_documents(&p, moto);
    assert_eq!(code, 0, "{docs:#}\n{stderr}");
    assert_eq!(docs["documents"][0]["state"], "created", "{docs:#}");
    let (_, docs, _) = bake(&p, moto, &["audit-document", "-p", "pipelines/aws.toml"]);
    assert_eq!(docs["documents"][0]["state"], "current", "{docs:#}");
    let hash = docs["documents"][0]["hash"].as_str().unwrap().to_string();
    let first_audit = moto.records().len();

    // The hook runs only when something is wrong.
    let heard = p.dir.path().join("heard.json");
    let hook = format!(
        "{{ echo \"$BAKE_EXIT_CODE\"; cat; }} > '{}'",
        heard.display()
    );
    let notified = [&audit[..], &["--notify", &hook]].concat();
    let (code, report, stderr) = bake(&p, moto, &notified);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert!(!heard.exists());
    assert_eq!(report["nodes"].as_array().unwrap().len(), 2, "{report:#}");
    for (name, instance) in [("web-1", &web1), ("web-2", &web2)] {
        let n = audited(&report, name);
        assert_eq!(n["instance"], instance.as_str());
        assert_eq!(n["release"], release.as_str());
        assert_eq!(n["image"], image.as_str());
        assert_eq!(n["channels"], json!(["dev"]), "{n:#}");
        assert_eq!(n["changed"], json!([]));
        assert!(n["not_judged"].is_null(), "{n:#}");
        assert_eq!(check(n, "mac-policy")["status"], "pass");
        assert_eq!(check(n, "networkd-keeps-foreign-routes")["status"], "pass");
        assert_eq!(check(n, "snap-refresh-held")["status"], "pass");
        // Not safe on a live node, or about the image as shipped: not run at all.
        for unsafe_there in ["pod-network", "machine-id-empty", "no-bake-leftovers"] {
            assert!(
                !n["checks"].to_string().contains(unsafe_there),
                "{unsafe_there} ran on a live node: {n:#}"
            );
        }
    }
    assert!(stderr.contains("audit: 2/2"), "{stderr}");

    // A drift by hand on web-1 only: the seed's MAC policy back and kubelet upgraded.
    let changed = "#os\tubuntu\t22.04\nkubelet\t1.31.3\tamd64\n";
    let mut commands = vec![
        os.clone(),
        json!({"instance": web1, "match": "audit eks-node mac-policy", "status": "Failed", "exit_code": 1,
               "stdout": "udev rewrote the veth MAC (addr_assign_type 3): MACAddressPolicy is not none\n"}),
    ];
    commands.extend(packages_of(&web1, changed));
    moto.set_config(json!({"parameters": parameters, "commands": commands}));
    let (code, report, stderr) = bake(&p, moto, &notified);
    assert_eq!(code, 3, "{report:#}\n{stderr}");
    let said = std::fs::read_to_string(&heard).unwrap();
    assert!(said.starts_with("3\n") && said.contains(&web1), "{said}");
    let n1 = audited(&report, "web-1");
    assert_eq!(check(n1, "mac-policy")["status"], "fail");
    assert!(check(n1, "mac-policy")["reason"]
        .as_str()
        .unwrap()
        .contains("udev rewrote the veth MAC"));
    assert_eq!(check(n1, "apt-timers-masked")["status"], "pass");
    assert_eq!(n1["changed"].as_array().unwrap().len(), 1, "{n1:#}");
    assert!(n1["changed"][0].as_str().unwrap().contains("kubelet"));
    let n2 = audited(&report, "web-2");
    assert_eq!(n2["changed"], json!([]));
    assert_eq!(check(n2, "mac-policy")["status"], "pass");

    // One node, by name; then the nodes of one cluster.
    let (code, report, _) = bake(&p, moto, &[&audit[..], &["--node", "web-2"]].concat());
    assert_eq!(code, 0);
    assert_eq!(report["nodes"].as_array().unwrap().len(), 1);
    let (code, report, _) = bake(&p, moto, &[&audit[..], &["--cluster", "dev"]].concat());
    assert_eq!((code, report["nodes"].as_array().unwrap().len()), (3, 1));
    assert_eq!(report["nodes"][0]["node"], "web-1");
    let out = common::moto::bake_command(&p, moto)
        .args([&audit[..], &["--node", "web-9"]].concat())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no running node named `web-9`"), "{stderr}");

    // Agents that do not answer: not judged, named, exit 1 — never clean.
    moto.set_config(
        json!({"parameters": parameters, "commands": [os], "agent_online_after_s": 100000}),
    );
    let offline = node(&ec2, &image, "web-3", "dev").await;
    let (code, report, stderr) = bake(
        &p,
        moto,
        &[
            "audit",
            "-p",
            "pipelines/aws.toml",
            "--node",
            "web-3",
            "--wait",
            "1s",
        ],
    );
    assert_eq!(code, 1, "{report:#}\n{stderr}");
    let n3 = audited(&report, "web-3");
    assert!(
        n3["not_judged"].as_str().unwrap().contains(&offline)
            && n3["not_judged"]
                .as_str()
                .unwrap()
                .contains("did not come online"),
        "{n3:#}"
    );
    assert_eq!(n3["checks"], json!([]));

    // Read-only: besides the commands it sends, no call of the audits changes anything.
    let changing: Vec<String> = moto.records()[first_audit..]
        .iter()
        .filter(|r| r["key"] == p.access_key().as_str())
        .filter_map(|r| r["action"].as_str())
        .filter(|a| !(a.starts_with("Describe") || a.starts_with("Get") || a.starts_with("List")))
        .filter(|a| *a != "SendCommand")
        .map(str::to_string)
        .collect();
    assert!(changing.is_empty(), "{changing:?}");
    // Each command goes to one node, its pace and error budget said, within SSM's limits
    // (which the proxy enforces: at most 50 instances, MaxConcurrency and MaxErrors well formed).
    let records = moto.records();
    let sends: Vec<&serde_json::Value> = records[first_audit..]
        .iter()
        .filter(|r| r["key"] == p.access_key().as_str() && r["action"] == "SendCommand")
        .map(|r| &r["body"])
        .collect();
    assert!(!sends.is_empty());
    for body in sends {
        assert_eq!(
            body["InstanceIds"].as_array().map(Vec::len),
            Some(1),
            "{body}"
        );
        assert_eq!(body["MaxConcurrency"], "1", "{body}");
        assert_eq!(body["MaxErrors"], "0", "{body}");
        // Only the audit document, by its content's hash: never a script.
        assert_eq!(body["DocumentName"], "bake-audit.audit1.eks-node", "{body}");
        assert_eq!(body["DocumentHash"], hash.as_str(), "{body}");
        assert!(body["Parameters"].get("commands").is_none(), "{body}");
    }
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
    audit_only_identity_suffices(&p, moto, first_audit, &web1);

    // The recipe's checks change: the installed document is stale, and the audit refuses to
    // run (exit 2) until it is updated; SSM itself refuses the old hash.
    p.edit(
        "validators/mac-policy.sh",
        "#!/bin/sh\n",
        "#!/bin/sh\n# checked again\n",
    );
    let stderr = refused(&p, moto, &audit);
    assert!(stderr.contains("has other content"), "{stderr}");
    let (code, docs, _) = install_audit_documents(&p, moto);
    assert_eq!(
        (code, docs["documents"][0]["state"].as_str()),
        (0, Some("updated")),
        "{docs:#}"
    );
    moto.set_config(json!({"parameters": parameters, "commands": [os_rule()]}));
    let (code, report, stderr) = bake(&p, moto, &[&audit[..], &["--node", "web-2"]].concat());
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
    for c in [web1, web2, offline] {
        let _ = ec2.terminate_instances().instance_ids(c).send().await;
    }
}

/// The local provider audits the images channels point at, booted as their nodes would boot
/// (driven for real in the VM tier, tests/vm.rs); with nothing published there is no node to
/// boot: an empty, clean report, exit 0, and no VM started.
#[test]
fn the_local_provider_with_nothing_published_has_no_node_to_audit() {
    let p = common::Project::new();
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("bake"))
        .current_dir(p.dir.path())
        .env("BAKE_STATE_DIR", p.dir.path().join(".bake"))
        .args(["audit", "-p", "pipelines/local.toml", "--output", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["nodes"], serde_json::json!([]), "{report:#}");
    assert!(!stderr.contains("qemu-system"), "{stderr}");
}

/// Nodes in a copy region run the copies of a release's images: the audit finds them there,
/// reaches them through SSM in their region and judges them against the release's manifest.
/// With `--cluster`, a node whose tags name no cluster (launched by an eks-node module before
/// it tagged one) may be in it: named, not judged (exit 1), never left out in silence.
#[tokio::test(flavor = "multi_thread")]
async fn nodes_in_a_copy_region_are_audited_there_and_an_untagged_node_is_never_skipped() {
    let moto = Moto::get();
    let (x86, arm) = bases(moto).await;
    let os = os_rule();
    let parameters = json!({UBUNTU_X86: x86, UBUNTU_ARM: arm});
    moto.set_config(json!({"parameters": parameters, "commands": [os]}));
    let p = project("/audit2");
    common::moto::x86_only(&p);
    p.edit(
        "pipelines/aws.toml",
        "copy_regions = []",
        "copy_regions = [\"us-west-2\"]",
    );
    let (code, summary, stderr) = bake(&p, moto, &["run", "pipelines/aws.toml"]);
    assert_eq!(code, 0, "{summary:#}\n{stderr}");
    let image = summary["published"][0]["images"]["x86_64"]
        .as_str()
        .unwrap()
        .to_string();
    let west = moto
        .sdk()
        .await
        .to_builder()
        .region(aws_config::Region::new("us-west-2"))
        .build();
    let west_ec2 = aws_sdk_ec2::Client::new(&west);
    let copy = west_ec2
        .describe_images()
        .owners("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:bake:source-image")
                .values(&image)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .images()[0]
        .image_id()
        .unwrap()
        .to_string();
    let far = node(&west_ec2, &copy, "west-1", "dev").await;
    let home = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let old = home
        .run_instances()
        .image_id(&image)
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("bake:node")
                        .value("old-1")
                        .build(),
                )
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("bake:recipe")
                        .value("eks-node")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap()
        .instances()[0]
        .instance_id()
        .unwrap()
        .to_string();
    let audit = ["audit", "-p", "pipelines/aws.toml", "--wait", "5s"];
    // The audit document, in the pipeline's region and the copy region.
    let (code, docs, stderr) = install_audit_documents(&p, moto);
    assert_eq!(code, 0, "{docs:#}\n{stderr}");
    let regions: Vec<&str> = docs["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["region"].as_str().unwrap())
        .collect();
    assert_eq!(regions, ["us-east-1", "us-west-2"], "{docs:#}");

    let (code, report, stderr) = bake(&p, moto, &[&audit[..], &["--cluster", "dev"]].concat());
    assert_eq!(code, 1, "{report:#}\n{stderr}");
    let w = audited(&report, "west-1");
    assert_eq!(w["instance"], far.as_str());
    assert_eq!(w["region"], "us-west-2");
    assert_eq!(w["copy"], copy.as_str());
    assert_eq!(w["image"], image.as_str(), "judged as the release's image");
    assert!(w["not_judged"].is_null(), "{w:#}");
    assert_eq!(check(w, "mac-policy")["status"], "pass");
    let o = audited(&report, "old-1");
    assert_eq!(o["instance"], old.as_str());
    let why = o["not_judged"].as_str().unwrap_or_default();
    assert!(
        why.contains("bake:cluster") && why.contains("`dev`"),
        "{o:#}"
    );
    assert_eq!(o["checks"], json!([]));

    // Without --cluster every node is judged: both as baked.
    let (code, report, stderr) = bake(&p, moto, &audit);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(report["nodes"].as_array().unwrap().len(), 2, "{report:#}");
    assert!(audited(&report, "old-1")["not_judged"].is_null());
    // The commands to west-1 went to SSM in us-west-2; every call is allowed by the policy.
    let sent_west = moto.records().iter().any(|r| {
        r["action"] == "SendCommand"
            && r["region"] == "us-west-2"
            && r["body"]["InstanceIds"][0] == far.as_str()
    });
    assert!(sent_west, "no command reached west-1 through us-west-2");
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
    let _ = west_ec2
        .terminate_instances()
        .instance_ids(far)
        .send()
        .await;
    let _ = home.terminate_instances().instance_ids(old).send().await;
}
