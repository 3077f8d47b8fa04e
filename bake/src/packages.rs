//! The package manifest captured at bake time: one `name<TAB>version<TAB>arch` line per
//! package (dpkg or rpm, then snaps), after an `#os<TAB>id<TAB>version` line naming the
//! distribution. Parsed here, ordered as Debian and RPM order versions, and encoded for the
//! compressed SSM parameters that keep it beside the release on AWS (`inventory` reads it back).

use crate::release::ReleaseImage;
use crate::Arch;
use base64::Engine as _;
use std::cmp::Ordering;
use std::io::{Read, Write};

/// Which package manager's version order a package follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Deb,
    Rpm,
    Snap,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub family: Family,
    /// A snap's revision (a refresh can change it under the same version); a fourth field that
    /// older manifests lack.
    pub revision: Option<String>,
}

impl Package {
    /// The version as the package manager tells it apart: a snap's with its revision.
    pub fn exact_version(&self) -> String {
        match &self.revision {
            Some(r) => format!("{} (rev {r})", self.version),
            None => self.version.clone(),
        }
    }
}

/// The distribution the manifest came from (`/etc/os-release` ID and VERSION_ID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Os {
    pub id: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PackageList {
    pub os: Option<Os>,
    pub packages: Vec<Package>,
}

fn family(arch: &str) -> Family {
    match arch {
        "snap" => Family::Snap,
        "x86_64" | "aarch64" | "noarch" | "i686" => Family::Rpm,
        _ => Family::Deb,
    }
}

impl PackageList {
    pub fn parse(text: &str) -> PackageList {
        let mut out = PackageList::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            match f.as_slice() {
                ["#os", id, version, ..] => {
                    out.os = Some(Os {
                        id: id.to_string(),
                        version: version.to_string(),
                    })
                }
                [name, version, arch, rest @ ..] if !name.is_empty() && !name.starts_with('#') => {
                    out.packages.push(Package {
                        name: name.to_string(),
                        version: version.to_string(),
                        arch: arch.to_string(),
                        family: family(arch),
                        revision: rest
                            .first()
                            .filter(|r| !r.is_empty())
                            .map(|r| r.to_string()),
                    })
                }
                _ => {}
            }
        }
        out
    }
}

/// What differs between the software an image was baked with and what a node booted from it
/// runs (`baked`, `booted`: package manifests): one line per package added, removed or changed
/// (version, or a snap's revision), by name and arch. Empty when the node runs what was baked.
pub fn changed_since_bake(baked: &str, booted: &str) -> Vec<String> {
    let index = |text: &str| -> std::collections::BTreeMap<(String, String), String> {
        PackageList::parse(text)
            .packages
            .into_iter()
            .map(|p| {
                let v = p.exact_version();
                ((p.name, p.arch), v)
            })
            .collect()
    };
    let (a, b) = (index(baked), index(booted));
    let mut out = Vec::new();
    for ((name, arch), va) in &a {
        match b.get(&(name.clone(), arch.clone())) {
            None => out.push(format!("{name} ({arch}) {va} removed")),
            Some(vb) if vb != va => out.push(format!("{name} ({arch}) {va} -> {vb}")),
            _ => {}
        }
    }
    for ((name, arch), vb) in &b {
        if !a.contains_key(&(name.clone(), arch.clone())) {
            out.push(format!("{name} ({arch}) {vb} added"));
        }
    }
    out
}

/// Orders two versions of one package as its package manager does.
pub fn compare(family: Family, a: &str, b: &str) -> Ordering {
    match family {
        Family::Rpm => rpm_compare(a, b),
        Family::Deb | Family::Snap => deb_compare(a, b),
    }
}

/// dpkg's order: epoch, then upstream version, then revision, each compared by alternating
/// non-digit parts (letters before non-letters, `~` before everything, even the end) and
/// numbers.
pub fn deb_compare(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((up, rev)) => (epoch, up, rev),
            None => (epoch, rest, ""),
        }
    }
    fn order(c: Option<char>) -> i32 {
        match c {
            None => 0,
            Some('~') => -1,
            Some(c) if c.is_ascii_digit() => 0,
            Some(c) if c.is_ascii_alphabetic() => c as i32,
            Some(c) => c as i32 + 256,
        }
    }
    fn part(a: &str, b: &str) -> Ordering {
        let (mut a, mut b) = (a, b);
        while !a.is_empty() || !b.is_empty() {
            // Non-digit prefixes, character by character.
            loop {
                let ca = a.chars().next().filter(|c| !c.is_ascii_digit());
                let cb = b.chars().next().filter(|c| !c.is_ascii_digit());
                if ca.is_none() && cb.is_none() {
                    break;
                }
                let (oa, ob) = (order(ca), order(cb));
                if oa != ob {
                    return oa.cmp(&ob);
                }
                a = &a[ca.map_or(0, char::len_utf8)..];
                b = &b[cb.map_or(0, char::len_utf8)..];
            }
            // Then numbers.
            let na = a.len() - a.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let nb = b.len() - b.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let (da, db) = (
                a[..na].trim_start_matches('0'),
                b[..nb].trim_start_matches('0'),
            );
            let o = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
            if o != Ordering::Equal {
                return o;
            }
            a = &a[na..];
            b = &b[nb..];
        }
        Ordering::Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| part(ua, ub))
        .then_with(|| part(ra, rb))
}

/// rpm's order (rpmvercmp over `[epoch:]version-release`): alphanumeric segments, numbers
/// beat letters, `~` sorts before everything and `^` after the end.
///
/// One function, as rpm's own rpmvercmp is: its segment loop read top to bottom against the
/// original.
pub fn rpm_compare(a: &str, b: &str) -> Ordering {
    fn epoch(v: &str) -> (u64, &str) {
        match v.split_once(':') {
            Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, v),
        }
    }
    fn vercmp(a: &str, b: &str) -> Ordering {
        let (mut a, mut b) = (a, b);
        loop {
            a = a.trim_start_matches(|c: char| !c.is_ascii_alphanumeric() && c != '~' && c != '^');
            b = b.trim_start_matches(|c: char| !c.is_ascii_alphanumeric() && c != '~' && c != '^');
            match (a.starts_with('~'), b.starts_with('~')) {
                (true, true) => {
                    a = &a[1..];
                    b = &b[1..];
                    continue;
                }
                (true, false) => return Ordering::Less,
                (false, true) => return Ordering::Greater,
                _ => {}
            }
            match (a.starts_with('^'), b.starts_with('^')) {
                (true, true) => {
                    a = &a[1..];
                    b = &b[1..];
                    continue;
                }
                (true, false) => {
                    return if b.is_empty() {
                        Ordering::Greater
                    } else {
                        Ordering::Less
                    }
                }
                (false, true) => {
                    return if a.is_empty() {
                        Ordering::Less
                    } else {
                        Ordering::Greater
                    }
                }
                _ => {}
            }
            if a.is_empty() || b.is_empty() {
                return match (a.is_empty(), b.is_empty()) {
                    (true, true) => Ordering::Equal,
                    (true, false) => Ordering::Less,
                    _ => Ordering::Greater,
                };
            }
            let numeric = a.starts_with(|c: char| c.is_ascii_digit());
            let take = |s: &str| {
                let n = s.len()
                    - s.trim_start_matches(|c: char| {
                        if numeric {
                            c.is_ascii_digit()
                        } else {
                            c.is_ascii_alphabetic()
                        }
                    })
                    .len();
                n
            };
            let (na, nb) = (take(a), take(b));
            if nb == 0 {
                // Different kinds: a number is newer than letters.
                return if numeric {
                    Ordering::Greater
                } else {
                    Ordering::Less
                };
            }
            let (sa, sb) = (&a[..na], &b[..nb]);
            let o = if numeric {
                let (x, y) = (sa.trim_start_matches('0'), sb.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            } else {
                sa.cmp(sb)
            };
            if o != Ordering::Equal {
                return o;
            }
            a = &a[na..];
            b = &b[nb..];
        }
    }
    let (ea, va) = epoch(a);
    let (eb, vb) = epoch(b);
    let (va, ra) = va.rsplit_once('-').unwrap_or((va, ""));
    let (vb, rb) = vb.rsplit_once('-').unwrap_or((vb, ""));
    ea.cmp(&eb)
        .then_with(|| vercmp(va, vb))
        .then_with(|| vercmp(ra, rb))
}

/// SSM values of at most this many characters (the standard tier's 4 KB).
const CHUNK: usize = 4000;

/// The manifest gzipped, base64-encoded and cut into standard-tier parameter values.
pub fn encode(text: &str) -> Vec<String> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(text.as_bytes()).expect("writing to memory");
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz.finish().expect("in memory"));
    b64.as_bytes()
        .chunks(CHUNK)
        .map(|c| String::from_utf8(c.to_vec()).expect("base64 is ASCII"))
        .collect()
}

/// The manifest back from its chunks, in order.
pub fn decode(chunks: &[String]) -> std::result::Result<String, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(chunks.concat())
        .map_err(|e| format!("not base64: {e}"))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .map_err(|e| format!("not a gzipped manifest: {e}"))?;
    Ok(text)
}

/// The images of a release that came with their package manifest (what a registry keeps).
pub fn kept(
    images: &std::collections::BTreeMap<Arch, ReleaseImage>,
) -> impl Iterator<Item = (&Arch, &str)> {
    images
        .iter()
        .filter_map(|(a, i)| i.packages.as_deref().map(|p| (a, p)))
}

/// The packages that carry the kubelet: Debian/RPM `kubelet`, the `kubelet-eks` snap of
/// Canonical's EKS images.
pub const KUBELET_PACKAGES: &[&str] = &["kubelet", "kubelet-eks"];

/// The kubelet's version in a package manifest (`name<TAB>version<TAB>arch` lines), as printed.
pub fn kubelet_in(manifest: &str) -> Option<String> {
    PackageList::parse(manifest)
        .packages
        .into_iter()
        .find(|p| KUBELET_PACKAGES.contains(&p.name.as_str()))
        .map(|p| p.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubelet_is_found_as_a_package_or_a_snap() {
        assert_eq!(
            kubelet_in("apt\t2.6\tamd64\nkubelet-eks\t1.31.2\tsnap\n").as_deref(),
            Some("1.31.2")
        );
        assert_eq!(kubelet_in("apt\t2.6\tamd64\n"), None);
    }

    /// A node runs what was baked only if every package, version and snap revision is the
    /// same; a bootstrap's `snap refresh` changes a revision under the same version.
    #[test]
    fn what_changed_since_bake() {
        let baked = "#os\tubuntu\t22.04\nbash\t5.1-6ubuntu1\tamd64\nnano\t6.2-1\tamd64\nkubelet-eks\t1.31.2\tsnap\t210\n";
        assert!(changed_since_bake(baked, baked).is_empty());
        let booted = "#os\tubuntu\t22.04\nbash\t5.1-6ubuntu1.1\tamd64\ncurl\t7.81.0-1\tamd64\nkubelet-eks\t1.31.2\tsnap\t233\n";
        assert_eq!(
            changed_since_bake(baked, booted),
            vec![
                "bash (amd64) 5.1-6ubuntu1 -> 5.1-6ubuntu1.1",
                "kubelet-eks (snap) 1.31.2 (rev 210) -> 1.31.2 (rev 233)",
                "nano (amd64) 6.2-1 removed",
                "curl (amd64) 7.81.0-1 added",
            ]
        );
        // A manifest from before revisions were recorded still parses; its snaps compare by
        // version alone.
        let old = PackageList::parse("kubelet-eks\t1.31.2\tsnap\n");
        assert_eq!(old.packages[0].revision, None);
        assert_eq!(old.packages[0].exact_version(), "1.31.2");
    }

    #[test]
    fn debian_order() {
        use Ordering::*;
        for (a, b, o) in [
            ("1.0", "1.0", Equal),
            ("1.0", "1.1", Less),
            ("1.10", "1.9", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0+b1", Less),
            ("1:0.9", "2.0", Greater),
            ("2.6.1-1", "2.6.1-2", Less),
            ("252.30-1~deb12u2", "252.30-1", Less),
            ("6.1.119-1", "6.1.123-1", Less),
            ("1.0a", "1.0", Greater),
            ("1.0-1", "1.0", Greater),
            ("0001.2", "1.2", Equal),
        ] {
            assert_eq!(deb_compare(a, b), o, "{a} vs {b}");
            assert_eq!(deb_compare(b, a), o.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn rpm_order() {
        use Ordering::*;
        for (a, b, o) in [
            ("1.0-1", "1.0-1", Equal),
            ("1.0-1", "1.0-2", Less),
            ("1.10-1", "1.9-1", Greater),
            ("1.0~rc1-1", "1.0-1", Less),
            ("1.0^git1-1", "1.0-1", Greater),
            ("1:1.0-1", "2.0-1", Greater),
            ("1.0a-1", "1.0-1", Greater),
            ("1.0.a-1", "1.0.1-1", Less),
            ("2.0.1-1.amzn2023.0.3", "2.0.1-1.amzn2023.0.10", Less),
        ] {
            assert_eq!(rpm_compare(a, b), o, "{a} vs {b}");
            assert_eq!(rpm_compare(b, a), o.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn a_manifest_survives_its_chunks_and_parses() {
        let mut text = String::from("#os\tubuntu\t24.04\n");
        for i in 0..2000 {
            text.push_str(&format!("package-number-{i}\t{i}.0-1ubuntu1\tamd64\n"));
        }
        text.push_str("kubelet-eks\t1.31.2\tsnap\n");
        let chunks = encode(&text);
        assert!(chunks.len() > 1 && chunks.iter().all(|c| c.len() <= 4000));
        assert_eq!(decode(&chunks).unwrap(), text);
        assert!(decode(&chunks[1..]).is_err());
        let list = PackageList::parse(&text);
        assert_eq!(
            list.os,
            Some(Os {
                id: "ubuntu".into(),
                version: "24.04".into()
            })
        );
        assert_eq!(list.packages.len(), 2001);
        assert_eq!(list.packages[2000].family, Family::Snap);
        assert_eq!(
            PackageList::parse("bash\t5.2.15-2.amzn2023\tx86_64\n").packages[0].family,
            Family::Rpm
        );
    }
}
