//! The recipes' shared step scripts, run on this host as a builder would run them: in a private
//! mount namespace whose `/run/systemd/system` says "a booted system" (as on a builder instance),
//! with stand-ins for the programs they ask on `PATH`. Needs root, as the offline builder does.

use crate::common::repo;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Writes an executable stand-in for `name` into `bin`.
fn stand_in(bin: &Path, name: &str, body: &str) {
    let path = bin.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs `settle-first-boot.sh` with a `cloud-init` whose `status --wait` does `wait`; its exit
/// code and stdout.
fn settle(wait: &str) -> (i32, String) {
    let bin = tempfile::tempdir().unwrap();
    stand_in(
        bin.path(),
        "cloud-init",
        &format!("case \"$*\" in *--wait*) {wait} ;; esac\necho 'status: running'"),
    );
    // Nothing to stop on this host; the script ignores a unit it cannot stop.
    stand_in(bin.path(), "systemctl", "exit 0");
    let script = repo().join("recipes/steps/settle-first-boot.sh");
    // A process namespace of its own too: the script looks for package managers in /proc, and
    // this host's other tests may be building a base with apt-get at the same moment (a
    // builder VM sees only its own processes).
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
        ])
        .arg("mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && exec sh \"$0\"")
        .arg(&script)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.path().display(),
                std::env::var("PATH").unwrap()
            ),
        )
        .env("BAKE_SETTLE_LIMIT", "2")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A first boot that never finishes stops the bake (a half-booted builder is no base to bake
/// on); one that finished with errors is said and the bake goes on; a clean one just settles.
#[test]
fn settle_first_boot_stops_on_a_first_boot_that_never_finishes() {
    let (code, out) = settle("exec sleep 30");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("cloud-init's first boot did not finish within 2s"),
        "{out}"
    );

    let (code, out) = settle("exit 2");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("cloud-init finished with problems (exit 2; going on)"),
        "{out}"
    );

    let (code, out) = settle("exit 0");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("first boot settled"), "{out}");
    assert!(!out.contains("problems"), "{out}");
}
