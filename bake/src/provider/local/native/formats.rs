//! The binary formats lending tools touches: `ldd`'s answers (a host program's loader and
//! libraries), the ELF interpreter field (rewritten to the tree's loader), and initramfs
//! archives (newc cpio, compressed or not, concatenated), read to prove nothing lent is left.

use std::io::Read;
use std::path::PathBuf;

/// The loader and the libraries in `ldd`'s answer for a dynamic program.
pub(super) fn parse_ldd(out: &str) -> Option<(PathBuf, Vec<PathBuf>)> {
    let mut loader = None;
    let mut libs = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        if let Some((_, rest)) = line.split_once("=> ") {
            let path = rest.split_whitespace().next()?;
            if path.starts_with('/') {
                libs.push(PathBuf::from(path));
            }
        } else if line.starts_with('/') {
            loader = Some(PathBuf::from(line.split_whitespace().next()?));
        }
    }
    Some((loader?, libs))
}

/// Where the interpreter path (PT_INTERP) of a 64-bit little-endian ELF program is: offset
/// and size of the field, its terminating NUL included.
pub(super) fn interpreter_field(bytes: &[u8]) -> Option<(usize, usize)> {
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
    };
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01") {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20)? as usize, u16_at(0x36)?, u16_at(0x38)?);
    (0..phnum as usize)
        .map(|i| phoff + i * phentsize as usize)
        .find(|ph| u32_at(*ph) == Some(3))
        .and_then(|ph| Some((u64_at(ph + 8)? as usize, u64_at(ph + 32)? as usize)))
        .filter(|(offset, size)| *size > 0 && offset + size <= bytes.len())
}

/// The interpreter a 64-bit little-endian ELF program names.
#[cfg(test)]
fn interpreter(bytes: &[u8]) -> Option<String> {
    let (offset, size) = interpreter_field(bytes)?;
    let field = &bytes[offset..offset + size];
    let end = field.iter().position(|b| *b == 0)?;
    Some(String::from_utf8_lossy(&field[..end]).into_owned())
}

/// Rewrites the interpreter of a 64-bit little-endian ELF program to `to`, in place; false if
/// `bytes` is not such a program or `to` does not fit in the field.
pub(super) fn set_interpreter(bytes: &mut [u8], to: &str) -> bool {
    let Some((offset, size)) = interpreter_field(bytes) else {
        return false;
    };
    if to.len() >= size {
        return false;
    }
    let field = &mut bytes[offset..offset + size];
    field.fill(0);
    field[..to.len()].copy_from_slice(to.as_bytes());
    true
}

/// The regular files (name, content) of an initramfs: cpio "newc" archives, one after another,
/// each uncompressed or compressed (gzip read here; zstd, xz, lz4 by the host's tools).
pub(super) fn initramfs_files(
    mut bytes: &[u8],
) -> std::result::Result<Vec<(String, Vec<u8>)>, String> {
    let mut files = Vec::new();
    loop {
        while bytes.first() == Some(&0) {
            bytes = &bytes[1..];
        }
        if bytes.is_empty() {
            return Ok(files);
        }
        if !bytes.starts_with(b"070701") {
            // A compressed archive runs to the end of the file.
            let inner = decompress(bytes)?;
            if !inner.starts_with(b"070701") {
                return Err("a compressed part holds no cpio archive".into());
            }
            files.extend(initramfs_files(&inner)?);
            return Ok(files);
        }
        let used = cpio(bytes, &mut files)?;
        bytes = &bytes[used..];
    }
}

pub(super) fn decompress(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| format!("gzip: {e}"))?;
        return Ok(out);
    }
    let tool = if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd"
    } else if bytes.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        "xz"
    } else if bytes.starts_with(&[0x02, 0x21, 0x4c, 0x18])
        || bytes.starts_with(&[0x04, 0x22, 0x4d, 0x18])
    {
        "lz4"
    } else {
        return Err(format!(
            "unknown compression (starts {:02x?})",
            &bytes[..bytes.len().min(6)]
        ));
    };
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(tool)
        .args(["-d", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{tool} (install it on the host to check this initramfs): {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_end(&mut out)
        .map_err(|e| format!("{tool}: {e}"))?;
    let _ = writer.join();
    let status = child.wait().map_err(|e| format!("{tool}: {e}"))?;
    if !status.success() {
        return Err(format!("{tool} -d failed: {status}"));
    }
    Ok(out)
}

/// Reads one cpio "newc" archive from the start of `bytes` into `files`; returns its length.
pub(super) fn cpio(
    bytes: &[u8],
    files: &mut Vec<(String, Vec<u8>)>,
) -> std::result::Result<usize, String> {
    let align = |n: usize| (n + 3) & !3;
    let mut at = 0;
    loop {
        let header = bytes
            .get(at..at + 110)
            .ok_or("a cpio header runs past the end")?;
        if !header.starts_with(b"070701") {
            return Err(format!("no cpio header at byte {at}"));
        }
        let field = |i: usize| {
            std::str::from_utf8(&header[6 + i * 8..14 + i * 8])
                .ok()
                .and_then(|h| usize::from_str_radix(h, 16).ok())
                .ok_or(format!("a bad cpio header at byte {at}"))
        };
        let (mode, size, namesize) = (field(1)?, field(6)?, field(11)?);
        let name = bytes
            .get(at + 110..at + 110 + namesize.saturating_sub(1))
            .ok_or("a cpio name runs past the end")?;
        let name = String::from_utf8_lossy(name).into_owned();
        let data_at = align(at + 110 + namesize);
        let data = bytes
            .get(data_at..data_at + size)
            .ok_or_else(|| format!("{name} runs past the end"))?;
        at = align(data_at + size);
        if name == "TRAILER!!!" {
            return Ok(at);
        }
        if mode & 0o170000 == 0o100000 {
            files.push((name, data.to_vec()));
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::provider::local::native::LOADER_IN_TREE;
    use std::path::Path;

    /// A host program's interpreter is found, rewritten to the tree's loader path, and the
    /// rest of the program is untouched.
    #[test]
    fn interpreter_is_rewritten_in_place() {
        let original = std::fs::read("/usr/bin/env").unwrap();
        let was = interpreter(&original).expect("a dynamic program");
        assert!(was.starts_with('/') && was.contains("ld-"), "{was}");
        let mut bytes = original.clone();
        assert!(set_interpreter(&mut bytes, LOADER_IN_TREE));
        assert_eq!(interpreter(&bytes).as_deref(), Some(LOADER_IN_TREE));
        assert_eq!(bytes.len(), original.len());
        let changed = bytes.iter().zip(&original).filter(|(a, b)| a != b).count();
        assert!(changed <= was.len(), "{changed} bytes changed");
        assert!(
            !set_interpreter(&mut bytes, &"/x".repeat(40)),
            "too long to fit"
        );
        assert!(
            !set_interpreter(&mut b"#!/bin/sh\n".to_vec(), "/l"),
            "not ELF"
        );
    }

    #[test]
    fn ldd_answers_give_loader_and_libraries() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibselinux.so.1 => /lib/x86_64-linux-gnu/libselinux.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let (loader, libs) = parse_ldd(out).unwrap();
        assert_eq!(loader, Path::new("/lib64/ld-linux-x86-64.so.2"));
        assert_eq!(
            libs,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libselinux.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6")
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_none());
    }

    pub(in crate::provider::local::native) fn newc(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let pad = |out: &mut Vec<u8>| {
            while !out.len().is_multiple_of(4) {
                out.push(0)
            }
        };
        for (i, (name, data)) in files
            .iter()
            .copied()
            .chain([("TRAILER!!!", &b""[..])])
            .enumerate()
        {
            let mode = if name == "TRAILER!!!" { 0 } else { 0o100644 };
            out.extend(format!("070701{:08x}{mode:08x}", i).as_bytes());
            for v in [0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0] {
                out.extend(format!("{v:08x}").as_bytes());
            }
            out.extend(name.as_bytes());
            out.push(0);
            pad(&mut out);
            out.extend_from_slice(data);
            pad(&mut out);
        }
        out
    }

    /// An early uncompressed archive followed by a gzip-compressed one, as mkinitramfs writes
    /// them: every regular file of both is read.
    #[test]
    fn initramfs_parts_are_all_read() {
        let mut bytes = newc(&[("kernel/x86/microcode/a.bin", b"ucode")]);
        let main = newc(&[("usr/bin/sh", b"shell"), ("init", b"#!/bin/sh\n")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &main).unwrap();
        bytes.extend(gz.finish().unwrap());
        let files = initramfs_files(&bytes).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["kernel/x86/microcode/a.bin", "usr/bin/sh", "init"]);
        assert_eq!(files[1].1, b"shell");
        assert!(initramfs_files(b"\x00\x01\x02junk").is_err());
    }
}
