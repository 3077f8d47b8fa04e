//! What the README and the manual show is what bake does: every `bake` command in their shell
//! blocks is one bake's CLI accepts, the error the README prints is the one bake prints, and
//! the README's five-minute tour runs, line by line as written, on a registry with two
//! releases.

use crate::common::Project;
use assert_cmd::Command;
use bake::cli::Cli;
use clap::Parser;

/// The pages a reader copies commands from.
fn pages() -> Vec<(String, String)> {
    let root = crate::common::repo();
    let mut pages = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| format!("docs/{}", e.file_name().to_string_lossy()))
        .filter(|n| n.ends_with(".md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(root.join(&p)).unwrap();
            (p, text)
        })
        .collect()
}

/// The lines of a page's ```sh blocks, each with its line number.
fn shell_lines(text: &str) -> Vec<(usize, &str)> {
    let mut inside = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(fence) = line.strip_prefix("```") {
            inside = !inside && matches!(fence.trim(), "sh" | "bash");
            continue;
        }
        if inside {
            out.push((i + 1, line));
        }
    }
    out
}

/// A line split as sh splits it: words, '…' and "…" quoting, a `#` comment starting a word.
fn words(line: &str) -> Vec<String> {
    let (mut out, mut word, mut quote, mut started) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (None, '#') if !started => break,
            (None, c) if c.is_whitespace() => {
                if started {
                    out.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (None, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(word);
    }
    out
}

/// The `bake` invocation of a shell line (after a prompt `$`, a crontab schedule or `cd … &&`),
/// up to a redirection or the next command; None when the line runs no bake.
fn bake_args(line: &str) -> Option<Vec<String>> {
    let words = words(line);
    let start = words.iter().position(|w| w == "bake")?;
    let before = &words[..start];
    let runs_bake =
        before.is_empty() || before == ["$"] || before.last().is_some_and(|w| w == "&&");
    if !runs_bake {
        return None;
    }
    Some(
        words[start..]
            .iter()
            .take_while(|w| !matches!(w.as_str(), ">" | "|" | "&&" | ";"))
            .map(|w| w.replace("<run-id>", "run-20261125-0000-ab12"))
            .collect(),
    )
}

#[test]
fn the_shell_word_splitter_reads_lines_as_sh_does() {
    assert_eq!(
        words(r#"0 * * * *  cd /srv && bake audit -q --notify 'curl -d "x y"'  # hourly"#),
        [
            "0",
            "*",
            "*",
            "*",
            "*",
            "cd",
            "/srv",
            "&&",
            "bake",
            "audit",
            "-q",
            "--notify",
            "curl -d \"x y\""
        ]
    );
    assert_eq!(
        words("bake promote r --reason \"dev looks good\""),
        ["bake", "promote", "r", "--reason", "dev looks good"]
    );
    assert_eq!(words("a#b c"), ["a#b", "c"]);
    assert_eq!(
        bake_args("$ bake sbom eks-node 1 --arch arm64 > sbom.json").unwrap(),
        ["bake", "sbom", "eks-node", "1", "--arch", "arm64"]
    );
    assert_eq!(bake_args("echo bake run"), None);
}

/// Every bake command a page shows parses: its subcommand and every flag exist, with values of
/// the right kind.
#[test]
fn every_command_the_pages_show_is_one_bake_accepts() {
    let mut seen = 0;
    for (page, text) in pages() {
        for (n, line) in shell_lines(&text) {
            let Some(args) = bake_args(line) else {
                continue;
            };
            seen += 1;
            if let Err(e) = Cli::try_parse_from(&args) {
                panic!("{page}:{n}: `{line}` is not a command bake accepts:\n{e}");
            }
        }
    }
    // README's usage and tour, the audit section, and the manual's (measured 2026-12-05: 32).
    assert!(seen >= 30, "only {seen} bake commands found in the pages");
}

/// The error README prints for an unknown arch is, to the character, what bake prints for it.
#[test]
fn the_readme_error_example_is_what_bake_prints() {
    let readme = std::fs::read_to_string(crate::common::repo().join("README.md")).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let at = lines
        .iter()
        .position(|l| *l == "$ bake plan pipelines/local.toml")
        .expect("README shows `$ bake plan pipelines/local.toml` and its error");
    let shown = lines[at + 1];
    // The example names the second arch of the first bake as `amd64`.
    let p = Project::new();
    let pipeline = p.read("pipelines/local.toml");
    let arches = pipeline
        .lines()
        .find(|l| l.trim_start().starts_with("arches"))
        .expect("local.toml lists arches");
    p.edit(
        "pipelines/local.toml",
        arches,
        &arches.replace("\"arm64\"", "\"amd64\""),
    );
    let out = Command::cargo_bin("bake")
        .unwrap()
        .current_dir(p.dir.path())
        .env_remove("BAKE_STATE_DIR")
        .env_remove("BAKE_PIPELINE")
        .env("BAKE_CACHE_DIR", p.path("cache"))
        .env("NO_COLOR", "1")
        .args(["plan", "pipelines/local.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let printed = String::from_utf8_lossy(&out.stderr);
    assert!(
        printed.lines().any(|l| l == shown),
        "README shows:\n{shown}\nbake printed:\n{printed}"
    );
}

/// README's five-minute tour, each line as written (its release IDs replaced by the two the
/// registry holds), on the local pipeline: every line exits 0.
#[tokio::test]
async fn the_readme_tour_runs_as_written() {
    let world = crate::promotion::World::new("0s");
    let first = world.release(1).await.to_string();
    let second = world.release(2).await.to_string();
    let readme = std::fs::read_to_string(crate::common::repo().join("README.md")).unwrap();
    let tour = readme
        .split("## A five-minute tour")
        .nth(1)
        .and_then(|t| t.split("\n## ").next())
        .expect("README has a five-minute tour");
    let mut ran = 0;
    for (n, line) in shell_lines(tour) {
        let Some(args) = bake_args(line) else {
            continue;
        };
        let args: Vec<String> = args
            .into_iter()
            .skip(1)
            .map(|a| {
                a.replace("2026.11.25-1", &first)
                    .replace("2026.11.26-1", &second)
            })
            .collect();
        let out = Command::cargo_bin("bake")
            .unwrap()
            .current_dir(world.project.dir.path())
            .env_remove("BAKE_STATE_DIR")
            .env_remove("BAKE_PIPELINE")
            .env("BAKE_CACHE_DIR", world.project.path("cache"))
            .env("USER", "carol")
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tour line {n} `{line}` exited {:?}:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert_eq!(ran, 8, "the tour's eight commands");
}
