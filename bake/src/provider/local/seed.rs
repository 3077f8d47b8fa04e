//! The NoCloud seed a local VM boots with, so cloud-init's first boot does what it does on EC2:
//! user data runs (the dead-man's timer every bake instance carries), host keys are generated,
//! the instance gets its own ID. A small FAT image labelled `CIDATA` with `meta-data`,
//! `user-data` and `network-config`, made with `mkfs.vfat` and `mcopy` (no loop mounts, no root).

use super::cmd;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The seed's size in KiB: three small text files.
const SEED_KIB: u32 = 1024;

/// What goes on a seed.
pub struct Seed<'a> {
    /// `meta-data`'s `instance-id`: new per VM, so cloud-init treats the boot as a first boot.
    pub instance_id: &'a str,
    pub hostname: &'a str,
    /// `user-data` as cloud-init reads it (a `#!` script, `#cloud-config` or MIME multipart).
    pub user_data: &'a str,
}

/// Writes the seed image to `dir/<name>.seed.img` and returns its path.
pub async fn write(dir: &Path, name: &str, seed: &Seed<'_>) -> Result<PathBuf> {
    let files = dir.join(format!("{name}.seed"));
    std::fs::create_dir_all(&files)
        .map_err(|e| Error::io(format!("creating {}", files.display()), e))?;
    let write = |file: &str, text: &str| {
        let path = files.join(file);
        std::fs::write(&path, text)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
            .map(|_| path)
    };
    let meta = write(
        "meta-data",
        &format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            seed.instance_id, seed.hostname
        ),
    )?;
    let user = write("user-data", seed.user_data)?;
    // The VM has no NIC: nothing for cloud-init to configure, and nothing to wait for.
    let net = write("network-config", "version: 1\nconfig: disabled\n")?;
    let image = dir.join(format!("{name}.seed.img"));
    let _ = std::fs::remove_file(&image);
    cmd::run(
        "mkfs.vfat",
        &[
            "-C".into(),
            "-n".into(),
            "CIDATA".into(),
            image.display().to_string(),
            SEED_KIB.to_string(),
        ],
        None,
    )
    .await?;
    let mut args: Vec<String> = vec!["-i".into(), image.display().to_string(), "-o".into()];
    for f in [&meta, &user, &net] {
        args.push(f.display().to_string());
    }
    args.push("::".into());
    cmd::run("mcopy", &args, None).await?;
    let _ = std::fs::remove_dir_all(&files);
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built for real, then read back with mtools: the label and the three files cloud-init's
    /// NoCloud datasource looks for.
    #[tokio::test]
    async fn the_seed_is_a_cidata_fat_image_with_the_three_files() {
        let dir = tempfile::tempdir().unwrap();
        let image = write(
            dir.path(),
            "canary",
            &Seed {
                instance_id: "i-0123456789abcdef0",
                hostname: "bake-canary",
                user_data: "#!/bin/bash\necho hi\n",
            },
        )
        .await
        .unwrap();
        let label = std::process::Command::new("mlabel")
            .args(["-s", "-i"])
            .arg(&image)
            .arg("::")
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&label.stdout).contains("CIDATA"),
            "{label:?}"
        );
        let read = |f: &str| {
            let out = std::process::Command::new("mtype")
                .arg("-i")
                .arg(&image)
                .arg(format!("::{f}"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert!(read("meta-data").contains("instance-id: i-0123456789abcdef0"));
        assert_eq!(read("user-data"), "#!/bin/bash\necho hi\n");
        assert!(read("network-config").contains("config: disabled"));
        assert!(!dir.path().join("canary.seed").exists());
    }
}
