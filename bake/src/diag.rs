//! Diagnostics for bad input: every message names the file, the line and column, and the
//! dotted field path (`steps[2].script`) so the user can go straight to the mistake.

use serde::de::DeserializeOwned;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Input files larger than this are refused before parsing.
pub const MAX_INPUT_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

impl std::error::Error for Diagnostic {}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl Diagnostic {
    /// A problem with the file as a whole (missing, unreadable, too large).
    pub fn file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.into(),
            line: None,
            column: None,
            field: None,
            message: message.into(),
        }
    }

    /// A problem at a byte span of a TOML source; line, column and field are worked out.
    pub fn at(
        file: impl Into<PathBuf>,
        src: &str,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = line_col(src, span.start);
        Diagnostic {
            file: file.into(),
            line: Some(line),
            column: Some(column),
            field: field_at(src, span.start),
            message: message.into(),
        }
    }

    /// A problem with the value at a key path (`["clusters", "prod", "arches"]`): at its line
    /// when the key is in the source, else the file's (a key that is absent has no line).
    pub fn at_key(
        file: impl Into<PathBuf>,
        src: &str,
        path: &[&str],
        message: impl Into<String>,
    ) -> Self {
        match span_of(src, path) {
            Some(span) => Diagnostic::at(file, src, span, message),
            None => Diagnostic::file(file, message),
        }
    }

    /// Converts a TOML/serde error into a diagnostic at its span.
    pub fn from_toml(file: impl Into<PathBuf>, src: &str, err: &toml::de::Error) -> Self {
        let mut message = err.message().trim().to_string();
        if message.is_empty() {
            // Some parse errors carry their text only in the rendered form.
            let rendered = err.to_string();
            message = rendered
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('|') && !l.starts_with('^'))
                .unwrap_or("invalid TOML")
                .to_string();
            if message.is_empty() || message.starts_with("TOML parse error") {
                message = "invalid TOML".into();
            }
        }
        match err.span() {
            Some(span) => Diagnostic::at(file, src, span, message),
            None => Diagnostic::file(file, message),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..floor_char_boundary(src, offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The span of the value at a key path (`["aws", "share_accounts"]`), if it is there.
pub fn span_of(src: &str, path: &[&str]) -> Option<Range<usize>> {
    let doc = toml_edit::ImDocument::parse(src).ok()?;
    let mut item = doc.as_item();
    for key in path {
        item = item.get(key)?;
    }
    item.span()
}

/// The dotted path of the deepest key or value whose span holds `offset`.
pub fn field_at(src: &str, offset: usize) -> Option<String> {
    let doc = toml_edit::ImDocument::parse(src).ok()?;
    let mut best: Option<(usize, String)> = None;
    walk_table(doc.as_table(), "", offset, &mut best);
    best.map(|(_, path)| path)
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn consider(
    span: Option<Range<usize>>,
    offset: usize,
    path: &str,
    best: &mut Option<(usize, String)>,
) {
    if let Some(span) = span {
        let hit = span.contains(&offset) || (span.start == offset && span.is_empty());
        if hit {
            let width = span.end - span.start;
            if best.as_ref().is_none_or(|(w, _)| width <= *w) {
                *best = Some((width, path.to_string()));
            }
        }
    }
}

fn walk_table(
    table: &toml_edit::Table,
    prefix: &str,
    offset: usize,
    best: &mut Option<(usize, String)>,
) {
    for (key, item) in table.iter() {
        let path = join(prefix, key);
        if let Some((k, _)) = table.get_key_value(key) {
            consider(k.span(), offset, &path, best);
        }
        walk_item(item, &path, offset, best);
    }
}

fn walk_item(
    item: &toml_edit::Item,
    path: &str,
    offset: usize,
    best: &mut Option<(usize, String)>,
) {
    match item {
        toml_edit::Item::Value(value) => walk_value(value, path, offset, best),
        toml_edit::Item::Table(table) => {
            consider(table.span(), offset, path, best);
            walk_table(table, path, offset, best);
        }
        toml_edit::Item::ArrayOfTables(array) => {
            for (i, table) in array.iter().enumerate() {
                let p = format!("{path}[{i}]");
                consider(table.span(), offset, &p, best);
                walk_table(table, &p, offset, best);
            }
        }
        toml_edit::Item::None => {}
    }
}

fn walk_value(
    value: &toml_edit::Value,
    path: &str,
    offset: usize,
    best: &mut Option<(usize, String)>,
) {
    consider(value.span(), offset, path, best);
    match value {
        toml_edit::Value::Array(array) => {
            for (i, v) in array.iter().enumerate() {
                walk_value(v, &format!("{path}[{i}]"), offset, best);
            }
        }
        toml_edit::Value::InlineTable(table) => {
            for (key, v) in table.iter() {
                let p = join(path, key);
                if let Some((k, _)) = table.get_key_value(key) {
                    consider(k.span(), offset, &p, best);
                }
                walk_value(v, &p, offset, best);
            }
        }
        _ => {}
    }
}

/// Reads and parses a TOML input file, refusing files that are missing, too large, or not
/// UTF-8. Returns the parsed value and the source (for later diagnostics).
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<(T, String), Diagnostic> {
    let meta =
        std::fs::metadata(path).map_err(|e| Diagnostic::file(path, format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(Diagnostic::file(path, "not a regular file"));
    }
    if meta.len() > MAX_INPUT_BYTES {
        return Err(Diagnostic::file(
            path,
            format!(
                "file is {} bytes; input files are limited to {MAX_INPUT_BYTES}",
                meta.len()
            ),
        ));
    }
    let bytes =
        std::fs::read(path).map_err(|e| Diagnostic::file(path, format!("cannot read: {e}")))?;
    let src = String::from_utf8(bytes).map_err(|e| {
        let (line, column) = {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let valid = std::str::from_utf8(valid).unwrap_or("");
            line_col(valid, valid.len())
        };
        Diagnostic {
            file: path.to_path_buf(),
            line: Some(line),
            column: Some(column),
            field: None,
            message: "file is not valid UTF-8".into(),
        }
    })?;
    let value = toml::from_str::<T>(&src).map_err(|e| Diagnostic::from_toml(path, &src, &e))?;
    Ok((value, src))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let src = "a = 1\nbb = \"x\"\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 11), (2, 6));
    }

    #[test]
    fn field_path_finds_nested_array_of_tables() {
        let src = "[[steps]]\nname = \"a\"\n[[steps]]\nname = \"b\"\nscript = \"x.sh\"\n";
        let offset = src.find("x.sh").unwrap();
        assert_eq!(field_at(src, offset).as_deref(), Some("steps[1].script"));
    }

    #[test]
    fn field_path_finds_inline_array_element() {
        let src = "[[bake]]\narches = [\"x86_64\", \"amd64\"]\n";
        let offset = src.find("amd64").unwrap();
        assert_eq!(field_at(src, offset).as_deref(), Some("bake[0].arches[1]"));
    }
}
