//! The library's error type. Every variant carries the context a user needs to act on it
//! (recipe, arch, file, resource ID) and maps to one of the documented exit codes.

use crate::diag::Diagnostic;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exit codes, as documented in `bake --help` and the README.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const REJECTED: u8 = 3;
    pub const LOCKED: u8 = 4;
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A recipe, pipeline or argument is wrong; nothing was created.
    #[error(transparent)]
    Input(#[from] Diagnostic),

    /// A command-line argument or state that the user must fix (no file to point at).
    #[error("{0}")]
    Usage(String),

    /// Validators rejected at least one image; nothing was published.
    #[error("{recipe}: validation rejected the image for {arches}; nothing was published")]
    Rejected { recipe: String, arches: String },

    /// Another run holds the recipe's lock.
    #[error("recipe `{recipe}` is locked by {owner} until {expires} (use --break-lock only if that run is dead)")]
    LockHeld {
        recipe: String,
        owner: String,
        expires: String,
    },

    /// A write would change something immutable (a published release).
    #[error("{0}")]
    Conflict(String),

    /// bake's own state (a registry record, a published parameter) does not parse: bake wrote
    /// it, so something else changed it. Exit 1: waiting or retrying will not help.
    #[error("{location}: unreadable {what} ({source}); bake wrote it, so something else changed it: restore it from the history or remove it by hand")]
    Corrupt {
        location: String,
        what: String,
        #[source]
        source: serde_json::Error,
    },

    /// Ctrl-C or SIGTERM; the cleanups of the steps that ran have run.
    #[error("interrupted; cleanups ran (journal: {journal})")]
    Interrupted { journal: String },

    #[error("registry {path}: {source}")]
    Registry {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A bake step or cleanup failed.
    #[error("{recipe} {arch}: step `{step}`: {message}")]
    Step {
        recipe: String,
        arch: String,
        step: String,
        message: String,
    },

    /// Image Builder's test phase (the recipe's validators that need no cluster, run on an
    /// instance of the new image) failed: the image is rejected before any canary and was
    /// never distributed.
    #[error("{recipe} {arch}: Image Builder's test phase rejected the image ({failed}): {reason}")]
    TestPhaseRejected {
        recipe: String,
        arch: String,
        /// The validators that failed, as far as the reason names them.
        failed: String,
        reason: String,
    },

    /// A provider (local VMs, AWS) failed outside a step.
    #[error("{provider}: {message}")]
    Provider { provider: String, message: String },

    /// An AWS call failed: what bake was doing, and the SDK's error kept as the source
    /// (shown as AWS's `Code: message`).
    #[error("aws: {context}: {described}")]
    Aws {
        context: String,
        /// The service's `Code: message`, or the SDK's account of a transport failure.
        described: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An AWS call that the caller's setup stops (no credentials, expired or unknown ones,
    /// access denied): one line naming the cause, what was tried and the fix. The SDK's own
    /// account is logged at `-v` and kept as the source.
    #[error("aws: {context}: {cause}{tried}. Fix: {fix}")]
    AwsSetup {
        context: String,
        cause: String,
        /// `; tried …`, or empty.
        tried: String,
        fix: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Several arches failed; each error is listed.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Many(Vec<Error>),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn provider(provider: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Provider {
            provider: provider.into(),
            message: message.into(),
        }
    }

    /// The documented exit code for this error. With several errors the most severe wins:
    /// interruption, then failure, then lock, then rejection.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Input(_) | Error::Usage(_) | Error::AwsSetup { .. } => exit::BAD_INPUT,
            Error::Rejected { .. } | Error::TestPhaseRejected { .. } => exit::REJECTED,
            Error::LockHeld { .. } | Error::Conflict(_) => exit::LOCKED,
            Error::Interrupted { .. } => exit::INTERRUPTED,
            Error::Many(errors) => {
                let codes: Vec<u8> = errors.iter().map(Error::exit_code).collect();
                for code in [
                    exit::INTERRUPTED,
                    exit::FAILURE,
                    exit::BAD_INPUT,
                    exit::LOCKED,
                    exit::REJECTED,
                ] {
                    if codes.contains(&code) {
                        return code;
                    }
                }
                exit::FAILURE
            }
            _ => exit::FAILURE,
        }
    }
}
