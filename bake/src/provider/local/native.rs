//! The host's own tools, lent to a base build for another architecture while it installs.
//!
//! An arm64 base is built on an x86_64 host under qemu-user: every program the package scripts
//! and `mkinitramfs` start is emulated, and starting one costs 40-80 ms before it does
//! anything (measured: the initramfs alone starts ~3,800 of them, 290 s). Programs whose work
//! does not depend on the architecture they run on (copying, linking, reading links, `sed`,
//! `grep`, unpacking a .deb) do the same work natively. So once the essential packages are in,
//! the host's copies of those tools stand in for the guest's at the same paths, and before the
//! tree becomes a disk the guest's own are put back. What the base contains does not change:
//! the same files are unpacked and copied, by the host's build of the same program.
//!
//! The host's programs need the host's dynamic loader and libraries inside the tree. The loader
//! goes to `/.bake-native/ld.so` (each lent program's interpreter path is rewritten to it,
//! since `/lib64` in the tree would be mirrored into the initramfs), the libraries to the
//! host's multiarch directory under `/usr/lib`, where that loader looks by default and no
//! program of the guest's architecture does. [`NativeTools::check`] then proves that no copy
//! of anything lent is left in the tree or in an initramfs built in it.

mod formats;
use formats::{initramfs_files, parse_ldd, set_interpreter};

use crate::{Arch, Error, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The tools lent: each does work that does not depend on the CPU it runs on, and none is
/// something a package or an initramfs hook copies into what it builds (`check` proves the
/// second for each build). Never lend one whose answer names the CPU or reads the guest's
/// binaries (`uname`, `arch`, `nproc`, `dpkg`, `ldd`, `ldconfig`), nor an interpreter whose
/// modules are the guest's (`perl`, `python3`). Measured on a bookworm arm64 base: dpkg starts `dpkg-deb`,
/// `dpkg-split` and `tar` for every package it unpacks; `mkinitramfs` starts `readlink`,
/// `realpath`, `cp` and `mkdir` for every module it copies; the shell runs every maintainer
/// script and hook.
const TOOLS: &[&str] = &[
    "dpkg-deb",
    "dpkg-split",
    "tar",
    "dash",
    "cp",
    "mv",
    "rm",
    "ln",
    "mkdir",
    "chmod",
    "chown",
    "touch",
    "cat",
    "readlink",
    "realpath",
    "basename",
    "dirname",
    "mktemp",
    "sort",
    "tsort",
    "env",
    "test",
    "tr",
    "stat",
    "head",
    "tail",
    "cut",
    "wc",
    "uniq",
    "md5sum",
    "seq",
    "base64",
    "sed",
    "grep",
    "find",
];

/// Where the lent loader lives in the tree; short enough to replace any loader path in place.
const LOADER_IN_TREE: &str = "/.bake-native/ld.so";

/// Size, then SHA-256 and a name, of every staged file: what must not be left in the base.
type Staged = HashMap<u64, Vec<([u8; 32], String)>>;

/// The host's tools, staged (loader, libraries, tools with their interpreter rewritten) for
/// lending to one base build.
#[derive(Debug)]
pub struct NativeTools {
    stage: PathBuf,
    /// The host's multiarch library directory name (`x86_64-linux-gnu`).
    multiarch: String,
    staged: Staged,
}

impl NativeTools {
    /// Stages the host's tools under `stage` when a base for `target` is built on a host of
    /// another architecture; `None` when there is nothing to lend (same architecture, or the
    /// host's tools are not dynamic ELF programs of one loader), and the build emulates all.
    ///
    /// Long because each tool's loader, libraries and patched copy are staged in one pass whose
    /// order the lend script relies on.
    pub async fn stage(target: Arch, stage: &Path) -> Result<Option<NativeTools>> {
        if Arch::host().is_none_or(|host| host == target) {
            return Ok(None);
        }
        let mut tools = Vec::new();
        for tool in TOOLS {
            let found = ["/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.is_file());
            match found {
                Some(p) => tools.push((tool, p)),
                None => {
                    tracing::info!("the host has no {tool}: the base build emulates its own");
                }
            }
        }
        let mut loader: Option<PathBuf> = None;
        let mut libs: Vec<PathBuf> = Vec::new();
        for (tool, path) in &tools {
            // Without ldd's answer nothing can be lent; the build then emulates everything.
            let out = match super::cmd::run("ldd", &[path.display().to_string()], None).await {
                Ok(out) => out,
                Err(e) => {
                    tracing::info!("cannot list {tool}'s libraries ({e}): nothing is lent");
                    return Ok(None);
                }
            };
            let Some((l, deps)) = parse_ldd(&out) else {
                tracing::info!("{tool} is not a dynamic program ({out}): nothing is lent");
                return Ok(None);
            };
            match &loader {
                Some(have) if *have != l => return Ok(None),
                _ => loader = Some(l),
            }
            for d in deps {
                if !libs.contains(&d) {
                    libs.push(d);
                }
            }
        }
        let Some(loader) = loader else {
            return Ok(None);
        };
        let multiarch = match libs
            .first()
            .and_then(|l| l.parent())
            .and_then(|d| d.file_name())
        {
            Some(m) => m.to_string_lossy().into_owned(),
            None => return Ok(None),
        };
        let io = |what: String| move |e| Error::io(what, e);
        for sub in ["bin", "lib"] {
            let d = stage.join(sub);
            std::fs::create_dir_all(&d).map_err(io(format!("creating {}", d.display())))?;
        }
        let mut staged = Staged::new();
        let mut keep = |name: String, bytes: &[u8]| {
            staged
                .entry(bytes.len() as u64)
                .or_default()
                .push((Sha256::digest(bytes).into(), name));
        };
        let read = |p: &Path| std::fs::read(p).map_err(io(format!("reading {}", p.display())));
        let write = |p: &Path, b: &[u8]| {
            std::fs::write(p, b).map_err(io(format!("writing {}", p.display())))
        };
        let executable = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
                .map_err(io(format!("making {} executable", p.display())))
        };
        let bytes = read(&loader)?;
        write(&stage.join("ld.so"), &bytes)?;
        // The kernel maps a program's interpreter only if it may execute it.
        executable(&stage.join("ld.so"))?;
        keep("the host's dynamic loader".into(), &bytes);
        for lib in &libs {
            let bytes = read(lib)?;
            let name = lib.file_name().unwrap_or_default();
            write(&stage.join("lib").join(name), &bytes)?;
            keep(format!("the host's {}", lib.display()), &bytes);
        }
        for (tool, path) in &tools {
            let mut bytes = read(path)?;
            if !set_interpreter(&mut bytes, LOADER_IN_TREE) {
                return Ok(None);
            }
            let to = stage.join("bin").join(tool);
            write(&to, &bytes)?;
            executable(&to)?;
            keep(format!("the host's {tool}"), &bytes);
        }
        let tools = NativeTools {
            stage: stage.to_path_buf(),
            multiarch,
            staged,
        };
        write(&stage.join("lend.sh"), tools.lend_script().as_bytes())?;
        write(&stage.join("return.sh"), tools.return_script().as_bytes())?;
        Ok(Some(tools))
    }

    /// The mmdebstrap hook that lends the tools (an essential hook: run on the host once the
    /// essential packages are in, the tree as `$1`).
    pub fn lend_hook(&self) -> String {
        format!("sh '{}/lend.sh' \"$1\"", self.stage.display())
    }

    /// The mmdebstrap hook that gives the guest's tools back (a customize hook, after the
    /// last one that runs programs in the tree).
    pub fn return_hook(&self) -> String {
        format!("sh '{}/return.sh' \"$1\"", self.stage.display())
    }

    /// The lending script: the guest's own tools go to `/.bake-native/emulated/<path>`, the
    /// host's take their place.
    fn lend_script(&self) -> String {
        format!(
            r#"set -e; r="$1"; s='{stage}'; m='{multiarch}'
mkdir "$r/.bake-native" "$r/.bake-native/emulated"
cp "$s/ld.so" "$r{loader}"
if [ ! -e "$r/usr/lib/$m" ]; then mkdir "$r/usr/lib/$m"; touch "$r/.bake-native/made-libdir"; fi
: > "$r/.bake-native/libs"
for l in "$s"/lib/*; do n=${{l##*/}}; [ -e "$r/usr/lib/$m/$n" ] && continue; cp "$l" "$r/usr/lib/$m/$n"; echo "$n" >> "$r/.bake-native/libs"; done
for b in "$s"/bin/*; do n=${{b##*/}}
  for d in usr/bin bin; do f="$r/$d/$n"; [ -f "$f" ] && [ ! -L "$f" ] || continue
    mkdir -p "$r/.bake-native/emulated/$d"; mv "$f" "$r/.bake-native/emulated/$d/$n"; cp -p "$b" "$f"; break
  done
done
echo "I: the host's own tools stand in for the emulated ones while packages install"
"#,
            stage = self.stage.display(),
            multiarch = self.multiarch,
            loader = LOADER_IN_TREE,
        )
    }

    /// The returning script: each guest tool goes back unless dpkg replaced the lent one
    /// meanwhile (then the guest's newer file stays), and the loader and libraries go.
    fn return_script(&self) -> String {
        format!(
            r#"set -e; r="$1"; s='{stage}'; m='{multiarch}'
e="$r/.bake-native/emulated"
for d in usr/bin bin; do [ -d "$e/$d" ] || continue
  for f in "$e/$d"/*; do n=${{f##*/}}
    if cmp -s "$r/$d/$n" "$s/bin/$n"; then mv -f "$f" "$r/$d/$n"; else rm -f "$f"; fi
  done
done
while read -r n; do rm -f "$r/usr/lib/$m/$n"; done < "$r/.bake-native/libs"
if [ -e "$r/.bake-native/made-libdir" ]; then rmdir "$r/usr/lib/$m"; fi
rm -rf "$r/.bake-native"
echo "I: the guest's own tools are back"
"#,
            stage = self.stage.display(),
            multiarch = self.multiarch,
        )
    }

    /// Fails, naming the file, if anything lent is still in `rootfs` or in an initramfs under
    /// its `/boot`: the base must hold only what its packages put there.
    pub fn check(&self, rootfs: &Path) -> Result<()> {
        if rootfs.join(".bake-native").exists() {
            return Err(self.left(format!("{}/.bake-native", rootfs.display())));
        }
        let boot = rootfs.join("boot");
        let mut stack = vec![rootfs.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir)
                .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
            for e in entries.flatten() {
                let Ok(t) = e.file_type() else { continue };
                if t.is_dir() {
                    stack.push(e.path());
                } else if t.is_file() {
                    let path = e.path();
                    let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                    if self.staged.contains_key(&size) {
                        let bytes = std::fs::read(&path)
                            .map_err(|err| Error::io(format!("reading {}", path.display()), err))?;
                        if let Some(what) = self.lent(&bytes) {
                            return Err(self.left(format!("{what} at {}", path.display())));
                        }
                    }
                    let name = e.file_name();
                    if dir == boot && name.to_string_lossy().starts_with("initrd.img") {
                        self.check_initramfs(&path)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn check_initramfs(&self, path: &Path) -> Result<()> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        for (name, data) in initramfs_files(&bytes).map_err(|why| {
            Error::provider(
                "local",
                format!("cannot read the initramfs {}: {why}", path.display()),
            )
        })? {
            if let Some(what) = self.lent(&data) {
                return Err(self.left(format!("{what} as {name} in {}", path.display())));
            }
        }
        Ok(())
    }

    fn lent(&self, bytes: &[u8]) -> Option<&str> {
        let same_size = self.staged.get(&(bytes.len() as u64))?;
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        same_size
            .iter()
            .find(|(d, _)| *d == digest)
            .map(|(_, name)| name.as_str())
    }

    fn left(&self, what: String) -> Error {
        Error::provider(
            "local",
            format!("the base build left a tool lent from the host in the base: {what}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::formats::tests::newc;
    use super::*;

    /// A staged tool found in the tree or in an initramfs under /boot fails the check, by name.
    #[test]
    fn a_lent_tool_left_behind_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::write(root.join("usr/bin/cp"), b"guest cp").unwrap();
        let mut staged = Staged::new();
        staged
            .entry(7)
            .or_default()
            .push((Sha256::digest(b"host cp").into(), "the host's cp".into()));
        let tools = NativeTools {
            stage: root.join("stage"),
            multiarch: "x86_64-linux-gnu".into(),
            staged,
        };
        std::fs::write(
            root.join("boot/initrd.img-6.1"),
            newc(&[("usr/bin/cp", b"guest cp")]),
        )
        .unwrap();
        tools.check(root).unwrap();

        std::fs::write(
            root.join("boot/initrd.img-6.1"),
            newc(&[("usr/bin/cp", b"host cp")]),
        )
        .unwrap();
        let err = tools.check(root).unwrap_err().to_string();
        assert!(err.contains("the host's cp as usr/bin/cp in"), "{err}");

        std::fs::write(root.join("boot/initrd.img-6.1"), newc(&[])).unwrap();
        std::fs::write(root.join("usr/bin/cp"), b"host cp").unwrap();
        let err = tools.check(root).unwrap_err().to_string();
        assert!(err.contains("the host's cp at"), "{err}");
    }

    /// For real, on a tree of the other architecture's packages (mmdebstrap's `extract`
    /// variant: unpacked, nothing run): the lent tools run natively in a chroot of it beside
    /// the guest's own emulated ones, a tool dpkg replaced meanwhile keeps the guest's new
    /// file, every other guest tool comes back byte for byte, nothing lent is left, and a lent
    /// tool copied into the tree is caught by name. Needs root, qemu-user's binfmt handler
    /// and the Debian mirror (scripts/setup-host).
    // Long because it is one real build of a foreign tree, checked at each stage of the lending.
    #[tokio::test]
    async fn lent_tools_run_in_a_foreign_tree_and_all_go_back() {
        let host = Arch::host().expect("a host bake runs on");
        let target = if host == Arch::X86_64 {
            Arch::Arm64
        } else {
            Arch::X86_64
        };
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let run = |program: &str, args: &[&str]| {
            let out = std::process::Command::new(program)
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{program} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        run(
            "mmdebstrap",
            &[
                "--quiet",
                "--variant=extract",
                // Laid out as the bases are: /bin, /sbin and /lib are links into /usr.
                "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
                &format!("--arch={}", target.debian()),
                "--include=dash,coreutils,sed,grep",
                "bookworm",
                tree.to_str().unwrap(),
            ],
        );
        let guest = |tool: &str| std::fs::read(tree.join("usr/bin").join(tool)).unwrap();
        let (readlink_before, cp_before) = (guest("readlink"), guest("cp"));

        let tools = NativeTools::stage(target, &dir.path().join("stage"))
            .await
            .unwrap()
            .expect("the host lends to a foreign tree");
        let root = tree.to_str().unwrap();
        run("sh", &[&format!("{}/lend.sh", tools.stage.display()), root]);
        assert_eq!(
            &guest("readlink")[..20],
            &std::fs::read("/usr/bin/readlink").unwrap()[..20],
            "the host's readlink stands in the guest's place"
        );
        assert_eq!(
            run("chroot", &[root, "/usr/bin/readlink", "-f", "/bin"]),
            "/usr/bin\n"
        );
        assert_eq!(
            run("chroot", &[root, "/bin/sh", "-c", "mkdir -p /tmp && echo 12 > /tmp/a && cp /tmp/a /tmp/v && sed -n '1s/^/v/p' /tmp/v | grep -c '^v12'"]),
            "1\n",
            "lent dash, cp, sed and grep work together"
        );
        assert!(
            !run("chroot", &[root, "/usr/bin/nproc"]).trim().is_empty(),
            "an emulated guest program still runs"
        );
        // dpkg upgrading sed while lent: the guest's new file must stay.
        std::fs::write(tree.join("usr/bin/sed"), b"a newer guest sed").unwrap();

        run(
            "sh",
            &[&format!("{}/return.sh", tools.stage.display()), root],
        );
        assert_eq!(guest("readlink"), readlink_before);
        assert_eq!(guest("cp"), cp_before);
        assert_eq!(guest("sed"), b"a newer guest sed");
        assert!(!tree.join(".bake-native").exists());
        assert!(!tree.join("usr/lib").join(&tools.multiarch).exists());
        tools.check(&tree).unwrap();

        std::fs::copy(tools.stage.join("bin/cp"), tree.join("usr/bin/cp-copy")).unwrap();
        let err = tools.check(&tree).unwrap_err().to_string();
        assert!(
            err.contains("the host's cp at") && err.contains("cp-copy"),
            "{err}"
        );
    }
}
