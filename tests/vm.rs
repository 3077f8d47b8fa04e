//! The local provider for real: mmdebstrap bases, QEMU builder and canary VMs under TCG (or
//! KVM where a probe boot shows it works), the guest agent, validators on the canary, the
//! SQLite registry. Includes the seed's incident as negative tests: an image whose MAC override
//! a later link file defeats (with unattended-upgrades left and identity shipped, on the same
//! canary), or "fixed" by editing the packaged link file and then upgraded, must be rejected with
//! exit 3 and nothing published. VM boots are the cost of this tier, so tests share them where
//! what they prove does not depend on a fresh run.
//!
//! Bases are cached in the user's cache dir (shared with `bake` itself and across runs).

use crate::common;

use assert_cmd::Command;
use common::{Project, POD_LOST};
use serde_json::Value;
use std::time::Duration;

/// A project whose pipeline bakes only `arch`, with clusters that use only `arch`, its VMs
/// given one vCPU: the suite runs two VM chains side by side on two cores, where `auto` (the
/// host's cores, shared by the arches this process bakes) would give each guest both. Two
/// guests booting at once took 87 s with two vCPUs each and 65 s with one (2026-12-05, TCG):
/// threads of a guest waiting on one another while the other guest holds the core.
fn project_for(arch: &str) -> Project {
    let p = Project::new();
    let text = p.read("pipelines/local.toml");
    let text = text
        .replace(
            "arches = [\"x86_64\", \"arm64\"]",
            &format!("arches = [\"{arch}\"]"),
        )
        .replacen("cpus = \"auto\"", "cpus = 1", 1);
    p.write("pipelines/local.toml", text);
    p
}

fn bake(p: &Project, args: &[&str]) -> (i32, Value, String) {
    let out = Command::cargo_bin("bake")
        .unwrap()
        .current_dir(p.dir.path())
        .env_remove("BAKE_STATE_DIR")
        .env_remove("BAKE_CACHE_DIR")
        .env("RUST_LOG", "info")
        .args(args)
        .args(["--output", "json"])
        .timeout(Duration::from_secs(3600))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: stdout is not JSON ({e}):\n{}\nstderr:\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code().unwrap_or(-1), json, stderr)
}

/// No QEMU process, no mount, loop device or chroot process of the offline builder, and no
/// overlay or socket of this project's state dir is left.
fn assert_nothing_left(p: &Project) {
    let state = p.state().canonicalize().unwrap();
    let left = common::qemu_running_under(&state);
    assert!(left.is_empty(), "QEMU left running: {left:?}");
    // A killed chroot's namespace is torn down by the kernel moments after bake dies.
    let t = std::time::Instant::now();
    loop {
        let held = offline_builder_left(&state);
        if held.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the offline builder left: {held:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let work = state.join("work");
    let files: Vec<_> = walk(&work);
    assert!(files.is_empty(), "left in {}: {files:?}", work.display());
}

/// Mounts below `state` (in any mount namespace a process still holds), loop devices backed by
/// a file in it, and `unshare`/chroot processes naming it.
fn offline_builder_left(state: &std::path::Path) -> Vec<String> {
    let state = state.to_string_lossy().into_owned();
    let mut held = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let mounts = std::fs::read_to_string(e.path().join("mountinfo")).unwrap_or_default();
        if let Some(m) = mounts.lines().find(|l| l.contains(&state)) {
            held.push(format!("pid {pid} mount: {m}"));
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("bake-chroot") && cmdline.contains(&state) {
            held.push(format!("pid {pid}: {cmdline}"));
        }
    }
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let backing =
            std::fs::read_to_string(e.path().join("loop/backing_file")).unwrap_or_default();
        if backing.contains(&state) {
            held.push(format!(
                "{}: {}",
                e.file_name().to_string_lossy(),
                backing.trim()
            ));
        }
    }
    held
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn releases(p: &Project) -> Vec<Value> {
    let (code, json, stderr) = bake(p, &["releases", "eks-node"]);
    assert_eq!(code, 0, "{stderr}");
    json.as_array().unwrap().clone()
}

fn validator_status(summary: &Value, arch: &str) -> String {
    summary["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["arch"] == arch)
        .map(|r| format!("{} / {}", r["validators"], r["error"]))
        .unwrap_or_default()
}

/// Bakes `p`'s one arch, expects it published to dev, and checks what the canary proved.
fn bake_and_publish(p: &Project, arch: &str) {
    let (code, summary, stderr) = bake(p, &["run", "pipelines/local.toml"]);
    assert_eq!(
        code,
        0,
        "run failed: {}\n{stderr}",
        validator_status(&summary, arch)
    );
    let published = summary["published"].as_array().unwrap();
    assert_eq!(published.len(), 1, "{summary:#}");
    let image = published[0]["images"][arch].as_str().unwrap().to_string();
    assert!(image.starts_with("img-"));
    assert_eq!(published[0]["promoted_to"], serde_json::json!(["dev"]));
    assert!(p
        .state()
        .join("images")
        .join(format!("{image}.qcow2"))
        .is_file());
    assert_nothing_left(p);

    // Every validator that can run locally passed; the cluster check did not apply, with a reason.
    let rel = releases(p);
    assert_eq!(rel.len(), 1);
    let validators = rel[0]["images"][arch]["validators"].as_object().unwrap();
    for (name, status) in validators {
        // No cluster locally; no snapd on Debian.
        let want = if ["node-ready", "cluster-pod-network", "snap-refresh-held"]
            .contains(&name.as_str())
        {
            "not_applicable"
        } else {
            "pass"
        };
        assert_eq!(status, want, "{name}");
    }

    let record: Value = serde_json::from_slice(
        &std::fs::read(p.state().join("images").join(format!("{image}.json"))).unwrap(),
    )
    .unwrap();
    let output = |name: &str| -> String {
        let check = record["verdict"]["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no result for {name}"))
            .clone();
        check["output"].as_str().unwrap_or_default().to_string()
    };
    // The canary booted as an EC2 instance does: cloud-init took the NoCloud seed and made
    // host keys at first boot, which the check of the image as shipped is not fooled by.
    let keys = output("no-ssh-host-keys");
    assert!(
        keys.contains("the image ships no SSH host keys; this canary made")
            && !keys.contains("made 0 key"),
        "{keys}"
    );
    // A pod wired as the VPC CNI wires one reached the host over TCP with its pinned MAC.
    assert!(
        output("pod-network").contains("the pod reached the host over TCP"),
        "{}",
        output("pod-network")
    );
    // With an SMBIOS system UUID (x86_64; QEMU's arm64 virt machine has no SMBIOS without
    // firmware) systemd made the machine-id the image shipped empty from it.
    if arch == "x86_64" {
        let id = output("machine-id-empty");
        assert!(id.contains("from VM UUID"), "{id}");
    }

    // `status` shows the release on the dev channel.
    let (code, status, _) = bake(p, &["status"]);
    assert_eq!(code, 0);
    let dev = status
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["channel"] == "dev")
        .unwrap();
    assert_eq!(dev["image"], image);

    // Nothing changed: up to date, no VM, no journal.
    let journals = walk(&p.state().join("runs"))
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "jsonl"))
        .count();
    let (code, summary, stderr) = bake(p, &["run", "pipelines/local.toml"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(summary["up_to_date"], true);
    assert!(
        !stderr.contains("started qemu-system"),
        "an up-to-date run started a VM:\n{stderr}"
    );
    let after = walk(&p.state().join("runs"))
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "jsonl"))
        .count();
    assert_eq!(journals, after);
}

/// SIGTERM while a provisioning step runs (in the offline builder's chroot, which `builder =
/// "auto"` picks on this host): the run cleans up, exits 130 and
/// leaves no resource and no outstanding journal entry; the next run in the same state dir then
/// starts clean, bakes, validates on a canary and publishes. (One bake serves both.)
#[test]
fn x86_64_after_a_sigterm_mid_bake_cleans_up_then_bakes_validates_on_a_canary_and_publishes() {
    let p = project_for("x86_64");
    let (mut child, lines) = run_until(&p, "step 1/");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "stderr after SIGTERM:\n{}",
        rest.join("\n")
    );
    assert!(
        rest.iter().any(|l| l.contains("interrupted")),
        "{}",
        rest.join("\n")
    );
    assert_nothing_left(&p);
    assert!(releases(&p).is_empty());
    let journal = walk(&p.state().join("runs"))
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "jsonl"))
        .unwrap();
    let left =
        bake::journal::Journal::outstanding(&bake::journal::Journal::read(&journal).unwrap());
    assert!(
        left.is_empty(),
        "the journal lists resources that were not cleaned up: {left:?}"
    );

    bake_and_publish(&p, "x86_64");
    audit_the_channels_image(&p);
}

/// `bake audit` on the local provider: the image dev points at, booted as its node would boot
/// (the canary's overlay, seed and guest agent), its audit checks run as on a live node
/// (`BAKE_AUDIT=1`) and its software compared with the manifest captured at bake time; clean,
/// exit 0, and the VM gone afterwards.
fn audit_the_channels_image(p: &Project) {
    let (code, report, stderr) = bake(p, &["audit", "-p", "pipelines/local.toml"]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{report:#}");
    let node = &nodes[0];
    let image = releases(p)[0]["images"]["x86_64"]["image_id"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{:#}", releases(p)[0]));
    assert_eq!(node["image"], image.as_str(), "{node:#}");
    assert_eq!(node["channels"], serde_json::json!(["dev"]), "{node:#}");
    assert_eq!(node["changed"], serde_json::json!([]), "{node:#}");
    let checks = node["checks"].as_array().unwrap();
    let status = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {node:#}"))["status"]
            .clone()
    };
    for check in [
        "mac-policy",
        "networkd-keeps-foreign-routes",
        "apt-timers-masked",
    ] {
        assert_eq!(status(check), "pass", "{check}: {node:#}");
    }
    assert!(stderr.contains("audit: 1/1"), "{stderr}");
    assert_nothing_left(p);
}

#[test]
fn arm64_bakes_validates_on_a_canary_and_publishes() {
    bake_and_publish(&project_for("arm64"), "arm64");
}

/// Runs an x86_64 bake of a broken variant of eks-node and expects rejection by each of
/// `(validator, reason)`.
fn rejected_by(p: &Project, failures: &[(&str, &str)]) {
    let (code, summary, stderr) = bake(p, &["run", "pipelines/local.toml"]);
    assert_eq!(code, 3, "expected rejection; stderr:\n{stderr}");
    assert!(summary["published"].as_array().unwrap().is_empty());
    let result = &summary["results"][0];
    assert_eq!(result["outcome"], "rejected");
    let error = result["error"].as_str().unwrap();
    for (validator, reason) in failures {
        assert!(error.contains(&format!("{validator} fail")), "{error}");
        assert!(error.contains(reason), "expected {reason:?} in {error}");
    }
    assert!(releases(p).is_empty(), "a rejected image was published");
    let (_, status, _) = bake(p, &["status"]);
    assert!(status
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["release"].is_null()));
    assert_nothing_left(p);
    // The rejected image is kept with its record, for the logs.
    let images = walk(&p.state().join("images"));
    let record = images
        .iter()
        .find(|f| f.extension().is_some_and(|e| e == "json"))
        .expect("a record");
    let record: Value = serde_json::from_slice(&std::fs::read(record).unwrap()).unwrap();
    assert_eq!(record["status"], "rejected");
}

/// Adds a step to the eks-node recipe (see `Project::add_step`).
fn add_step(p: &Project, name: &str, body: &str, before: Option<&str>) {
    p.add_step("eks-node", name, body, before);
}

// An image without the MAC drop-in at all (the seed's incident) is rejected end to end through
// the AWS engine on real VMs: tests/rehearsal.rs. The local negatives below are the other
// breakage classes: the MAC override defeated (two ways, each its own bake, since one check
// judges both), and, on one canary, what each other check exists to catch.

/// One image broken four ways that different checks judge, proved on one canary:
/// - the drop-in is there, but a package later installs a .link file that sorts first and
///   matches veths: udev applies only the first matching file, so the drop-in never applies;
/// - unattended-upgrades was left installed;
/// - it ships what each node must make for itself or what the bake left: a machine-id, SSH
///   host keys, a log. The canary's first boot makes a machine-id and host keys of its own, so
///   only the image as shipped (the read-only second disk) can tell; each check does;
/// - its software changes at first boot (as cloud-init's `package_upgrade` or a bootstrap's
///   `snap refresh` would): the canary runs a package the image was not baked with;
/// - it lacks the networkd drop-in: a restart of systemd-networkd removes the ip rule and the
///   route a CNI added.
#[test]
fn an_image_with_a_lost_drop_in_unattended_upgrades_and_shipped_identity_is_rejected_by_each_check()
{
    let p = project_for("x86_64");
    add_step(
        &p,
        "install-vendor-link",
        "mkdir -p /usr/lib/systemd/network\n\
         printf '[Match]\\nOriginalName=*\\n\\n[Link]\\nNamePolicy=keep kernel\\nMACAddressPolicy=persistent\\n' > /usr/lib/systemd/network/50-vendor.link\n",
        Some("generalize"),
    );
    p.edit(
        "recipes/eks-node.toml",
        "[[steps]]\nname = \"purge-unattended-upgrades\"\nscript = \"steps/purge-unattended-upgrades.sh\"\n",
        "",
    );
    p.without_networkd_dropin();
    add_step(
        &p,
        "install-at-first-boot",
        "d=/var/lib/bake-first-boot\n\
         mkdir -p $d/pkg/DEBIAN\n\
         printf 'Package: bake-boot-drift\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: bake tests <t@example.invalid>\\nDescription: installed at first boot\\n' > $d/pkg/DEBIAN/control\n\
         dpkg-deb --build $d/pkg $d/bake-boot-drift.deb >/dev/null\n\
         rm -rf $d/pkg\n\
         printf '[Unit]\\nDescription=a package installed at first boot\\nBefore=qemu-guest-agent.service\\n\\n[Service]\\nType=oneshot\\nExecStart=/usr/bin/dpkg -i /var/lib/bake-first-boot/bake-boot-drift.deb\\n\\n[Install]\\nWantedBy=multi-user.target\\n' > /etc/systemd/system/bake-first-boot.service\n\
         systemctl enable bake-first-boot.service\n",
        Some("generalize"),
    );
    add_step(
        &p,
        "ship-identity",
        "echo 0123456789abcdef0123456789abcdef > /etc/machine-id\n\
         ssh-keygen -A\n\
         echo 'bake was here' > /var/log/bake-step.log\n",
        None,
    );
    rejected_by(
        &p,
        &[
            ("mac-policy", "udev rewrote the veth MAC"),
            POD_LOST,
            ("no-unattended-upgrades", "unattended-upgrades is installed"),
            (
                "networkd-keeps-foreign-routes",
                "systemd-networkd removed the route in table",
            ),
            ("networkd-keeps-foreign-routes", "and the ip rule"),
            (
                "machine-id-empty",
                "the image shipped a machine-id (0123456789abcdef0123456789abcdef)",
            ),
            ("no-ssh-host-keys", "the image ships SSH host keys"),
            ("no-bake-leftovers", "var/log/bake-step.log"),
            (
                "software-as-baked",
                "changed at boot): bake-boot-drift (all) 1.0 added",
            ),
        ],
    );
}

#[test]
fn an_in_place_fix_of_the_packaged_link_file_is_undone_by_an_upgrade_and_rejected() {
    let p = project_for("x86_64");
    p.without_mac_dropin();
    // The hand fix the seed's users first tried, then what the next unattended upgrade of the
    // package that ships the file (udev, on Debian) does. The upgrade's other work, rebuilding
    // the initramfs (udev's dpkg trigger), is switched off for it the way Debian documents
    // (update-initramfs.conf's `update_initramfs=no`): it is not what this test is about, and
    // under TCG it took 48 of the reinstall's 73 s.
    add_step(
        &p,
        "edit-usr-lib",
        "sed -i 's/^MACAddressPolicy=.*/MACAddressPolicy=none/' /usr/lib/systemd/network/99-default.link\n\
         grep -q '^MACAddressPolicy=none' /usr/lib/systemd/network/99-default.link\n\
         conf=/etc/initramfs-tools/update-initramfs.conf\n\
         cp -p $conf $conf.bake-test\n\
         sed -i 's/^update_initramfs=.*/update_initramfs=no/' $conf\n\
         apt-get install -y -q --reinstall --no-download udev\n\
         mv $conf.bake-test $conf\n\
         grep -q '^MACAddressPolicy=persistent' /usr/lib/systemd/network/99-default.link\n",
        Some("generalize"),
    );
    p.edit(
        "recipes/eks-node.toml",
        "suite = \"bookworm\"",
        "suite = \"bookworm\"\noffline_apt = true",
    );
    // Reinstalling udev is the most a step asks of a running system: this bake
    // keeps the builder VM (booted, steps through its guest agent, then shut down), so that
    // path stays proved beside the offline builder the other bakes use.
    p.edit(
        "pipelines/local.toml",
        "builder = \"auto\"",
        "builder = \"vm\"",
    );
    rejected_by(&p, &[("mac-policy", "MACAddressPolicy=none"), POD_LOST]);
}

/// Starts `bake run` on the project's pipeline and reads its log until a line contains
/// `marker` (failing the test if it never does); returns the child and the rest of its log.
fn run_until(
    p: &Project,
    marker: &str,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("bake"))
        .current_dir(p.dir.path())
        .env_remove("BAKE_STATE_DIR")
        .env_remove("BAKE_CACHE_DIR")
        .env("RUST_LOG", "info")
        .args(["run", "pipelines/local.toml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains(marker) {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.contains(marker)),
        "never reached {marker:?}:\n{}",
        seen.join("\n")
    );
    (child, lines)
}

/// Waits until the journal of the run started after `before` records `step` as done.
fn wait_for_step(
    p: &Project,
    before: &[std::path::PathBuf],
    step: &str,
    child: &mut std::process::Child,
) {
    let needle = format!("\"step\":\"{step}\",\"status\":\"ok\"");
    let t = std::time::Instant::now();
    loop {
        let journal = walk(&p.state().join("runs"))
            .into_iter()
            .find(|f| f.extension().is_some_and(|e| e == "jsonl") && !before.contains(f));
        if let Some(j) = journal {
            if std::fs::read_to_string(&j)
                .unwrap_or_default()
                .contains(&needle)
            {
                return;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before step {step} finished"
        );
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "step {step} never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigkill_at_each_step_boundary_then_sweep_leaves_nothing_and_resume_publishes() {
    let p = project_for("x86_64");
    // What is left at a step boundary is the engine's resources, whatever the recipe's steps do,
    // so the six runs bake a short recipe: eks-node's first-boot settling, drop-in and
    // generalize, judged by the checks those decide (the full recipe is the publish tests'),
    // after a first step that holds the chroot for a while, so the kill after install-files
    // lands inside a running chroot of the builder disk.
    for step in [
        "purge-unattended-upgrades",
        "disable-apt-timers",
        "hold-snap-refreshes",
    ] {
        p.edit(
            "recipes/eks-node.toml",
            &format!("[[steps]]\nname = \"{step}\"\nscript = \"steps/{step}.sh\"\n"),
            "",
        );
    }
    let text = p.read("recipes/eks-node.toml");
    let (head, rest) = text.split_once("validators = [").unwrap();
    let (_, tail) = rest.split_once(']').unwrap();
    p.write(
        "recipes/eks-node.toml",
        format!(
            "{head}validators = [\"mac-policy\", \"machine-id-empty\", \"no-ssh-host-keys\", \"no-bake-leftovers\"]{tail}"
        ),
    );
    add_step(&p, "hold", "sleep 3\n", Some("settle-first-boot"));
    // Each point is "right after this step of the local engine finished" (journal entry), so
    // every resource state is covered: builder disk only, offline builder open, mid
    // provisioning (a chroot of the disk running), image stored unvalidated, canary VM up, image
    // validated but not published.
    let points = [
        "builder-disk",
        "open-builder",
        "install-files",
        "store-image",
        "boot-canary",
        "validate",
    ];
    let mut report = Vec::new();
    for (n, step) in points.iter().enumerate() {
        let journals_before = walk(&p.state().join("runs"));
        let images_before = walk(&p.state().join("images"));
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("bake"))
            .current_dir(p.dir.path())
            .env_remove("BAKE_STATE_DIR")
            .env_remove("BAKE_CACHE_DIR")
            .args(["run", "pipelines/local.toml", "-q"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for_step(&p, &journals_before, step, &mut child);
        child.kill().unwrap(); // SIGKILL: no cleanup runs; QEMU dies with bake (PDEATHSIG)
        child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let run_id = walk(&p.state().join("runs"))
            .into_iter()
            .find(|f| f.extension().is_some_and(|e| e == "jsonl") && !journals_before.contains(f))
            .unwrap()
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();

        if n + 1 == points.len() {
            // Killed with a validated image: resume keeps it and publishes it without a VM.
            let (code, resumed, stderr) = bake(&p, &["resume", &run_id]);
            assert_eq!(code, 0, "{stderr}");
            assert_eq!(
                resumed["published"].as_array().unwrap().len(),
                1,
                "{resumed:#}"
            );
            assert_eq!(resumed["results"][0]["outcome"], "reused", "{resumed:#}");
            assert_nothing_left(&p);
            let (_, again, _) = bake(&p, &["sweep"]);
            assert!(
                again["leftovers"].as_array().unwrap().is_empty(),
                "{again:#}"
            );
            report.push(format!(
                "{step:>14}: resumed, reused the validated image, published, 0 left"
            ));
            break;
        }
        let (code, plan, stderr) = bake(&p, &["sweep"]);
        assert_eq!(code, 0, "{stderr}");
        let found = plan["leftovers"].as_array().unwrap().len();
        assert!(found > 0, "after {step}: sweep found nothing: {plan:#}");
        let (code, _, stderr) = bake(&p, &["sweep", "--apply"]);
        assert_eq!(code, 0, "{stderr}");
        assert_nothing_left(&p);
        assert_eq!(
            walk(&p.state().join("images")),
            images_before,
            "after {step}: the unpublished image was not removed"
        );
        let (_, again, _) = bake(&p, &["sweep"]);
        assert!(
            again["leftovers"].as_array().unwrap().is_empty(),
            "after {step}: a second sweep finds more: {again:#}"
        );
        report.push(format!("{step:>14}: swept {found}, 0 left"));
    }
    eprintln!("local kill points × leaks:\n{}", report.join("\n"));
}
