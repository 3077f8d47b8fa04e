//! Ctrl-C and SIGTERM during a run: the first cancels the run (its steps' cleanups run), a
//! second says what the run still holds and where its journal is.

use std::path::Path;
use tokio_util::sync::CancellationToken;

/// Cancels the token on Ctrl-C or SIGTERM; a second one says that cleanups are running.
pub fn watch_signals(state_dir: &Path) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    let runs = crate::journal::Journal::runs_dir(state_dir);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot watch SIGTERM: {e}");
                    return;
                }
            };
        let mut count = 0;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            count += 1;
            if count == 1 {
                eprintln!("interrupted: running the cleanups of the steps that ran (interrupt again for status)");
                t.cancel();
            } else {
                eprintln!("{}", still_cleaning(&runs));
            }
        }
    });
    token
}

/// What a second interrupt prints: what this process's run still holds, and its journal.
fn still_cleaning(runs: &Path) -> String {
    let state_dir = runs.parent().unwrap_or(runs);
    let mine = crate::journal::Journal::all(state_dir).ok().and_then(|all| {
        all.into_iter().find(|(_, entries)| {
            entries.iter().any(|e| {
                matches!(e, crate::journal::Entry::Started { pid, .. } if *pid == std::process::id())
            })
        })
    });
    let Some((run_id, entries)) = mine else {
        return format!(
            "still cleaning up; nothing was created yet (journals: {})",
            runs.display()
        );
    };
    let left = crate::journal::Journal::outstanding(&entries);
    let journal = runs.join(format!("{run_id}.jsonl"));
    let mut out = format!(
        "still cleaning up run {run_id}; {} resource(s) not yet removed:",
        left.len()
    );
    for r in &left {
        out.push_str(&format!(
            "\n  {} {} ({} {})",
            r.kind, r.id, r.recipe, r.arch
        ));
    }
    out.push_str(&format!(
        "\nif bake is killed now they stay listed in {}; `bake sweep --apply` removes them, `bake resume {run_id}` finishes the run",
        journal.display()
    ));
    out
}
