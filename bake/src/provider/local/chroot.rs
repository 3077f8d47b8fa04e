//! The offline builder: the recipe applied to the image's own filesystem, without booting it,
//! the way image builders such as mkosi and debos work. The builder disk is a raw copy of the
//! base; every guest call loop-mounts it in a private mount, PID, network, UTS and IPC namespace
//! and runs the script in a chroot of it, then unmounts it. The namespace dies with the call
//! (and with bake, even on SIGKILL), so no mount, loop device or process outlives it; a step
//! has no network, as on the VM builder. What the recipe made is still proved by booting the
//! image: the canary VM and its validators judge the final image as before.
//!
//! What a chroot is not: a running system. No systemd as PID 1 (`systemctl mask`/`enable`
//! work, `start`/`stop` do not), no cloud-init first boot, no snapd. Recipes whose steps need
//! one keep the VM builder (`builder = "vm"` in the pipeline's `[local]` table).

use crate::guest::{Guest, Ran};
use crate::{Error, Result};
use async_trait::async_trait;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The namespace's first process: mounts the image and what a package script expects
/// (/proc, a read-only /sys, a /dev of the harmless nodes and its own devpts, /run as tmpfs),
/// copies the call's files into /run/bake (gone with the tmpfs, so never in the image), runs
/// the script in the chroot with a clean environment, then trims and unmounts. Its own
/// failures go to `$payload/helper-error`, so they are never taken for the script's exit code.
const HELPER: &str = r#"set -u
disk=$1 root=$2 payload=$3; shift 3
fail() { printf '%s\n' "$*" > "$payload/helper-error"; exit 125; }
mount -o loop "$disk" "$root" 2>"$payload/helper-log" || fail "cannot loop-mount the builder disk $disk (needs root and loop devices; or set builder = \"vm\"): $(cat "$payload/helper-log")"
mount -t proc proc "$root/proc" || fail "cannot mount /proc in $root"
mount -t sysfs -o ro sysfs "$root/sys" || fail "cannot mount /sys in $root"
mount -t tmpfs -o mode=0755,size=256m tmpfs "$root/run" || fail "cannot mount /run in $root"
mount -t tmpfs -o mode=0755,size=1m tmpfs "$root/dev" || fail "cannot mount /dev in $root"
for n in null zero full random urandom tty; do
  : > "$root/dev/$n" && mount --bind "/dev/$n" "$root/dev/$n" || fail "cannot bind /dev/$n"
done
mkdir "$root/dev/pts" "$root/dev/shm" || fail "cannot make /dev/pts"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts" || fail "cannot mount devpts"
ln -s pts/ptmx "$root/dev/ptmx"; ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"; ln -s /proc/self/fd/1 "$root/dev/stdout"; ln -s /proc/self/fd/2 "$root/dev/stderr"
hostname bake-builder
mkdir -m 0700 "$root/run/bake" && cp -a "$payload/in/." "$root/run/bake/" || fail "cannot copy the script into $root/run/bake"
rc=0
chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb "$@" || rc=$?
fstrim "$root" >/dev/null 2>&1 || true
umount -R "$root" 2>"$payload/helper-log" || fail "cannot unmount $root: $(cat "$payload/helper-log")"
exit $rc
"#;

/// What a script run in the chroot returns, bytes as they came.
struct Output {
    code: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// One builder disk, reached through chroots of it.
pub(super) struct ChrootGuest {
    /// The raw builder disk (ext4, the whole device).
    disk: PathBuf,
    /// An empty directory the namespace mounts the disk on.
    root: PathBuf,
    /// Where each call stages its script and files.
    work: PathBuf,
}

impl ChrootGuest {
    /// The guest of the raw ext4 `disk`, mounted on the empty directory `root` per call, with
    /// each call's script staged under `work`.
    pub(super) fn new(disk: PathBuf, root: PathBuf, work: PathBuf) -> ChrootGuest {
        ChrootGuest { disk, root, work }
    }

    /// Runs `script` in the chroot with `args` and `env`; `files` are staged beside it in
    /// /run/bake. Up to `timeout`: then the namespace is killed with everything in it.
    async fn exec(
        &self,
        label: &str,
        script: &[u8],
        files: &[(&str, &[u8])],
        args: &[&str],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Output> {
        let failed = |what: String| Error::provider("local", format!("{label}: {what}"));
        let payload = self.work.join(format!(
            "chroot-call-{}",
            hex::encode(rand::random::<[u8; 6]>())
        ));
        let staged = (|| -> std::io::Result<()> {
            use std::os::unix::fs::PermissionsExt;
            let dir = payload.join("in");
            std::fs::create_dir_all(&dir)?;
            let script_path = dir.join("script");
            std::fs::write(&script_path, script)?;
            std::fs::set_permissions(&script_path, std::fs::Permissions::from_mode(0o700))?;
            for (name, content) in files {
                std::fs::write(dir.join(name), content)?;
            }
            Ok(())
        })();
        let result = match staged {
            Err(e) => Err(failed(format!(
                "staging the script in {}: {e}",
                payload.display()
            ))),
            Ok(()) => self.spawn(label, &payload, args, env, timeout).await,
        };
        let _ = std::fs::remove_dir_all(&payload);
        result
    }

    async fn spawn(
        &self,
        label: &str,
        payload: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Output> {
        let failed = |what: String| Error::provider("local", format!("{label}: {what}"));
        let mut c = tokio::process::Command::new("unshare");
        c.args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--net",
            "--uts",
            "--ipc",
            "--fork",
            "--kill-child",
            "--",
            "sh",
            "-c",
            HELPER,
            "bake-chroot",
        ])
        .arg(&self.disk)
        .arg(&self.root)
        .arg(payload)
        .args(env.iter().map(|(k, v)| format!("{k}={v}")))
        .arg("/run/bake/script")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; the kernel kills unshare when bake dies, and
        // unshare's --kill-child takes the namespace, mounts and all, with it.
        unsafe {
            c.as_std_mut().pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = c.spawn().map_err(|e| {
            failed(format!(
                "cannot run `unshare` for the offline builder: {e} (run scripts/setup-host)"
            ))
        })?;
        let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Err(_) => {
                return Err(failed(format!(
                    "did not finish within {} (killed with its namespace)",
                    humantime::format_duration(timeout)
                )))
            }
            Ok(r) => r.map_err(|e| failed(format!("waiting for the chroot: {e}")))?,
        };
        if let Ok(why) = std::fs::read_to_string(payload.join("helper-error")) {
            return Err(failed(format!("offline builder: {}", why.trim())));
        }
        Ok(Output {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    /// The bytes of `path` in the image (symlinks resolved inside it).
    pub(super) async fn read_file(&self, label: &str, path: &str) -> Result<Vec<u8>> {
        let out = self
            .exec(
                label,
                b"#!/bin/sh\nexec cat -- \"$1\"\n",
                &[],
                &[path],
                &[],
                Duration::from_secs(300),
            )
            .await?;
        if out.code != 0 {
            return Err(Error::provider(
                "local",
                format!(
                    "{label}: reading {path} in the image: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(out.stdout)
    }
}

#[async_trait]
impl Guest for ChrootGuest {
    fn transport(&self) -> &'static str {
        "chroot"
    }

    /// Output goes through a pipe, whole.
    fn stdout_limit(&self) -> Option<usize> {
        None
    }

    async fn put(
        &mut self,
        label: &str,
        path: &str,
        content: &[u8],
        mode: u32,
        timeout: Duration,
    ) -> Result<()> {
        // Written from inside the chroot, so a symlink on the way resolves in the image,
        // never on the host; then checked there like every transport's put.
        let script = crate::guest::put_script(label, path, content, mode, "cat /run/bake/content");
        let out = self
            .exec(
                label,
                script.as_bytes(),
                &[("content", content)],
                &[path],
                &[],
                timeout,
            )
            .await?;
        if out.code != 0 {
            let ran = ran(out);
            return Err(Error::provider(
                "local",
                format!("{label}: writing {path}: {}", ran.tail(4)),
            ));
        }
        Ok(())
    }

    async fn run(
        &mut self,
        label: &str,
        script: &[u8],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Ran> {
        Ok(ran(self
            .exec(label, script, &[], &[], env, timeout)
            .await?))
    }
}

fn ran(out: Output) -> Ran {
    Ran {
        exit_code: out.code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
