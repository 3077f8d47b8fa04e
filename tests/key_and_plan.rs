//! Bake key stability and sensitivity, and plan decisions.

use crate::common;

use bake::input::pipeline::Pipeline;
use bake::input::recipe::Recipe;
use bake::input::validate::Catalog;
use bake::key::bake_key;
use bake::ops::plan::{decide, Decision};
use bake::release::{Manifest, ReleaseId, ReleaseImage};
use bake::Arch;
use common::Project;
use std::collections::BTreeMap;

fn load(p: &Project) -> Recipe {
    let catalog = Catalog::load(&p.path("validators")).unwrap();
    Recipe::load(&p.path("recipes"), "eks-node", &catalog).unwrap()
}

fn key(p: &Project) -> String {
    bake_key(&load(p), Arch::X86_64, "base-1").to_string()
}

#[test]
fn the_key_is_stable_and_ignores_formatting_and_key_order() {
    let p = Project::new();
    let original = key(&p);
    assert_eq!(original, key(&p), "same inputs, same key");
    assert_eq!(original.len(), 64);

    // The same recipe written differently: other key order, table order, quoting, spacing,
    // inline tables and arrays, no comments.
    let text = p.read("recipes/eks-node.toml");
    let shas: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("sha256 ="))
        .map(|l| l.split('"').nth(1).unwrap().to_string())
        .collect();
    let (sha, networkd_sha) = (&shas[0], &shas[1]);
    let rewritten = format!(
        r#"validators = ['mac-policy', 'networkd-keeps-foreign-routes', 'pod-network', 'no-unattended-upgrades', 'apt-timers-masked', 'apt-periodic-off', 'snap-refresh-held', 'machine-id-empty', 'no-ssh-host-keys', 'no-bake-leftovers', 'node-ready', 'cluster-pod-network']
description = "reworded: the description is documentation"
files = [ {{ mode = "0644", sha256 = "{sha}", dest = "/etc/systemd/network/99-default.link.d/99-bake-mac-policy.conf", source = "steps/files/99-bake-mac-policy.conf" }},
  {{ source = "steps/files/99-bake-keep-foreign-routes.conf", mode = "0644", dest = "/etc/systemd/networkd.conf.d/99-bake-keep-foreign-routes.conf", sha256 = "{networkd_sha}" }} ]
steps = [
  {{ script = "steps/settle-first-boot.sh", name = "settle-first-boot" }},
  {{ script = "steps/purge-unattended-upgrades.sh", name = "purge-unattended-upgrades" }},
  {{ script = "steps/disable-apt-timers.sh", name = "disable-apt-timers" }},
  {{ name = "hold-snap-refreshes", script = "steps/hold-snap-refreshes.sh" }},
  {{ script = "steps/generalize.sh", name = "generalize" }},
]
volume = {{ encrypted = true, type = "gp3" }}
[base]
aws.arm64 = "/aws/service/canonical/ubuntu/eks/22.04/1.31/stable/current/arm64/hvm/ebs-gp2/ami-id"
aws.x86_64 = "/aws/service/canonical/ubuntu/eks/22.04/1.31/stable/current/amd64/hvm/ebs-gp2/ami-id"
local = {{ suite = "bookworm" }}
"#
    );
    let reordered = rewritten;
    p.write("recipes/eks-node.toml", &reordered);
    assert_eq!(
        original,
        key(&p),
        "reformatting must not change the key:\n{reordered}"
    );
}

#[test]
fn every_input_changes_the_key() {
    let base = Project::new();
    let original = key(&base);
    let recipe = load(&base);
    assert_ne!(
        original,
        bake_key(&recipe, Arch::Arm64, "base-1").to_string(),
        "arch"
    );
    assert_ne!(
        original,
        bake_key(&recipe, Arch::X86_64, "base-2").to_string(),
        "base image"
    );

    type Change = Box<dyn Fn(&Project)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "script content",
            Box::new(|p: &Project| {
                let s = p.read("recipes/steps/disable-apt-timers.sh");
                p.write(
                    "recipes/steps/disable-apt-timers.sh",
                    format!("{s}\ntrue\n"),
                );
            }),
        ),
        (
            "shared step content",
            Box::new(|p: &Project| {
                let s = p.read("recipes/steps/generalize.sh");
                p.write("recipes/steps/generalize.sh", format!("{s}\n# changed\n"));
            }),
        ),
        (
            "step order",
            Box::new(|p: &Project| {
                let s = p.read("recipes/eks-node.toml");
                let a = "[[steps]]\nname = \"purge-unattended-upgrades\"\nscript = \"steps/purge-unattended-upgrades.sh\"\n\n";
                let b = "[[steps]]\nname = \"disable-apt-timers\"\nscript = \"steps/disable-apt-timers.sh\"\n\n";
                assert!(s.contains(a) && s.contains(b));
                p.write(
                    "recipes/eks-node.toml",
                    s.replace(&format!("{a}{b}"), &format!("{b}{a}")),
                );
            }),
        ),
        (
            "file content and pin",
            Box::new(|p: &Project| {
                let content = "[Link]\nMACAddressPolicy=none\n";
                p.write("recipes/steps/files/99-bake-mac-policy.conf", content);
                let sha = bake::input::recipe::sha256_hex(content.as_bytes());
                let s = p.read("recipes/eks-node.toml");
                let old = s
                    .lines()
                    .find(|l| l.starts_with("sha256 ="))
                    .unwrap()
                    .to_string();
                p.write(
                    "recipes/eks-node.toml",
                    s.replace(&old, &format!("sha256 = \"{sha}\"")),
                );
            }),
        ),
        (
            "file mode",
            Box::new(|p: &Project| {
                p.edit(
                    "recipes/eks-node.toml",
                    "mode = \"0644\"",
                    "mode = \"0600\"",
                )
            }),
        ),
        (
            "file destination",
            Box::new(|p: &Project| {
                p.edit(
                    "recipes/eks-node.toml",
                    "99-bake-mac-policy.conf\"\nsha256",
                    "98-bake.conf\"\nsha256",
                )
            }),
        ),
        (
            "volume size",
            Box::new(|p: &Project| {
                p.edit(
                    "recipes/eks-node.toml",
                    "[volume]\n",
                    "[volume]\nsize_gib = 9\n",
                )
            }),
        ),
        (
            "validator list",
            Box::new(|p: &Project| {
                p.edit("recipes/eks-node.toml", "  \"no-ssh-host-keys\",\n", "")
            }),
        ),
        (
            "where a validator applies",
            Box::new(|p: &Project| {
                p.edit(
                    "validators/catalog.toml",
                    "script = \"apt-periodic-off.sh\"\napplies_to = [\"debian\"]",
                    "script = \"apt-periodic-off.sh\"\napplies_to = [\"debian\", \"ubuntu\"]",
                )
            }),
        ),
        (
            "what a validator reads",
            Box::new(|p: &Project| {
                p.edit(
                    "validators/catalog.toml",
                    "script = \"pod-network.sh\"\n",
                    "script = \"pod-network.sh\"\nreads_image = true\n",
                )
            }),
        ),
        (
            "validator script",
            Box::new(|p: &Project| {
                let s = p.read("validators/mac-policy.sh");
                p.write("validators/mac-policy.sh", format!("{s}\n# stricter\n"));
            }),
        ),
        (
            "step timeout",
            Box::new(|p: &Project| {
                p.edit(
                    "recipes/eks-node.toml",
                    "script = \"steps/generalize.sh\"",
                    "script = \"steps/generalize.sh\"\ntimeout = \"5m\"",
                )
            }),
        ),
    ];
    for (what, change) in cases {
        let p = Project::new();
        change(&p);
        assert_ne!(original, key(&p), "changing the {what} must change the key");
    }

    // The description is documentation: it does not change the image.
    let p = Project::new();
    p.edit(
        "recipes/eks-node.toml",
        "description = \"EKS worker node",
        "description = \"The EKS worker node",
    );
    assert_eq!(original, key(&p));
}

fn manifest(release: &str, arch: Arch, key: &str, base: &str) -> Manifest {
    let mut images = BTreeMap::new();
    images.insert(
        arch,
        ReleaseImage {
            image_id: format!("img-{release}"),
            key: bake::key::BakeKey::from_hex(key),
            base: base.into(),
            validated_at: chrono::Utc::now(),
            validators: BTreeMap::new(),
            packages_sha256: None,
            kubelet: None,
            packages: None,
            run_id: "r".into(),
            copies: Default::default(),
        },
    );
    Manifest {
        recipe: "eks-node".into(),
        release: release.parse::<ReleaseId>().unwrap(),
        provider: "fake".into(),
        tool_version: "0".into(),
        created_at: chrono::Utc::now(),
        images,
    }
}

#[test]
fn plan_decisions() {
    let k = |s: &str| bake::key::BakeKey::from_hex(s);
    let releases = vec![
        manifest("2026.11.20-1", Arch::X86_64, "k1", "b1"),
        manifest("2026.11.21-1", Arch::X86_64, "k2", "b1"),
    ];
    assert_eq!(
        decide(&[], Arch::X86_64, &k("k2"), "b1", false).0,
        Decision::New
    );
    assert_eq!(
        decide(&releases, Arch::Arm64, &k("k2"), "b1", false).0,
        Decision::New
    );
    assert_eq!(
        decide(&releases, Arch::X86_64, &k("k2"), "b1", false).0,
        Decision::UpToDate {
            release: "2026.11.21-1".parse().unwrap()
        }
    );
    assert_eq!(
        decide(&releases, Arch::X86_64, &k("k2"), "b1", true).0,
        Decision::Forced {
            release: "2026.11.21-1".parse().unwrap()
        }
    );
    // Matching an older release is not up to date: the latest is what counts.
    assert_eq!(
        decide(&releases, Arch::X86_64, &k("k1"), "b1", false).0,
        Decision::RecipeChanged
    );
    assert_eq!(
        decide(&releases, Arch::X86_64, &k("k3"), "b2", false).0,
        Decision::BaseChanged {
            from: "b1".into(),
            to: "b2".into()
        }
    );
}

#[test]
fn plan_json_is_valid_and_names_every_recipe_and_arch() {
    let p = Project::new();
    let out = assert_cmd::Command::cargo_bin("bake")
        .unwrap()
        .current_dir(p.dir.path())
        .env("BAKE_CACHE_DIR", p.path("cache"))
        .args(["plan", "pipelines/local.toml", "--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = v.as_array().unwrap();
    let arches: Vec<&str> = items.iter().map(|i| i["arch"].as_str().unwrap()).collect();
    assert_eq!(arches, vec!["x86_64", "arm64"]);
    for i in items {
        assert_eq!(i["recipe"], "eks-node");
        assert_eq!(i["decision"]["action"], "new");
        assert_eq!(i["key"].as_str().unwrap().len(), 64);
    }
    // Planning builds nothing: no base in the cache.
    assert!(!p.path("cache/bases").exists());
    let _ = Pipeline::load(&p.path("pipelines/local.toml")).unwrap();
}
