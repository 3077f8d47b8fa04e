//! Bad input is refused before anything is created: exit code 2 and a message naming the
//! file, the line and the field. Each case breaks a copy of the real project in one way.

use crate::common;

use assert_cmd::Command;
use common::{line_of, Project};

const RECIPE: &str = "recipes/eks-node.toml";
const LOCAL: &str = "pipelines/local.toml";
const AWS: &str = "pipelines/aws.toml";

struct Expect<'a> {
    file: &'a str,
    line: Option<usize>,
    field: Option<&'a str>,
    message: &'a str,
}

fn bake(p: &Project, args: &[&str]) -> std::process::Output {
    Command::cargo_bin("bake")
        .unwrap()
        .current_dir(p.dir.path())
        .env_remove("BAKE_STATE_DIR")
        .env_remove("BAKE_PIPELINE")
        .env("BAKE_CACHE_DIR", p.path("cache"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `plan` and `run` on the pipeline; both must refuse with exit 2, name the place,
/// and create nothing.
fn refused(p: &Project, pipeline: &str, e: Expect<'_>) {
    for cmd in ["plan", "run"] {
        let out = bake(p, &[cmd, pipeline]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{cmd}: exit code; stderr:\n{stderr}"
        );
        let place = match e.line {
            Some(line) => format!("{}:{line}:", e.file),
            None => format!("{}: ", e.file),
        };
        assert!(
            stderr.contains(&place),
            "{cmd}: expected {place:?} in:\n{stderr}"
        );
        if let Some(field) = e.field {
            assert!(
                stderr.contains(&format!("field `{field}`")),
                "{cmd}: expected field {field:?} in:\n{stderr}"
            );
        }
        assert!(
            stderr.contains(e.message),
            "{cmd}: expected {:?} in:\n{stderr}",
            e.message
        );
        assert!(
            out.stdout.is_empty(),
            "{cmd}: stdout must stay empty on error"
        );
        assert!(
            !p.state().exists(),
            "{cmd}: created the state dir on bad input"
        );
        assert!(
            !p.path("cache").exists(),
            "{cmd}: touched the cache on bad input"
        );
    }
}

/// One way to break the project: replace `from` with `to` in `file`; `plan` and `run` of
/// `pipeline` must then refuse it, naming `at_file` and the line holding `at`, the field (if
/// any) and the message.
struct Edit<'a> {
    file: &'a str,
    from: &'a str,
    to: &'a str,
    pipeline: &'a str,
    at_file: &'a str,
    at: &'a str,
    field: Option<&'a str>,
    message: &'a str,
}

fn refused_after(edit: Edit<'_>) {
    let p = Project::new();
    p.edit(edit.file, edit.from, edit.to);
    let line = line_of(&p.read(edit.at_file), edit.at);
    refused(
        &p,
        edit.pipeline,
        Expect {
            file: edit.at_file,
            line: Some(line),
            field: edit.field,
            message: edit.message,
        },
    );
}

/// The corpus of one-edit cases, a test each.
macro_rules! one_edit {
    ($($name:ident: $file:ident, $from:expr => $to:expr; $pipeline:ident at $at_file:ident $at:expr; $field:expr, $message:expr;)*) => {
        $(
            #[test]
            fn $name() {
                refused_after(Edit {
                    file: $file,
                    from: $from,
                    to: $to,
                    pipeline: $pipeline,
                    at_file: $at_file,
                    at: $at,
                    field: $field,
                    message: $message,
                });
            }
        )*
    };
}

one_edit! {
    cluster_without_arches: LOCAL, "[clusters.staging]\narches = [\"x86_64\", \"arm64\"]" => "[clusters.staging]\narches = []";
        LOCAL at LOCAL "arches = []"; Some("clusters.staging.arches"), "has an empty `arches` list";
    malformed_recipe_toml: RECIPE, "[volume]" => "[volume";
        LOCAL at RECIPE "[volume"; None, "";
    malformed_pipeline_toml: LOCAL, "soak = \"1h\"" => "soak = \"1h";
        LOCAL at LOCAL "soak ="; None, "";
    unknown_key_in_recipe: RECIPE, "[volume]\n" => "[volume]\nsize_gb = 20\n";
        LOCAL at RECIPE "size_gb"; Some("volume.size_gb"), "unknown field `size_gb`";
    unknown_key_in_a_step: RECIPE, "name = \"disable-apt-timers\"\n" => "name = \"disable-apt-timers\"\nrun_as = \"root\"\n";
        LOCAL at RECIPE "run_as"; Some("steps[2].run_as"), "unknown field `run_as`";
    unknown_key_in_pipeline: LOCAL, "[local]\n" => "[local]\nmemory = 2048\n";
        LOCAL at LOCAL "memory = 2048"; Some("local.memory"), "unknown field `memory`";
    unknown_arch: LOCAL, "arches = [\"x86_64\", \"arm64\"]\nauto" => "arches = [\"x86_64\", \"amd64\"]\nauto";
        LOCAL at LOCAL "\"amd64\""; Some("bake[0].arches[1]"), "unknown variant `amd64`";
    duplicate_arch: LOCAL, "arches = [\"x86_64\", \"arm64\"]\nauto" => "arches = [\"x86_64\", \"x86_64\"]\nauto";
        LOCAL at LOCAL "arches = [\"x86_64\", \"x86_64\"]"; Some("bake[0].arches[1]"), "listed twice";
    empty_arch_list: LOCAL, "arches = [\"x86_64\", \"arm64\"]\nauto" => "arches = []\nauto";
        LOCAL at LOCAL "arches = []"; Some("bake[0].arches"), "the arch list is empty";
    wrong_type: LOCAL, "memory_mib = 1024" => "memory_mib = \"1024\"";
        LOCAL at LOCAL "memory_mib"; Some("local.memory_mib"), "invalid type";
    duplicate_key: LOCAL, "accel = \"auto\"" => "cpus = 2\naccel = \"auto\"";
        LOCAL at LOCAL "cpus = 2"; None, "duplicate key";
    script_path_with_dot_dot: RECIPE, "script = \"steps/generalize.sh\"" => "script = \"eks-node/../../validators/mac-policy.sh\"";
        LOCAL at RECIPE "../../validators"; Some("steps[4].script"), "uses `..`";
    absolute_script_path: RECIPE, "script = \"steps/generalize.sh\"" => "script = \"/bin/true\"";
        LOCAL at RECIPE "/bin/true"; Some("steps[4].script"), "is absolute";
    file_destination_not_absolute: RECIPE, "dest = \"/etc/systemd" => "dest = \"etc/systemd";
        LOCAL at RECIPE "dest ="; Some("files[0].dest"), "absolute path";
    unknown_validator: RECIPE, "\"no-ssh-host-keys\"," => "\"no-ssh-keys\",";
        LOCAL at RECIPE "\"no-ssh-keys\""; Some("validators[8]"), "unknown validator `no-ssh-keys`";
    unencrypted_volume: RECIPE, "encrypted = true" => "encrypted = false";
        LOCAL at RECIPE "encrypted = false"; Some("volume.encrypted"), "always encrypted";
    bad_ssm_prefix: AWS, "ssm_prefix = \"/bake\"" => "ssm_prefix = \"bake/releases/\"";
        AWS at AWS "ssm_prefix"; Some("aws.ssm_prefix"), "not a valid SSM parameter path";
    reserved_ssm_prefix: AWS, "ssm_prefix = \"/bake\"" => "ssm_prefix = \"/aws/bake\"";
        AWS at AWS "ssm_prefix"; Some("aws.ssm_prefix"), "reserved by AWS";
    undefined_channel_for_auto_promotion: LOCAL, "auto_promote = [\"dev\"]" => "auto_promote = [\"qa\"]";
        LOCAL at LOCAL "auto_promote"; Some("bake[0].auto_promote[0]"), "cluster `qa` is not defined";
    auto_promotion_to_prod: LOCAL, "auto_promote = [\"dev\"]" => "auto_promote = [\"dev\", \"prod\"]";
        LOCAL at LOCAL "auto_promote"; Some("bake[0].auto_promote[1]"), "never automatically";
    undefined_canary_cluster: AWS, "[canary]\ncluster = \"dev\"" => "[canary]\ncluster = \"canary\"";
        AWS at AWS "cluster = \"canary\""; Some("canary.cluster"), "cluster `canary` is not defined";
    probe_namespace_not_a_namespace_name: AWS, "[canary]\ncluster = \"dev\"" => "[canary]\ncluster = \"dev\"\nprobe_namespace = \"Bake_Probes\"";
        AWS at AWS "\"Bake_Probes\""; Some("canary.probe_namespace"), "is not a Kubernetes namespace name";
    probe_image_with_a_space: AWS, "[canary]\ncluster = \"dev\"" => "[canary]\ncluster = \"dev\"\nprobe_image = \"busybox latest\"";
        AWS at AWS "\"busybox latest\""; Some("canary.probe_image"), "is not an image reference";
    missing_recipe: LOCAL, "recipe = \"eks-node\"" => "recipe = \"gpu-node\"";
        LOCAL at LOCAL "gpu-node"; Some("bake[0].recipe"), "recipe `gpu-node` not found";
    step_name_with_a_space: RECIPE, "name = \"generalize\"" => "name = \"general ize\"";
        LOCAL at RECIPE "general ize"; Some("steps[4].name"), "must be letters";
    file_mode_not_octal: RECIPE, "mode = \"0644\"" => "mode = \"0999\"";
        LOCAL at RECIPE "0999"; Some("files[0].mode"), "octal file mode";
    volume_type_of_the_wrong_type: RECIPE, "type = \"gp3\"" => "type = 3";
        LOCAL at RECIPE "type = 3"; Some("volume.type"), "invalid type";
    unknown_provider: LOCAL, "provider = \"local\"" => "provider = \"gcp\"";
        LOCAL at LOCAL "provider = \"gcp\""; Some("provider"), "unknown variant `gcp`";
    soak_that_is_not_a_duration: LOCAL, "soak = \"1h\"" => "soak = \"soon\"";
        LOCAL at LOCAL "soak = \"soon\""; Some("soak"), "";
    unknown_arch_key_in_the_aws_base: RECIPE, "x86_64 = \"/aws/service" => "amd64 = \"/aws/service";
        AWS at RECIPE "amd64 = "; Some("base.aws.amd64"), "unknown variant `amd64`";
}

#[test]
fn no_vcpus() {
    for bad in ["0", "\"many\""] {
        let p = Project::new();
        p.edit(LOCAL, "cpus = \"auto\"", &format!("cpus = {bad}"));
        let line = line_of(&p.read(LOCAL), "cpus =");
        refused(
            &p,
            LOCAL,
            Expect {
                file: LOCAL,
                line: Some(line),
                field: Some("local.cpus"),
                message: "expected a vCPU count of at least 1, or \"auto\"",
            },
        );
    }
}

#[test]
fn missing_script() {
    let p = Project::new();
    std::fs::remove_file(p.path("recipes/steps/disable-apt-timers.sh")).unwrap();
    let line = line_of(&p.read(RECIPE), "script = \"steps/disable-apt-timers.sh\"");
    refused(
        &p,
        LOCAL,
        Expect {
            file: RECIPE,
            line: Some(line),
            field: Some("steps[2].script"),
            message: "does not exist",
        },
    );
}

#[test]
fn non_executable_script() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new();
    let path = p.path("recipes/steps/generalize.sh");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let line = line_of(&p.read(RECIPE), "script = \"steps/generalize.sh\"");
    refused(
        &p,
        LOCAL,
        Expect {
            file: RECIPE,
            line: Some(line),
            field: Some("steps[4].script"),
            message: "not executable",
        },
    );
}

#[test]
fn script_outside_the_recipe_dirs() {
    let p = Project::new();
    p.write("recipes/other/x.sh", "#!/bin/sh\n");
    p.edit(
        RECIPE,
        "script = \"steps/generalize.sh\"",
        "script = \"other/x.sh\"",
    );
    let line = line_of(&p.read(RECIPE), "other/x.sh");
    refused(
        &p,
        LOCAL,
        Expect {
            file: RECIPE,
            line: Some(line),
            field: Some("steps[4].script"),
            message: "outside",
        },
    );
}

#[test]
fn symlink_out_of_the_recipe_dir() {
    let p = Project::new();
    std::fs::create_dir_all(p.path("recipes/eks-node")).unwrap();
    std::os::unix::fs::symlink("/bin/true", p.path("recipes/eks-node/escape.sh")).unwrap();
    p.edit(
        RECIPE,
        "script = \"steps/generalize.sh\"",
        "script = \"eks-node/escape.sh\"",
    );
    let line = line_of(&p.read(RECIPE), "eks-node/escape.sh");
    refused(
        &p,
        LOCAL,
        Expect {
            file: RECIPE,
            line: Some(line),
            field: Some("steps[4].script"),
            message: "symlinks may not lead out",
        },
    );
}

#[test]
fn pinned_file_sha256_mismatch() {
    let p = Project::new();
    p.write(
        "recipes/steps/files/99-bake-mac-policy.conf",
        "[Link]\nMACAddressPolicy=persistent\n",
    );
    let line = line_of(&p.read(RECIPE), "sha256 =");
    refused(
        &p,
        LOCAL,
        Expect {
            file: RECIPE,
            line: Some(line),
            field: Some("files[0].sha256"),
            message: "sha256 mismatch",
        },
    );
}

#[test]
fn duplicate_step_names() {
    let p = Project::new();
    p.edit(
        RECIPE,
        "name = \"disable-apt-timers\"",
        "name = \"purge-unattended-upgrades\"",
    );
    let text = p.read(RECIPE);
    let first = line_of(&text, "name = \"purge-unattended-upgrades\"");
    let second = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("name = \"purge-unattended-upgrades\""))
        .nth(1)
        .unwrap()
        .0
        + 1;
    assert!(second > first);
    refused(
        &p,
        LOCAL,
        Expect {
            file: RECIPE,
            line: Some(second),
            field: Some("steps[2].name"),
            message: "duplicate step name",
        },
    );
}

#[test]
fn bad_ami_id_in_recipe() {
    let p = Project::new();
    p.edit(RECIPE, "x86_64 = \"/aws/service/canonical/ubuntu/eks/22.04/1.31/stable/current/amd64/hvm/ebs-gp2/ami-id\"", "x86_64 = \"ami-12345\"");
    let line = line_of(&p.read(RECIPE), "ami-12345");
    refused(
        &p,
        AWS,
        Expect {
            file: RECIPE,
            line: Some(line),
            field: Some("base.aws.x86_64"),
            message: "8 or 17",
        },
    );
}

/// A base whose nodes bake cannot tell how to join a cluster (neither Ubuntu EKS nor an
/// EKS-optimized Amazon Linux parameter) is refused at load, not guessed at canary time.

#[test]
fn a_base_whose_join_method_cannot_be_told_is_refused() {
    let p = Project::new();
    p.edit(RECIPE, "x86_64 = \"/aws/service/canonical/ubuntu/eks/22.04/1.31/stable/current/amd64/hvm/ebs-gp2/ami-id\"", "x86_64 = \"/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64\"");
    let line = line_of(&p.read(RECIPE), "ami-amazon-linux-latest");
    refused(
        &p,
        AWS,
        Expect {
            file: RECIPE,
            line: Some(line),
            field: Some("base.aws.x86_64"),
            message: "knows how to join to a cluster",
        },
    );
}

/// The prefix is also the value of every resource's `bake:prefix` tag (256 characters at most).

#[test]
fn an_ssm_prefix_too_long_for_a_tag_is_refused() {
    let p = Project::new();
    let long = format!("/{}", "p".repeat(240));
    p.edit(
        AWS,
        "ssm_prefix = \"/bake\"",
        &format!("ssm_prefix = \"{long}\""),
    );
    let line = line_of(&p.read(AWS), "ssm_prefix");
    refused(
        &p,
        AWS,
        Expect {
            file: AWS,
            line: Some(line),
            field: Some("aws.ssm_prefix"),
            message: "at most 200",
        },
    );
}

#[test]
fn non_utf8_file() {
    let p = Project::new();
    let mut bytes = p.read(RECIPE).into_bytes();
    let line = bytes.iter().filter(|b| **b == b'\n').count() + 2;
    bytes.extend_from_slice(b"\n# caf\xe9\n");
    p.write(RECIPE, bytes);
    refused(
        &p,
        LOCAL,
        Expect {
            file: RECIPE,
            line: Some(line),
            field: None,
            message: "not valid UTF-8",
        },
    );
}

#[test]
fn huge_file() {
    let p = Project::new();
    let mut text = p.read(LOCAL);
    text.push_str(&"# padding\n".repeat(200_000));
    p.write(LOCAL, text);
    refused(
        &p,
        LOCAL,
        Expect {
            file: LOCAL,
            line: None,
            field: None,
            message: "limited to",
        },
    );
}

#[test]
fn missing_pipeline_file() {
    let p = Project::new();
    refused(
        &p,
        "pipelines/nope.toml",
        Expect {
            file: "pipelines/nope.toml",
            line: None,
            field: None,
            message: "cannot read",
        },
    );
}

#[test]
fn bad_arguments_are_usage_errors() {
    let p = Project::new();
    for args in [
        vec!["plan"],
        vec!["plan", LOCAL, "--arch", "amd64"],
        vec!["run", LOCAL, "--recipe", "nope"],
        vec!["frobnicate"],
    ] {
        let out = bake(&p, &args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!p.state().exists(), "{args:?} created the state dir");
    }
}

#[test]
fn two_files_to_one_destination() {
    let p = Project::new();
    let text = p.read(RECIPE);
    // The first [[files]] entry, written again right after itself.
    let start = text.find("[[files]]").unwrap();
    let end = start + text[start..].find("\n\n").unwrap() + 2;
    let block = text[start..end].to_string();
    p.write(RECIPE, format!("{}{block}{}", &text[..end], &text[end..]));
    let text = p.read(RECIPE);
    let second = text.match_indices("dest =").nth(1).unwrap().0;
    let line = text[..second].matches('\n').count() + 1;
    refused(
        &p,
        LOCAL,
        Expect {
            file: RECIPE,
            line: Some(line),
            field: Some("files[1].dest"),
            message: "two files install to",
        },
    );
}

#[test]
fn validator_listed_twice() {
    let p = Project::new();
    p.edit(
        RECIPE,
        "\"no-ssh-host-keys\",",
        "\"no-ssh-host-keys\", \"mac-policy\",",
    );
    let text = p.read(RECIPE);
    let line = line_of(&text, "\"no-ssh-host-keys\", \"mac-policy\"");
    refused(
        &p,
        LOCAL,
        Expect {
            file: RECIPE,
            line: Some(line),
            field: Some("validators[9]"),
            message: "listed twice",
        },
    );
}

#[test]
fn aws_provider_without_an_aws_section() {
    let p = Project::new();
    p.edit(LOCAL, "provider = \"local\"", "provider = \"aws\"");
    refused(
        &p,
        LOCAL,
        Expect {
            file: LOCAL,
            line: Some(line_of(&p.read(LOCAL), "provider = \"aws\"")),
            field: None,
            message: "needs an `[aws]` section",
        },
    );
}

#[test]
fn cluster_name_with_a_slash() {
    let p = Project::new();
    p.edit(LOCAL, "[clusters.staging]", "[clusters.\"stag/ing\"]");
    refused(
        &p,
        LOCAL,
        Expect {
            file: LOCAL,
            line: Some(line_of(&p.read(LOCAL), "stag/ing")),
            field: None,
            message: "cluster name `stag/ing`",
        },
    );
}

#[test]
fn recipe_without_steps() {
    let p = Project::new();
    let text = p.read(RECIPE);
    let start = text.find("[[steps]]").unwrap();
    // A top-level `steps = []` (it must come before the first table).
    p.write(RECIPE, format!("steps = []\n{}", &text[..start]));
    refused(
        &p,
        LOCAL,
        Expect {
            file: RECIPE,
            line: Some(1),
            field: None,
            message: "at least one `[[steps]]`",
        },
    );
}

#[test]
fn auto_promotion_to_a_cluster_using_an_arch_not_baked() {
    let p = Project::new();
    p.edit(
        LOCAL,
        "arches = [\"x86_64\", \"arm64\"]\nauto",
        "arches = [\"x86_64\"]\nauto",
    );
    let line = line_of(&p.read(LOCAL), "auto_promote");
    refused(
        &p,
        LOCAL,
        Expect {
            file: LOCAL,
            line: Some(line),
            field: Some("bake[0].auto_promote[0]"),
            message: "uses arm64",
        },
    );
}

/// Bad AWS input never reaches AWS: the emulator's proxy sees no call at all.

#[test]
fn bad_aws_input_makes_no_call() {
    let moto = common::moto::Moto::get();
    type Change = Box<dyn Fn(&Project)>;
    let cases: Vec<Change> = vec![
        Box::new(|p| p.edit(AWS, "ssm_prefix = \"/bake\"", "ssm_prefix = \"/aws/x\"")),
        Box::new(|p| {
            p.edit(RECIPE, "x86_64 = \"/aws/service/canonical/ubuntu/eks/22.04/1.31/stable/current/amd64/hvm/ebs-gp2/ami-id\"", "x86_64 = \"ami-XYZ\"")
        }),
        Box::new(|p| {
            p.edit(
                AWS,
                "[canary]\ncluster = \"dev\"",
                "[canary]\ncluster = \"nope\"",
            )
        }),
        Box::new(|p| p.edit(AWS, "engine = \"ec2\"", "engine = \"packer\"")),
        Box::new(|p| p.edit(AWS, "region = \"us-east-1\"", "region = 1")),
    ];
    for (i, change) in cases.iter().enumerate() {
        let p = Project::new();
        change(&p);
        let before = moto.calls().len();
        for cmd in ["plan", "run"] {
            let out = Command::cargo_bin("bake")
                .unwrap()
                .current_dir(p.dir.path())
                .env("AWS_ENDPOINT_URL", &moto.endpoint)
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_REGION", "us-east-1")
                .args([cmd, AWS])
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(2),
                "case {i} {cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(
            moto.calls().len(),
            before,
            "case {i}: bad input made AWS calls: {:?}",
            &moto.calls()[before..]
        );
    }
}
