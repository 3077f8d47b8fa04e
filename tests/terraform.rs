//! The Terraform side of the registry contract. Every `.tf`/`.tfvars` file under terraform/
//! parses (hcl-rs) and passes checkov; the eks-node module launches hardened instances, one per
//! named node with its own pin, and hides no drift of the image. Where a `terraform` binary is on
//! PATH it runs for real: `fmt -check`, `terraform test` of the provider-free eks-node-config
//! module, and `init` + `plan` of tests/terraform/harness, which wires that module as eks-node
//! does. Against moto: the parameter each node's pin resolves to is exactly one `bake`
//! published, holding the pinned image; `bake pin --node --write` changes one node's line; a
//! revoked pin fails the plan with bake's reason; a channel pin keeps reading the same image
//! after the channel moves on.

use crate::common;

use common::moto::{bake, bake_refused, bases, project, Moto, UBUNTU_ARM, UBUNTU_X86};
use common::repo;
use hcl::eval::{Context, Evaluate};
use hcl::{Block, Body, Expression, Value};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tf_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            tf_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "tf" || x == "tfvars") {
            out.push(p);
        }
    }
}

fn parse(text: &str, what: &str) -> Body {
    hcl::parse(text).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn parse_file(p: &Path) -> Body {
    parse(
        &std::fs::read_to_string(p).unwrap(),
        &p.display().to_string(),
    )
}

/// A module's files as one body.
fn module_in(name: &str) -> Body {
    let dir = repo().join("terraform/modules").join(name);
    let mut all = Body::builder();
    for f in ["versions.tf", "variables.tf", "main.tf", "outputs.tf"] {
        for s in parse_file(&dir.join(f)).into_iter() {
            all = all.add_structure(s);
        }
    }
    all.build()
}

fn module() -> Body {
    module_in("eks-node")
}

fn config_module() -> Body {
    module_in("eks-node-config")
}

fn blocks<'a>(body: &'a Body, ident: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
    body.blocks().filter(move |b| b.identifier() == ident)
}

fn block<'a>(body: &'a Body, ident: &'a str, labels: &[&str]) -> &'a Block {
    blocks(body, ident)
        .find(|b| b.labels().iter().map(|l| l.as_str()).collect::<Vec<_>>() == labels)
        .unwrap_or_else(|| panic!("no {ident} {labels:?}"))
}

fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

/// `var` for the module: every variable's default, overlaid with the tfvars.
fn vars(module: &Body, tfvars: &Body) -> Value {
    let mut var = hcl::Map::new();
    let declared: Vec<&str> = blocks(module, "variable")
        .map(|b| b.labels()[0].as_str())
        .collect();
    for b in blocks(module, "variable") {
        if let Some(d) = attr(b.body(), "default") {
            var.insert(
                b.labels()[0].as_str().to_string(),
                d.evaluate(&Context::new()).unwrap(),
            );
        }
    }
    for a in tfvars.attributes() {
        assert!(
            declared.contains(&a.key()),
            "tfvars sets `{}`, which the module does not declare ({declared:?})",
            a.key()
        );
        var.insert(
            a.key().to_string(),
            a.expr().evaluate(&Context::new()).unwrap(),
        );
    }
    Value::Object(var)
}

/// The SSM parameter name eks-node-config computes for each pinned node, evaluated by hcl-rs
/// (the fallback where no `terraform` binary is installed).
fn image_parameters(tfvars: &Body) -> BTreeMap<String, String> {
    let m = config_module();
    let locals = blocks(&m, "locals")
        .find(|b| attr(b.body(), "image_parameter").is_some())
        .expect("a local image_parameter");
    let mut cx = Context::new();
    cx.declare_var("var", vars(&m, tfvars));
    match attr(locals.body(), "image_parameter")
        .unwrap()
        .evaluate(&cx)
        .unwrap_or_else(|e| panic!("evaluating local.image_parameter: {e}"))
    {
        Value::Object(o) => o
            .into_iter()
            .map(|(k, v)| (k, v.as_str().expect("a name").to_string()))
            .collect(),
        other => panic!("local.image_parameter is {other:?}"),
    }
}

#[test]
fn every_terraform_file_parses_and_is_formatted() {
    let mut files = Vec::new();
    tf_files(&repo().join("terraform"), &mut files);
    assert!(files.len() >= 8, "{files:?}");
    for f in &files {
        parse_file(f);
    }
    match std::process::Command::new("terraform")
        .args(["fmt", "-check", "-recursive", "-diff"])
        .current_dir(repo().join("terraform"))
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "terraform fmt -check:\n{}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(_) => eprintln!(
            "terraform is not installed here: fmt -check not run, {} files parsed",
            files.len()
        ),
    }
}

/// A `terraform` binary on PATH, or None (then the hcl-rs checks stand alone).
fn terraform() -> Option<&'static str> {
    let ok = Command::new("terraform")
        .arg("version")
        .env("CHECKPOINT_DISABLE", "1")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "terraform is not on PATH here: the hcl-rs checks run, terraform itself does not"
        );
    }
    ok.then_some("terraform")
}

/// `terraform -chdir=<dir> <args>`, offline, with its working data in `data` (not the repo).
fn tf(dir: &Path, data: &Path, args: &[&str]) -> std::process::Output {
    Command::new("terraform")
        .arg(format!("-chdir={}", dir.display()))
        .args(args)
        .env("TF_DATA_DIR", data.join(".terraform"))
        .env("TF_IN_AUTOMATION", "1")
        .env("TF_INPUT", "0")
        .env("CHECKPOINT_DISABLE", "1")
        .output()
        .unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `terraform init` + `plan` of tests/terraform/harness with these inputs: the module's
/// `nodes` output as planned, or the failure with its whitespace collapsed (Terraform wraps
/// messages).
fn plan_harness(inputs: &serde_json::Value) -> Result<serde_json::Value, String> {
    let dir = repo().join("tests/terraform/harness");
    let data = tempfile::tempdir().unwrap();
    let vars = data.path().join("inputs.tfvars.json");
    std::fs::write(&vars, inputs.to_string()).unwrap();
    let init = tf(&dir, data.path(), &["init", "-input=false", "-no-color"]);
    assert!(init.status.success(), "terraform init:\n{}", text(&init));
    let plan_file = data.path().join("plan");
    let plan = tf(
        &dir,
        data.path(),
        &[
            "plan",
            "-input=false",
            "-no-color",
            "-lock=false",
            &format!("-var-file={}", vars.display()),
            &format!("-out={}", plan_file.display()),
        ],
    );
    if !plan.status.success() {
        return Err(text(&plan).split_whitespace().collect::<Vec<_>>().join(" "));
    }
    let show = tf(
        &dir,
        data.path(),
        &["show", "-json", &plan_file.display().to_string()],
    );
    assert!(show.status.success(), "terraform show:\n{}", text(&show));
    let plan: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    Ok(plan["planned_values"]["outputs"]["nodes"]["value"].clone())
}

fn expr(e: Option<&Expression>) -> String {
    hcl::format::to_string(e.expect("attribute present")).unwrap()
}

#[test]
fn the_module_launches_one_hardened_node_per_named_node_and_hides_no_image_drift() {
    let m = module();
    let node = block(&m, "resource", &["aws_instance", "node"]);
    let b = node.body();
    // One instance per named node (for_each, so removing one re-indexes none).
    assert_eq!(expr(attr(b, "for_each")), "module.config.nodes");
    assert!(attr(b, "count").is_none());
    // Termination protection on by default; force_destroy lets a pin change replace the node
    // in one apply on provider >= 6.8 (which the module requires).
    assert_eq!(
        expr(attr(b, "disable_api_termination")),
        "var.termination_protection"
    );
    let tp = block(&m, "variable", &["termination_protection"]);
    assert_eq!(attr(tp.body(), "default"), Some(&Expression::Bool(true)));
    assert_eq!(attr(b, "force_destroy"), Some(&Expression::Bool(true)));
    let versions = blocks(&m, "terraform").next().unwrap();
    let providers = blocks(versions.body(), "required_providers")
        .next()
        .unwrap();
    assert!(
        expr(attr(providers.body(), "aws")).contains(r#"version = ">= 6.8""#),
        "force_destroy needs hashicorp/aws >= 6.8"
    );
    assert_eq!(attr(b, "ebs_optimized"), Some(&Expression::Bool(true)));
    assert!(attr(b, "key_name").is_none(), "no key pair");
    let imds = blocks(b, "metadata_options")
        .next()
        .expect("metadata_options");
    assert_eq!(
        attr(imds.body(), "http_tokens"),
        Some(&Expression::String("required".into()))
    );
    let root = blocks(b, "root_block_device")
        .next()
        .expect("root_block_device");
    assert_eq!(
        attr(root.body(), "encrypted"),
        Some(&Expression::Bool(true))
    );
    // Each node's image is its own pinned SSM parameter, nothing else.
    assert_eq!(
        expr(attr(b, "ami")),
        "data.aws_ssm_parameter.image[each.key].insecure_value"
    );
    let param = block(&m, "data", &["aws_ssm_parameter", "image"]);
    assert_eq!(
        expr(attr(param.body(), "name")),
        "each.value.image_parameter"
    );
    // A revoked (deprecated) image still resolves, so the plan fails with bake's reason.
    let ami = block(&m, "data", &["aws_ami", "image"]);
    assert_eq!(
        attr(ami.body(), "include_deprecated"),
        Some(&Expression::Bool(true))
    );
    let by_path = block(&m, "data", &["aws_ssm_parameters_by_path", "release"]);
    assert_eq!(
        expr(attr(by_path.body(), "for_each")),
        "toset(module.config.releases)"
    );
    // No lifecycle ignores the image; the only thing ignored is join data (read once at first
    // boot: applying it would stop and start every pet), and nothing is created before the
    // old node is destroyed.
    fn lifecycles(body: &Body, path: &str, out: &mut Vec<(String, Body)>) {
        for b in body.blocks() {
            if b.identifier() == "lifecycle" {
                out.push((path.to_string(), b.body().clone()));
            }
            lifecycles(b.body(), &format!("{path}.{}", b.identifier()), out);
        }
    }
    let mut found = Vec::new();
    lifecycles(&m, "eks-node", &mut found);
    lifecycles(&config_module(), "eks-node-config", &mut found);
    for (path, l) in &found {
        if let Some(ignored) = attr(l, "ignore_changes") {
            assert_eq!(
                expr(Some(ignored)).split_whitespace().collect::<String>(),
                "[user_data]",
                "{path} ignores more than user_data"
            );
        }
        assert!(attr(l, "create_before_destroy").is_none(), "{path}");
    }
    // Every input eks-node-config takes is passed through by eks-node from its own variable of
    // the same name (release_parameters: what it read beside each release).
    let config = config_module();
    let call = block(&m, "module", &["config"]);
    let outer: Vec<&str> = blocks(&m, "variable")
        .map(|v| v.labels()[0].as_str())
        .collect();
    for v in blocks(&config, "variable") {
        let name = v.labels()[0].as_str();
        let passed = expr(attr(call.body(), name));
        if name == "release_parameters" {
            assert_eq!(passed, "local.release_parameters");
        } else {
            assert_eq!(passed, format!("var.{name}"));
            assert!(outer.contains(&name), "eks-node has no variable {name}");
        }
    }
}

/// The three tfvars of one example node set, as one body.
fn example_tfvars(arch: &str) -> Body {
    let dir = repo().join("terraform/examples/two-node-sets").join(arch);
    let mut all = Body::builder();
    for f in [
        "node-set.auto.tfvars",
        "nodes.auto.tfvars",
        "pins.auto.tfvars",
    ] {
        for s in parse_file(&dir.join(f)).into_iter() {
            all = all.add_structure(s);
        }
    }
    all.build()
}

#[test]
fn the_examples_are_two_node_sets_in_separate_states_each_node_pinned_on_its_own() {
    let dir = repo().join("terraform/examples/two-node-sets");
    let mut keys = Vec::new();
    for arch in ["x86_64", "arm64"] {
        let main = parse_file(&dir.join(arch).join("main.tf"));
        let tf = blocks(&main, "terraform").next().unwrap();
        let backend = blocks(tf.body(), "backend").next().expect("a backend");
        keys.push(expr(attr(backend.body(), "key")));
        // The S3 backend's use_lockfile needs Terraform >= 1.10.
        assert_eq!(
            attr(backend.body(), "use_lockfile"),
            Some(&Expression::Bool(true))
        );
        assert_eq!(
            attr(tf.body(), "required_version"),
            Some(&Expression::String(">= 1.10".into()))
        );
        let module = block(&main, "module", &["nodes"]);
        let source = match attr(module.body(), "source") {
            Some(Expression::String(s)) => s.clone(),
            other => panic!("{other:?}"),
        };
        // ... a shared node-set module, which runs the eks-node module.
        let node_set = parse_file(&dir.join(arch).join(&source).join("main.tf"));
        let inner = block(&node_set, "module", &["nodes"]);
        assert_eq!(
            attr(inner.body(), "source"),
            Some(&Expression::String("../../../modules/eks-node".into()))
        );
        // The pins file is one bake writes and reads.
        let pins = bake::ops::pins_file::PinsFile::read(
            &dir.join(arch).join("pins.auto.tfvars"),
            "eks-node",
            arch.parse().unwrap(),
        )
        .unwrap_or_else(|e| panic!("{arch}/pins.auto.tfvars: {e}"));
        let tfvars = example_tfvars(arch);
        assert_eq!(
            attr(&tfvars, "arch"),
            Some(&Expression::String(arch.into())),
            "{arch}/node-set.auto.tfvars"
        );
        // Each node reads exactly the name bake publishes for its own release and this arch.
        let names = image_parameters(&tfvars);
        assert_eq!(names.len(), 3, "{names:?}");
        let rendered = pins.render();
        for (node, name) in &names {
            let line = rendered
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("\"{node}\"")))
                .unwrap();
            let release = line.split('"').nth(3).unwrap();
            assert_eq!(
                name,
                &bake::registry::release_parameter(
                    &bake::input::names::SsmPath::parse("/bake").unwrap(),
                    "eks-node",
                    &release.parse().unwrap(),
                    arch.parse().unwrap()
                )
            );
        }
        let releases: std::collections::BTreeSet<&str> = rendered
            .lines()
            .filter_map(|l| l.split('"').nth(3))
            .collect();
        assert!(
            releases.len() > 1,
            "the example shows a set mid-roll: {releases:?}"
        );
    }
    assert_ne!(keys[0], keys[1], "separate states");
}

#[test]
fn terraform_test_proves_the_node_config_module() {
    if terraform().is_none() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let out = tf(
        &repo().join("terraform/modules/eks-node-config"),
        data.path(),
        &["test", "-no-color"],
    );
    let t = text(&out);
    assert!(out.status.success(), "terraform test:\n{t}");
    let summary = t
        .lines()
        .find(|l| l.contains(" passed, ") && l.contains(" failed"))
        .unwrap_or_else(|| panic!("no summary:\n{t}"));
    let passed: u32 = summary
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap();
    assert!(summary.contains(" 0 failed") && passed >= 15, "{summary}");
    let fmt = tf(
        &repo().join("tests/terraform"),
        data.path(),
        &["fmt", "-check", "-recursive", "-diff"],
    );
    assert!(
        fmt.status.success(),
        "terraform fmt -check tests/terraform:\n{}",
        text(&fmt)
    );
}

#[test]
fn checkov_passes_the_module_and_the_examples() {
    let venv = std::env::var_os("BAKE_CHECKOV_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"))
                .join("bake/checkov")
        });
    let checkov = venv.join("bin/checkov");
    assert!(
        checkov.exists(),
        "{} is missing: run scripts/setup-host",
        checkov.display()
    );
    let out = Command::new(&checkov)
        .args([
            "-d",
            "terraform",
            "--framework",
            "terraform",
            "--skip-download",
            "-o",
            "json",
        ])
        .current_dir(repo())
        .env("BC_SKIP_MAPPING", "TRUE")
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("checkov: {e}\n{}", text(&out)));
    let failed: Vec<String> = report["results"]["failed_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{} {} {}", c["check_id"], c["resource"], c["file_path"]))
        .collect();
    assert!(failed.is_empty(), "checkov failed:\n{}", failed.join("\n"));
    assert_eq!(report["summary"]["failed"], 0);
    // The nodes themselves were scanned (checkov did not skip the for_each resource).
    let node_checks = report["results"]["passed_checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["resource"]
                .as_str()
                .is_some_and(|r| r.ends_with("aws_instance.node"))
        })
        .count();
    assert!(
        node_checks >= 5,
        "{node_checks} checks of aws_instance.node"
    );
}

/// Every parameter under `<prefix>/<recipe>/releases/`, by release: what eks-node reads with
/// aws_ssm_parameters_by_path for each pinned release.
async fn published(ssm: &aws_sdk_ssm::Client, prefix: &str) -> serde_json::Value {
    let dir = format!("{prefix}/eks-node/releases/");
    let mut out = serde_json::Map::new();
    let mut pages = ssm
        .get_parameters_by_path()
        .path(&dir)
        .recursive(true)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for p in page.unwrap().parameters() {
            let rest = p.name().unwrap().strip_prefix(&dir).unwrap();
            // The module reads one level under a release (not recursive): not the package
            // manifest's chunks, nor bake's index entry (the release's own name).
            let Some((release, leaf)) = rest.split_once('/') else {
                continue;
            };
            if leaf.contains('/') {
                continue;
            }
            out.entry(release.to_string())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .unwrap()
                .insert(leaf.to_string(), json!(p.value().unwrap()));
        }
    }
    serde_json::Value::Object(out)
}

#[tokio::test]
async fn rolling_one_node_changes_one_line_and_a_revoked_pin_fails_the_plan() {
    let moto = Moto::get();
    let cfg = moto.sdk().await;
    let ssm = aws_sdk_ssm::Client::new(&cfg);
    let (x86, arm) = bases(moto).await;
    moto.set_config(json!({"parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm}}));
    let p = project("/tfroll");
    let (code, first, e) = bake(&p, moto, &["run", "pipelines/aws.toml", "-q"]);
    assert_eq!(code, 0, "{e}");
    let (code, second, e) = bake(&p, moto, &["run", "pipelines/aws.toml", "-q", "--force"]);
    assert_eq!(code, 0, "{e}");
    let rel1 = first["published"][0]["release"]
        .as_str()
        .unwrap()
        .to_string();
    let rel2 = second["published"][0]["release"]
        .as_str()
        .unwrap()
        .to_string();
    let file = p.dir.path().join("pins.auto.tfvars");
    let file_arg = file.display().to_string();
    let pin = |release: &str, nodes: &[&str]| {
        let mut args = vec![
            "pin",
            "eks-node",
            release,
            "--arch",
            "x86_64",
            "--write",
            &file_arg,
            "-p",
            "pipelines/aws.toml",
        ];
        for n in nodes {
            args.extend(["--node", n]);
        }
        let (code, out, e) = bake(&p, moto, &args);
        assert_eq!(code, 0, "{e}");
        out
    };

    // Three nodes on the first release; then trade-2 alone moves to the second.
    let out = pin(&rel1, &["trade-1", "trade-2", "trade-3"]);
    assert_eq!(out["changes"].as_array().unwrap().len(), 3, "{out}");
    let before = std::fs::read_to_string(&file).unwrap();
    let out = pin(&rel2, &["trade-2"]);
    assert_eq!(
        out["changes"],
        json!([{"node": "trade-2", "from": {"release": rel1}, "to": {"release": rel2}}])
    );
    let after = std::fs::read_to_string(&file).unwrap();
    let changed: Vec<(&str, &str)> = before
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(
        changed.len(),
        1,
        "exactly one line changes:\n{before}\n{after}"
    );
    assert!(changed[0]
        .1
        .starts_with(&format!("  \"trade-2\" = {{ release = \"{rel2}\" }}")));
    assert_eq!(before.lines().count(), after.lines().count());
    // Pinning again what is pinned changes nothing.
    let out = pin(&rel2, &["trade-2"]);
    assert_eq!(out["changes"], json!([]));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), after);

    // What the module makes of it: each node reads its own release's x86_64 parameter, which
    // holds the image bake published.
    let tfvars = parse(
        &format!(
            "ssm_prefix = \"/tfroll\"\nrecipe = \"eks-node\"\narch = \"x86_64\"\ninstance_type = \"m7i.xlarge\"\nnodes = [\n  {{ name = \"trade-1\", subnet_id = \"subnet-0aaaaaaaaaaaaaaa1\" }},\n  {{ name = \"trade-2\", subnet_id = \"subnet-0aaaaaaaaaaaaaaa2\" }},\n  {{ name = \"trade-3\", subnet_id = \"subnet-0aaaaaaaaaaaaaaa1\" }},\n]\n{}",
            after.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n")
        ),
        "pins",
    );
    let names = image_parameters(&tfvars);
    let image = |out: &serde_json::Value| {
        out["published"][0]["images"]["x86_64"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let want = BTreeMap::from([
        (
            "trade-1".to_string(),
            (
                format!("/tfroll/eks-node/releases/{rel1}/x86_64"),
                image(&first),
            ),
        ),
        (
            "trade-2".to_string(),
            (
                format!("/tfroll/eks-node/releases/{rel2}/x86_64"),
                image(&second),
            ),
        ),
        (
            "trade-3".to_string(),
            (
                format!("/tfroll/eks-node/releases/{rel1}/x86_64"),
                image(&first),
            ),
        ),
    ]);
    for (node, (name, ami)) in &want {
        assert_eq!(&names[node], name);
        let got = ssm.get_parameter().name(name).send().await.unwrap();
        assert_eq!(
            got.parameter().unwrap().value(),
            Some(ami.as_str()),
            "{name}"
        );
    }

    // And with Terraform itself, wired as eks-node wires it, fed what SSM holds.
    let inputs = |published: serde_json::Value| {
        json!({
            "ssm_prefix": "/tfroll", "recipe": "eks-node", "arch": "x86_64",
            "nodes": [
                {"name": "trade-1", "subnet_id": "subnet-0aaaaaaaaaaaaaaa1"},
                {"name": "trade-2", "subnet_id": "subnet-0aaaaaaaaaaaaaaa2"},
                {"name": "trade-3", "subnet_id": "subnet-0aaaaaaaaaaaaaaa1"},
            ],
            "pins": bake_pins_as_json(&after),
            "cluster": {"name": "prod", "endpoint": "https://0123.gr7.us-east-1.eks.amazonaws.com",
                        "certificate_authority": "QUJD", "service_cidr": "172.20.0.0/16"},
            "published": published,
        })
    };
    let reason = "kernel panics under load on m7i";
    if terraform().is_some() {
        let nodes = plan_harness(&inputs(published(&ssm, "/tfroll").await))
            .unwrap_or_else(|e| panic!("{e}"));
        for (node, (name, _)) in &want {
            assert_eq!(nodes[node]["image_parameter"].as_str(), Some(name.as_str()));
            assert!(nodes[node]["user_data"]
                .as_str()
                .unwrap()
                .contains("/etc/eks/bootstrap.sh 'prod'"));
        }
    }

    // Revoke the second release: a pin to it fails the plan, naming the node, the release and
    // bake's reason; the other nodes' release still plans.
    let (code, revoked, e) = bake(
        &p,
        moto,
        &[
            "revoke",
            "eks-node",
            &rel2,
            "--reason",
            reason,
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 0, "{e}");
    // Its images are deprecated (EC2: whole minutes, not in the past); the other release's not.
    // (Read through the proxy, which answers image deprecation for moto.)
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk_via_proxy().await);
    let rel2_images: Vec<String> = ["x86_64", "arm64"]
        .iter()
        .map(|a| {
            second["published"][0]["images"][a]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(revoked["deprecated_images"], json!(rel2_images));
    let at = revoked["deprecated_at"].as_str().unwrap();
    assert!(at.ends_with(":00Z"), "{at}");
    let described = ec2
        .describe_images()
        .set_image_ids(Some(
            rel2_images.iter().cloned().chain([image(&first)]).collect(),
        ))
        .send()
        .await
        .unwrap();
    for i in described.images() {
        let id = i.image_id().unwrap().to_string();
        let when = i.deprecation_time().map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .with_timezone(&chrono::Utc)
        });
        if rel2_images.contains(&id) {
            assert_eq!(
                when,
                Some(
                    chrono::DateTime::parse_from_rfc3339(at)
                        .unwrap()
                        .with_timezone(&chrono::Utc)
                ),
                "{id}"
            );
        } else {
            assert_eq!(when, None, "{id} of the release still standing");
        }
    }
    if terraform().is_some() {
        let e = plan_harness(&inputs(published(&ssm, "/tfroll").await))
            .expect_err("a revoked pin plans");
        assert!(
            e.contains(&format!(
                "node trade-2 pins release {rel2} of eks-node, which was revoked"
            )),
            "{e}"
        );
        assert!(e.contains(reason), "{e}");
        assert!(!e.contains("node trade-1"), "{e}");
        // Rolling trade-2 back to the first release plans again.
        pin(&rel1, &["trade-2"]);
        let back = std::fs::read_to_string(&file).unwrap();
        let mut again = inputs(published(&ssm, "/tfroll").await);
        again["pins"] = bake_pins_as_json(&back);
        plan_harness(&again).unwrap_or_else(|e| panic!("{e}"));
    }
    // bake itself refuses to pin the revoked release.
    let (code, e) = bake_refused(
        &p,
        moto,
        &[
            "pin",
            "eks-node",
            &rel2,
            "--arch",
            "x86_64",
            "--node",
            "trade-2",
            "--write",
            &file_arg,
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 4, "{e}");
    assert!(e.contains(reason), "{e}");

    // Bad input: nothing written.
    let kept = std::fs::read_to_string(&file).unwrap();
    for (args, says) in [
        (
            vec!["--node", "Trade_2", "--write", file_arg.as_str()],
            "node names are lower-case",
        ),
        (
            vec!["--node", "trade-2", "--write", "main.tf"],
            "a pins file is a .tfvars file",
        ),
        (
            vec![
                "--node",
                "trade-2",
                "--write",
                file_arg.as_str(),
                "--arch",
                "arm64",
            ],
            "belongs to another node set",
        ),
    ] {
        let mut all = vec!["pin", "eks-node", rel1.as_str(), "-p", "pipelines/aws.toml"];
        if !args.contains(&"--arch") {
            all.extend(["--arch", "x86_64"]);
        }
        all.extend(args.iter().copied());
        let (code, e) = bake_refused(&p, moto, &all);
        assert_eq!(code, 2, "{all:?}: {e}");
        assert!(e.contains(says), "{all:?}: {e}");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), kept);
    assert!(!p.dir.path().join("main.tf").exists());
    // Run, pin and revoke on SSM: every call allowed by the printed IAM policy.
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
}

/// The `pins` map of a pins file as JSON (what Terraform reads from it).
fn bake_pins_as_json(file: &str) -> serde_json::Value {
    let body = parse(file, "pins file");
    let pins = attr(&body, "pins")
        .unwrap()
        .evaluate(&Context::new())
        .unwrap();
    serde_json::to_value(pins).unwrap()
}

/// The parameter the module reads for `node` from what `bake pin --node` printed: the node
/// set's tfvars plus the node's line of `pins`.
fn node_parameter(pin: &serde_json::Value, node: &str) -> String {
    let tfvars = parse(
        &format!(
            "{}instance_type = \"m7i.xlarge\"\nnodes = [{{ name = \"{node}\", subnet_id = \"subnet-0aaaaaaaaaaaaaaa1\" }}]\npins = {{\n{}\n}}\n",
            pin["tfvars"].as_str().unwrap(),
            pin["nodes"][node].as_str().unwrap()
        ),
        "bake pin tfvars",
    );
    image_parameters(&tfvars).remove(node).unwrap()
}

#[tokio::test]
async fn bake_pin_names_exactly_the_parameters_bake_published_and_channel_pins_do_not_float() {
    let moto = Moto::get();
    let cfg = moto.sdk().await;
    let ssm = aws_sdk_ssm::Client::new(&cfg);
    let (x86, arm) = bases(moto).await;
    moto.set_config(json!({"parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm}}));
    let p = project("/tfpin");

    // Two releases; `dev` is auto-promoted to each (channel versions 1 and 2).
    let (code, first, e) = bake(&p, moto, &["run", "pipelines/aws.toml", "-q"]);
    assert_eq!(code, 0, "{e}");
    let (code, second, e) = bake(&p, moto, &["run", "pipelines/aws.toml", "-q", "--force"]);
    assert_eq!(code, 0, "{e}");
    let rel1 = first["published"][0]["release"]
        .as_str()
        .unwrap()
        .to_string();
    let rel2 = second["published"][0]["release"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(rel1, rel2);

    let get = |name: String| {
        let ssm = ssm.clone();
        async move {
            ssm.get_parameter()
                .name(&name)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{name}: {e:?}"))
                .parameter()
                .unwrap()
                .value()
                .unwrap()
                .to_string()
        }
    };

    // A release pin, per arch.
    let (code, pins, e) = bake(
        &p,
        moto,
        &[
            "pin",
            "eks-node",
            &rel1,
            "-p",
            "pipelines/aws.toml",
            "--node",
            "n1",
        ],
    );
    assert_eq!(code, 0, "{e}");
    let pins = pins.as_array().unwrap();
    assert_eq!(pins.len(), 2, "{pins:?}");
    for pin in pins {
        let arch = pin["arch"].as_str().unwrap();
        let name = node_parameter(pin, "n1");
        assert_eq!(name, format!("/tfpin/eks-node/releases/{rel1}/{arch}"));
        assert_eq!(name, pin["parameter"].as_str().unwrap());
        assert_eq!(
            get(name).await,
            first["published"][0]["images"][arch].as_str().unwrap()
        );
        // The `data` format reads the same parameter.
        let data = parse(pin["data_source"].as_str().unwrap(), "bake pin data");
        let block = blocks(&data, "data").next().unwrap();
        assert_eq!(
            attr(block.body(), "name"),
            Some(&Expression::String(
                pin["parameter"].as_str().unwrap().into()
            ))
        );
    }

    // A channel pin: the release dev holds now (rel2), pinned by its immutable release
    // parameter, so it keeps reading rel2's image after dev moves (a `:<version>` pin of the
    // channel parameter would stop resolving 100 moves later).
    let (code, pins, e) = bake(
        &p,
        moto,
        &[
            "pin",
            "eks-node",
            "--channel",
            "dev",
            "--arch",
            "arm64",
            "-p",
            "pipelines/aws.toml",
            "--node",
            "n1",
        ],
    );
    assert_eq!(code, 0, "{e}");
    let pin = &pins[0];
    assert_eq!(pins.as_array().unwrap().len(), 1);
    assert_eq!(pin["channel_version"], 2);
    assert_eq!(pin["release"].as_str(), Some(rel2.as_str()));
    let name = node_parameter(pin, "n1");
    assert_eq!(name, format!("/tfpin/eks-node/releases/{rel2}/arm64"));
    let rel2_arm = second["published"][0]["images"]["arm64"].as_str().unwrap();
    assert_eq!(get(name.clone()).await, rel2_arm);

    let (code, _, e) = bake(
        &p,
        moto,
        &[
            "rollback",
            "eks-node",
            "--cluster",
            "dev",
            "--reason",
            "test",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 0, "{e}");
    assert_eq!(get(name).await, rel2_arm, "the pin did not move");
    let (_, pins, _) = bake(
        &p,
        moto,
        &[
            "pin",
            "eks-node",
            "--channel",
            "dev",
            "--arch",
            "arm64",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(pins[0]["channel_version"], 3);
    assert_eq!(pins[0]["release"].as_str(), Some(rel1.as_str()));

    // Refusals: unknown release or channel (2), a channel parameter changed outside bake (4).
    let (code, e) = bake_refused(
        &p,
        moto,
        &[
            "pin",
            "eks-node",
            "2020.01.01-1",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 2, "{e}");
    assert!(e.contains("has no release 2020.01.01-1"), "{e}");
    let (code, e) = bake_refused(
        &p,
        moto,
        &[
            "pin",
            "eks-node",
            "--channel",
            "prod",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 2, "{e}");
    assert!(e.contains("never been promoted to channel `prod`"), "{e}");
    ssm.put_parameter()
        .name("/tfpin/eks-node/channels/dev/x86_64")
        .value(&x86)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .unwrap();
    let (code, e) = bake_refused(
        &p,
        moto,
        &[
            "pin",
            "eks-node",
            "--channel",
            "dev",
            "-p",
            "pipelines/aws.toml",
        ],
    );
    assert_eq!(code, 4, "{e}");
    assert!(e.contains("changed outside bake"), "{e}");
    // Run, rollback and pin on SSM: every call allowed by the printed IAM policy.
    common::moto::assert_iam_allows(moto, &[&p], "pipelines/aws.toml");
}

#[test]
fn pin_refuses_the_local_registry() {
    let p = common::Project::new();
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("bake"))
        .current_dir(p.dir.path())
        .args(["pin", "eks-node", "2026.11.25-1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("Terraform cannot read"), "{e}");
    assert!(!p.state().exists(), "nothing created");
}
