//! A base build's progress, from mmdebstrap's own lines.

/// What mmdebstrap's `--verbose` lines say about a base build's progress: its stage
/// (`I: ...` lines that end in "..."; package scripts print `I:` lines of their own), how many
/// packages dpkg has set up so far of about how many the last build of this suite and arch set
/// up (none on the first), and which; long triggers (initramfs, man-db) by name.
#[derive(Debug, Default)]
pub(super) struct BaseProgress {
    stage: String,
    /// Packages set up by the last build of this suite and arch, if one was recorded.
    expected: Option<usize>,
    pub(super) set_up: usize,
}

impl BaseProgress {
    /// Counting against `expected` packages (the last build's), if known.
    pub(super) fn expecting(expected: Option<usize>) -> Self {
        BaseProgress {
            expected,
            ..BaseProgress::default()
        }
    }

    /// The progress line to show for `line`, if it says anything new.
    pub(super) fn line(&mut self, line: &str) -> Option<String> {
        let line = line.trim();
        if let Some(stage) = line.strip_prefix("I: ").and_then(|l| l.strip_suffix("...")) {
            self.stage = stage.trim().to_string();
            return Some(format!("base: {}", self.stage));
        }
        if let Some(rest) = line.strip_prefix("Setting up ") {
            self.set_up += 1;
            let package = rest.split_whitespace().next().unwrap_or_default();
            return Some(format!(
                "base: {}, {} ({package})",
                self.stage,
                self.count()
            ));
        }
        if let Some(rest) = line.strip_prefix("Processing triggers for ") {
            let package = rest.split_whitespace().next().unwrap_or_default();
            return Some(format!(
                "base: {}, {}, triggers of {package}",
                self.stage,
                self.count()
            ));
        }
        None
    }

    fn count(&self) -> String {
        match self.expected {
            Some(e) => format!("{}/~{} packages set up", self.set_up, e.max(self.set_up)),
            None => format!("{} packages set up", self.set_up),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmdebstrap_lines_become_stage_count_and_package() {
        let mut p = BaseProgress {
            expected: Some(3),
            ..BaseProgress::default()
        };
        let said: Vec<Option<String>> = [
            "I: automatically chosen mode: root",
            "I: installing essential packages...",
            "Setting up libc6:arm64 (2.36-9+deb12u13) ...",
            "I: installing remaining packages inside the chroot...",
            "Unpacking systemd (252.39-1~deb12u1) ...",
            "Setting up systemd (252.39-1~deb12u1) ...",
            "I: /initrd.img is now a symlink to boot/initrd.img-6.1.0-57-cloud-arm64",
            "Processing triggers for initramfs-tools (0.142+deb12u3) ...",
            "Setting up udev (252.39-1~deb12u1) ...",
            "Setting up cloud-init (22.4.2-1+deb12u3) ...",
        ]
        .iter()
        .map(|l| p.line(l))
        .collect();
        let said: Vec<&str> = said.iter().flatten().map(String::as_str).collect();
        let remaining = "base: installing remaining packages inside the chroot";
        assert_eq!(
            said,
            [
                "base: installing essential packages".to_string(),
                "base: installing essential packages, 1/~3 packages set up (libc6:arm64)".into(),
                remaining.into(),
                format!("{remaining}, 2/~3 packages set up (systemd)"),
                format!("{remaining}, 2/~3 packages set up, triggers of initramfs-tools"),
                format!("{remaining}, 3/~3 packages set up (udev)"),
                format!("{remaining}, 4/~4 packages set up (cloud-init)"),
            ]
        );
        let mut first = BaseProgress::default();
        first.line("I: installing essential packages...");
        assert_eq!(
            first.line("Setting up dash (0.5.12-2) ...").as_deref(),
            Some("base: installing essential packages, 1 packages set up (dash)")
        );
    }
}
