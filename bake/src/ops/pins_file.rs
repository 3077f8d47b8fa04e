//! The pins file of one node set: a `.tfvars` file holding the eks-node module's `pins` map, one
//! line per node. `bake pin ... --node <name> --write <file>` changes exactly the named nodes'
//! lines and keeps every other line as it was, so rolling a node set is one node, one line, one
//! `terraform apply` at a time.
//!
//! The file is bake's: a header names the recipe and arch it belongs to, and a file holding
//! anything but `pins` is refused rather than rewritten.

use crate::diag::Diagnostic;
use crate::ops::pin::{entry, NodePin, Pin};
use crate::{Arch, Error, Result};
use hcl::{Expression, ObjectKey};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Node names as the module takes them: lower-case letters, digits and `-`, at most 32.
pub fn check_node_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--node `{name}`: node names are lower-case letters, digits and - (at most 32, not starting or ending with -), as the eks-node module takes them"
        )))
    }
}

#[derive(Debug)]
struct Line {
    pin: NodePin,
    /// The line as it was in the file, kept verbatim while the node's pin does not change.
    text: String,
}

/// A node set's pins file, read (or new) and ready to change.
#[derive(Debug)]
pub struct PinsFile {
    path: PathBuf,
    recipe: String,
    arch: Arch,
    nodes: BTreeMap<String, Line>,
}

/// What `set` did to one node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub node: String,
    pub from: Option<NodePin>,
    pub to: NodePin,
}

fn header(recipe: &str, arch: Arch) -> String {
    format!("# bake pins: {recipe} {arch}")
}

impl PinsFile {
    /// Reads `path` for the node set of `recipe`/`arch` (a missing file is an empty one).
    ///
    /// Long because it is one pass over the file: the header, then each pin with the line an error
    /// names.
    pub fn read(path: &Path, recipe: &str, arch: Arch) -> Result<PinsFile> {
        let mut file = PinsFile {
            path: path.to_path_buf(),
            recipe: recipe.to_string(),
            arch,
            nodes: BTreeMap::new(),
        };
        let src = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(file),
            Err(e) => return Err(Diagnostic::file(path, format!("cannot read: {e}")).into()),
        };
        let bad = |line: Option<usize>, message: String| -> Error {
            Diagnostic {
                file: path.to_path_buf(),
                line,
                column: None,
                field: None,
                message,
            }
            .into()
        };
        if let Some(h) = src.lines().find(|l| l.starts_with("# bake pins:")) {
            if h.trim_end() != header(recipe, arch) {
                return Err(bad(
                    line_of(&src, |l| l.starts_with("# bake pins:")),
                    format!(
                        "this pins file belongs to another node set (`{}`), not {recipe} {arch}",
                        h.trim_start_matches("# bake pins:").trim()
                    ),
                ));
            }
        }
        let body = hcl::parse(&src).map_err(|e| match e {
            hcl::Error::Parse(p) => Diagnostic {
                file: path.to_path_buf(),
                line: Some(p.location().line()),
                column: Some(p.location().column()),
                field: None,
                message: p.message().to_string(),
            }
            .into(),
            other => bad(None, other.to_string()),
        })?;
        if let Some(b) = body.blocks().next() {
            return Err(bad(
                line_of(&src, |l| l.trim_start().starts_with(b.identifier())),
                format!(
                    "a pins file holds only `pins = {{ ... }}`, not a `{}` block",
                    b.identifier()
                ),
            ));
        }
        for a in body.attributes() {
            if a.key() != "pins" {
                return Err(bad(
                    line_of(&src, |l| l.trim_start().starts_with(a.key())),
                    format!("a pins file holds only `pins`, not `{}`: keep the node set's other inputs in another .tfvars file", a.key()),
                ));
            }
            let Expression::Object(map) = a.expr() else {
                return Err(bad(
                    line_of(&src, |l| l.trim_start().starts_with("pins")),
                    "`pins` must be a map of node name => pin".into(),
                ));
            };
            for (k, v) in map {
                let node = match k {
                    ObjectKey::Identifier(i) => i.to_string(),
                    ObjectKey::Expression(Expression::String(s)) => s.clone(),
                    other => {
                        return Err(bad(
                            None,
                            format!("`pins` key {other:?} is not a node name"),
                        ))
                    }
                };
                let at = |l: &str| {
                    let t = l.trim_start();
                    t.starts_with(&format!("\"{node}\""))
                        || t.starts_with(&format!("{node} "))
                        || t.starts_with(&format!("{node}="))
                };
                let line = line_of(&src, at);
                let pin =
                    node_pin(v).map_err(|m| bad(line, format!("pin of node `{node}`: {m}")))?;
                let text = line
                    .and_then(|n| src.lines().nth(n - 1))
                    .filter(|l| l.trim_end().ends_with('}') || l.contains("} #"))
                    .map(|l| l.trim().to_string())
                    .unwrap_or_else(|| entry(&node, &pin, None));
                if file
                    .nodes
                    .insert(node.clone(), Line { pin, text })
                    .is_some()
                {
                    return Err(bad(line, format!("node `{node}` is pinned twice")));
                }
            }
        }
        Ok(file)
    }

    /// Pins `node` to `pin`'s release; says what changed (None when it already was).
    pub fn set(&mut self, node: &str, pin: &Pin) -> Option<Change> {
        let to = NodePin::Release {
            release: pin.release.to_string(),
        };
        let from = self.nodes.get(node).map(|l| l.pin.clone());
        if from.as_ref() == Some(&to) {
            return None;
        }
        let comment = format!("{} ({})", pin.image_id, pin.parameter);
        self.nodes.insert(
            node.to_string(),
            Line {
                text: entry(node, &to, Some(&comment)),
                pin: to.clone(),
            },
        );
        Some(Change {
            node: node.to_string(),
            from,
            to,
        })
    }

    /// The file's text: header, then one line per node in name order.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}\n# Each node's image, one line per node (the eks-node module's `pins`). Change one line,\n# or run `bake pin {} <release> --arch {} --node <name> --write <this file>`, to roll one node.\npins = {{\n",
            header(&self.recipe, self.arch),
            self.recipe,
            self.arch
        );
        for line in self.nodes.values() {
            out.push_str("  ");
            out.push_str(&line.text);
            out.push('\n');
        }
        out.push_str("}\n");
        out
    }

    /// Writes the file whole or not at all (a temporary file renamed over it).
    pub fn write(&self) -> Result<()> {
        let tmp = self.path.with_extension("tfvars.bake-tmp");
        let io = |e: std::io::Error| Error::Io {
            context: format!("writing {}", self.path.display()),
            source: e,
        };
        std::fs::write(&tmp, self.render()).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

fn line_of(src: &str, pred: impl Fn(&str) -> bool) -> Option<usize> {
    src.lines().position(pred).map(|i| i + 1)
}

fn node_pin(v: &Expression) -> std::result::Result<NodePin, String> {
    let Expression::Object(o) = v else {
        return Err(
            "must be { release = \"...\" } or { channel = \"...\", channel_version = N }".into(),
        );
    };
    let mut release = None;
    let mut channel = None;
    let mut version = None;
    for (k, v) in o {
        let key = match k {
            ObjectKey::Identifier(i) => i.to_string(),
            ObjectKey::Expression(Expression::String(s)) => s.clone(),
            other => return Err(format!("unexpected key {other:?}")),
        };
        match (key.as_str(), v) {
            ("release", Expression::String(s)) => release = Some(s.clone()),
            ("channel", Expression::String(s)) => channel = Some(s.clone()),
            ("channel_version", Expression::Number(n)) => {
                version = Some(
                    n.as_u64()
                        .ok_or("channel_version must be a whole number >= 1")?,
                )
            }
            (k, _) => {
                return Err(format!(
                    "unexpected `{k}` (release, or channel and channel_version)"
                ))
            }
        }
    }
    match (release, channel, version) {
        (Some(release), None, None) => Ok(NodePin::Release { release }),
        (None, Some(channel), Some(channel_version)) if channel_version >= 1 => {
            Ok(NodePin::Channel {
                channel,
                channel_version,
            })
        }
        _ => Err("set exactly one of release, or channel with channel_version >= 1".into()),
    }
}
