//! `bake` bakes hardened, immutable EKS worker-node images per architecture, proves each on
//! a canary, and publishes versioned IDs that Terraform pins to.
//!
//! The layout is the architecture, from the top down: `cli` parses, `commands` are thin (parse,
//! call one operation, print), `ops` holds the operations they call (run, plan, promote,
//! prune, sweep, audit, …), `input` reads and checks what the user writes (recipes, pipelines,
//! the validator catalog), `provider` and `registry` are the two places the world is touched
//! (AWS-only plumbing lives under `provider/aws`), and the nouns the rest share sit at the
//! root. README.md ("Layout") draws it.

pub mod cli;
pub mod commands;
pub mod input;
pub mod ops;
pub mod provider;
pub mod registry;
pub mod steps;

// The nouns and the machinery every layer shares.
pub mod arch;
pub mod canary;
pub mod diag;
pub mod error;
pub mod guest;
pub mod inventory;
pub mod journal;
pub mod key;
pub mod kube;
pub mod lock;
pub mod packages;
pub mod release;
pub mod report;
pub mod signals;
pub mod state_dir;
pub mod user_data;
pub mod verdict;

pub use arch::Arch;
pub use error::{Error, Result};
