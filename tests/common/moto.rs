//! The AWS emulator for tests: the real `moto_server` (from the venv that scripts/setup-host
//! makes) on a loopback port, with the tests' own proxy (tests/moto/proxy.py) in front for
//! what moto cannot do. One per test process; both die with it (PDEATHSIG).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Moto {
    /// The proxy's URL: what `AWS_ENDPOINT_URL` points at.
    pub endpoint: String,
    /// moto itself, for inventory calls that must bypass the proxy.
    pub moto: String,
    pub dir: tempfile::TempDir,
    _children: Vec<Child>,
}

fn venv() -> PathBuf {
    if let Some(v) = std::env::var_os("BAKE_VENV") {
        return PathBuf::from(v);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"));
    cache.join("bake").join("venv")
}

fn dies_with_us(cmd: &mut Command) -> &mut Command {
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// Whether process `pid` listens on `port` (what `ss -ltnp` shows).
fn listens(pid: u32, port: u16) -> bool {
    Command::new("ss")
        .args(["-Hltnp", &format!("sport = :{port}")])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("pid={pid},")))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Moto {
    /// The emulator of this test process, started on first use.
    pub fn get() -> &'static Moto {
        static MOTO: OnceLock<Moto> = OnceLock::new();
        MOTO.get_or_init(Moto::start)
    }

    fn start() -> Moto {
        let venv = venv();
        let server = venv.join("bin/moto_server");
        assert!(
            server.exists(),
            "{} is missing: run scripts/setup-host",
            server.display()
        );
        let dir = tempfile::tempdir().unwrap();
        // A free port can be taken by another test's emulator between our probe and moto's
        // bind; then ours exits and the port answers for someone else. Only a port our own
        // moto_server holds (still running once it answers) will do.
        let (moto, port) = (0..10)
            .find_map(|_| {
                let port = free_port();
                let mut moto = Command::new(&server);
                dies_with_us(&mut moto)
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
                    .env("MOTO_ENABLE_AMI_VALIDATION", "true")
                    // AWS's managed policies exist in every account (the node role's).
                    .env("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                let mut moto = moto.spawn().unwrap();
                let start = Instant::now();
                loop {
                    if moto.try_wait().unwrap().is_some() {
                        return None;
                    }
                    if listens(moto.id(), port) {
                        return Some((moto, port));
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(60),
                        "moto_server did not start"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .expect("moto_server could not hold a port of its own in 10 tries");
        let moto_url = format!("http://127.0.0.1:{port}");
        // What an account running bake has: the builder instance profile with the node role a
        // canary joins with and the policies EKS documents for it (IAM, via boto3 from the same
        // venv; moto checks that a launched profile exists) and the clusters canaries join
        // (their endpoint, CA and service CIDR go into the canary's user data), at the
        // Kubernetes version promotion reads (`legacy` lags three minors behind).
        let status = Command::new(venv.join("bin/python"))
            .args([
                "-c",
                "import boto3,json,sys\n\
                 kw = dict(endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n\
                 iam = boto3.client('iam', **kw)\n\
                 iam.create_user(UserName='moto')\n\
                 iam.create_instance_profile(InstanceProfileName='bake-builder')\n\
                 trust = {'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Principal': {'Service': 'ec2.amazonaws.com'}, 'Action': 'sts:AssumeRole'}]}\n\
                 iam.create_role(RoleName='bake-builder', AssumeRolePolicyDocument=json.dumps(trust))\n\
                 iam.add_role_to_instance_profile(InstanceProfileName='bake-builder', RoleName='bake-builder')\n\
                 for p in ('AmazonSSMManagedInstanceCore', 'AmazonEKSWorkerNodePolicy', 'AmazonEC2ContainerRegistryReadOnly', 'AmazonEKS_CNI_Policy'):\n\
                 \x20   iam.attach_role_policy(RoleName='bake-builder', PolicyArn='arn:aws:iam::aws:policy/' + p)\n\
                 eks = boto3.client('eks', **kw)\n\
                 for name in ('dev', 'staging', 'prod', 'legacy'):\n\
                 \x20   eks.create_cluster(name=name, version='1.28' if name == 'legacy' else '1.31', roleArn='arn:aws:iam::123456789012:role/eks', resourcesVpcConfig={'subnetIds': []}, kubernetesNetworkConfig={'serviceIpv4Cidr': '10.100.0.0/16'})\n",
                &moto_url,
            ])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "creating the instance profile and clusters in moto failed"
        );
        let config = dir.path().join("proxy.json");
        std::fs::write(&config, "{}").unwrap();
        let script = super::repo().join("tests/moto/proxy.py");
        let mut proxy = Command::new(venv.join("bin/python"));
        dies_with_us(&mut proxy)
            .arg(script)
            .arg(&moto_url)
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut proxy = proxy.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(proxy.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let proxy_port: u16 = line.trim().parse().expect("the proxy prints its port");
        // EKS (the proxy; moto has no access entries): `dev`, the clusters canaries join, lets
        // the node role in through an access entry, as the user guide sets a cluster up, and
        // lets bake's own identity (the emulator's user `moto`, whom every test key is) read
        // nodes with AmazonEKSAdminViewPolicy and run its probe pod in `default` with
        // AmazonEKSEditPolicy.
        // Signed with a key of its own, so no project's IAM assertion counts these calls.
        let status = Command::new(venv.join("bin/python"))
            .args([
                "-c",
                "import boto3,sys\n\
                 kw = dict(endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='account-setup', aws_secret_access_key='testing')\n\
                 eks = boto3.client('eks', **kw)\n\
                 eks.update_cluster_config(name='dev', accessConfig={'authenticationMode': 'API_AND_CONFIG_MAP'})\n\
                 eks.create_access_entry(clusterName='dev', principalArn='arn:aws:iam::123456789012:role/bake-builder', type='EC2_LINUX')\n\
                 eks.create_access_entry(clusterName='dev', principalArn='arn:aws:iam::123456789012:user/moto')\n\
                 eks.associate_access_policy(clusterName='dev', principalArn='arn:aws:iam::123456789012:user/moto', policyArn='arn:aws:eks::aws:cluster-access-policy/AmazonEKSAdminViewPolicy', accessScope={'type': 'cluster'})\n\
                 eks.associate_access_policy(clusterName='dev', principalArn='arn:aws:iam::123456789012:user/moto', policyArn='arn:aws:eks::aws:cluster-access-policy/AmazonEKSEditPolicy', accessScope={'type': 'namespace', 'namespaces': ['default']})\n",
                &format!("http://127.0.0.1:{proxy_port}"),
            ])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "setting up the dev cluster's access failed"
        );
        Moto {
            endpoint: format!("http://127.0.0.1:{proxy_port}"),
            moto: moto_url,
            dir,
            _children: vec![moto, proxy],
        }
    }

    /// What the proxy answers from now on. Unless the config scripts them itself or makes
    /// instances real VMs (`machines`), instances report the smallest package list of an EKS
    /// node (DEFAULT_PACKAGES: its distribution and a kubelet, which promotion's skew check
    /// needs), and canaries an Ubuntu system with the image's root mounted from its second
    /// volume.
    pub fn set_config(&self, mut config: serde_json::Value) {
        // Instances that are real VMs answer for themselves.
        let scripted = config.get("machines").is_none();
        if let Some(obj) = config.as_object_mut().filter(|_| scripted) {
            let commands = obj
                .entry("commands")
                .or_insert_with(|| serde_json::json!([]))
                .as_array_mut()
                .unwrap();
            if !commands
                .iter()
                .any(|r| r["match"] == PACKAGE_MANIFEST_NEEDLE)
            {
                commands.extend(package_rules(DEFAULT_PACKAGES));
            }
            if !commands.iter().any(|r| r["match"] == HOST_LINKS_NEEDLE) {
                commands.push(serde_json::json!({
                    "match": HOST_LINKS_NEEDLE,
                    "stdout": format!("bake-link 1 lo 00:00:00:00:00:00\nbake-link 7 eni0123456789a {SCRIPTED_VETH_MAC}\n"),
                }));
            }
            if !commands.iter().any(|r| r["match"] == PREPARE_CANARY_NEEDLE) {
                commands.push(serde_json::json!({
                    "match": PREPARE_CANARY_NEEDLE,
                    "stdout": "os_id=ubuntu\nos_like=debian\nos_version=\"22.04\"\nimage_root=/run/bake/image-root\nimage_device=/dev/nvme1n1p1\n",
                }));
            }
        }
        if let Some(obj) = config.as_object_mut().filter(|_| scripted) {
            obj.entry("pods")
                .or_insert_with(|| serde_json::json!([probe_pod_rule(true)]));
        }
        std::fs::write(self.dir.path().join("proxy.json"), config.to_string()).unwrap();
    }

    /// The complete lines of the proxy's call log. The proxy appends while tests read: a last
    /// line without its newline is still being written and is left for the next read.
    fn logged_lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.path().join("calls.jsonl")).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// (service, action) of every call that went through the proxy, in order.
    pub fn calls(&self) -> Vec<(String, String)> {
        self.logged_lines()
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["service"].as_str().unwrap().to_string(),
                    v["action"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Every call that went through the proxy, as it recorded them (service, action, region,
    /// access key, parameters, the tags of the resources it named).
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.logged_lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Every request the clusters' Kubernetes API servers answered (kubeapi.py): cluster, path,
    /// the principal its token was verified as, and why not.
    pub fn kube_records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("kube.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The form parameters of every logged call of `action` (RunInstances, CreateImage...).
    pub fn params_of(&self, action: &str) -> Vec<std::collections::BTreeMap<String, String>> {
        self.logged_lines()
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["action"] == action)
            .map(|v| serde_json::from_value(v["params"].clone()).unwrap_or_default())
            .collect()
    }

    pub async fn sdk(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&self.moto)
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "testing", "testing", None, None, "tests",
            ))
            .load()
            .await
    }

    /// The SDK configuration bake itself gets: through the proxy, with fast retries.
    pub async fn sdk_via_proxy(&self) -> aws_config::SdkConfig {
        self.sdk()
            .await
            .to_builder()
            .endpoint_url(&self.endpoint)
            .retry_config(
                aws_config::retry::RetryConfig::standard()
                    .with_max_backoff(Duration::from_millis(200)),
            )
            .build()
    }

    /// EKS through the proxy (moto has no access entries), as the account's administrator:
    /// signed with a key of its own, so no project's IAM assertion counts these calls.
    pub async fn eks_as_account_setup(&self) -> aws_sdk_eks::Client {
        let via_proxy = self.sdk_via_proxy().await;
        aws_sdk_eks::Client::from_conf(
            aws_sdk_eks::config::Builder::from(&via_proxy)
                .credentials_provider(aws_sdk_eks::config::Credentials::new(
                    "account-setup",
                    "testing",
                    None,
                    None,
                    "test",
                ))
                .build(),
        )
    }
}

// What the AWS tests share: bases registered in moto, a project writing under its own
// prefix, and running `bake ... -o json` against the proxy.

use super::Project;
use serde_json::Value;

pub const UBUNTU_X86: &str =
    "/aws/service/canonical/ubuntu/eks/22.04/1.31/stable/current/amd64/hvm/ebs-gp2/ami-id";
pub const UBUNTU_ARM: &str =
    "/aws/service/canonical/ubuntu/eks/22.04/1.31/stable/current/arm64/hvm/ebs-gp2/ami-id";

/// Registers one base AMI per arch in moto and points the public parameters at them.
/// The root volume size DescribeImages gives for `image`.
pub async fn root_gib(moto: &Moto, image: &str) -> i32 {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let r = ec2.describe_images().image_ids(image).send().await.unwrap();
    let img = &r.images()[0];
    img.block_device_mappings()
        .iter()
        .find(|m| m.device_name() == img.root_device_name())
        .and_then(|m| m.ebs())
        .and_then(|e| e.volume_size())
        .expect("a base with an EBS root of a known size")
}

pub async fn bases(moto: &Moto) -> (String, String) {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let mut ids = Vec::new();
    for arch in ["x86_64", "arm64"] {
        // moto gives a registered image an EBS root from a snapshot of its own (15 GiB):
        // bigger than 8, as the EKS bases are (see root_gib).
        let r = ec2
            .register_image()
            .name(format!("ubuntu-eks-{arch}-{}", rand_suffix()))
            .architecture(aws_sdk_ec2::types::ArchitectureValues::from(arch))
            .root_device_name("/dev/sda1")
            .send()
            .await
            .unwrap();
        ids.push(r.image_id().unwrap().to_string());
    }
    (ids[0].clone(), ids[1].clone())
}

pub fn rand_suffix() -> u32 {
    std::process::id()
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos())
}

/// Makes a project's aws pipeline bake x86_64 only, with clusters that use only x86_64.
pub fn x86_only(p: &Project) {
    p.edit(
        "pipelines/aws.toml",
        "arches = [\"x86_64\", \"arm64\"]",
        "arches = [\"x86_64\"]",
    );
    for c in ["dev", "staging", "prod"] {
        p.edit(
            "pipelines/aws.toml",
            &format!("[clusters.{c}]\n"),
            &format!("[clusters.{c}]\narches = [\"x86_64\"]\n"),
        );
    }
}

/// A copy of the project whose aws pipeline polls fast and writes under `prefix`.
pub fn project(prefix: &str) -> Project {
    let p = Project::new();
    p.edit("pipelines/aws.toml", "ssm_prefix = \"/bake\"", &format!("ssm_prefix = \"{prefix}\"\npoll_interval = \"20ms\"\ninstance_timeout = \"60s\"\nagent_timeout = \"60s\"\ncommand_timeout = \"60s\"\nimage_timeout = \"60s\"\nretry_max_backoff = \"200ms\""));
    p
}

/// `bake` in the project, pointed at the emulator through the proxy.
pub fn bake_command(p: &Project, moto: &Moto) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("bake"));
    c.current_dir(p.dir.path())
        .env("AWS_ENDPOINT_URL", &moto.endpoint)
        .env("AWS_ACCESS_KEY_ID", p.access_key())
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE");
    c
}

/// Runs `bake <args> -o json`: exit code, the JSON on stdout (panics if there is none), stderr.
pub fn bake(p: &Project, moto: &Moto, args: &[&str]) -> (i32, Value, String) {
    let out = bake_command(p, moto)
        .env("RUST_LOG", "info")
        .args(args)
        .args(["-o", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}):\n{}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code().unwrap_or(-1), json, stderr)
}

/// Runs `bake <args>` expecting a refusal: exit code and stderr (stdout must be empty).
pub fn bake_refused(p: &Project, moto: &Moto, args: &[&str]) -> (i32, String) {
    let out = bake_command(p, moto).args(args).output().unwrap();
    assert!(
        out.stdout.is_empty(),
        "{args:?} printed data: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What identifies bake's read of the canary's links (cluster-pod-network) in command rules.
pub const HOST_LINKS_NEEDLE: &str = "bake-link $(cat";
/// The MAC of the host veth of a scripted canary's probe pod.
pub const SCRIPTED_VETH_MAC: &str = "22:71:6b:47:fe:88";

/// A "pods" rule for the proxy: bake's probe pod on a scripted node, as a node whose CNI keeps
/// the host veth's MAC says it (`healthy`), or one where udev rewrote it after the CNI pinned
/// it and the pod's DNS queries go nowhere. One line every 0.1 s, as the running pod prints.
pub fn probe_pod_rule(healthy: bool) -> Value {
    let pinned = if healthy {
        SCRIPTED_VETH_MAC
    } else {
        "0a:58:0a:00:00:99"
    };
    let mut lines = vec![
        "bake-probe iflink 7".to_string(),
        format!("bake-probe gateway 169.254.1.1 {pinned} 0x6"),
    ];
    lines.extend(
        (1..=150).map(|i| format!("bake-probe dns {i} {}", if healthy { "ok" } else { "fail" })),
    );
    serde_json::json!({"match": "bake-probe iflink", "log": lines, "line_every_s": 0.1})
}

/// What bake's package-manifest command carries, for scripting its answer.
/// What identifies the canary's prepare command in the proxy's command rules.
pub const PREPARE_CANARY_NEEDLE: &str = "prepare canary";

/// What an instance reports as its packages unless a test scripts its own list.
pub const DEFAULT_PACKAGES: &str = "#os\tubuntu\t22.04\nkubelet\t1.31.2\tamd64\n";

pub const PACKAGE_MANIFEST_NEEDLE: &str = "bake: package manifest";

/// Proxy rules that answer bake's package manifest as an instance whose package list is
/// `list` would: the staging command prints size, sha256 and path of the list it wrote, and
/// each slice command the base64 of its slice (bake reads long output in slices, as SSM cuts
/// stdout at 24,000 characters; the proxy enforces that cut).
pub fn package_rules(list: &str) -> Vec<Value> {
    use base64::Engine as _;
    let path = "/var/tmp/bake-output-scripted";
    let digest = bake::input::recipe::sha256_hex(list.as_bytes());
    // The audit document's slices first: its program lists the packages as the manifest does.
    let mut rules = audit_package_rules(list);
    rules.push(serde_json::json!({
        "match": PACKAGE_MANIFEST_NEEDLE,
        "stdout": format!("{} {digest} {path}\n", list.len()),
    }));
    let slice = bake::guest::long_output::SLICE;
    for (i, chunk) in list.as_bytes().chunks(slice).enumerate() {
        rules.push(serde_json::json!({
            "match": format!("dd if='{path}' iflag=skip_bytes,count_bytes skip={} ", i * slice),
            "stdout": base64::engine::general_purpose::STANDARD.encode(chunk),
        }));
    }
    rules
}

/// Proxy rules that answer the audit document's `packages` action as a node whose package list
/// is `list` would: each slice, from its offset, with the whole list's size and sha256.
pub fn audit_package_rules(list: &str) -> Vec<Value> {
    use base64::Engine as _;
    let digest = bake::input::recipe::sha256_hex(list.as_bytes());
    let slice = bake::guest::long_output::SLICE;
    let chunks: Vec<&[u8]> = match list.as_bytes().chunks(slice).collect::<Vec<_>>() {
        none if none.is_empty() => vec![&[][..]],
        some => some,
    };
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            serde_json::json!({
                "match": format!("skip='{}' count=", i * slice),
                "stdout": format!(
                    "bake-packages {} {digest}\n{}\n",
                    list.len(),
                    base64::engine::general_purpose::STANDARD.encode(chunk)
                ),
            })
        })
        .collect()
}

/// Every SSM parameter under `path`, recursively, every page read.
pub async fn parameters_under(moto: &Moto, path: &str) -> Vec<aws_sdk_ssm::types::Parameter> {
    aws_sdk_ssm::Client::new(&moto.sdk().await)
        .get_parameters_by_path()
        .path(path)
        .recursive(true)
        .into_paginator()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap()
        .into_iter()
        .flat_map(|page| page.parameters.unwrap_or_default())
        .collect()
}

/// The IDs of every instance in moto that is not terminated.
pub async fn live_instances(moto: &Moto) -> Vec<String> {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let r = ec2.describe_instances().send().await.unwrap();
    r.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| {
            i.state().and_then(|s| s.name())
                != Some(&aws_sdk_ec2::types::InstanceStateName::Terminated)
        })
        .map(|i| i.instance_id().unwrap().to_string())
        .collect()
}

/// The decoded user data of a logged RunInstances call ("" if it had none).
pub fn user_data(params: &std::collections::BTreeMap<String, String>) -> String {
    use base64::Engine as _;
    params
        .get("UserData")
        .map(|u| {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(u).unwrap()).unwrap()
        })
        .unwrap_or_default()
}

/// Registers an x86_64 AMI in moto (a base or a build output) and returns its ID.
pub async fn register_x86(moto: &Moto, name: &str) -> String {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk().await);
    register_image(&ec2, &format!("{name}-{}", rand_suffix()), "x86_64").await
}

/// Registers an AMI named `name` for `arch` (`x86_64`, `arm64`) and returns its ID.
pub async fn register_image(ec2: &aws_sdk_ec2::Client, name: &str, arch: &str) -> String {
    ec2.register_image()
        .name(name)
        .architecture(aws_sdk_ec2::types::ArchitectureValues::from(arch))
        .root_device_name("/dev/sda1")
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_string()
}

/// Runs the IAM policy evaluator (tests/iam/simulate.mjs, @cloud-copilot/iam-simulate) on
/// `calls` (proxy records) and extra `requests` against `policy`; one verdict per request.
pub fn simulate(policy: &Value, calls: &[Value], requests: &[Value]) -> Vec<Value> {
    use std::io::Write;
    let script = super::repo().join("tests/iam/simulate.mjs");
    assert!(
        super::repo()
            .join("tests/iam/node_modules/@cloud-copilot/iam-simulate")
            .exists(),
        "the IAM evaluator is missing: run scripts/setup-host"
    );
    let mut child = Command::new("node")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs the IAM evaluator");
    let input = serde_json::json!({
        "policy": policy,
        "account": "123456789012",
        "roles": {"bake-builder": "bake-builder"},
        "calls": calls,
        "requests": requests,
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the IAM evaluator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// The policy `bake iam-policy <pipeline> <extra>` prints for the project.
pub fn printed_policy(p: &Project, moto: &Moto, pipeline: &str, extra: &[&str]) -> Value {
    let (code, policy, stderr) = bake(p, moto, &[&["iam-policy", pipeline][..], extra].concat());
    assert_eq!(code, 0, "{stderr}");
    policy
}

/// Every call a project's `bake` made through the proxy (and, for the first project, the calls
/// the test made in process through `sdk_via_proxy`, signed `testing`) must be `Allowed` by
/// the policy `bake iam-policy` prints for that project's pipeline. Returns (calls, requests)
/// evaluated.
pub fn assert_iam_allows(moto: &Moto, projects: &[&Project], pipeline: &str) -> (usize, usize) {
    let records = moto.records();
    let (mut calls, mut requests) = (0, 0);
    for (n, p) in projects.iter().enumerate() {
        let key = p.access_key();
        let mine: Vec<Value> = records
            .iter()
            .filter(|r| r["key"] == key.as_str() || (n == 0 && r["key"] == "testing"))
            .cloned()
            .collect();
        let policy = printed_policy(p, moto, pipeline, &[]);
        let verdicts = simulate(&policy, &mine, &[]);
        let denied: Vec<&Value> = verdicts
            .iter()
            .filter(|v| v["result"] != "Allowed")
            .collect();
        assert!(
            denied.is_empty(),
            "the printed IAM policy does not allow {} of bake's {} requests, e.g.:\n{}",
            denied.len(),
            verdicts.len(),
            denied
                .iter()
                .take(5)
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        calls += mine.len();
        requests += verdicts.len();
    }
    eprintln!("IAM: {calls} calls, {requests} requests simulated, all Allowed");
    (calls, requests)
}
