//! The AWS provider end to end against the real moto_server (with the tests' proxy for what
//! moto cannot do): both arches bake, validate on a canary and publish the SSM contract; every
//! instance is launched hardened; nothing is left running or orphaned; a second run makes no
//! mutating call; a failed validator rejects the image and publishes nothing.

use crate::common;

use common::moto::Moto;
use common::Project;
use serde_json::{json, Value};

use common::moto::{bake, bases, project, UBUNTU_ARM, UBUNTU_X86};

const MUTATING: &[&str] = &[
    "RunInstances",
    "TerminateInstances",
    "StopInstances",
    "CreateImage",
    "CreateTags",
    "CreateSecurityGroup",
    "DeleteSecurityGroup",
    "DeregisterImage",
    "EnableImageDeprecation",
    "EnableImageDeregistrationProtection",
    "DisableImageDeregistrationProtection",
    "DeleteSnapshot",
    "PutParameter",
    "DeleteParameter",
    "DeleteParameters",
    "SendCommand",
];

/// The result of one arch in a run's summary.
fn arch_result<'a>(summary: &'a Value, arch: &str) -> &'a Value {
    summary["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["arch"] == arch)
        .unwrap_or_else(|| panic!("no {arch} result in {summary:#}"))
}

async fn inventory(moto: &Moto) -> (Vec<String>, Vec<(String, String)>, Vec<String>) {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let live = common::moto::live_instances(moto).await;
    let images = ec2.describe_images().owners("self").send().await.unwrap();
    let baked: Vec<(String, String)> = images
        .images()
        .iter()
        .filter(|i| i.tags().iter().any(|t| t.key() == Some("bake:recipe")))
        .map(|i| {
            let status = i
                .tags()
                .iter()
                .find(|t| t.key() == Some("bake:status"))
                .and_then(|t| t.value())
                .unwrap_or("")
                .to_string();
            (i.image_id().unwrap().to_string(), status)
        })
        .collect();
    let groups = ec2.describe_security_groups().send().await.unwrap();
    let ours: Vec<String> = groups
        .security_groups()
        .iter()
        .filter(|g| g.group_name().unwrap_or("").starts_with("bake-"))
        .map(|g| g.group_id().unwrap().to_string())
        .collect();
    (live, baked, ours)
}

/// Volumes bake made (tagged with a run) that still exist.
async fn bake_volumes(moto: &Moto) -> Vec<String> {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let r = ec2
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag-key")
                .values("bake:run-id")
                .build(),
        )
        .send()
        .await
        .unwrap();
    r.volumes()
        .iter()
        .map(|v| format!("{} {:?}", v.volume_id().unwrap_or_default(), v.state()))
        .collect()
}

#[tokio::test]
async fn both_arches_bake_validate_publish_and_a_rerun_makes_no_mutating_call() {
    let moto = Moto::get();
    let (x86, arm) = bases(moto).await;
    // A package list as long as a real EKS AMI's (~200 KB): far more than the 24,000
    // characters SSM returns of a command's output, which the proxy enforces.
    // (The distribution first, as the capture prints it, for the SBOM's package URLs.)
    let packages: String = std::iter::once("#os\tubuntu\t22.04\n".to_string())
        .chain((0..3000).map(|i| {
            format!("lib-package-{i:04}-of-an-eks-node\t1:2.{i}.0-1ubuntu0.22.04.1\tamd64\n")
        }))
        .chain([
            "kubelet\t1.31.2\tamd64\n".to_string(),
            "systemd\t249.11-0ubuntu3.12\tamd64\n".to_string(),
        ])
        .collect();
    assert!(packages.len() > 150_000);
    moto.set_config(json!({
        "parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm},
        "commands": common::moto::package_rules(&packages),
    }));
    let p = project("/e2e1");
    let (code, summary, stderr) = bake(
        &p,
        moto,
        &[
            "run",
            "pipelines/aws.toml",
            "--notify",
            "cat > notified.json",
        ],
    );
    assert_eq!(code, 0, "{summary:#}\n{stderr}");
    // The notification hook got the summary.
    let notified: Value =
        serde_json::from_slice(&std::fs::read(p.path("notified.json")).unwrap()).unwrap();
    assert_eq!(notified["exit_code"], 0);
    assert_eq!(notified["summary"]["published"], summary["published"]);
    std::fs::remove_file(p.path("notified.json")).unwrap();
    let published = &summary["published"][0];
    let release = published["release"].as_str().unwrap().to_string();
    assert_eq!(published["promoted_to"], json!(["dev"]));

    // The SSM contract.
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk().await);
    for arch in ["x86_64", "arm64"] {
        let name = format!("/e2e1/eks-node/releases/{release}/{arch}");
        let p = ssm.get_parameter().name(&name).send().await.unwrap();
        let p = p.parameter().unwrap();
        assert_eq!(p.value(), published["images"][arch].as_str());
        assert_eq!(p.data_type(), Some("aws:ec2:image"), "{name}");
        let ch = ssm
            .get_parameter()
            .name(format!("/e2e1/eks-node/channels/dev/{arch}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            ch.parameter().unwrap().value(),
            published["images"][arch].as_str()
        );
    }
    let manifest = ssm
        .get_parameter()
        .name(format!("/e2e1/eks-node/releases/{release}/manifest"))
        .send()
        .await
        .unwrap();
    let manifest: Value =
        serde_json::from_str(manifest.parameter().unwrap().value().unwrap()).unwrap();
    assert_eq!(manifest["release"], release.as_str());
    assert_eq!(manifest["images"]["arm64"]["base"], arm.as_str());
    // The digest covers the whole list, tail (systemd) included, not the first 24,000 characters.
    assert_eq!(
        manifest["images"]["x86_64"]["packages_sha256"].as_str(),
        Some(bake::input::recipe::sha256_hex(packages.as_bytes()).as_str())
    );
    let ch = ssm
        .get_parameter()
        .name("/e2e1/eks-node/channels/dev/release")
        .send()
        .await
        .unwrap();
    assert_eq!(ch.parameter().unwrap().value(), Some(release.as_str()));

    // Every instance was launched hardened: IMDSv2, no key, our group, encrypted volume, tags.
    let launches = moto.params_of("RunInstances");
    assert_eq!(launches.len(), 4, "a builder and a canary per arch");
    let base_gib = common::moto::root_gib(moto, &x86).await;
    assert_eq!(base_gib, common::moto::root_gib(moto, &arm).await);
    for l in &launches {
        assert_eq!(
            l.get("MetadataOptions.HttpTokens").map(String::as_str),
            Some("required"),
            "{l:?}"
        );
        assert!(!l.contains_key("KeyName"), "{l:?}");
        assert_eq!(
            l.get("BlockDeviceMapping.1.Ebs.Encrypted")
                .map(String::as_str),
            Some("true"),
            "{l:?}"
        );
        assert!(l.contains_key("SecurityGroupId.1"), "{l:?}");
        assert!(l.values().any(|v| v == "bake:run-id"), "{l:?}");
        // The recipe names no size: the base's own (its root snapshot's), never less.
        // (A builder launches from its base, a canary from its image: the builder's volume.)
        let from = common::moto::root_gib(moto, &l["ImageId"]).await;
        assert_eq!(
            l.get("BlockDeviceMapping.1.Ebs.VolumeSize")
                .map(String::as_str),
            Some(from.to_string().as_str()),
            "{l:?}"
        );
        assert_eq!(
            from, base_gib,
            "the base's size, carried into the image: {l:?}"
        );
    }
    let cluster_sg = aws_sdk_eks::Client::new(&moto.sdk_via_proxy().await)
        .describe_cluster()
        .name("dev")
        .send()
        .await
        .unwrap()
        .cluster()
        .and_then(|c| c.resources_vpc_config())
        .and_then(|v| v.cluster_security_group_id())
        .expect("EKS names the cluster security group")
        .to_string();
    // Every instance carries the dead-man's switch: it terminates when it powers itself off,
    // and its user data arms a power-off timer. Canaries also join the cluster with the
    // endpoint, CA and DNS address DescribeCluster gave.
    let mut joins = 0;
    for l in &launches {
        assert_eq!(
            l.get("InstanceInitiatedShutdownBehavior")
                .map(String::as_str),
            Some("terminate"),
            "{l:?}"
        );
        let text = common::moto::user_data(l);
        let minutes: u64 = text
            .split("shutdown -P +")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("no power-off timer in\n{text}"));
        assert!(
            minutes > 60,
            "the timer must outlive the run: {minutes} min"
        );
        if text.contains("/etc/eks/bootstrap.sh 'dev'") {
            joins += 1;
            // Beside bake's own group, the cluster's: it admits only its members.
            assert_eq!(
                l.get("SecurityGroupId.2"),
                Some(&cluster_sg),
                "the canary lacks the cluster security group: {l:?}"
            );
            assert!(text.contains("--apiserver-endpoint 'https://"), "{text}");
            assert!(text.contains("--b64-cluster-ca '"), "{text}");
            assert!(text.contains("--dns-cluster-ip 10.100.0.10"), "{text}");
        }
    }
    assert_eq!(
        joins, 2,
        "the two canaries join the cluster through user data"
    );
    // Each canary also gets the image as shipped: a second volume from the image's own root
    // snapshot, encrypted and tagged, attached only once the canary has booted (two disks
    // with one filesystem UUID and label at boot can boot the copy), deleted with the
    // canary; builders get none.
    let images = moto.params_of("CreateImage").len();
    assert_eq!(images, 2);
    for l in &launches {
        assert!(
            !l.contains_key("BlockDeviceMapping.2.DeviceName"),
            "a second volume attached at launch: {l:?}"
        );
    }
    let records = moto.records();
    let at = |action: &str, key: &str, value: &str| -> Vec<usize> {
        records
            .iter()
            .enumerate()
            .filter(|(_, r)| r["action"] == action && r["params"][key] == value)
            .map(|(i, _)| i)
            .collect()
    };
    let created = moto.params_of("CreateVolume");
    assert_eq!(created.len(), 2, "one copy per canary: {created:?}");
    for v in &created {
        assert!(v["SnapshotId"].starts_with("snap-"), "{v:?}");
        assert_eq!(
            v.get("Encrypted").map(String::as_str),
            Some("true"),
            "{v:?}"
        );
        assert!(v.values().any(|t| t == "bake:run-id"), "{v:?}");
    }
    let attached = moto.params_of("AttachVolume");
    assert_eq!(attached.len(), 2, "{attached:?}");
    for a in &attached {
        assert_eq!(
            a.get("Device").map(String::as_str),
            Some("/dev/sdf"),
            "{a:?}"
        );
        let canary = &a["InstanceId"];
        // Once the canary's agent answered, before anything runs on it.
        let attach = at("AttachVolume", "InstanceId", canary)[0];
        let asked_agent = records.iter().position(|r| {
            r["action"] == "DescribeInstanceInformation"
                && r["body"].to_string().contains(canary.as_str())
        });
        assert!(
            asked_agent.is_some_and(|a| a < attach),
            "attached before the canary's agent was asked for"
        );
        let commands: Vec<usize> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r["action"] == "SendCommand"
                    && r["body"]["InstanceIds"]
                        .to_string()
                        .contains(canary.as_str())
            })
            .map(|(i, _)| i)
            .collect();
        assert!(
            !commands.is_empty() && commands.iter().all(|&c| attach < c),
            "the canary ran something before its copy was attached"
        );
        // node-ready asks the cluster's API, as bake's own identity, for the node by the name
        // nodeadm and bootstrap give it: the instance's private DNS name, not a hostname. No
        // command on the canary does.
        let dns = aws_sdk_ec2::Client::new(&moto.sdk().await)
            .describe_instances()
            .instance_ids(canary)
            .send()
            .await
            .unwrap()
            .reservations()[0]
            .instances()[0]
            .private_dns_name()
            .unwrap()
            .to_string();
        assert!(dns.starts_with("ip-"), "{dns}");
        let asked: Vec<Value> = moto
            .kube_records()
            .into_iter()
            .filter(|r| r["path"] == format!("/api/v1/nodes/{dns}").as_str())
            .collect();
        assert!(
            !asked.is_empty(),
            "the cluster was never asked for node {dns}"
        );
        assert!(
            asked.iter().all(|r| r["cluster"] == "dev"
                && r["principal"] == "arn:aws:iam::123456789012:user/moto"),
            "{asked:?}"
        );
        assert!(
            !commands
                .iter()
                .any(|&c| records[c]["body"]["Parameters"]["commands"][0]
                    .as_str()
                    .unwrap_or_default()
                    .contains("validator node-ready")),
            "node-ready ran a command on the canary"
        );
        // cluster-pod-network ran its probe pod on that node and read the node's links.
        assert!(
            commands
                .iter()
                .any(|&c| records[c]["body"]["Parameters"]["commands"][0]
                    .as_str()
                    .unwrap_or_default()
                    .contains(common::moto::HOST_LINKS_NEEDLE)),
            "the canary's links were never read"
        );
        let doomed = at("ModifyInstanceAttribute", "InstanceId", canary);
        assert_eq!(doomed.len(), 1, "{canary}");
        let m = &records[doomed[0]]["params"];
        assert_eq!(m["BlockDeviceMapping.1.DeviceName"], "/dev/sdf", "{m}");
        assert_eq!(
            m["BlockDeviceMapping.1.Ebs.DeleteOnTermination"], "true",
            "{m}"
        );
    }
    // The canary is prepared before its validators: the script mounts that volume, found by
    // its volume ID on Nitro.
    let sent: Vec<String> = moto
        .records()
        .iter()
        .filter(|r| r["action"] == "SendCommand")
        .filter_map(|r| {
            r["body"]["Parameters"]["commands"][0]
                .as_str()
                .map(str::to_string)
        })
        .filter(|c| c.contains(common::moto::PREPARE_CANARY_NEEDLE))
        .collect();
    assert_eq!(sent.len(), 2, "one prepare per canary");
    for c in &sent {
        assert!(
            c.contains("BAKE_IMAGE_DEVICES='/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol"),
            "{c}"
        );
    }
    assert!(
        moto.params_of("AuthorizeSecurityGroupIngress").is_empty(),
        "no inbound rule is ever added"
    );

    // Nothing left: no instance running, no security group, only the two published images.
    let (live, baked, groups) = inventory(moto).await;
    assert!(live.is_empty(), "instances left: {live:?}");
    assert!(groups.is_empty(), "security groups left: {groups:?}");
    let volumes = bake_volumes(moto).await;
    assert!(volumes.is_empty(), "volumes left: {volumes:?}");
    assert_eq!(baked.len(), 2, "{baked:?}");
    assert!(baked.iter().all(|(_, s)| s == "validated"), "{baked:?}");

    // Nothing changed: up to date, and not one mutating call.
    let before = moto.calls().len();
    let (code, summary, stderr) = bake(
        &p,
        moto,
        &[
            "run",
            "pipelines/aws.toml",
            "--notify",
            "cat > notified.json",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(summary["up_to_date"], true);
    assert!(
        !p.path("notified.json").exists(),
        "an up-to-date run must stay quiet"
    );
    let calls: Vec<(String, String)> = moto.calls()[before..].to_vec();
    let mutating: Vec<&(String, String)> = calls
        .iter()
        .filter(|(_, a)| MUTATING.contains(&a.as_str()))
        .collect();
    assert!(
        mutating.is_empty(),
        "an up-to-date run made mutating calls: {mutating:?}"
    );
    // Whatever the registry holds: the two base parameters and the newest release's copy.
    let key = p.access_key();
    let reads: Vec<String> = moto.records()[before..]
        .iter()
        .filter(|r| r["key"] == key.as_str())
        .map(|r| r["action"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        reads, ["GetParameter"; 3],
        "a no-op scheduled run reads more than it needs"
    );

    // Status, releases and promotion work on the SSM registry too.
    let (code, rel, _) = bake(
        &p,
        moto,
        &["releases", "eks-node", "-p", "pipelines/aws.toml"],
    );
    assert_eq!(code, 0);
    assert_eq!(rel.as_array().unwrap().len(), 1);
    let (code, moved, stderr) = bake(
        &p,
        moto,
        &[
            "promote",
            "eks-node",
            &release,
            "--to",
            "prod",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(moved["result"], "moved");
    let prod = ssm
        .get_parameter()
        .name("/e2e1/eks-node/channels/prod/x86_64")
        .send()
        .await
        .unwrap();
    assert_eq!(
        prod.parameter().unwrap().value(),
        published["images"]["x86_64"].as_str()
    );

    // The package manifest is kept whole beside the release, gzipped in standard-tier
    // parameters (at most 4 KB each): `bake sbom` prints CycloneDX naming every package by
    // its package URL, read back by a CycloneDX reader.
    let chunks = ssm
        .get_parameters_by_path()
        .path(format!("/e2e1/eks-node/releases/{release}/packages/x86_64"))
        .send()
        .await
        .unwrap();
    assert!(!chunks.parameters().is_empty());
    assert!(chunks
        .parameters()
        .iter()
        .all(|c| c.value().unwrap().len() <= 4096));
    let (code, bom, stderr) = bake(
        &p,
        moto,
        &[
            "sbom",
            "eks-node",
            &release,
            "--arch",
            "x86_64",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(bom["bomFormat"], "CycloneDX");
    assert_eq!(bom["specVersion"], "1.5");
    assert_eq!(
        bom["metadata"]["component"]["bom-ref"],
        published["images"]["x86_64"]
    );
    let components = bom["components"].as_array().unwrap();
    assert_eq!(components.len(), 3002, "every package, the tail included");
    assert!(
        components.iter().any(|c| c["purl"]
            == "pkg:deb/ubuntu/systemd@249.11-0ubuntu3.12?arch=amd64&distro=ubuntu-22.04"),
        "{:#}",
        components[3001]
    );
    let read_back = cyclonedx_bom::prelude::Bom::parse_from_json_v1_5(
        serde_json::to_vec(&bom).unwrap().as_slice(),
    )
    .unwrap();
    use cyclonedx_bom::prelude::Validate as _;
    assert!(read_back
        .validate_version(cyclonedx_bom::prelude::SpecVersion::V1_5)
        .passed());

    // `bake diff` on AWS compares packages as it does locally: a rebake whose systemd went
    // back (dpkg order: `~` sorts before everything, even the end) and whose kubelet moved on.
    let next: String = packages
        .replace(
            "systemd\t249.11-0ubuntu3.12",
            "systemd\t249.11-0ubuntu3.12~22.04",
        )
        .replace("kubelet\t1.31.2", "kubelet\t1.31.3");
    moto.set_config(json!({
        "parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm},
        "commands": common::moto::package_rules(&next),
    }));
    // (x86_64 only: arm64's key did not change, so the new release carries its image, and
    // its package manifest with it.)
    let (code, second, stderr) = bake(
        &p,
        moto,
        &["run", "pipelines/aws.toml", "--force", "--arch", "x86_64"],
    );
    assert_eq!(code, 0, "{second:#}\n{stderr}");
    let release2 = second["published"][0]["release"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, d, stderr) = bake(
        &p,
        moto,
        &[
            "diff",
            "eks-node",
            &release,
            &release2,
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let x = d["arches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["arch"] == "x86_64")
        .unwrap();
    assert!(x["note"].is_null(), "{x:#}");
    assert_eq!(
        x["packages"]["changed"],
        json!([
            {"package": "kubelet", "from": "1.31.2", "to": "1.31.3"},
            {"package": "systemd", "from": "249.11-0ubuntu3.12", "to": "249.11-0ubuntu3.12~22.04", "downgrade": true},
        ])
    );
    assert_eq!(x["highlights"][0]["package"], "kubelet");
    let arm = d["arches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["arch"] == "arm64")
        .unwrap();
    assert_eq!(arm["image"][0], arm["image"][1], "arm64 carried: {arm:#}");
    assert!(
        arm["note"].is_null(),
        "the carried image's manifest came along: {arm:#}"
    );
    let (code, bom, stderr) = bake(
        &p,
        moto,
        &[
            "sbom",
            "eks-node",
            &release2,
            "--arch",
            "arm64",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(bom["components"].as_array().unwrap().len(), 3002);

    // The IAM policy bake prints allows every call of the run, the no-op rerun, status,
    // releases, the promotion, the SBOM and the diff, as IAM evaluates it.
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
}

#[tokio::test]
async fn a_failed_validator_rejects_the_image_and_publishes_nothing() {
    let moto = Moto::get();
    let (x86, arm) = bases(moto).await;
    // arm64's mac-policy script fails; on both canaries the probe pod's gateway MAC is no
    // longer the host veth's (cluster-pod-network, judged by bake from the cluster).
    moto.set_config(json!({
        "parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm},
        "commands": [{"match": "arm64 validator mac-policy", "status": "Failed", "exit_code": 1,
                      "stdout": "udev rewrote the veth MAC (addr_assign_type 3)\n"}],
        "pods": [common::moto::probe_pod_rule(false)],
    }));
    let p = project("/e2e2");
    let (code, summary, stderr) = bake(&p, moto, &["run", "pipelines/aws.toml"]);
    assert_eq!(code, 3, "{summary:#}\n{stderr}");
    assert!(summary["published"].as_array().unwrap().is_empty());
    let arm_result = arch_result(&summary, "arm64");
    assert_eq!(arm_result["outcome"], "rejected");
    assert!(arm_result["error"]
        .as_str()
        .unwrap()
        .contains("udev rewrote the veth MAC"));
    let x86_result = arch_result(&summary, "x86_64");
    assert_eq!(x86_result["outcome"], "rejected", "{x86_result:#}");
    let why = x86_result["error"].as_str().unwrap();
    assert!(
        why.contains("cluster-pod-network")
            && why.contains("pinned to MAC 0a:58:0a:00:00:99")
            && why.contains(&format!("now has {}", common::moto::SCRIPTED_VETH_MAC)),
        "{why}"
    );
    // The probe pods were created and deleted, by bake's own identity.
    let pods: Vec<Value> = moto
        .kube_records()
        .into_iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .unwrap_or_default()
                .starts_with("/api/v1/namespaces/default/pods")
        })
        .collect();
    let made = pods.iter().filter(|r| r["method"] == "POST").count();
    let gone = pods.iter().filter(|r| r["method"] == "DELETE").count();
    assert!(made == 2 && gone == 2, "{pods:#?}");

    let ssm = aws_sdk_ssm::Client::new(&moto.sdk().await);
    let params = ssm
        .get_parameters_by_path()
        .path("/e2e2")
        .recursive(true)
        .send()
        .await
        .unwrap();
    assert!(
        params.parameters().is_empty(),
        "nothing may be published: {:?}",
        params.parameters()
    );
    let (live, baked, groups) = inventory(moto).await;
    assert!(live.is_empty(), "instances left: {live:?}");
    assert!(groups.is_empty(), "security groups left: {groups:?}");
    let rejected: Vec<_> = baked.iter().filter(|(_, s)| s == "rejected").collect();
    assert_eq!(
        rejected.len(),
        2,
        "the rejected images are kept, tagged: {baked:?}"
    );
    common::moto::assert_iam_allows(Moto::get(), &[&p], "pipelines/aws.toml");
}

#[tokio::test]
async fn a_failing_step_cleans_up_everything_and_deletes_the_image() {
    let moto = Moto::get();
    let (x86, arm) = bases(moto).await;
    moto.set_config(json!({
        "parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm},
        "commands": [{"match": "x86_64 step disable-apt-timers", "status": "Failed", "exit_code": 1,
                      "stderr": "Failed to mask unit: Access denied\n"}]
    }));
    let p = project("/e2e3");
    let before = inventory(moto).await.1.len();
    let (code, summary, stderr) = bake(&p, moto, &["run", "pipelines/aws.toml"]);
    assert_eq!(code, 1, "{summary:#}\n{stderr}");
    let x86_result = arch_result(&summary, "x86_64");
    assert!(
        x86_result["error"]
            .as_str()
            .unwrap()
            .contains("Access denied"),
        "{x86_result}"
    );
    let (live, baked, groups) = inventory(moto).await;
    assert!(live.is_empty(), "instances left: {live:?}");
    assert!(groups.is_empty(), "security groups left: {groups:?}");
    // Only arm64's validated image was added (kept for reuse); x86_64 never got one.
    assert_eq!(baked.len(), before + 1, "{baked:?}");
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
}

/// Runs the pipeline with `faults` injected by the proxy; returns exit code, summary, stderr.
async fn with_faults(prefix: &str, faults: Value, extra: Value) -> (i32, Value, String, Project) {
    let moto = Moto::get();
    let (x86, arm) = bases(moto).await;
    let mut config = json!({"parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm}, "faults": faults});
    if let Value::Object(extra) = extra {
        config.as_object_mut().unwrap().extend(extra);
    }
    moto.set_config(config);
    let p = project(prefix);
    let (code, summary, stderr) = bake(&p, moto, &["run", "pipelines/aws.toml"]);
    (code, summary, stderr, p)
}

#[tokio::test]
async fn throttling_and_5xx_are_retried_and_the_run_completes() {
    let moto = Moto::get();
    let (code, summary, stderr, p) = with_faults(
        "/e2e4",
        json!([
            {"action": "RunInstances", "times": 2, "code": "RequestLimitExceeded", "status": 503},
            {"action": "PutParameter", "times": 2, "code": "ThrottlingException", "status": 400},
            {"action": "DescribeInstances", "times": 3, "code": "InternalError", "status": 500},
            {"action": "SendCommand", "times": 1, "code": "ThrottlingException", "status": 400}
        ]),
        json!({}),
    )
    .await;
    assert_eq!(code, 0, "{summary:#}\n{stderr}");
    assert_eq!(summary["published"].as_array().unwrap().len(), 1);
    let launches = moto
        .calls()
        .iter()
        .filter(|(_, a)| a == "RunInstances")
        .count();
    assert!(
        launches >= 6,
        "the two throttled RunInstances were retried ({launches} calls)"
    );
    let (live, _, groups) = inventory(moto).await;
    assert!(live.is_empty() && groups.is_empty());
    common::moto::assert_iam_allows(Moto::get(), &[&p], "pipelines/aws.toml");
}

#[tokio::test]
async fn an_image_not_yet_visible_after_create_image_is_waited_for() {
    let (code, summary, stderr, p) = with_faults(
        "/e2e5",
        json!([{"action": "DescribeImages", "times": 3, "code": "InvalidAMIID.NotFound", "after": "CreateImage"}]),
        json!({}),
    )
    .await;
    assert_eq!(code, 0, "{summary:#}\n{stderr}");
    assert_eq!(summary["published"].as_array().unwrap().len(), 1);
    common::moto::assert_iam_allows(Moto::get(), &[&p], "pipelines/aws.toml");
}

/// Snapshots that no image refers to.
async fn orphaned_snapshots(moto: &Moto) -> Vec<String> {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let images = ec2.describe_images().owners("self").send().await.unwrap();
    let used: Vec<&str> = images
        .images()
        .iter()
        .flat_map(|i| i.block_device_mappings())
        .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()))
        .collect();
    let snaps = ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap();
    snaps
        .snapshots()
        .iter()
        .map(|s| s.snapshot_id().unwrap_or_default().to_string())
        .filter(|s| !used.contains(&s.as_str()))
        .collect()
}

#[tokio::test]
async fn a_failed_image_fails_fast_cleans_up_and_publishes_nothing() {
    let moto = Moto::get();
    let before: Vec<String> = inventory(moto)
        .await
        .1
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    let orphans_before = orphaned_snapshots(moto).await;
    // EC2 is eventually consistent: right after DeregisterImage its snapshot may still be
    // "in use" by it. Deleting it is retried, so no snapshot is orphaned.
    let (code, summary, stderr, p) = with_faults(
        "/e2e6",
        json!([{"action": "DeleteSnapshot", "times": 3, "code": "InvalidSnapshot.InUse",
                "message": "The snapshot is currently in use by an AMI"}]),
        json!({"image_state_after_create": "failed"}),
    )
    .await;
    assert_eq!(code, 1, "{summary:#}\n{stderr}");
    let deletes = moto
        .calls()
        .iter()
        .filter(|(_, a)| a == "DeleteSnapshot")
        .count();
    assert!(
        deletes >= 5,
        "2 snapshots, 3 answered InUse: {deletes} DeleteSnapshot calls"
    );
    let orphans: Vec<String> = orphaned_snapshots(moto)
        .await
        .into_iter()
        .filter(|s| !orphans_before.contains(s))
        .collect();
    assert!(orphans.is_empty(), "orphaned snapshots: {orphans:?}");
    for r in summary["results"].as_array().unwrap() {
        assert!(r["error"].as_str().unwrap().contains("is failed"), "{r}");
    }
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk().await);
    let params = ssm
        .get_parameters_by_path()
        .path("/e2e6")
        .recursive(true)
        .send()
        .await
        .unwrap();
    assert!(params.parameters().is_empty());
    moto.set_config(json!({}));
    let (live, baked, groups) = inventory(moto).await;
    assert!(live.is_empty(), "instances left: {live:?}");
    assert!(groups.is_empty());
    let new: Vec<_> = baked.iter().filter(|(i, _)| !before.contains(i)).collect();
    assert!(
        new.is_empty(),
        "failed images must be deregistered: {new:?}"
    );
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
}

/// Runs under random faults (30% throttling, 5% 5xx, up to 50 ms extra latency per call): each
/// run completes or fails cleanly, and nothing is leaked or half published.
#[tokio::test]
async fn runs_under_random_throttling_5xx_and_latency_complete_or_fail_cleanly() {
    let moto = Moto::get();
    let mut survived = 0;
    let runs = 3;
    for n in 0..runs {
        let prefix = format!("/rnd{n}");
        let (code, summary, stderr, p) = with_faults(
            &prefix,
            json!([]),
            json!({"random_faults": {"throttle": 0.30, "server_error": 0.05, "max_latency_ms": 50}}),
        )
        .await;
        moto.set_config(json!({}));
        assert!(code == 0 || code == 1, "run {n}: exit {code}\n{stderr}");
        if code == 0 {
            survived += 1;
            assert_eq!(summary["published"].as_array().unwrap().len(), 1);
        }
        let (live, baked, groups) = inventory(moto).await;
        assert!(live.is_empty(), "run {n}: instances left {live:?}");
        assert!(groups.is_empty(), "run {n}: groups left {groups:?}");
        assert!(
            baked
                .iter()
                .all(|(_, s)| s == "validated" || s == "rejected"),
            "run {n}: {baked:?}"
        );
        // Only complete releases are visible: every release directory has its manifest.
        let params = common::moto::parameters_under(moto, &prefix).await;
        // (A release's manifest, its index entry and its package manifests' chunks are
        // beside its image IDs.)
        let images = params
            .iter()
            .filter(|p| {
                let name = p.name().unwrap();
                name.contains("/releases/")
                    && (name.ends_with("/x86_64") || name.ends_with("/arm64"))
            })
            .count();
        let manifests = params
            .iter()
            .filter(|p| p.name().unwrap().ends_with("/manifest"))
            .count();
        assert_eq!(images, manifests * 2, "run {n}: half-published release");
        common::moto::assert_iam_allows(Moto::get(), &[&p], "pipelines/aws.toml");
    }
    eprintln!("random faults: {survived}/{runs} runs completed, the rest failed cleanly; 0 leaks");
}

/// Prune on AWS keeps an image a running instance uses and one a launch template references,
/// then deletes them (images, snapshots, parameters) once nothing uses them.
#[tokio::test]
async fn prune_keeps_images_in_use_by_instances_and_launch_templates() {
    let moto = Moto::get();
    let p = project("/prune1");
    p.edit("pipelines/aws.toml", "history = 3", "history = 0");
    let mut releases = Vec::new();
    for _ in 0..3 {
        let (x86, arm) = bases(moto).await;
        moto.set_config(json!({"parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm}}));
        let (code, summary, stderr) = bake(&p, moto, &["run", "pipelines/aws.toml"]);
        assert_eq!(code, 0, "{stderr}");
        releases.push(summary["published"][0].clone());
    }
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let busy = releases[0]["images"]["x86_64"]
        .as_str()
        .unwrap()
        .to_string();
    let templated = releases[1]["images"]["arm64"].as_str().unwrap().to_string();
    let run = ec2
        .run_instances()
        .image_id(&busy)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    let instance = run.instances()[0].instance_id().unwrap().to_string();
    ec2.create_launch_template()
        .launch_template_name("static-nodes")
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .image_id(&templated)
                .build(),
        )
        .send()
        .await
        .unwrap();

    let (code, plan, stderr) = bake(
        &p,
        moto,
        &[
            "prune",
            "eks-node",
            "--keep",
            "1",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(plan["delete"].as_array().unwrap().is_empty(), "{plan:#}");
    let reasons = plan["kept"].to_string();
    assert!(
        reasons.contains(&format!("is used by instance {instance}")),
        "{reasons}"
    );
    assert!(
        reasons.contains("launch template static-nodes"),
        "{reasons}"
    );

    // Once nothing uses them, they go: images, snapshots and release parameters.
    ec2.terminate_instances()
        .instance_ids(&instance)
        .send()
        .await
        .unwrap();
    ec2.delete_launch_template()
        .launch_template_name("static-nodes")
        .send()
        .await
        .unwrap();
    let (code, applied, stderr) = bake(
        &p,
        moto,
        &[
            "prune",
            "eks-node",
            "--keep",
            "1",
            "--apply",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    // First they retire: deprecated now, deleted `deprecate_for` (7 days) later. Nothing is
    // deleted yet and both releases still resolve.
    assert!(
        applied["delete"].as_array().unwrap().is_empty(),
        "{applied:#}"
    );
    let retiring = applied["retire"].as_array().unwrap();
    assert_eq!(retiring.len(), 2, "{applied:#}");
    let via_proxy = aws_sdk_ec2::Client::new(&moto.sdk_via_proxy().await);
    for r in retiring {
        let after =
            chrono::DateTime::parse_from_rfc3339(r["deletable_after"].as_str().unwrap()).unwrap();
        let days = (after.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours();
        assert!((167..=168).contains(&days), "{r}");
        for image in r["images"].as_object().unwrap().values() {
            let d = via_proxy
                .describe_images()
                .image_ids(image.as_str().unwrap())
                .send()
                .await
                .unwrap();
            assert!(
                d.images()[0].deprecation_time().is_some(),
                "{image} deprecated"
            );
        }
    }
    let (_, left, _) = bake(
        &p,
        moto,
        &["releases", "eks-node", "-p", "pipelines/aws.toml"],
    );
    assert_eq!(left.as_array().unwrap().len(), 3);
    // A second prune the same day deprecates nothing again and deletes nothing.
    let (code, again, stderr) = bake(
        &p,
        moto,
        &[
            "prune",
            "eks-node",
            "--keep",
            "1",
            "--apply",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(again["delete"].as_array().unwrap().is_empty(), "{again:#}");
    assert!(
        again["retire"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["deprecate"] == json!([])),
        "{again:#}"
    );
    // A week later they go.
    moto.set_config(json!({"deprecations_aged_s": 7 * 24 * 3600 + 180}));
    let (code, applied, stderr) = bake(
        &p,
        moto,
        &[
            "prune",
            "eks-node",
            "--keep",
            "1",
            "--apply",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        applied["delete"].as_array().unwrap().len(),
        2,
        "{applied:#}"
    );
    let images = ec2.describe_images().image_ids(&busy).send().await;
    assert!(
        images.map(|r| r.images().is_empty()).unwrap_or(true),
        "the pruned image is gone"
    );
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk().await);
    let first = releases[0]["release"].as_str().unwrap();
    let gone = ssm
        .get_parameter()
        .name(format!("/prune1/eks-node/releases/{first}/x86_64"))
        .send()
        .await;
    assert!(gone.is_err(), "the pruned release's parameters are gone");
    let (_, left, _) = bake(
        &p,
        moto,
        &["releases", "eks-node", "-p", "pipelines/aws.toml"],
    );
    assert_eq!(left.as_array().unwrap().len(), 1);
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
}

/// The project under `prefix`, copying to us-west-2 and sharing with one account.
fn copying_project(prefix: &str) -> Project {
    let p = project(prefix);
    p.edit(
        "pipelines/aws.toml",
        "copy_regions = []\nshare_accounts = []",
        "copy_regions = [\"us-west-2\"]\nshare_accounts = [\"111122223333\"]\nkms_key_id = \"alias/bake-images\"",
    );
    p
}

async fn west(moto: &Moto) -> aws_config::SdkConfig {
    moto.sdk()
        .await
        .to_builder()
        .region(aws_config::Region::new("us-west-2"))
        .build()
}

/// bake images in us-west-2 (copies), with their tags.
async fn copies_in_west(moto: &Moto) -> Vec<(String, std::collections::BTreeMap<String, String>)> {
    let ec2 = aws_sdk_ec2::Client::new(&west(moto).await);
    let r = ec2.describe_images().owners("self").send().await.unwrap();
    r.images()
        .iter()
        .map(|i| {
            (
                i.image_id().unwrap().to_string(),
                i.tags()
                    .iter()
                    .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
                    .collect(),
            )
        })
        .filter(
            |(_, tags): &(String, std::collections::BTreeMap<String, String>)| {
                tags.contains_key("bake:source-image")
            },
        )
        .collect()
}

async fn shared_with(ec2: &aws_sdk_ec2::Client, image: &str) -> Vec<String> {
    let r = ec2
        .describe_image_attribute()
        .image_id(image)
        .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
        .send()
        .await
        .unwrap();
    r.launch_permissions()
        .iter()
        .map(|l| {
            l.user_id()
                .map(str::to_string)
                .or_else(|| l.group().map(|g| format!("group:{}", g.as_str())))
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn copies_to_the_copy_regions_shares_with_the_accounts_and_publishes_each_regions_id() {
    let moto = Moto::get();
    let (x86, arm) = bases(moto).await;
    let before: Vec<String> = copies_in_west(moto)
        .await
        .into_iter()
        .map(|c| c.0)
        .collect();
    // Sharing fails once (a 400 the SDK does not retry): nothing is published, the failing
    // arch's copy is removed, and the validated images (and the other arch's finished copy)
    // stay for the next run, which reuses them.
    moto.set_config(json!({
        "parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm},
        "faults": [{"action": "ModifyImageAttribute", "times": 1, "code": "InvalidParameterValue", "status": 400}]
    }));
    let p = copying_project("/copies");
    let (code, summary, stderr) = bake(&p, moto, &["run", "pipelines/aws.toml", "-q"]);
    assert_eq!(code, 1, "{summary:#}\n{stderr}");
    assert!(summary["published"].as_array().unwrap().is_empty());
    assert!(stderr.contains("sharing"), "{stderr}");
    // Sweep sees the finished copy of the other arch (kept by resume, which reuses it).
    let (_, swept, _) = bake(&p, moto, &["sweep", "-p", "pipelines/aws.toml"]);
    let copies_left: Vec<&Value> = swept["leftovers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "image-copy")
        .collect();
    assert_eq!(copies_left.len(), 1, "{swept:#}");
    assert!(copies_left[0]["id"]
        .as_str()
        .unwrap()
        .starts_with("us-west-2/ami-"));

    moto.set_config(json!({"parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm}}));
    let (code, summary, stderr) = bake(&p, moto, &["run", "pipelines/aws.toml", "-q"]);
    assert_eq!(code, 0, "{stderr}");
    let outcomes: Vec<&str> = summary["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["reused", "reused"],
        "the validated images are not baked again"
    );
    let published = &summary["published"][0];
    let release = published["release"].as_str().unwrap();

    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let west_ec2 = aws_sdk_ec2::Client::new(&west(moto).await);
    let west_ssm = aws_sdk_ssm::Client::new(&west(moto).await);
    let copies: Vec<_> = copies_in_west(moto)
        .await
        .into_iter()
        .filter(|(id, _)| !before.contains(id))
        .collect();
    assert_eq!(
        copies.len(),
        2,
        "one copy per arch, none left from the failed run: {copies:?}"
    );
    for arch in ["x86_64", "arm64"] {
        let image = published["images"][arch].as_str().unwrap();
        let (copy, tags) = copies
            .iter()
            .find(|(_, t)| t["bake:source-image"] == image)
            .unwrap_or_else(|| panic!("no copy of {image}: {copies:?}"));
        assert_eq!(tags["bake:arch"], arch);
        assert_eq!(tags["bake:status"], "validated");
        // us-west-2 has the release parameter with its own AMI ID.
        let param = west_ssm
            .get_parameter()
            .name(format!("/copies/eks-node/releases/{release}/{arch}"))
            .send()
            .await
            .unwrap();
        assert_eq!(param.parameter().unwrap().value(), Some(copy.as_str()));
        assert_eq!(
            param.parameter().unwrap().data_type(),
            Some("aws:ec2:image")
        );
        // Shared with the account, never public, in both regions.
        assert_eq!(shared_with(&ec2, image).await, ["111122223333"]);
        assert_eq!(shared_with(&west_ec2, copy).await, ["111122223333"]);
    }
    // The manifest lists the copies; the release parameter in the home region is unchanged.
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk().await);
    let manifest = ssm
        .get_parameter()
        .name(format!("/copies/eks-node/releases/{release}/manifest"))
        .send()
        .await
        .unwrap();
    let manifest: Value =
        serde_json::from_str(manifest.parameter().unwrap().value().unwrap()).unwrap();
    assert!(
        manifest["images"]["arm64"]["copies"]["us-west-2"].is_string(),
        "{manifest:#}"
    );
    // The images were copied with the pipeline's KMS key, encrypted.
    for c in moto.params_of("CopyImage") {
        assert_eq!(
            c.get("Encrypted").map(String::as_str),
            Some("true"),
            "{c:?}"
        );
        assert_eq!(
            c.get("KmsKeyId").map(String::as_str),
            Some("alias/bake-images")
        );
    }
    assert_eq!(
        moto.params_of("CopyImage").len(),
        2 + 1,
        "1 copy in the failed run, 2 after"
    );

    // The pipeline's IAM policy allows what copying and sharing call.
    let (_, policy, _) = bake(&p, moto, &["iam-policy", "pipelines/aws.toml"]);
    let allowed = bake::ops::iam::actions(&policy);
    for needed in [
        "ec2:CopyImage",
        "ec2:ModifyImageAttribute",
        "kms:CreateGrant",
    ] {
        assert!(allowed.contains(needed), "{needed} not allowed: {policy:#}");
    }

    // Deleting a published image (what prune does) deletes its copies too.
    let pipeline = bake::input::pipeline::Pipeline::load(&p.path("pipelines/aws.toml")).unwrap();
    let provider =
        bake::provider::aws::AwsProvider::new(&moto.sdk().await, &pipeline, Default::default())
            .unwrap();
    use bake::provider::Provider;
    let x = published["images"]["x86_64"].as_str().unwrap();
    provider.delete_image(x).await.unwrap();
    let left: Vec<_> = copies_in_west(moto)
        .await
        .into_iter()
        .filter(|(_, t)| t["bake:source-image"] == x)
        .collect();
    assert!(left.is_empty(), "{left:?}");
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
}

#[test]
fn copy_and_share_settings_are_checked_before_anything_starts() {
    for (from, to, says) in [
        (
            "copy_regions = []",
            "copy_regions = [\"us-west\"]",
            "is not an AWS region name",
        ),
        (
            "copy_regions = []",
            "copy_regions = [\"us-east-1\"]",
            "is the pipeline's own region",
        ),
        (
            "share_accounts = []",
            "share_accounts = [\"all\"]",
            "never made public",
        ),
        (
            "share_accounts = []",
            "share_accounts = [\"1234\"]",
            "is not a 12-digit AWS account ID",
        ),
        (
            "share_accounts = []",
            "share_accounts = [\"111122223333\"]",
            "sharing needs `kms_key_id`",
        ),
    ] {
        let p = Project::new();
        p.edit("pipelines/aws.toml", from, to);
        let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("bake"))
            .current_dir(p.dir.path())
            .args(["plan", "pipelines/aws.toml"])
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{to}: {e}");
        assert!(
            e.contains(says) && e.contains("pipelines/aws.toml:"),
            "{to}: {e}"
        );
        assert!(!p.state().exists());
    }
}

/// The `bake:prefix` value of every live instance, security group and image in moto that a
/// pipeline publishing under `prefix` made.
async fn owned_by(moto: &Moto, prefix: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let mine = |tags: &[aws_sdk_ec2::types::Tag]| {
        tags.iter()
            .any(|t| t.key() == Some("bake:prefix") && t.value() == Some(prefix))
    };
    let instances = ec2.describe_instances().send().await.unwrap();
    let live = instances
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| {
            i.state().and_then(|s| s.name())
                != Some(&aws_sdk_ec2::types::InstanceStateName::Terminated)
                && mine(i.tags())
        })
        .map(|i| i.instance_id().unwrap().to_string())
        .collect();
    let groups = ec2.describe_security_groups().send().await.unwrap();
    let groups = groups
        .security_groups()
        .iter()
        .filter(|g| mine(g.tags()))
        .map(|g| g.group_id().unwrap().to_string())
        .collect();
    let images = ec2.describe_images().owners("self").send().await.unwrap();
    let images = images
        .images()
        .iter()
        .filter(|i| mine(i.tags()))
        .map(|i| i.image_id().unwrap().to_string())
        .collect();
    (live, groups, images)
}

/// Two pipelines in one account (prefixes /team-a and /team-b), B's run alive on "another
/// host" (its own state dir, no journal or lock A can see): A's `sweep --apply` touches nothing
/// of B's and B's run still publishes; A bakes its own image even with the same bake key; A's
/// `prune --apply` leaves B's published images alone; and A's provider refuses to count an image
/// of B's as its own to delete.
#[tokio::test]
async fn sweep_prune_and_reuse_stay_in_their_own_pipeline() {
    use bake::provider::Provider;
    let moto = Moto::get();
    let (x86, arm) = bases(moto).await;
    // B's agents answer late, so its builders are alive while A sweeps.
    moto.set_config(json!({
        "parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm},
        "agent_online_after_s": 3
    }));
    let a = project("/team-a");
    let b = project("/team-b");
    let b_run = common::moto::bake_command(&b, moto)
        .args(["run", "pipelines/aws.toml", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        let (live, groups, _) = owned_by(moto, "/team-b").await;
        if live.len() == 2 && groups.len() == 2 {
            break;
        }
        assert!(start.elapsed().as_secs() < 30, "B's builders never started");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (code, plan, stderr) = bake(&a, moto, &["sweep", "-p", "pipelines/aws.toml"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        plan["leftovers"],
        json!([]),
        "A's sweep plans to touch B: {plan:#}"
    );
    let (code, _, stderr) = bake(&a, moto, &["sweep", "--apply", "-p", "pipelines/aws.toml"]);
    assert_eq!(code, 0, "{stderr}");
    let (live, groups, _) = owned_by(moto, "/team-b").await;
    assert_eq!(
        (live.len(), groups.len()),
        (2, 2),
        "A's sweep touched B's run"
    );
    let out = b_run.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "B's run failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b_summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let b_images: Vec<String> = ["x86_64", "arm64"]
        .iter()
        .map(|a| {
            b_summary["published"][0]["images"][a]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    // Same recipe, same bases: the same bake key, yet A bakes and publishes its own images.
    moto.set_config(json!({"parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm}}));
    let (code, first, stderr) = bake(&a, moto, &["run", "pipelines/aws.toml"]);
    assert_eq!(code, 0, "{stderr}");
    for arch in ["x86_64", "arm64"] {
        let mine = first["published"][0]["images"][arch].as_str().unwrap();
        assert!(
            !b_images.contains(&mine.to_string()),
            "A reused B's image {mine}"
        );
    }
    // Published images carry the release (for people in the console and for other pipelines).
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let described = ec2
        .describe_images()
        .set_image_ids(Some(b_images.clone()))
        .send()
        .await
        .unwrap();
    for i in described.images() {
        let release = i.tags().iter().find(|t| t.key() == Some("bake:release"));
        assert_eq!(
            release.and_then(|t| t.value()),
            b_summary["published"][0]["release"].as_str(),
            "{:?}",
            i.image_id()
        );
    }

    // A second release of A, then prune A down to one: only A's first images go.
    let (x86b, armb) = bases(moto).await;
    moto.set_config(json!({"parameters": {UBUNTU_X86: x86b, UBUNTU_ARM: armb}}));
    let (code, _, stderr) = bake(&a, moto, &["run", "pipelines/aws.toml"]);
    assert_eq!(code, 0, "{stderr}");
    a.edit("pipelines/aws.toml", "history = 3", "history = 0");
    a.edit(
        "pipelines/aws.toml",
        "deprecate_for = \"7d\"",
        "deprecate_for = \"0s\"",
    );
    let (code, pruned, stderr) = bake(
        &a,
        moto,
        &[
            "prune",
            "eks-node",
            "--keep",
            "1",
            "--apply",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(pruned["delete"].as_array().unwrap().len(), 1, "{pruned:#}");
    let (_, _, b_left) = owned_by(moto, "/team-b").await;
    for image in &b_images {
        assert!(
            b_left.contains(image),
            "A's prune deleted B's image {image}"
        );
    }
    // Whatever A's registry might say, an image of B's is not A's to delete.
    let pipeline = bake::input::pipeline::Pipeline::load(&a.path("pipelines/aws.toml")).unwrap();
    let provider = bake::provider::aws::AwsProvider::new(
        &moto.sdk_via_proxy().await,
        &pipeline,
        Default::default(),
    )
    .unwrap();
    let why = provider.image_in_use(&b_images[0]).await.unwrap();
    assert!(
        why.as_deref().is_some_and(|w| w.contains("/team-b")),
        "{why:?}"
    );
    common::moto::assert_iam_allows(moto, &[&a, &b], "pipelines/aws.toml");
}

/// A literal AMI base joins the way its name says; one whose name says nothing is refused
/// before anything is created (exit 2, no mutating call), not sent down a guessed join path.
#[tokio::test]
async fn a_literal_ami_base_joins_as_its_name_says_or_is_refused() {
    let moto = Moto::get();
    let (x86, arm) = bases(moto).await; // named ubuntu-eks-…
    let unknown = common::moto::register_x86(moto, "golden-image").await;
    moto.set_config(json!({"parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm}}));
    let p = project("/literal");
    p.edit("recipes/eks-node.toml", UBUNTU_X86, &unknown);
    let before = moto.calls().len();
    let (code, summary, stderr) = bake(&p, moto, &["run", "pipelines/aws.toml"]);
    assert_eq!(code, 2, "{summary:#}\n{stderr}");
    assert_eq!(summary["published"], json!([]));
    assert!(
        stderr.contains("base.aws.x86_64") && stderr.contains("cannot tell how nodes from"),
        "{stderr}"
    );
    let mutating: Vec<_> = moto.calls()[before..]
        .iter()
        .filter(|(_, a)| MUTATING.contains(&a.as_str()))
        .cloned()
        .collect();
    assert!(mutating.is_empty(), "{mutating:?}");

    let p = project("/literal2");
    p.edit("recipes/eks-node.toml", UBUNTU_X86, &x86);
    let (code, plan, stderr) = bake(&p, moto, &["plan", "pipelines/aws.toml"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(plan.to_string().contains(&x86), "{plan}");
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
}

/// EC2 answers lists in pages (the proxy in pages of 5): sweep finds a dead run's 12 images,
/// not the first page of them.
#[tokio::test]
async fn sweep_reads_every_page_of_what_a_dead_run_left() {
    let moto = Moto::get();
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let tag = |k: &str, v: &str| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build();
    let mut left = Vec::new();
    for i in 0..12 {
        let id = common::moto::register_x86(moto, &format!("dead-{i}")).await;
        ec2.create_tags()
            .resources(&id)
            .tags(tag("bake:recipe", "eks-node"))
            .tags(tag("bake:arch", "x86_64"))
            .tags(tag("bake:run-id", "20261130T000000Z-dead00"))
            .tags(tag("bake:prefix", "/paged"))
            .tags(tag("bake:status", "pending"))
            .send()
            .await
            .unwrap();
        left.push(id);
    }
    let p = project("/paged");
    let (code, plan, stderr) = bake(&p, moto, &["sweep", "-p", "pipelines/aws.toml"]);
    assert_eq!(code, 0, "{stderr}");
    let found: Vec<&str> = plan["leftovers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "image")
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    for id in &left {
        assert!(found.contains(&id.as_str()), "{id} not found: {found:?}");
    }
    let pages = moto
        .records()
        .iter()
        .filter(|r| r["action"] == "DescribeImages" && r["params"].get("NextToken").is_some())
        .count();
    assert!(pages >= 2, "sweep read {pages} later pages");
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
}

/// A canary that never joins its cluster is no verdict on the image: the run fails (exit 1),
/// the image is not tagged rejected, nothing is published, and the next run bakes again and
/// publishes — unlike a check that ran and failed (exit 3, rejected, not baked again).
#[tokio::test]
async fn a_canary_that_never_joins_fails_the_run_without_rejecting_the_image() {
    let moto = Moto::get();
    let (x86, arm) = bases(moto).await;
    // The canary's network never comes up (a CNI that never starts): its node registers and
    // stays NotReady.
    moto.set_config(json!({
        "parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm},
        "node_ready_after_s": -1,
    }));
    let p = project("/join");
    p.edit(
        "pipelines/aws.toml",
        "poll_interval = \"20ms\"",
        "poll_interval = \"20ms\"\njoin_timeout = \"2s\"",
    );
    let (code, summary, stderr) = bake(&p, moto, &["run", "pipelines/aws.toml"]);
    assert_eq!(code, 1, "{summary:#}\n{stderr}");
    let x86_result = arch_result(&summary, "x86_64");
    assert_eq!(x86_result["outcome"], "failed", "{x86_result}");
    let error = x86_result["error"].as_str().unwrap();
    assert!(
        error.contains("could not judge")
            && error.contains("did not become a Ready node within 2s")
            && error.contains("registered but not Ready (False: KubeletNotReady"),
        "{error}"
    );
    assert_eq!(summary["published"], json!([]));
    let (_, _, mine) = owned_by(moto, "/join").await;
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let described = ec2
        .describe_images()
        .set_image_ids(Some(mine))
        .send()
        .await
        .unwrap();
    for i in described.images() {
        let status = i
            .tags()
            .iter()
            .find(|t| t.key() == Some("bake:status"))
            .and_then(|t| t.value());
        assert_ne!(status, Some("rejected"), "{:?} was rejected", i.image_id());
    }
    // A node role the cluster does not let in (no access entry; in API_AND_CONFIG_MAP mode
    // aws-auth could map it, so plan only warns): the kubelet is refused and the node never
    // registers. No verdict either.
    moto.set_config(json!({"parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm}}));
    let eks = moto.eks_as_account_setup().await;
    let node_role = "arn:aws:iam::123456789012:role/bake-builder";
    eks.delete_access_entry()
        .cluster_name("dev")
        .principal_arn(node_role)
        .send()
        .await
        .unwrap();
    let (code, summary, stderr) = bake(&p, moto, &["run", "pipelines/aws.toml"]);
    eks.create_access_entry()
        .cluster_name("dev")
        .principal_arn(node_role)
        .r#type("EC2_LINUX")
        .send()
        .await
        .unwrap();
    assert_eq!(code, 1, "{summary:#}\n{stderr}");
    assert!(
        stderr.contains(&format!("role {node_role} has no access entry in `dev`")),
        "{stderr}"
    );
    let error = arch_result(&summary, "x86_64")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("could not judge")
            && error.contains("has not registered with EKS cluster `dev`"),
        "{error}"
    );
    assert_eq!(summary["published"], json!([]));
    // The next run (the cluster is back) bakes x86_64 again and publishes.
    let (code, summary, stderr) = bake(&p, moto, &["run", "pipelines/aws.toml"]);
    assert_eq!(code, 0, "{summary:#}\n{stderr}");
    assert_eq!(summary["published"].as_array().unwrap().len(), 1);
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
}

/// A recipe that asks for a root volume smaller than its base's root snapshot would be refused
/// by RunInstances half way into a run; bake refuses it at plan, naming the field, and
/// creates nothing. At or above the snapshot's size it plans.
#[tokio::test]
async fn a_volume_smaller_than_the_base_snapshot_is_refused_at_plan() {
    let moto = Moto::get();
    let (x86, arm) = bases(moto).await;
    moto.set_config(json!({"parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm}}));
    let p = project("/small");
    p.edit(
        "recipes/eks-node.toml",
        "[volume]\n",
        "[volume]\nsize_gib = 8\n",
    );
    let line = p
        .read("recipes/eks-node.toml")
        .lines()
        .position(|l| l == "size_gib = 8")
        .unwrap()
        + 1;
    let before = moto.calls().len();
    let have = common::moto::root_gib(moto, &x86).await;
    assert!(have > 8, "the bases are bigger than 8 GiB: {have}");
    for cmd in ["plan", "run"] {
        let (code, stderr) = common::moto::bake_refused(&p, moto, &[cmd, "pipelines/aws.toml"]);
        assert_eq!(code, 2, "{cmd}: {stderr}");
        for want in [
            format!("recipes/eks-node.toml:{line}:"),
            "field `volume.size_gib`".to_string(),
            format!(
                "8 GiB is smaller than the x86_64 base {x86}, whose root snapshot is {have} GiB"
            ),
        ] {
            assert!(stderr.contains(&want), "{cmd}: {want:?} not in\n{stderr}");
        }
    }
    let mutating: Vec<(String, String)> = moto.calls()[before..]
        .iter()
        .filter(|(_, a)| MUTATING.contains(&a.as_str()))
        .cloned()
        .collect();
    assert!(mutating.is_empty(), "{mutating:?}");
    p.edit(
        "recipes/eks-node.toml",
        "size_gib = 8",
        &format!("size_gib = {have}"),
    );
    let (code, _, stderr) = bake(&p, moto, &["plan", "pipelines/aws.toml"]);
    assert_eq!(code, 0, "{stderr}");
}

/// The recipes for the real EKS bases load, and plan against the public parameters of their
/// bases: Ubuntu 22.04 and 24.04 (bootstrap.sh, kubelet as a snap) and AL2023 (nodeadm), each
/// with checks for its own package manager and none for another's.
#[tokio::test]
async fn the_ubuntu_and_al2023_recipes_plan_against_their_bases() {
    let moto = Moto::get();
    let recipes = [
        ("ubuntu2204-eks", "/aws/service/canonical/ubuntu/eks/22.04/1.31/stable/current/amd64/hvm/ebs-gp2/ami-id", "/aws/service/canonical/ubuntu/eks/22.04/1.31/stable/current/arm64/hvm/ebs-gp2/ami-id"),
        ("ubuntu2404-eks", "/aws/service/canonical/ubuntu/eks/24.04/1.31/stable/current/amd64/hvm/ebs-gp3/ami-id", "/aws/service/canonical/ubuntu/eks/24.04/1.31/stable/current/arm64/hvm/ebs-gp3/ami-id"),
        ("al2023-eks", "/aws/service/eks/optimized-ami/1.31/amazon-linux-2023/x86_64/standard/recommended/image_id", "/aws/service/eks/optimized-ami/1.31/amazon-linux-2023/arm64/standard/recommended/image_id"),
    ];
    let mut parameters = serde_json::Map::new();
    for (_, x86_path, arm_path) in &recipes {
        let (x86, arm) = bases(moto).await;
        parameters.insert(x86_path.to_string(), json!(x86));
        parameters.insert(arm_path.to_string(), json!(arm));
    }
    moto.set_config(json!({ "parameters": parameters }));
    let p = project("/realbases");
    let text = p.read("pipelines/aws.toml");
    let stanza = "[[bake]]\nrecipe = \"eks-node\"\narches = [\"x86_64\", \"arm64\"]\nauto_promote = [\"dev\"]\n";
    assert!(text.contains(stanza));
    let bakes: String = recipes
        .iter()
        .map(|(r, _, _)| {
            format!("[[bake]]\nrecipe = \"{r}\"\narches = [\"x86_64\", \"arm64\"]\n\n")
        })
        .collect();
    p.write("pipelines/aws.toml", text.replace(stanza, &bakes));
    let (code, plan, stderr) = bake(&p, moto, &["plan", "pipelines/aws.toml"]);
    assert_eq!(code, 0, "{stderr}");
    let items = plan
        .as_array()
        .unwrap_or_else(|| plan["items"].as_array().unwrap());
    assert_eq!(items.len(), 6, "{plan:#}");
    for (recipe, x86_path, _) in &recipes {
        let item = items
            .iter()
            .find(|i| i["recipe"] == *recipe && i["arch"] == "x86_64")
            .unwrap_or_else(|| panic!("{recipe} not planned: {plan:#}"));
        assert_eq!(item["base"]["id"], parameters[*x86_path], "{item:#}");
        let join = if recipe.starts_with("al2023") {
            "nodeadm"
        } else {
            "bootstrap"
        };
        assert_eq!(item["base"]["join"], join, "{item:#}");
    }
    // Each recipe checks its own distribution's drift and no other's.
    let catalog = bake::input::validate::Catalog::load(&p.path("validators")).unwrap();
    for (recipe, _, _) in &recipes {
        let r = bake::input::recipe::Recipe::load(&p.path("recipes"), recipe, &catalog).unwrap();
        let family = if recipe.starts_with("al2023") {
            "amzn"
        } else {
            "ubuntu"
        };
        for v in &r.validators {
            assert!(
                v.applies_to.is_empty()
                    || v.applies_to
                        .iter()
                        .any(|d| d == family || (family == "ubuntu" && d == "debian")),
                "{recipe} lists {} which applies to {:?}",
                v.name,
                v.applies_to
            );
        }
        let names: Vec<&str> = r.validators.iter().map(|v| v.name.as_str()).collect();
        for always in [
            "mac-policy",
            "pod-network",
            "machine-id-empty",
            "no-ssh-host-keys",
            "node-ready",
            "cluster-pod-network",
        ] {
            assert!(names.contains(&always), "{recipe}: {always}");
        }
        let own = if family == "amzn" {
            "dnf-release-locked"
        } else {
            "snap-refresh-held"
        };
        assert!(names.contains(&own), "{recipe}: {own}");
        assert!(r.volume.size().is_none(), "{recipe} takes its base's size");
    }
}

/// What a prod channel runs gets deregistration protection, which follows the channel's history
/// window; protection somebody else set is never lifted, and prune keeps such an image.
#[tokio::test]
async fn prod_images_are_protected_from_deregistration_while_prod_may_need_them() {
    let moto = Moto::get();
    let p = project("/protect1");
    p.edit("pipelines/aws.toml", "history = 3", "history = 1");
    p.edit(
        "pipelines/aws.toml",
        "deprecate_for = \"7d\"",
        "deprecate_for = \"0s\"",
    );
    let mut releases = Vec::new();
    for _ in 0..3 {
        let (x86, arm) = bases(moto).await;
        moto.set_config(json!({"parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm}}));
        let (code, summary, stderr) = bake(&p, moto, &["run", "pipelines/aws.toml"]);
        assert_eq!(code, 0, "{stderr}");
        releases.push(summary["published"][0].clone());
    }
    let rel = |i: usize| releases[i]["release"].as_str().unwrap().to_string();
    let images = |i: usize| -> Vec<String> {
        ["x86_64", "arm64"]
            .iter()
            .map(|a| releases[i]["images"][a].as_str().unwrap().to_string())
            .collect()
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk_via_proxy().await);
    let protection = |id: String| {
        let ec2 = ec2.clone();
        async move {
            let d = ec2.describe_images().image_ids(&id).send().await.unwrap();
            let i = &d.images()[0];
            let tag = i
                .tags()
                .iter()
                .find(|t| t.key() == Some("bake:protected"))
                .and_then(|t| t.value())
                .map(str::to_string);
            (i.deregistration_protection().map(str::to_string), tag)
        }
    };
    let promote = |i: usize| {
        let (code, out, e) = bake(
            &p,
            moto,
            &[
                "promote",
                "eks-node",
                &rel(i),
                "--to",
                "prod",
                "--reason",
                "CHG-1",
                "-p",
                "pipelines/aws.toml",
            ],
        );
        assert_eq!(code, 0, "{e}");
        out
    };

    // Promoting to prod protects what prod now runs; nothing else.
    let out = promote(0);
    let got: Vec<String> = serde_json::from_value(out["protection"]["protect"].clone()).unwrap();
    assert_eq!(sorted(got), sorted(images(0)), "{out:#}");
    for id in images(0) {
        assert_eq!(
            protection(id.clone()).await,
            (Some("enabled-without-cooldown".into()), Some("1".into())),
            "{id}"
        );
    }
    assert_eq!(protection(images(1)[0].clone()).await, (None, None));
    // EC2 refuses to deregister it, whoever asks.
    let refused = ec2.deregister_image().image_id(&images(0)[0]).send().await;
    assert!(refused.is_err(), "a protected image was deregistered");

    // With history = 1, the previous prod release stays protected; the one before is let go.
    let out = promote(1);
    assert_eq!(out["protection"]["lift"], json!([]), "{out:#}");
    let got: Vec<String> = serde_json::from_value(out["protection"]["protect"].clone()).unwrap();
    assert_eq!(sorted(got), sorted(images(1)), "{out:#}");
    let out = promote(2);
    let lifted: Vec<String> = serde_json::from_value(out["protection"]["lift"].clone()).unwrap();
    assert_eq!(sorted(lifted), sorted(images(0)), "{out:#}");
    assert_eq!(
        protection(images(0)[0].clone()).await,
        (None, Some("0".into()))
    );
    assert_eq!(
        protection(images(1)[0].clone()).await.0.as_deref(),
        Some("enabled-without-cooldown")
    );

    // Somebody protects the first release's x86_64 image by hand: bake never lifts that, and
    // prune keeps the release, saying why.
    ec2.enable_image_deregistration_protection()
        .image_id(&images(0)[0])
        .with_cooldown(true)
        .send()
        .await
        .unwrap();
    let (code, plan, e) = bake(
        &p,
        moto,
        &[
            "prune",
            "eks-node",
            "--keep",
            "1",
            "--apply",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 0, "{e}");
    assert!(plan["delete"].as_array().unwrap().is_empty(), "{plan:#}");
    assert_eq!(
        plan["protection"],
        json!({"protect": [], "lift": []}),
        "{plan:#}"
    );
    let kept = plan["kept"].to_string();
    assert!(
        kept.contains("has deregistration protection (enabled-with-cooldown)"),
        "{kept}"
    );
    assert!(
        kept.contains("in the last 1 history entries of channel `prod`"),
        "{kept}"
    );
    // Lifted with its cooldown, it is still protected for 24 hours: still kept.
    ec2.disable_image_deregistration_protection()
        .image_id(&images(0)[0])
        .send()
        .await
        .unwrap();
    let (_, plan, _) = bake(
        &p,
        moto,
        &[
            "prune",
            "eks-node",
            "--keep",
            "1",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert!(
        plan["kept"]
            .to_string()
            .contains("has deregistration protection (disabled-until "),
        "{plan:#}"
    );
    assert!(plan["delete"].as_array().unwrap().is_empty(), "{plan:#}");

    // Moving prod on (a rollback to the second release is a move too) keeps the window's
    // images protected and lifts only bake's own.
    let (code, out, e) = bake(
        &p,
        moto,
        &[
            "rollback",
            "eks-node",
            "--cluster",
            "prod",
            "--reason",
            "test",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 0, "{e}");
    assert_eq!(out["protection"]["protect"], json!(null), "{out:#}");
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
}

/// Promotion holds a release to what the cluster runs when the pipeline does not say: the
/// version its EKS control plane reports (DescribeCluster). A kubelet newer than that is
/// refused naming both versions, a cluster that does not exist fails naming it, nothing moves;
/// a version the pipeline names is believed without asking.
#[tokio::test]
async fn promotion_reads_the_kubernetes_version_of_an_eks_cluster() {
    let moto = Moto::get();
    let (x86, arm) = bases(moto).await;
    moto.set_config(json!({"parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm}}));
    let p = project("/skew");
    p.edit(
        "pipelines/aws.toml",
        "[retention]",
        "[clusters.legacy]\neks_cluster = \"legacy\"\n\n[clusters.gone]\neks_cluster = \"decommissioned\"\n\n[retention]",
    );
    // Auto-promotion to dev read dev's version (1.31) and let kubelet 1.31.2 through.
    let (code, summary, stderr) = bake(&p, moto, &["run", "pipelines/aws.toml"]);
    assert_eq!(code, 0, "{summary:#}\n{stderr}");
    let published = &summary["published"][0];
    assert_eq!(published["promoted_to"], json!(["dev"]));
    let release = published["release"].as_str().unwrap().to_string();
    let described = |from: usize| -> Vec<String> {
        moto.records()[from..]
            .iter()
            .filter(|r| r["action"] == "DescribeCluster")
            .map(|r| r["path"].as_str().unwrap_or_default().to_string())
            .collect()
    };

    let (code, stderr) = common::moto::bake_refused(
        &p,
        moto,
        &[
            "promote",
            "eks-node",
            &release,
            "--to",
            "legacy",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("cluster `legacy` (Kubernetes 1.28)") && stderr.contains("kubelet 1.31.2"),
        "{stderr}"
    );
    let (code, stderr) = common::moto::bake_refused(
        &p,
        moto,
        &[
            "promote",
            "eks-node",
            &release,
            "--to",
            "gone",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("EKS cluster decommissioned in us-east-1"),
        "{stderr}"
    );
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk().await);
    for channel in ["legacy", "gone"] {
        let r = ssm
            .get_parameters_by_path()
            .path(format!("/skew/eks-node/channels/{channel}"))
            .recursive(true)
            .send()
            .await
            .unwrap();
        assert!(r.parameters().is_empty(), "{channel} moved: {r:?}");
    }

    // Every call so far, the DescribeCluster of both clusters included, as IAM evaluates the
    // policy printed for this pipeline.
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");

    // Named in the pipeline, the version is believed: no DescribeCluster, and 1.31 takes it.
    p.edit(
        "pipelines/aws.toml",
        "eks_cluster = \"legacy\"",
        "eks_cluster = \"legacy\"\nkubernetes_version = \"1.31\"",
    );
    let before = moto.records().len();
    let (code, moved, stderr) = bake(
        &p,
        moto,
        &[
            "promote",
            "eks-node",
            &release,
            "--to",
            "legacy",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(moved["result"], "moved");
    assert!(described(before).is_empty(), "{:?}", described(before));
}

/// Before a run creates anything, `bake plan` (and `run`) check, read-only, what the canary
/// needs to join its cluster, and name each missing piece with its fix (exit 2): the instance
/// profile, its role, the role's policies, the role's access entry where the cluster's
/// authentication mode asks for one; what bake cannot read (aws-auth, a CNI policy that may
/// come through IRSA) is a warning. The canary then carries the cluster security group.
#[tokio::test]
async fn plan_names_what_the_account_lacks_for_the_canary_to_join_and_creates_nothing() {
    let moto = Moto::get();
    let (x86, arm) = bases(moto).await;
    moto.set_config(json!({"parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm}}));
    let direct = moto.sdk().await;
    let iam = aws_sdk_iam::Client::new(&direct);
    aws_sdk_eks::Client::new(&direct)
        .create_cluster()
        .name("acct")
        .role_arn("arn:aws:iam::123456789012:role/eks")
        // A private API endpoint only: bake must run where it answers (a warning).
        .resources_vpc_config(
            aws_sdk_eks::types::VpcConfigRequest::builder()
                .endpoint_public_access(false)
                .endpoint_private_access(true)
                .build(),
        )
        .kubernetes_network_config(
            aws_sdk_eks::types::KubernetesNetworkConfigRequest::builder()
                .service_ipv4_cidr("10.100.0.0/16")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let eks = moto.eks_as_account_setup().await;
    let p = project("/acct");
    p.edit(
        "pipelines/aws.toml",
        "cluster = \"dev\"",
        "cluster = \"acct\"",
    );
    p.edit(
        "pipelines/aws.toml",
        "[clusters.dev]",
        "[clusters.acct]\neks_cluster = \"acct\"\n\n[clusters.dev]",
    );
    p.edit(
        "pipelines/aws.toml",
        "instance_profile = \"bake-builder\"",
        "instance_profile = \"acct-node\"",
    );
    let role = "arn:aws:iam::123456789012:role/acct-node";
    let refused = |want: &[&str]| {
        let (code, stderr) = common::moto::bake_refused(&p, moto, &["plan", "pipelines/aws.toml"]);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains(
                "the canary cannot join EKS cluster `acct` in us-east-1; nothing was created"
            ),
            "{stderr}"
        );
        for w in want {
            assert!(stderr.contains(w), "{w:?} not in\n{stderr}");
        }
        stderr
    };
    let before = moto.calls().len();

    refused(&[
        "instance profile `acct-node` ([aws] instance_profile) does not exist",
        "aws iam create-instance-profile --instance-profile-name acct-node",
    ]);
    // `run` refuses the same way, before it takes a lock or launches anything.
    let (code, stderr) = common::moto::bake_refused(&p, moto, &["run", "pipelines/aws.toml"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");

    iam.create_instance_profile()
        .instance_profile_name("acct-node")
        .send()
        .await
        .unwrap();
    refused(&["instance profile `acct-node` holds no role"]);

    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    iam.create_role()
        .role_name("acct-node")
        .assume_role_policy_document(trust)
        .send()
        .await
        .unwrap();
    iam.add_role_to_instance_profile()
        .instance_profile_name("acct-node")
        .role_name("acct-node")
        .send()
        .await
        .unwrap();
    let attach = |policy: &'static str| {
        let iam = iam.clone();
        async move {
            iam.attach_role_policy()
                .role_name("acct-node")
                .policy_arn(format!("arn:aws:iam::aws:policy/{policy}"))
                .send()
                .await
                .unwrap();
        }
    };
    attach("AmazonSSMManagedInstanceCore").await;
    let stderr = refused(&[
        "role `acct-node` lacks AmazonEKSWorkerNodePolicy",
        "aws iam attach-role-policy --role-name acct-node --policy-arn arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
        "lacks AmazonEC2ContainerRegistryReadOnly or AmazonEC2ContainerRegistryPullOnly",
    ]);
    assert!(
        !stderr.contains("AmazonSSMManagedInstanceCore ("),
        "{stderr}"
    );

    attach("AmazonEKSWorkerNodePolicy").await;
    attach("AmazonEC2ContainerRegistryReadOnly").await;
    // A cluster made through the API authenticates through aws-auth only (CONFIG_MAP), which
    // bake cannot read: a warning, not a refusal; so is a CNI policy that IRSA may give.
    let (code, _, stderr) = bake(&p, moto, &["plan", "pipelines/aws.toml"]);
    assert_eq!(code, 0, "{stderr}");
    for w in [
        "EKS cluster `acct` authenticates only through the aws-auth ConfigMap",
        &format!("make sure its mapRoles maps {role} to system:bootstrappers and system:nodes"),
        "role `acct-node` lacks AmazonEKS_CNI_Policy",
        "aws-auth must map arn:aws:iam::123456789012:user/moto to a group that may get nodes",
        "EKS cluster `acct` has no public API endpoint: bake asks it about the canary's node, so bake must run where its private endpoint answers",
    ] {
        assert!(stderr.contains(w), "{w:?} not in\n{stderr}");
    }

    eks.update_cluster_config()
        .name("acct")
        .access_config(
            aws_sdk_eks::types::UpdateAccessConfigRequest::builder()
                .authentication_mode(aws_sdk_eks::types::AuthenticationMode::Api)
                .build(),
        )
        .send()
        .await
        .unwrap();
    refused(&[&format!(
        "role {role} has no access entry in `acct` (authentication mode API): aws eks create-access-entry --cluster-name acct --principal-arn {role} --type EC2_LINUX"
    )]);
    eks.create_access_entry()
        .cluster_name("acct")
        .principal_arn(role)
        .send()
        .await
        .unwrap();
    refused(&["is of type STANDARD; a node's must be EC2_LINUX"]);
    eks.delete_access_entry()
        .cluster_name("acct")
        .principal_arn(role)
        .send()
        .await
        .unwrap();
    eks.create_access_entry()
        .cluster_name("acct")
        .principal_arn(role)
        .r#type("EC2_LINUX")
        .send()
        .await
        .unwrap();
    // bake's own identity reads the canary's node from the cluster's API (node-ready): in
    // API mode it needs an access entry with an access policy that covers nodes.
    let me = "arn:aws:iam::123456789012:user/moto";
    refused(&[&format!(
        "{me} (bake's own identity) has no access entry in `acct`; bake reads the canary's node from the cluster's API (node-ready): aws eks create-access-entry --cluster-name acct --principal-arn {me}, then aws eks associate-access-policy --cluster-name acct --principal-arn {me} --policy-arn arn:aws:eks::aws:cluster-access-policy/AmazonEKSAdminViewPolicy --access-scope type=cluster"
    )]);
    eks.create_access_entry()
        .cluster_name("acct")
        .principal_arn(me)
        .send()
        .await
        .unwrap();
    let associate = |policy: &'static str, scope: aws_sdk_eks::types::AccessScope| {
        let eks = eks.clone();
        async move {
            eks.associate_access_policy()
                .cluster_name("acct")
                .principal_arn(me)
                .policy_arn(format!("arn:aws:eks::aws:cluster-access-policy/{policy}"))
                .access_scope(scope)
                .send()
                .await
                .unwrap();
        }
    };
    use aws_sdk_eks::types::{AccessScope, AccessScopeType};
    associate(
        "AmazonEKSViewPolicy",
        AccessScope::builder()
            .r#type(AccessScopeType::Cluster)
            .build(),
    )
    .await;
    associate(
        "AmazonEKSAdminViewPolicy",
        AccessScope::builder()
            .r#type(AccessScopeType::Namespace)
            .namespaces("default")
            .build(),
    )
    .await;
    refused(&[&format!(
        "the access entry of {me} (bake's own identity) in `acct` has no access policy that reads nodes (AmazonEKSAdminViewPolicy or AmazonEKSClusterAdminPolicy at cluster scope; it has AmazonEKSViewPolicy, AmazonEKSAdminViewPolicy (namespaces only))"
    )]);
    associate(
        "AmazonEKSAdminViewPolicy",
        AccessScope::builder()
            .r#type(AccessScopeType::Cluster)
            .build(),
    )
    .await;
    // And run its probe pod (cluster-pod-network) in the probe namespace: edit rights in
    // another namespace are not enough.
    associate(
        "AmazonEKSEditPolicy",
        AccessScope::builder()
            .r#type(AccessScopeType::Namespace)
            .namespaces("kube-system")
            .build(),
    )
    .await;
    refused(&[&format!(
        "the access entry of {me} (bake's own identity) in `acct` has no access policy that runs pods in namespace `default` (AmazonEKSEditPolicy or AmazonEKSAdminPolicy there, or AmazonEKSClusterAdminPolicy at cluster scope; it has "
    ), "aws eks associate-access-policy --cluster-name acct --principal-arn arn:aws:iam::123456789012:user/moto --policy-arn arn:aws:eks::aws:cluster-access-policy/AmazonEKSEditPolicy --access-scope type=namespace,namespaces=default"]);
    associate(
        "AmazonEKSEditPolicy",
        AccessScope::builder()
            .r#type(AccessScopeType::Namespace)
            .namespaces("default")
            .build(),
    )
    .await;
    let (code, _, stderr) = bake(&p, moto, &["plan", "pipelines/aws.toml"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("aws-auth"), "{stderr}");

    // Nothing was created by any of it.
    let key = p.access_key();
    let mine: Vec<String> = moto.records()[before..]
        .iter()
        .filter(|r| r["key"] == key.as_str())
        .map(|r| r["action"].as_str().unwrap_or_default().to_string())
        .collect();
    let mutating: Vec<&String> = mine
        .iter()
        .filter(|a| {
            MUTATING.contains(&a.as_str()) || a.starts_with("Create") || a.starts_with("Put")
        })
        .collect();
    assert!(mutating.is_empty(), "{mutating:?}");
    for read in [
        "GetInstanceProfile",
        "ListAttachedRolePolicies",
        "DescribeCluster",
        "DescribeAccessEntry",
        "GetCallerIdentity",
        "ListAccessEntries",
        "ListAssociatedAccessPolicies",
    ] {
        assert!(
            mine.iter().any(|a| a == read),
            "{read} never asked: {mine:?}"
        );
    }
}

/// A setup that stops every AWS call gets one line naming the cause, what was tried and the
/// fix (exit 2; a network that cannot be reached is exit 1): no credentials, no region, access
/// denied, expired credentials. The SDK's own account of it shows only with `-v`.
#[tokio::test]
async fn an_aws_setup_that_stops_every_call_is_one_line_with_its_fix() {
    let p = project("/setup");
    let home = tempfile::tempdir().unwrap();
    let run = |envs: &[(&str, &str)], remove: &[&str], verbose: bool| {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("bake"));
        c.current_dir(p.dir.path())
            .env("HOME", home.path())
            .env("AWS_CONFIG_FILE", home.path().join("none"))
            .env("AWS_SHARED_CREDENTIALS_FILE", home.path().join("none"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("RUST_LOG")
            .args(["plan", "pipelines/aws.toml"]);
        if verbose {
            c.arg("-v");
        }
        for k in remove {
            c.env_remove(k);
        }
        for (k, v) in envs {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let one_line = |stderr: &str, want: &[&str]| {
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line:\n{stderr}");
        for w in want {
            assert!(stderr.contains(w), "{w:?} not in\n{stderr}");
        }
        assert!(!stderr.contains("DispatchFailure("), "{stderr}");
    };
    let no_credentials = [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
    ];
    let (code, stderr) = run(
        &[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ],
        &no_credentials,
        false,
    );
    assert_eq!(code, 2, "{stderr}");
    one_line(
        &stderr,
        &[
            "no AWS credentials were found; tried the standard chain",
            "Fix: set AWS_PROFILE",
        ],
    );
    // The SDK's account, at -v.
    let (_, verbose) = run(
        &[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ],
        &no_credentials,
        true,
    );
    assert!(
        verbose.contains("no credentials found in chain"),
        "{verbose}"
    );

    let keys = [
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
    ];
    let (code, stderr) = run(&keys, &[], false);
    assert_eq!(code, 1, "{stderr}");
    one_line(
        &stderr,
        &["cannot reach the endpoint", "Connection refused"],
    );

    p.edit("pipelines/aws.toml", "region = \"us-east-1\"\n", "");
    let (code, stderr) = run(&keys[..2], &["AWS_REGION", "AWS_DEFAULT_REGION"], false);
    assert_eq!(code, 2, "{stderr}");
    one_line(
        &stderr,
        &["no AWS region", "[aws] region of pipelines/aws.toml"],
    );
    p.edit(
        "pipelines/aws.toml",
        "[aws]\n",
        "[aws]\nregion = \"us-east-1\"\n",
    );

    // What AWS itself refuses: the emulator answers as IAM and STS do.
    let moto = Moto::get();
    for (code_name, want, fix) in [
        (
            "AccessDeniedException",
            "may not do this (AccessDeniedException",
            "Fix: grant it the policy that `bake iam-policy <pipeline>` prints",
        ),
        (
            "ExpiredTokenException",
            "the AWS credentials have expired",
            "Fix: refresh them",
        ),
    ] {
        moto.set_config(json!({"faults": [{"action": "GetParameter", "times": 99, "code": code_name, "status": 400}]}));
        let (code, stderr) = common::moto::bake_refused(&p, moto, &["plan", "pipelines/aws.toml"]);
        assert_eq!(code, 2, "{stderr}");
        one_line(&stderr, &[want, fix]);
    }
}
