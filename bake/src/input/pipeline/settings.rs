//! A pipeline's provider settings: `[local]` (VMs: memory, vCPUs, accelerator, timeouts,
//! mirror) or `[aws]` (region, engine, network, instance types, KMS key, copies and shares,
//! timeouts, the registry prefix), with their defaults and the checks serde can make.

use super::ProviderKind;
use crate::input::names::SsmPath;
use crate::Arch;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How the local provider runs its VMs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {
    /// A Debian mirror URI or a sources file passed to mmdebstrap; its defaults otherwise.
    pub mirror: Option<String>,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    #[serde(default)]
    pub cpus: Cpus,
    #[serde(default)]
    pub accel: Accel,
    #[serde(default)]
    pub builder: Builder,
    #[serde(default = "default_boot_timeout", with = "humantime_serde")]
    pub boot_timeout: Duration,
    #[serde(default = "default_step_timeout", with = "humantime_serde")]
    pub step_timeout: Duration,
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    #[serde(default = "default_base_timeout", with = "humantime_serde")]
    pub base_timeout: Duration,
}

fn default_memory() -> u32 {
    1024
}
fn default_boot_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_step_timeout() -> Duration {
    Duration::from_secs(900)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(180)
}
fn default_base_timeout() -> Duration {
    Duration::from_secs(3600)
}

impl Default for LocalSettings {
    fn default() -> Self {
        LocalSettings {
            mirror: None,
            memory_mib: default_memory(),
            cpus: Cpus::Auto,
            accel: Accel::Auto,
            builder: Builder::Auto,
            boot_timeout: default_boot_timeout(),
            step_timeout: default_step_timeout(),
            shutdown_timeout: default_shutdown_timeout(),
            base_timeout: default_base_timeout(),
        }
    }
}

/// vCPUs per VM: a count, or `"auto"`: the host's cores shared among the arches baking when
/// the VM boots (one VM each at a time: an arch's builder and canary take turns), at least 1
/// and at most [`Cpus::AUTO_MAX`]. Under TCG a second vCPU cuts a bake by about a third when the
/// host has the core to spare, and costs when it does not, hence the sharing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Cpus {
    #[default]
    Auto,
    Count(u32),
}

impl Cpus {
    /// The most `auto` gives one VM: past it a 1 GiB builder gains nothing measurable.
    pub const AUTO_MAX: u32 = 4;

    /// The vCPU count for each VM when `vms_at_once` run together on `host_cores` cores (an
    /// `auto` VM booting alone gets all of them, up to the maximum).
    pub fn resolve(self, host_cores: usize, vms_at_once: usize) -> u32 {
        match self {
            Cpus::Count(n) => n,
            Cpus::Auto => {
                let share = host_cores / vms_at_once.max(1);
                (share as u32).clamp(1, Self::AUTO_MAX)
            }
        }
    }
}

impl Serialize for Cpus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cpus::Auto => s.serialize_str("auto"),
            Cpus::Count(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Cpus;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a vCPU count of at least 1, or \"auto\"")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Cpus, E> {
                match u32::try_from(n) {
                    Ok(n) if n >= 1 => Ok(Cpus::Count(n)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Signed(n), &self)),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Cpus, E> {
                match u32::try_from(n) {
                    Ok(n) if n >= 1 => Ok(Cpus::Count(n)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Unsigned(n), &self)),
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Cpus, E> {
                match v {
                    "auto" => Ok(Cpus::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM if a probe boot succeeds quickly, TCG otherwise.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// Where the local provider applies a recipe. The canary VM proves the image either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Builder {
    /// `offline` when bake runs as root on a host with loop devices, `vm` otherwise.
    #[default]
    Auto,
    /// In a chroot of the image's own filesystem, no builder VM (needs root and loop devices).
    Offline,
    /// In a builder VM booted from the base, through its guest agent: for steps that need a
    /// running system (systemd as PID 1, cloud-init's first boot, snapd).
    Vm,
}

impl Builder {
    /// `auto` decided for this host: offline when it can mount a loop device (root), else vm.
    pub fn resolve(self) -> Builder {
        match self {
            Builder::Auto => {
                // SAFETY: geteuid has no preconditions.
                let root = unsafe { libc::geteuid() } == 0;
                if root && std::path::Path::new("/dev/loop-control").exists() {
                    Builder::Offline
                } else {
                    Builder::Vm
                }
            }
            b => b,
        }
    }
}

/// Where and how the AWS provider works.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    pub region: Option<String>,
    #[serde(default = "default_prefix", deserialize_with = "writable_prefix")]
    pub ssm_prefix: SsmPath,
    #[serde(default)]
    pub engine: Engine,
    pub subnet_id: Option<String>,
    pub security_group_id: Option<String>,
    pub instance_profile: Option<String>,
    /// The IAM role inside `instance_profile` (default: the profile's name). The printed IAM
    /// policy lets bake pass this role and no other.
    #[serde(default, deserialize_with = "role_name")]
    pub instance_role: Option<String>,
    #[serde(default)]
    pub instance_type: BTreeMap<Arch, String>,
    /// Regions the validated image is copied to (encrypted); each gets the release parameters
    /// with its own AMI ID.
    #[serde(default, deserialize_with = "regions")]
    pub copy_regions: Vec<String>,
    /// Accounts given launch permission on the image and its copies (never public).
    #[serde(default, deserialize_with = "accounts")]
    pub share_accounts: Vec<String>,
    /// KMS key (ID, ARN or `alias/...`, which must exist in every region) for the volumes and
    /// image copies; needed to share (an image under the default EBS key cannot be shared).
    pub kms_key_id: Option<String>,
    /// How often to poll instance, agent, command and image states.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Limit for an instance to run, stop or terminate.
    #[serde(default = "default_instance_timeout", with = "humantime_serde")]
    pub instance_timeout: Duration,
    /// Limit for the SSM agent of a new instance to come online.
    #[serde(default = "default_agent_timeout", with = "humantime_serde")]
    pub agent_timeout: Duration,
    /// Limit for one step or validator command.
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// How long a cluster check (`node-ready`) waits for the canary to join and be Ready; a
    /// canary that never does fails the run (exit 1) without rejecting the image.
    #[serde(default = "default_join_timeout", with = "humantime_serde")]
    pub join_timeout: Duration,
    /// Limit for a new image to become available.
    #[serde(default = "default_image_timeout", with = "humantime_serde")]
    pub image_timeout: Duration,
    /// Longest pause between the SDK's retries of a throttled or failed call.
    #[serde(default = "default_retry_max_backoff", with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// `imagebuilder` engine: an untagged Image Builder output older than this belongs to a
    /// run that died (a live run tags its output seconds after the build); sweep removes it.
    #[serde(default = "default_orphan_age", with = "humantime_serde")]
    pub orphan_age: Duration,
}

impl AwsSettings {
    /// The role the builder and canary instances run as, if they get an instance profile:
    /// `instance_role`, by default the profile's own name.
    pub fn instance_role(&self) -> Option<&str> {
        self.instance_role
            .as_deref()
            .or(self.instance_profile.as_deref())
    }
}

fn regions<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    let mut seen = BTreeSet::new();
    for r in &v {
        let parts: Vec<&str> = r.split('-').collect();
        let ok = parts.len() >= 3
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            })
            && parts
                .last()
                .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()));
        if !ok {
            return Err(serde::de::Error::custom(format!(
                "`{r}` is not an AWS region name (e.g. \"us-west-2\")"
            )));
        }
        if !seen.insert(r) {
            return Err(serde::de::Error::custom(format!(
                "region `{r}` is listed twice"
            )));
        }
    }
    Ok(v)
}

fn role_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = String::deserialize(d)?;
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
    if !ok {
        return Err(serde::de::Error::custom(format!(
            "`{v}` is not an IAM role name (1-64 of letters, digits and +=,.@_-)"
        )));
    }
    Ok(Some(v))
}

fn accounts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    let mut seen = BTreeSet::new();
    for a in &v {
        if a.eq_ignore_ascii_case("all") {
            return Err(serde::de::Error::custom(
                "images are never made public: list 12-digit account IDs, not `all`",
            ));
        }
        if a.len() != 12 || !a.chars().all(|c| c.is_ascii_digit()) {
            return Err(serde::de::Error::custom(format!(
                "`{a}` is not a 12-digit AWS account ID"
            )));
        }
        if !seen.insert(a) {
            return Err(serde::de::Error::custom(format!(
                "account `{a}` is listed twice"
            )));
        }
    }
    Ok(v)
}

fn default_join_timeout() -> Duration {
    Duration::from_secs(600)
}

fn default_orphan_age() -> Duration {
    Duration::from_secs(3600)
}

fn default_retry_max_backoff() -> Duration {
    Duration::from_secs(20)
}

fn default_poll() -> Duration {
    Duration::from_secs(5)
}
fn default_instance_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_agent_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_command_timeout() -> Duration {
    Duration::from_secs(1800)
}
fn default_image_timeout() -> Duration {
    Duration::from_secs(3600)
}

fn default_prefix() -> SsmPath {
    SsmPath::parse("/bake").expect("static prefix is valid")
}

fn writable_prefix<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SsmPath, D::Error> {
    let s = String::deserialize(d)?;
    // Every resource bake creates carries the prefix as its `bake:prefix` tag, and an EC2 tag
    // value holds 256 characters; release and channel names must still fit under it.
    if s.chars().count() > 200 {
        return Err(serde::de::Error::custom(format!(
            "`{}…` is {} characters; ssm_prefix may have at most 200 (it is also the value of an EC2 tag)",
            s.chars().take(24).collect::<String>(),
            s.chars().count()
        )));
    }
    SsmPath::parse_writable(&s).map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[default]
    Ec2,
    Imagebuilder,
}

/// Where a pipeline's work happens, with that provider's settings (and only that one's).
#[derive(Debug, Clone)]
pub enum Settings {
    Local(LocalSettings),
    Aws(Box<AwsSettings>),
}

impl Settings {
    pub fn kind(&self) -> ProviderKind {
        match self {
            Settings::Local(_) => ProviderKind::Local,
            Settings::Aws(_) => ProviderKind::Aws,
        }
    }

    /// The AWS settings of an aws pipeline.
    pub fn aws(&self) -> Option<&AwsSettings> {
        match self {
            Settings::Aws(a) => Some(a),
            Settings::Local(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cpus;

    #[test]
    fn auto_shares_the_host_cores_among_the_vms_of_a_run() {
        assert_eq!(Cpus::Auto.resolve(2, 1), 2);
        assert_eq!(Cpus::Auto.resolve(2, 2), 1);
        assert_eq!(Cpus::Auto.resolve(2, 3), 1, "never below one");
        assert_eq!(Cpus::Auto.resolve(64, 1), Cpus::AUTO_MAX);
        assert_eq!(Cpus::Auto.resolve(8, 2), 4);
        assert_eq!(
            Cpus::Count(3).resolve(2, 2),
            3,
            "a count is taken as written"
        );
    }
}
