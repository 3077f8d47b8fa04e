//! How `bake` talks to people and machines. Library code reports progress through the
//! `Reporter` trait and never touches the terminal; the CLI picks a reporter (spinners on a
//! TTY's stderr, nothing otherwise) and prints results as tables or JSON on stdout.

use crate::Arch;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

/// Progress of long-running work, one line per recipe × arch.
pub trait Reporter: Send + Sync {
    /// The phase a bake is in now ("base", "boot builder", "step 2/5 mask-apt-timers"...).
    fn phase(&self, recipe: &str, arch: Arch, phase: &str);
    /// The bake of recipe × arch ended with this summary.
    fn finish(&self, recipe: &str, arch: Arch, summary: &str);
    /// A note for the user (warnings, what is left after an interrupt).
    fn note(&self, message: &str);
}

/// Reports nothing except through the log.
#[derive(Debug, Default)]
pub struct LogReporter;

impl Reporter for LogReporter {
    fn phase(&self, recipe: &str, arch: Arch, phase: &str) {
        tracing::info!(recipe, %arch, "{phase}");
    }
    fn finish(&self, recipe: &str, arch: Arch, summary: &str) {
        tracing::info!(recipe, %arch, "{summary}");
    }
    fn note(&self, message: &str) {
        tracing::warn!("{message}");
    }
}

/// Spinners on stderr, one per recipe × arch; hidden when stderr is not a terminal.
pub struct TermReporter {
    multi: MultiProgress,
    bars: Mutex<BTreeMap<(String, Arch), ProgressBar>>,
    visible: bool,
}

impl TermReporter {
    /// `quiet` or `verbose` hide the bars (logs take over when verbose).
    pub fn new(quiet: bool, verbose: bool) -> TermReporter {
        let visible = !quiet && !verbose && std::io::stderr().is_terminal();
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        TermReporter {
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(BTreeMap::new()),
            visible,
        }
    }

    fn bar(&self, recipe: &str, arch: Arch) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        bars.entry((recipe.to_string(), arch))
            .or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new_spinner());
                let style =
                    ProgressStyle::with_template("{spinner} {prefix:.bold} [{elapsed}] {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner());
                bar.set_style(style);
                bar.set_prefix(format!("{recipe}/{arch}"));
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            })
            .clone()
    }
}

impl Reporter for TermReporter {
    fn phase(&self, recipe: &str, arch: Arch, phase: &str) {
        tracing::info!(recipe, %arch, "{phase}");
        if self.visible {
            self.bar(recipe, arch).set_message(phase.to_string());
        }
    }
    fn finish(&self, recipe: &str, arch: Arch, summary: &str) {
        tracing::info!(recipe, %arch, "{summary}");
        if self.visible {
            self.bar(recipe, arch)
                .finish_with_message(summary.to_string());
        }
    }
    fn note(&self, message: &str) {
        if self.visible {
            let _ = self.multi.println(message);
        } else {
            eprintln!("{message}");
        }
    }
}

/// Renders rows as a left-aligned table with a header, two spaces between columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// "3d 4h", "25m", "12s": the age of something, for tables.
pub fn age(since: chrono::DateTime<chrono::Utc>) -> String {
    let secs = (chrono::Utc::now() - since).num_seconds().max(0) as u64;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_aligns_columns() {
        let t = super::table(
            &["A", "LONGER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONGER\nxyz  1\nq    22\n");
    }
}
