//! The Terraform side of the registry contract. Every `.tf`/`.tfvars` file under terraform/
//! parses (hcl-rs); the eks-node module launches hardened instances and hides no drift; and,
//! against moto, the parameter name the module computes from what `bake pin` prints is exactly
//! a parameter `bake` published, holding the pinned image — and a channel pin keeps reading the
//! same image after the channel moves on. `terraform fmt -check` runs too where Terraform is
//! installed (it is not on the CI machines; hcl-rs does the parsing there).

use crate::common;

use common::moto::{bake, bake_refused, bases, project, Moto, UBUNTU_ARM, UBUNTU_X86};
use common::repo;
use hcl::eval::{Context, Evaluate};
use hcl::{Block, Body, Expression, Value};
use serde_json::json;
use std::path::{Path, PathBuf};

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

/// The module's files as one body.
fn module() -> Body {
    let dir = repo().join("terraform/modules/eks-node");
    let mut all = Body::builder();
    for f in ["versions.tf", "variables.tf", "main.tf", "outputs.tf"] {
        for s in parse_file(&dir.join(f)).into_iter() {
            all = all.add_structure(s);
        }
    }
    all.build()
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

/// The SSM parameter name the module reads for these tfvars.
fn image_parameter(module: &Body, tfvars: &Body) -> String {
    let locals = blocks(module, "locals")
        .find(|b| attr(b.body(), "image_parameter").is_some())
        .expect("a local image_parameter");
    let mut cx = Context::new();
    cx.declare_var("var", vars(module, tfvars));
    match attr(locals.body(), "image_parameter")
        .unwrap()
        .evaluate(&cx)
        .unwrap_or_else(|e| panic!("evaluating local.image_parameter: {e}"))
    {
        Value::String(s) => s,
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

#[test]
fn the_module_launches_hardened_nodes_and_ignores_no_changes() {
    let m = module();
    let node = block(&m, "resource", &["aws_instance", "node"]);
    let b = node.body();
    assert_eq!(
        attr(b, "disable_api_termination"),
        Some(&Expression::Bool(true))
    );
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
    // The image is the pinned SSM parameter, nothing else.
    let ami = hcl::format::to_string(attr(b, "ami").unwrap()).unwrap();
    assert_eq!(ami, "data.aws_ssm_parameter.image.insecure_value");
    let param = block(&m, "data", &["aws_ssm_parameter", "image"]);
    assert_eq!(
        hcl::format::to_string(attr(param.body(), "name").unwrap()).unwrap(),
        "local.image_parameter"
    );
    // Nothing in any lifecycle block ignores changes (the image cannot drift unseen).
    fn no_ignore(body: &Body, path: &str) {
        for b in body.blocks() {
            if b.identifier() == "lifecycle" {
                assert!(
                    attr(b.body(), "ignore_changes").is_none(),
                    "{path} ignores changes"
                );
            }
            no_ignore(b.body(), &format!("{path}.{}", b.identifier()));
        }
    }
    no_ignore(&m, "module");
    // A channel without a version would float: the module refuses it.
    let cv = block(&m, "variable", &["channel_version"]);
    assert!(
        blocks(cv.body(), "validation").any(|v| hcl::format::to_string(
            attr(v.body(), "condition").unwrap()
        )
        .unwrap()
        .contains("var.channel_version != null")),
        "channel_version must be required with channel"
    );
}

#[test]
fn the_examples_are_two_node_sets_in_separate_states_each_pinning_a_release() {
    let m = module();
    let dir = repo().join("terraform/examples/two-node-sets");
    let mut keys = Vec::new();
    for arch in ["x86_64", "arm64"] {
        let main = parse_file(&dir.join(arch).join("main.tf"));
        let tf = blocks(&main, "terraform").next().unwrap();
        let backend = blocks(tf.body(), "backend").next().expect("a backend");
        keys.push(hcl::format::to_string(attr(backend.body(), "key").unwrap()).unwrap());
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
        let tfvars = parse_file(&dir.join(arch).join("image.auto.tfvars"));
        assert_eq!(
            attr(&tfvars, "arch"),
            Some(&Expression::String(arch.into())),
            "{arch}/image.auto.tfvars"
        );
        let release = match attr(&tfvars, "release") {
            Some(Expression::String(s)) => s.clone(),
            other => panic!("{arch} pins no release: {other:?}"),
        };
        // Exactly the name bake publishes for that recipe/release/arch.
        assert_eq!(
            image_parameter(&m, &tfvars),
            bake::registry::release_parameter(
                &bake::names::SsmPath::parse("/bake").unwrap(),
                "eks-node",
                &release.parse().unwrap(),
                arch.parse().unwrap()
            )
        );
    }
    assert_ne!(keys[0], keys[1], "separate states");
}

#[tokio::test]
async fn bake_pin_names_exactly_the_parameters_bake_published_and_channel_pins_do_not_float() {
    let moto = Moto::get();
    let cfg = moto.sdk().await;
    let ssm = aws_sdk_ssm::Client::new(&cfg);
    let (x86, arm) = bases(moto).await;
    moto.set_config(json!({"parameters": {UBUNTU_X86: x86, UBUNTU_ARM: arm}}));
    let p = project("/tfpin");
    let m = module();

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
        &["pin", "eks-node", &rel1, "-p", "pipelines/aws.toml"],
    );
    assert_eq!(code, 0, "{e}");
    let pins = pins.as_array().unwrap();
    assert_eq!(pins.len(), 2, "{pins:?}");
    for pin in pins {
        let arch = pin["arch"].as_str().unwrap();
        let tfvars = parse(pin["tfvars"].as_str().unwrap(), "bake pin tfvars");
        let name = image_parameter(&m, &tfvars);
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
        ],
    );
    assert_eq!(code, 0, "{e}");
    let pin = &pins[0];
    assert_eq!(pins.as_array().unwrap().len(), 1);
    assert_eq!(pin["channel_version"], 2);
    assert_eq!(pin["release"].as_str(), Some(rel2.as_str()));
    let tfvars = parse(pin["tfvars"].as_str().unwrap(), "bake pin --channel tfvars");
    let name = image_parameter(&m, &tfvars);
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
