//! What every provider does on a canary before its validators run: say which OS booted,
//! mount the image's own root filesystem read-only (a second disk made from the image), and
//! decide for each validator whether it runs here, with which environment, or what it says
//! without running (not applicable to this distribution, no cluster, no image root).
//!
//! The shell is `guest/prepare-canary.sh`; providers upload it like any script and pass the
//! device paths where their second disk shows up.

use crate::input::validate::Validator;
use crate::verdict::CheckResult;

/// The guest script that prepares a canary (see the module doc).
pub const PREPARE_SCRIPT: &str = include_str!("guest/prepare-canary.sh");

/// Where the canary mounts the image's root filesystem as shipped, read-only.
pub const IMAGE_ROOT: &str = "/run/bake/image-root";

/// The serial the local provider gives the read-only image drive (virtio-blk: at most 20).
pub const LOCAL_IMAGE_SERIAL: &str = "bake-image";

/// What the prepare script found on the canary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// os-release `ID` of the booted system (`debian`, `ubuntu`, `amzn`).
    pub os_id: String,
    /// os-release `ID_LIKE`, split on spaces.
    pub os_like: Vec<String>,
    pub os_version: String,
    /// `Ok(mount point)` when the image's root is mounted, else why not.
    pub image_root: Result<String, String>,
    /// What systemd said of the first boot once the script stopped waiting for it (`running`,
    /// `degraded`; `starting` when it was not over in time). None without systemd.
    pub boot_state: Option<String>,
}

impl Prepared {
    /// Reads the script's `key=value` lines.
    pub fn parse(stdout: &str) -> Prepared {
        let mut p = Prepared {
            os_id: String::new(),
            os_like: Vec::new(),
            os_version: String::new(),
            image_root: Err("the prepare script said nothing about the image root".into()),
            boot_state: None,
        };
        for line in stdout.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim() {
                "os_id" => p.os_id = v.to_string(),
                "os_like" => p.os_like = v.split_whitespace().map(str::to_string).collect(),
                "os_version" => p.os_version = v.to_string(),
                "image_root" => p.image_root = Ok(v.to_string()),
                "image_root_error" => p.image_root = Err(v.to_string()),
                "boot_state" => p.boot_state = Some(v.to_string()),
                _ => {}
            }
        }
        p
    }

    /// Whether the canary's first boot was still under way when the script stopped waiting.
    pub fn still_booting(&self) -> bool {
        matches!(
            self.boot_state.as_deref(),
            Some("starting" | "initializing" | "")
        )
    }

    /// `ubuntu 24.04` — the booted system, for messages.
    pub fn os(&self) -> String {
        match (self.os_id.as_str(), self.os_version.as_str()) {
            ("", _) => "an unknown distribution".to_string(),
            (id, "") => id.to_string(),
            (id, v) => format!("{id} {v}"),
        }
    }

    /// True when `v` applies to the booted distribution.
    pub fn applies(&self, v: &Validator) -> bool {
        v.applies_to.is_empty()
            || v.applies_to
                .iter()
                .any(|d| *d == self.os_id || self.os_like.iter().any(|l| l == d))
    }
}

/// Shell that exits 0 with a "does not apply" line when the running system is none of the
/// validator's `applies_to` distributions (the same match as [`Prepared::applies`]), for
/// places that run validators without bake's planning (Image Builder's test phase).
pub fn applies_guard(v: &Validator) -> Option<String> {
    if v.applies_to.is_empty() {
        return None;
    }
    let patterns: Vec<String> = v
        .applies_to
        .iter()
        .map(|d| format!("*\" {d} \"*"))
        .collect();
    Some(format!(
        "ID=; ID_LIKE=; . /etc/os-release 2>/dev/null || . /usr/lib/os-release 2>/dev/null\n\
         case \" $ID $ID_LIKE \" in {}) ;; *) echo \"{} applies to {}; this system is $ID: not applicable\"; exit 0 ;; esac\n",
        patterns.join("|"),
        v.name,
        v.applies_to.join(", ")
    ))
}

/// What happens to one validator on this canary.
#[derive(Debug)]
pub enum Planned<'a> {
    /// Run it with these extra environment variables.
    Run(&'a Validator, Vec<(&'static str, String)>),
    /// Its result is known without running it.
    Settled(CheckResult),
}

/// Decides, for each validator, whether it runs on this canary. `no_cluster` is why cluster
/// checks cannot run here (None: the canary joins a cluster, they run). A check that does not
/// apply to the booted distribution is not applicable (does not block); a check of the image's
/// root that cannot see it is skipped (blocks: the image was not judged).
pub fn plan<'a>(
    validators: &'a [Validator],
    prepared: &Prepared,
    no_cluster: Option<&str>,
) -> Vec<Planned<'a>> {
    validators
        .iter()
        .map(|v| {
            if !prepared.applies(v) {
                return Planned::Settled(CheckResult::not_applicable(
                    &v.name,
                    format!(
                        "applies to {}; this canary runs {}",
                        v.applies_to.join(", "),
                        prepared.os()
                    ),
                ));
            }
            if v.needs_cluster {
                if let Some(why) = no_cluster {
                    return Planned::Settled(CheckResult::not_applicable(&v.name, why));
                }
            }
            let mut env = Vec::new();
            if v.reads_image {
                match &prepared.image_root {
                    Ok(root) => env.push(("BAKE_IMAGE_ROOT", root.clone())),
                    Err(why) => {
                        return Planned::Settled(CheckResult::skipped(
                            &v.name,
                            format!("cannot see the image as shipped: {why}"),
                        ))
                    }
                }
            }
            Planned::Run(v, env)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::validate::Scope;
    use crate::verdict::Status;

    fn v(name: &str, applies_to: &[&str], reads_image: bool, needs_cluster: bool) -> Validator {
        Validator {
            name: name.into(),
            checks: String::new(),
            script: format!("{name}.sh"),
            content: Vec::new(),
            judged_by: crate::input::validate::JudgedBy::Script,
            scope: Scope::Node,
            needs_cluster,
            reads_image,
            applies_to: applies_to.iter().map(|s| s.to_string()).collect(),
            not_applicable_when: None,
            audit: false,
        }
    }

    #[test]
    fn parses_what_the_script_prints() {
        let p = Prepared::parse(
            "os_id=ubuntu\nos_like=debian\nos_version=\"24.04\"\nimage_root=/run/bake/image-root\nimage_device=/dev/nvme1n1p1\n",
        );
        assert_eq!(p.os_id, "ubuntu");
        assert_eq!(p.os_like, vec!["debian"]);
        assert_eq!(p.os(), "ubuntu 24.04");
        assert_eq!(p.image_root, Ok("/run/bake/image-root".to_string()));
        let p = Prepared::parse("os_id=amzn\nos_like=fedora\nimage_root_error=no disk made from the image is attached (looked for: /dev/sdf)\n");
        assert_eq!(
            p.image_root,
            Err("no disk made from the image is attached (looked for: /dev/sdf)".to_string())
        );
        assert!(Prepared::parse("").image_root.is_err());
    }

    #[test]
    fn plans_by_distribution_cluster_and_image_root() {
        let all = [
            v("apt-timers", &["debian"], false, false),
            v("dnf-timers", &["amzn", "fedora"], false, false),
            v("host-keys", &[], true, false),
            v("node-ready", &[], false, true),
        ];
        let ubuntu = Prepared::parse("os_id=ubuntu\nos_like=debian\nimage_root=/r\n");
        let planned = plan(&all, &ubuntu, Some("no cluster here"));
        let kinds: Vec<String> = planned
            .iter()
            .map(|p| match p {
                Planned::Run(v, env) => format!("run {} {env:?}", v.name),
                Planned::Settled(r) => {
                    format!("{} {} n/a={}", r.name, r.status, r.not_applicable)
                }
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                "run apt-timers []".to_string(),
                "dnf-timers not_applicable n/a=true".into(),
                "run host-keys [(\"BAKE_IMAGE_ROOT\", \"/r\")]".into(),
                "node-ready not_applicable n/a=true".into(),
            ]
        );
        // No image root: the image was not judged, which blocks.
        let blind = Prepared::parse("os_id=debian\nimage_root_error=nothing attached\n");
        match &plan(&all[2..3], &blind, None)[0] {
            Planned::Settled(r) => {
                assert_eq!(r.status, Status::Skipped);
                assert!(!r.not_applicable);
                assert!(r.reason.as_deref().unwrap().contains("nothing attached"));
            }
            other => panic!("{other:?}"),
        }
        // With a cluster, node-ready runs.
        assert!(matches!(
            plan(&all[3..], &ubuntu, None)[0],
            Planned::Run(..)
        ));
    }

    /// The guard, run for real by sh with a fake os-release: the same match as `applies`.
    #[test]
    fn the_guard_matches_like_the_plan() {
        let dir = tempfile::tempdir().unwrap();
        let check = v("apt-timers", &["debian"], false, false);
        let guard = applies_guard(&check).unwrap();
        for (os, applies) in [
            ("ID=debian\n", true),
            ("ID=ubuntu\nID_LIKE=debian\n", true),
            ("ID=amzn\nID_LIKE=\"centos rhel fedora\"\n", false),
        ] {
            let rel = dir.path().join("os-release");
            std::fs::write(&rel, os).unwrap();
            let script =
                guard.replace("/etc/os-release", &rel.display().to_string()) + "echo RAN\n";
            let out = std::process::Command::new("sh")
                .args(["-c", &script])
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success());
            assert_eq!(stdout.contains("RAN"), applies, "{os}: {stdout}");
            assert_eq!(
                Prepared::parse(&os.replace("ID_LIKE=", "os_like=").replace("ID=", "os_id="))
                    .applies(&check),
                applies,
                "{os}"
            );
        }
        assert!(applies_guard(&v("any", &[], false, false)).is_none());
    }

    /// The script itself, run for real: reports the host's OS, and with no device to mount
    /// says so instead of failing.
    #[test]
    fn the_script_reports_the_os_and_a_missing_disk() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("prepare");
        std::fs::write(&script, PREPARE_SCRIPT).unwrap();
        let root = dir.path().join("root");
        // A regular file is no block device: nothing to mount. Keep the wait short by
        // giving only paths that can never appear.
        let out = std::process::Command::new("timeout")
            .args(["90", "sh"])
            .arg(&script)
            .arg(&root)
            .arg(dir.path().join("never"))
            .env("BAKE_DEVICE_WAIT", "1")
            .output()
            .unwrap();
        assert!(out.status.success());
        let p = Prepared::parse(&String::from_utf8_lossy(&out.stdout));
        assert!(!p.os_id.is_empty(), "{p:?}");
        let why = p.image_root.unwrap_err();
        assert!(why.contains("no disk made from the image"), "{why}");
    }
}
