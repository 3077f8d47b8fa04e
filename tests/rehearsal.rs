//! The AWS engine rehearsed for real (part of the VM tier): the emulator's instances are QEMU
//! VMs (tests/moto/machines.py behind the test proxy), so every command bake sends over SSM
//! RunCommand runs in a real guest and answers with its real exit code and output, within the
//! service's limits. The ec2 engine bakes the al2023-eks recipe on the AL2023 EKS stand-in
//! (tests/standins/al2023-eks.sh); the Image Builder engine and the kill test use the local
//! Debian base. The canary boots from the disk the builder's CreateImage made, with the image
//! as shipped on a second, NVMe volume attached after boot. The AL2023 rehearsal's canary joins
//! the emulator's EKS cluster (tests/moto/kubelet.py runs its kubelet, VPC CNI and CoreDNS on
//! the VM); the others name no cluster, so their cluster checks are not applicable and say so.

use crate::common::moto::{self, Moto};
use crate::common::standin::{
    self, emulator_of, rehearsal_emulator, rehearsal_project, use_image_builder,
};
use crate::common::Project;
use serde_json::{json, Value};
use std::time::Duration;

/// The AL2023 EKS parameter of the al2023-eks recipe (x86_64).
const AL2023_X86: &str =
    "/aws/service/eks/optimized-ami/1.31/amazon-linux-2023/x86_64/standard/recommended/image_id";

/// Registers a base AMI whose instances are VMs of the AL2023 stand-in, found by its root
/// filesystem's UUID as the vendor's image finds its root, and points the AL2023 parameter
/// at it.
async fn al2023_emulator() -> (&'static Moto, String) {
    let base = standin::al2023(bake::Arch::X86_64).await;
    emulator_of(
        &base,
        AL2023_X86,
        &format!("UUID={}", standin::AL2023_ROOT_UUID),
    )
    .await
}

/// The Ubuntu 24.04 EKS parameter of the ubuntu2404-eks recipe (x86_64).
const UBUNTU_2404_X86: &str =
    "/aws/service/canonical/ubuntu/eks/24.04/1.31/stable/current/amd64/hvm/ebs-gp3/ami-id";

/// Registers a base AMI whose instances are VMs of the Ubuntu EKS stand-in, found by its root
/// filesystem's label as Canonical's images find theirs, and points the Ubuntu 24.04
/// parameter at it.
async fn ubuntu_emulator() -> (&'static Moto, String) {
    let base = standin::ubuntu_eks().await;
    emulator_of(
        &base,
        UBUNTU_2404_X86,
        &format!("LABEL={}", standin::UBUNTU_ROOT_LABEL),
    )
    .await
}

/// A rehearsal project whose aws pipeline bakes the ubuntu2404-eks recipe.
fn ubuntu_project(prefix: &str) -> Project {
    let p = rehearsal_project(prefix);
    p.edit(
        "pipelines/aws.toml",
        "recipe = \"eks-node\"",
        "recipe = \"ubuntu2404-eks\"",
    );
    p
}

/// A rehearsal project whose aws pipeline bakes the al2023-eks recipe, its canary joining the
/// emulator's EKS cluster `dev` (its kubelet, VPC CNI and CoreDNS are kubelet.py's).
fn al2023_project(prefix: &str) -> Project {
    let p = rehearsal_project(prefix);
    p.edit(
        "pipelines/aws.toml",
        "recipe = \"eks-node\"",
        "recipe = \"al2023-eks\"",
    );
    let pipeline = p.read("pipelines/aws.toml");
    p.write(
        "pipelines/aws.toml",
        format!("{pipeline}\n[canary]\ncluster = \"dev\"\n"),
    );
    p
}

fn bake(p: &Project, moto: &Moto, args: &[&str]) -> (i32, Value, String) {
    moto::bake(p, moto, args)
}

/// No VM runs and no instance disk is left; every instance the run made is terminated.
async fn assert_nothing_left(moto: &Moto) {
    let dir = moto.dir.path().join("machines");
    let running = crate::common::qemu_running_under(&dir);
    assert!(running.is_empty(), "VMs left running: {running:?}");
    let instances: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("i-"))
        .collect();
    assert!(instances.is_empty(), "instance disks left: {instances:?}");
    let alive = moto::live_instances(moto).await;
    assert!(alive.is_empty(), "instances not terminated: {alive:?}");
}

/// One x86_64 `bake run` of the al2023-eks recipe on the ec2 engine, on the AL2023 stand-in:
/// every step, file, package manifest (rpm's) and validator really executed on the VMs, every
/// validator pass or not applicable, the release published to the emulator's SSM. Then the
/// seed's incident through the same path, with a package installed at first boot: rejected by
/// what ran on the canary, exit 3, nothing published.
/// The published x86_64 image of `recipe` passed every one of `passed`, the others were not
/// applicable (`not_applicable`), and nothing else was checked: what `bake releases` reads back.
fn every_check_passed(
    p: &Project,
    moto: &Moto,
    recipe: &str,
    passed: &[&str],
    not_applicable: &[&str],
) {
    let (code, rel, stderr) = bake(p, moto, &["releases", recipe, "-p", "pipelines/aws.toml"]);
    assert_eq!(code, 0, "{stderr}");
    let validators = rel[0]["images"]["x86_64"]["validators"]
        .as_object()
        .unwrap_or_else(|| panic!("{rel:#}"))
        .clone();
    for name in passed {
        assert_eq!(validators[*name], "pass", "{name}: {rel:#}");
    }
    for name in not_applicable {
        assert_eq!(validators[*name], "not_applicable", "{name}: {rel:#}");
    }
    assert_eq!(
        validators.len(),
        passed.len() + not_applicable.len(),
        "{rel:#}"
    );
}

/// The CycloneDX SBOM of `release`'s x86_64 image, as text.
fn sbom_of(p: &Project, moto: &Moto, recipe: &str, release: &str) -> String {
    let (code, sbom, stderr) = bake(
        p,
        moto,
        &[
            "sbom",
            recipe,
            release,
            "--arch",
            "x86_64",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    sbom.to_string()
}

/// `bake run` of `n` is rejected (exit 3, nothing published), each `(validator, reason)`
/// failing with that reason.
fn rejected(n: &Project, moto: &Moto, failed: &[(&str, &str)]) {
    let (code, summary, stderr) = bake(n, moto, &["run", "pipelines/aws.toml"]);
    assert_eq!(code, 3, "expected rejection: {summary:#}\n{stderr}");
    assert!(summary["published"].as_array().unwrap().is_empty());
    let error = summary["results"][0]["error"].as_str().unwrap();
    for (validator, reason) in failed {
        assert!(error.contains(&format!("{validator} fail")), "{error}");
        assert!(error.contains(reason), "expected {reason:?} in {error}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ec2_engine_on_the_al2023_stand_in_publishes_a_hardened_image_and_rejects_the_incident()
{
    let p = al2023_project("/rehearsal");
    // A base whose vendor edited the packaged link file in place, as EKS AL2023 AMIs up to
    // v20250410 did (awslabs/amazon-eks-ami templates/al2023/provisioners/install-worker.sh):
    // an /etc drop-in governs it, so the image passes, and the run says what rpm -V saw.
    p.add_step(
        "al2023-eks",
        "vendor-edited-link",
        "sed -i 's/^MACAddressPolicy=.*/MACAddressPolicy=none/' /usr/lib/systemd/network/99-default.link\n",
        Some("generalize"),
    );
    let (moto, _) = al2023_emulator().await;
    let (code, summary, stderr) = bake(&p, moto, &["run", "pipelines/aws.toml"]);
    assert_eq!(code, 0, "{summary:#}\n{stderr}");
    let notes = summary["results"][0]["notes"].to_string();
    assert!(
        notes.contains("mac-policy: /usr/lib/systemd/network/99-default.link differs from what its package shipped")
            && notes.contains("governs it and the veth kept its MAC"),
        "{summary:#}"
    );
    let published = &summary["published"][0];
    let release = published["release"].as_str().unwrap().to_string();
    let image = published["images"]["x86_64"].as_str().unwrap().to_string();
    assert!(image.starts_with("ami-"), "{published}");
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk().await);
    let param = ssm
        .get_parameter()
        .name(format!("/rehearsal/al2023-eks/releases/{release}/x86_64"))
        .send()
        .await
        .unwrap();
    assert_eq!(param.parameter().unwrap().value(), Some(image.as_str()));

    // What each validator said, as the canary answered it (the image's tags keep the summary):
    // every one of the recipe's passes, the dnf ones and pod-network included, and the
    // cluster's: the canary's node Ready with its taint, and a pod the cluster's CNI wired on
    // it kept its gateway's MAC through udev and reached the cluster DNS service.
    every_check_passed(
        &p,
        moto,
        "al2023-eks",
        &[
            "mac-policy",
            "networkd-keeps-foreign-routes",
            "pod-network",
            "dnf-automatic-off",
            "dnf-timers-masked",
            "dnf-release-locked",
            "machine-id-empty",
            "no-ssh-host-keys",
            "no-bake-leftovers",
            "node-ready",
            "cluster-pod-network",
            "software-as-baked",
        ],
        &[],
    );
    assert!(
        notes.contains("cluster-pod-network: pod bake-cluster-pod-network-")
            && notes.contains("kept after udev settled; the cluster DNS service answered"),
        "{summary:#}"
    );
    // The manifest is rpm's: the vendor's packages, at the stand-in's release.
    let sbom = sbom_of(&p, moto, "al2023-eks", &release);
    assert!(
        sbom.contains("pkg:rpm/amzn/system-release@2023.6.20250218"),
        "{sbom}"
    );
    // Files, steps, the package manifest and the validators each went over SSM RunCommand.
    let logged = moto.records();
    let sends = logged
        .iter()
        .filter(|r| r["action"] == "SendCommand")
        .count();
    assert!(
        sends >= 8,
        "steps, files, manifest and validators all went over SSM: {sends}"
    );
    assert_nothing_left(moto).await;
    audit_a_pet(&p, moto, &image).await;
    moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");

    // The seed's incident on a base without the vendor's drop-in (an AMI up to v20250410, whose
    // in-place edit an upgrade of systemd-udev undoes) and without bake's: the canary's own
    // udev rewrites the veth's MAC. And software that changes at first boot, as a cloud-init
    // `package_upgrade` would: a package installed by a unit the image enables.
    let n = al2023_project("/rehearsal-incident");
    n.without_file("al2023-eks", "99-bake-mac-policy.conf");
    n.add_step(
        "al2023-eks",
        "no-vendor-dropin",
        "rm -f /etc/systemd/network/99-default.link.d/99-no-policy.conf\n",
        Some("generalize"),
    );
    n.add_step(
        "al2023-eks",
        "install-at-first-boot",
        &format!(
            "{}printf '[Unit]\\nDescription=a package installed at first boot\\n\\n[Service]\\nType=oneshot\\nExecStart=/usr/bin/rpm -i --nodeps /var/lib/bake-drift/bake-boot-drift-1.0-1.noarch.rpm\\n\\n[Install]\\nWantedBy=multi-user.target\\n' > /etc/systemd/system/bake-first-boot.service\n\
             systemctl enable bake-first-boot.service\n",
            rpm_of("bake-boot-drift")
        ),
        Some("generalize"),
    );
    rejected(
        &n,
        moto,
        &[
            ("mac-policy", "sets MACAddressPolicy=none"),
            crate::common::POD_LOST,
            (
                "cluster-pod-network",
                "udev rewrote it after the CNI pinned it",
            ),
            ("software-as-baked", "bake-boot-drift"),
        ],
    );
    let none = ssm
        .get_parameters_by_path()
        .path("/rehearsal-incident")
        .recursive(true)
        .send()
        .await
        .unwrap();
    assert!(
        none.parameters()
            .iter()
            .all(|p| !p.name().unwrap_or_default().contains("/releases/")),
        "a rejected image was published: {:?}",
        none.parameters()
    );
    assert_nothing_left(moto).await;
}

/// One x86_64 `bake run` of the ubuntu2404-eks recipe on the ec2 engine, on the Ubuntu EKS
/// stand-in (snapd with the kubelet-eks and kubectl-eks snaps, unattended-upgrades enabled,
/// rsyslog, root by label): unattended upgrades purged, apt timers masked, snap refreshes held
/// for good, every validator pass or not applicable, the snaps and their revisions in the
/// manifest, published. Then the same recipe whose first boot replaces the kubelet snap, as a
/// bootstrap's `snap refresh kubelet-eks` would (a new revision under the same name), without
/// the MAC drop-in: rejected by what ran on the canary, exit 3, nothing published.
#[tokio::test(flavor = "multi_thread")]
async fn the_ec2_engine_on_the_ubuntu_stand_in_publishes_a_hardened_image_and_rejects_a_boot_time_snap_refresh(
) {
    let p = ubuntu_project("/rehearsal");
    let (moto, _) = ubuntu_emulator().await;
    let (code, summary, stderr) = bake(&p, moto, &["run", "pipelines/aws.toml"]);
    assert_eq!(code, 0, "{summary:#}\n{stderr}");
    let published = &summary["published"][0];
    let release = published["release"].as_str().unwrap().to_string();
    every_check_passed(
        &p,
        moto,
        "ubuntu2404-eks",
        &[
            "mac-policy",
            "networkd-keeps-foreign-routes",
            "pod-network",
            "no-unattended-upgrades",
            "apt-timers-masked",
            "apt-periodic-off",
            "snap-refresh-held",
            "machine-id-empty",
            "no-ssh-host-keys",
            "no-bake-leftovers",
            "software-as-baked",
        ],
        // Its pipeline names no cluster (the AL2023 rehearsal's canary joins one).
        &["node-ready", "cluster-pod-network"],
    );
    // The manifest is dpkg's and snapd's: the kubelet is a snap, with its revision.
    let sbom = sbom_of(&p, moto, "ubuntu2404-eks", &release);
    assert!(
        sbom.contains("kubelet-eks") && sbom.contains("1.31.2"),
        "{sbom}"
    );
    assert!(!sbom.contains("unattended-upgrades"), "{sbom}");
    assert_nothing_left(moto).await;
    moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");

    // The first boot of every node replaces the kubelet snap with another revision, as a
    // bootstrap that runs `snap refresh kubelet-eks` would (the stand-in's snaps are unknown
    // to any store: the new revision is a local file the step leaves); and the MAC drop-in
    // is lost, the seed's incident.
    let n = ubuntu_project("/rehearsal-incident");
    n.without_file("ubuntu2404-eks", "99-bake-mac-policy.conf");
    n.add_step(
        "ubuntu2404-eks",
        "refresh-kubelet-at-first-boot",
        "d=/var/lib/bake-drift/kubelet-eks\n\
         mkdir -p $d/meta $d/bin\n\
         printf 'name: kubelet-eks\\nversion: \"1.31.2\"\\nbase: core20\\nconfinement: classic\\nsummary: k\\ndescription: k\\napps:\\n  kubelet:\\n    command: bin/kubelet\\n' > $d/meta/snap.yaml\n\
         printf '#!/bin/sh\\necho Kubernetes v1.31.2-refreshed\\n' > $d/bin/kubelet\n\
         chmod 0755 $d $d/meta $d/bin/kubelet\n\
         mksquashfs $d /var/lib/bake-drift/kubelet-eks.snap -noappend -comp xz -no-fragments -no-progress -all-root -no-xattrs -quiet\n\
         rm -rf $d\n\
         printf '[Unit]\\nDescription=a snap refreshed at first boot\\nAfter=snapd.service\\n\\n[Service]\\nType=oneshot\\nExecStart=/usr/bin/snap install --dangerous --classic /var/lib/bake-drift/kubelet-eks.snap\\n\\n[Install]\\nWantedBy=multi-user.target\\n' > /etc/systemd/system/bake-first-boot.service\n\
         systemctl enable bake-first-boot.service\n",
        Some("generalize"),
    );
    rejected(
        &n,
        moto,
        &[
            ("mac-policy", "MACAddressPolicy"),
            crate::common::POD_LOST,
            ("software-as-baked", "kubelet-eks"),
        ],
    );
    assert_nothing_left(moto).await;
}

/// A shell script that builds an empty noarch rpm `name` 1.0-1 into /var/lib/bake-drift/ (with
/// the stand-in's rpmbuild), for a package a test installs where nothing should.
fn rpm_of(name: &str) -> String {
    format!(
        "d=/var/lib/bake-drift\n\
         mkdir -p $d/top\n\
         printf 'Name: {name}\\nVersion: 1.0\\nRelease: 1\\nSummary: a package nobody baked\\nLicense: none\\nBuildArch: noarch\\n%%description\\nnot baked\\n%%files\\n' > $d/{name}.spec\n\
         rpmbuild --quiet -bb --define \"_topdir $d/top\" $d/{name}.spec\n\
         mv $d/top/RPMS/noarch/{name}-1.0-1.noarch.rpm $d/\n\
         rm -rf $d/top $d/{name}.spec\n"
    )
}

/// The pets stay as baked (`bake audit`, end to end on a real node): a node launched from the
/// published image with the eks-node module's tags audits clean through the emulated agent,
/// its checks run as an audit runs them and its rpm list compared with the manifest captured
/// at bake time; then drift made by hand on it (the MAC drop-ins gone, a package installed) is
/// reported on that node, check and package, exit 3.
async fn audit_a_pet(p: &Project, moto: &Moto, image: &str) {
    let d = Driver::new(moto).await;
    let pet = d
        .launch_tagged(
            image,
            None,
            &[
                ("Name", "pets-pet-1"),
                ("bake:node", "pet-1"),
                ("bake:recipe", "al2023-eks"),
                ("bake:arch", "x86_64"),
                ("bake:cluster", "dev"),
            ],
        )
        .await;
    let audit = ["audit", "-p", "pipelines/aws.toml"];
    // The audit runs only the recipe's audit document, installed first.
    let (code, docs, stderr) = bake(
        p,
        moto,
        &["audit-document", "-p", "pipelines/aws.toml", "--apply"],
    );
    assert_eq!(code, 0, "{docs:#}\n{stderr}");
    let (code, report, stderr) = bake(p, moto, &audit);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(report["nodes"].as_array().unwrap().len(), 1, "{report:#}");
    let node = &report["nodes"][0];
    assert_eq!(node["node"], "pet-1", "{node:#}");
    assert_eq!(node["instance"], pet.as_str(), "{node:#}");
    assert_eq!(node["changed"], json!([]), "{node:#}");
    let status = |node: &Value, check: &str| {
        node["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == check)
            .unwrap_or_else(|| panic!("no {check} in {node:#}"))["status"]
            .clone()
    };
    for check in [
        "mac-policy",
        "networkd-keeps-foreign-routes",
        "dnf-automatic-off",
        "dnf-timers-masked",
        "dnf-release-locked",
    ] {
        assert_eq!(status(node, check), "pass", "{check}: {node:#}");
    }
    audit_changes_nothing(&d, &pet, p, "amzn").await;

    let drift = format!(
        "set -e\nrm -f /etc/systemd/network/99-default.link.d/*.conf\n{}rpm -i --nodeps /var/lib/bake-drift/bake-hand-installed-1.0-1.noarch.rpm\n",
        rpm_of("bake-hand-installed")
    );
    let (s, rc, out, err) = d.run(&pet, &drift, 120).await;
    assert_eq!((s.as_str(), rc), ("Success", 0), "{out}\n{err}");
    let (code, report, stderr) = bake(p, moto, &audit);
    assert_eq!(code, 3, "{report:#}\n{stderr}");
    let node = &report["nodes"][0];
    assert_eq!(status(node, "mac-policy"), "fail", "{node:#}");
    assert_eq!(status(node, "dnf-timers-masked"), "pass", "{node:#}");
    assert!(
        node["changed"].to_string().contains("bake-hand-installed"),
        "{node:#}"
    );

    // The node's agent stops while the node runs on (as `systemctl stop amazon-ssm-agent`
    // would; the emulator's agent is the VM's guest agent, stopped a moment after the command
    // that asks for it has answered): not judged, exit 1 — never counted as clean.
    let stop =
        "systemd-run --on-active=2 --unit=bake-agent-stop systemctl stop qemu-guest-agent.service\n";
    let (s, rc, out, err) = d.run(&pet, stop, 60).await;
    assert_eq!((s.as_str(), rc), ("Success", 0), "{out}\n{err}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (code, report, stderr) = bake(p, moto, &[&audit[..], &["--wait", "3s"]].concat());
    assert_eq!(code, 1, "{report:#}\n{stderr}");
    let node = &report["nodes"][0];
    assert_eq!(node["instance"], pet.as_str(), "{node:#}");
    // Whether SSM still reported the agent online (then the command goes unanswered) or no
    // longer did, the node is named and not judged.
    assert!(
        node["not_judged"]
            .as_str()
            .is_some_and(|w| w.contains(pet.as_str())),
        "{node:#}"
    );
    assert_eq!(node["checks"], json!([]), "{node:#}");
    d.terminate(&pet).await;
    assert_nothing_left(moto).await;
}

/// EC2 and SSM through the proxy, signed with a key of their own (not bake's, not `testing`,
/// so no IAM assertion of a bake project counts these calls).
struct Driver {
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
    imagebuilder: aws_sdk_imagebuilder::Client,
}

impl Driver {
    async fn new(moto: &Moto) -> Driver {
        let config = moto
            .sdk_via_proxy()
            .await
            .to_builder()
            .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
                aws_sdk_ec2::config::Credentials::new("AKIATOEREHEARSAL", "t", None, None, "toe"),
            ))
            .build();
        Driver {
            ec2: aws_sdk_ec2::Client::new(&config),
            ssm: aws_sdk_ssm::Client::new(&config),
            imagebuilder: aws_sdk_imagebuilder::Client::new(&config),
        }
    }

    /// Launches an instance of `image` (with base64 `user_data`), tagged `tags`, and waits
    /// until its agent is online.
    async fn launch_tagged(
        &self,
        image: &str,
        user_data: Option<String>,
        tags: &[(&str, &str)],
    ) -> String {
        use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
        let spec = tags.iter().fold(
            TagSpecification::builder().resource_type(ResourceType::Instance),
            |s, (k, v)| s.tags(Tag::builder().key(*k).value(*v).build()),
        );
        let r = self
            .ec2
            .run_instances()
            .image_id(image)
            .set_user_data(user_data)
            .instance_type(aws_sdk_ec2::types::InstanceType::M6iLarge)
            .min_count(1)
            .max_count(1)
            .set_tag_specifications((!tags.is_empty()).then(|| vec![spec.build()]))
            .send()
            .await
            .unwrap();
        let id = r.instances()[0].instance_id().unwrap().to_string();
        let start = std::time::Instant::now();
        loop {
            let info = self
                .ssm
                .describe_instance_information()
                .filters(
                    aws_sdk_ssm::types::InstanceInformationStringFilter::builder()
                        .key("InstanceIds")
                        .values(&id)
                        .build()
                        .unwrap(),
                )
                .send()
                .await
                .unwrap();
            if !info.instance_information_list().is_empty() {
                return id;
            }
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "{id} never came online"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// AWS-RunShellScript of `script`: (status, exit code, stdout, stderr).
    async fn run(&self, id: &str, script: &str, timeout: u64) -> (String, i32, String, String) {
        let sent = self
            .ssm
            .send_command()
            .document_name("AWS-RunShellScript")
            .instance_ids(id)
            .parameters("commands", vec![script.to_string()])
            .parameters("executionTimeout", vec![timeout.to_string()])
            .send()
            .await
            .unwrap();
        let command = sent.command().unwrap().command_id().unwrap().to_string();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let inv = self
                .ssm
                .get_command_invocation()
                .command_id(&command)
                .instance_id(id)
                .send()
                .await
                .unwrap();
            let status = inv.status().unwrap().as_str().to_string();
            if status != "InProgress" && status != "Pending" {
                return (
                    status,
                    inv.response_code(),
                    inv.standard_output_content().unwrap_or_default().into(),
                    inv.standard_error_content().unwrap_or_default().into(),
                );
            }
        }
    }

    async fn terminate(&self, id: &str) {
        self.ec2
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap();
    }
}

/// The build of `recipe` Image Builder is running and the workflow step it is in, if any.
async fn running_build(d: &Driver, recipe: &str) -> Option<(String, String)> {
    let images = d.imagebuilder.list_images().send().await.ok()?;
    let version = images
        .image_version_list()
        .iter()
        .find(|v| {
            v.name()
                .is_some_and(|n| n.starts_with(&format!("bake-{recipe}-")))
        })?
        .arn()?
        .to_string();
    let builds = d
        .imagebuilder
        .list_image_build_versions()
        .image_version_arn(&version)
        .send()
        .await
        .ok()?;
    let build = builds.image_summary_list().first()?.arn()?.to_string();
    let runs = d
        .imagebuilder
        .list_workflow_executions()
        .image_build_version_arn(&build)
        .send()
        .await
        .ok()?;
    let run = runs.workflow_executions().last()?;
    let steps = d
        .imagebuilder
        .list_workflow_step_executions()
        .workflow_execution_id(run.workflow_execution_id()?)
        .send()
        .await
        .ok()?;
    let step = steps.steps().iter().find(|s| {
        s.status() == Some(&aws_sdk_imagebuilder::types::WorkflowStepExecutionStatus::Running)
    })?;
    Some((build, step.name()?.to_string()))
}

/// Whether an instance of `build` (Image Builder tags it with the build's ARN) is running.
async fn build_instance(d: &Driver, build: &str) -> bool {
    let running = d
        .ec2
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:Ec2ImageBuilderArn")
                .values(build)
                .build(),
        )
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("instance-state-name")
                .values("running")
                .build(),
        )
        .send()
        .await;
    running.is_ok_and(|r| r.reservations().iter().any(|r| !r.instances().is_empty()))
}

/// Every image and snapshot this account owns that Image Builder made or bake tagged for
/// `prefix`, but `published`.
async fn images_and_snapshots_of(moto: &Moto, prefix: &str, published: &[&str]) -> Vec<String> {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let ours = |tags: &[aws_sdk_ec2::types::Tag]| {
        tags.iter().any(|t| {
            (t.key() == Some("bake:prefix") && t.value() == Some(prefix))
                || t.key() == Some("Ec2ImageBuilderArn")
        })
    };
    let images = ec2.describe_images().owners("self").send().await.unwrap();
    let snapshots = ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap();
    let mut left: Vec<String> = images
        .images()
        .iter()
        .filter(|i| ours(i.tags()) && !published.contains(&i.image_id().unwrap()))
        .map(|i| format!("{} {:?}", i.image_id().unwrap(), i.tags()))
        .collect();
    left.extend(
        snapshots
            .snapshots()
            .iter()
            .filter(|s| ours(s.tags()))
            .map(|s| s.snapshot_id().unwrap().to_string()),
    );
    left
}

/// The `imagebuilder` engine end to end against the emulator's Image Builder, whose builds are
/// real VMs (tests/moto/imagebuilder.py runs the AWSTOE documents bake gave it on a build
/// instance of the base, images it, and runs the test phase on an instance of that image):
/// - SIGKILL while the build's instance runs, then `sweep --apply`: the build is cancelled
///   and deleted, and no instance, image or snapshot is left;
/// - the rerun reuses the components, image recipe and configurations the killed run created
///   (no Create call but CreateImage), the build passes Image Builder's test phase, bake's
///   canary proves the image and it is published;
/// - the seed's incident (no MAC drop-in) fails Image Builder's test phase: the test instance
///   boots the image as a node does and its udev rewrites the veth's MAC, the earliest point
///   that can see it and before anything is distributed or a canary launched. Exit 3, nothing
///   published, the undistributed AMI Image Builder left deregistered.
/// Every call bake made is evaluated against the policy it prints.
#[tokio::test(flavor = "multi_thread")]
async fn the_image_builder_engine_on_real_vms_sweeps_a_killed_build_reuses_publishes_and_rejects_the_incident(
) {
    let p = rehearsal_project("/rehearsal-ib");
    let (moto, _) = rehearsal_emulator(&p).await;
    use_image_builder(&p, moto).await;
    let d = Driver::new(moto).await;

    let log = p.path("killed-run.log");
    let mut child = moto::bake_command(&p, moto)
        .args(["run", "pipelines/aws.toml", "-q"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    // Killed once its build instance runs: what the build has made must go with the build.
    // (Not later: the instance's boot and the components would cost the suite a minute of
    // CPU and prove nothing more about the sweep.)
    let build = loop {
        if let Some((build, step)) = running_build(&d, "eks-node").await {
            if matches!(
                step.as_str(),
                "LaunchBuildInstance" | "ApplyBuildComponents"
            ) && build_instance(&d, &build).await
            {
                break build;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its build ran a component: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(start.elapsed() < Duration::from_secs(900), "no build ran");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let (code, swept, stderr) = bake(&p, moto, &["sweep", "-p", "pipelines/aws.toml", "--apply"]);
    assert_eq!(code, 0, "{swept:#}\n{stderr}");
    assert!(
        swept["leftovers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["kind"] == "imagebuilder-build" && l["id"] == build.as_str()),
        "the killed run's build was not swept: {swept:#}"
    );
    let gone = d
        .imagebuilder
        .get_image()
        .image_build_version_arn(&build)
        .send()
        .await;
    assert!(gone.is_err(), "the build is still there: {gone:?}");
    assert_nothing_left(moto).await;
    assert_eq!(
        images_and_snapshots_of(moto, "/rehearsal-ib", &[]).await,
        Vec::<String>::new()
    );

    let key = p.access_key();
    let before = moto.records().len();
    let (code, summary, stderr) = bake(&p, moto, &["run", "pipelines/aws.toml"]);
    assert_eq!(code, 0, "{summary:#}\n{stderr}");
    let creates: Vec<String> = moto.records()[before..]
        .iter()
        .filter(|r| r["key"] == key.as_str() && r["service"] == "imagebuilder")
        .filter_map(|r| r["action"].as_str())
        .filter(|a| a.starts_with("Create"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        creates,
        ["CreateImage"],
        "the rerun created again what the killed run had"
    );
    let image = summary["published"][0]["images"]["x86_64"]
        .as_str()
        .unwrap_or_else(|| panic!("{summary:#}"))
        .to_string();
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let made = ec2
        .describe_images()
        .image_ids(&image)
        .send()
        .await
        .unwrap();
    assert!(
        made.images()[0]
            .tags()
            .iter()
            .any(|t| t.key() == Some("CreatedBy") && t.value() == Some("EC2 Image Builder")),
        "{made:?}"
    );
    let (code, rel, stderr) = bake(
        &p,
        moto,
        &["releases", "eks-node", "-p", "pipelines/aws.toml"],
    );
    assert_eq!(code, 0, "{stderr}");
    let validators = rel[0]["images"]["x86_64"]["validators"]
        .as_object()
        .unwrap()
        .clone();
    // Not applicable, and only these: no cluster to ask, no snapd on this base, and no manifest
    // of the build to compare with (Image Builder builds out of bake's reach: the canary's list
    // is the manifest).
    let not_applicable = [
        "node-ready",
        "cluster-pod-network",
        "snap-refresh-held",
        "software-as-baked",
    ];
    for (name, status) in &validators {
        let want = if not_applicable.contains(&name.as_str()) {
            "not_applicable"
        } else {
            "pass"
        };
        assert_eq!(status, want, "{name}: {rel:#}");
    }
    assert!(validators.contains_key("mac-policy") && validators.contains_key("no-bake-leftovers"));
    assert_nothing_left(moto).await;
    moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");

    let n = rehearsal_project("/rehearsal-ib-incident");
    use_image_builder(&n, moto).await;
    n.without_file("eks-node", "99-bake-mac-policy.conf");
    let (code, summary, stderr) = bake(&n, moto, &["run", "pipelines/aws.toml"]);
    assert_eq!(code, 3, "expected rejection: {summary:#}\n{stderr}");
    assert!(
        summary["published"].as_array().unwrap().is_empty(),
        "{summary:#}"
    );
    let error = summary["results"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("Image Builder's test phase rejected the image (mac-policy")
            && error.contains("validate_mac_policy"),
        "{error}"
    );
    assert_nothing_left(moto).await;
    assert_eq!(
        images_and_snapshots_of(moto, "/rehearsal-ib-incident", &[image.as_str()]).await,
        Vec::<String>::new(),
        "the failed build's AMI is left"
    );
    moto::assert_iam_allows(moto, &[&n], "pipelines/aws.toml");
}

/// What a node runs on, as a live-node check could change it: its links, ip rules, routes,
/// and whether networkd or udevd restarted.
const NODE_STATE: &str = "ip -o link | sed 's/^[0-9]*: //; s/[:@].*//' | sort; ip rule; ip route show table all | sort; \
    systemctl show -p MainPID -p NRestarts -p ActiveEnterTimestampMonotonic systemd-networkd systemd-udevd";

/// Every validator the catalog declares safe on a live node (`audit = true`), run as an audit
/// runs it (`BAKE_AUDIT=1`) on a booted hardened node: it passes within a minute and leaves the
/// node's links, rules, routes and services as they were, and no file outside its temp dir.
async fn audit_changes_nothing(d: &Driver, node: &str, p: &Project, distro: &str) {
    let catalog = bake::input::validate::Catalog::load(&p.dir.path().join("validators")).unwrap();
    let (status, _, before, err) = d
        .run(
            node,
            // Once its first boot is over: cloud-init's last stages write /var/lib/cloud and
            // debconf's cache for a while after the agent answers (seen when the audit came
            // soon after the boot), and that is the boot's doing, not the checks'. systemd's
            // word first: this cloud-init (22.4) says `done` between its stages, before
            // cloud-final has started (seen in CI).
            &format!("systemctl is-system-running --wait >/dev/null 2>&1\ncloud-init status --wait >/dev/null 2>&1\n{NODE_STATE}\ntouch /var/tmp/bake-audit-stamp"),
            600,
        )
        .await;
    assert_eq!(status, "Success", "{err}");
    // As the audit document runs them (its checks action), every check the catalog declares
    // safe on a live node: those for another distribution say so and run nothing.
    use bake::guest::audit::{AuditProgram, CHECKS};
    let validators: Vec<bake::input::validate::Validator> = catalog
        .names()
        .iter()
        .filter_map(|name| catalog.get(name).cloned())
        .collect();
    let program = AuditProgram::new("al2023-eks", &validators);
    let script = program.rendered(CHECKS, bake::Arch::X86_64, 0);
    let (status, rc, out, err) = d.run(node, &script, 1_800).await;
    let (_, outcomes) = program
        .parse_checks(&bake::guest::Ran {
            exit_code: rc,
            stdout: out.clone(),
            stderr: err.clone(),
        })
        .unwrap_or_else(|why| panic!("{status}: {why}\n{out}\n{err}"));
    let mut audited = Vec::new();
    for (v, outcome) in program.checks().iter().zip(outcomes) {
        // Past its limit a check is not finished (an Err), so each ended within it.
        let ran = outcome.unwrap_or_else(|why| panic!("{} under BAKE_AUDIT=1: {why}", v.name));
        assert_eq!(
            ran.exit_code, 0,
            "{} under BAKE_AUDIT=1:\n{}\n{}",
            v.name, ran.stdout, ran.stderr
        );
        if v.applies_to.is_empty() || v.applies_to.iter().any(|d| d == distro) {
            audited.push(v.name.to_string());
        }
    }
    assert!(
        audited.contains(&"mac-policy".to_string())
            && audited.contains(&"networkd-keeps-foreign-routes".to_string()),
        "{audited:?}"
    );
    // The agent keeps its own records (/var/lib/amazon, /var/log) and journald its journal;
    // nothing else may have been written since the stamp — but the rpm database's `-shm`:
    // rpm keeps its SQLite database in WAL mode, and any reader (`rpm -q`, as the dnf checks
    // and rpm -V read it) maps and updates that shared-memory index, which holds no data.
    let find = "find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
        -o -path /var/tmp -o -path /var/log -o -path /var/lib/amazon \\) -prune -o -newer /var/tmp/bake-audit-stamp \
        ! -name rpmdb.sqlite-shm -print";
    let (status, _, after, err) = d
        .run(
            node,
            &format!("{NODE_STATE}\necho '## written'\n{find}\nrm -f /var/tmp/bake-audit-stamp"),
            120,
        )
        .await;
    assert_eq!(status, "Success", "{err}");
    assert_eq!(
        format!("{before}## written\n"),
        after,
        "the audited checks {audited:?} changed the node"
    );
}

/// SIGKILL while a recipe step really runs on the builder VM; `sweep --apply` then leaves no
/// VM, no live instance, no security group and no image of the run.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_a_real_step_then_sweep_leaves_no_vm_instance_or_image() {
    let p = rehearsal_project("/rehearsal-kill");
    let (moto, _) = rehearsal_emulator(&p).await;
    let mut child = moto::bake_command(&p, moto)
        .args(["run", "pipelines/aws.toml", "-q"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The third command is the second recipe step (after the files and settle-first-boot):
    // kill while the guest runs it. (Only this run's commands: other tests share the emulator
    // and send theirs meanwhile; each project signs with its own key.)
    let key = p.access_key();
    let start = std::time::Instant::now();
    while moto
        .records()
        .iter()
        .filter(|r| r["action"] == "SendCommand" && r["key"] == key.as_str())
        .count()
        < 3
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its third command"
        );
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "no third command"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    child.kill().unwrap();
    child.wait().unwrap();
    let (code, swept, stderr) = bake(&p, moto, &["sweep", "-p", "pipelines/aws.toml", "--apply"]);
    assert_eq!(code, 0, "{swept:#}\n{stderr}");
    assert!(
        !swept["leftovers"].as_array().unwrap().is_empty(),
        "the killed run left its builder: {swept:#}"
    );
    // TerminateInstances ends the VM at once.
    assert_nothing_left(moto).await;
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let groups = ec2.describe_security_groups().send().await.unwrap();
    let images = ec2.describe_images().owners("self").send().await.unwrap();
    let ours = |tags: &[aws_sdk_ec2::types::Tag]| {
        tags.iter()
            .any(|t| t.key() == Some("bake:prefix") && t.value() == Some("/rehearsal-kill"))
    };
    assert!(!groups.security_groups().iter().any(|g| ours(g.tags())));
    assert!(!images.images().iter().any(|i| ours(i.tags())));
}
