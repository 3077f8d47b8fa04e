//! `bake` bakes hardened, immutable EKS worker-node images per architecture, proves each on
//! a canary, and publishes versioned IDs that Terraform pins to.
//!
//! One module per noun of the domain; README.md says what each word means and draws the layout.

pub mod arch;
pub mod audit;
#[cfg(feature = "aws")]
pub mod aws;
pub mod canary;
pub mod cli;
pub mod commands;
pub mod diag;
pub mod diff;
pub mod error;
pub mod guest;
pub mod iam;
pub mod input;
pub mod inventory;
pub mod journal;
pub mod key;
pub mod kube;
pub mod lock;
pub mod long_output;
pub mod names;
pub mod packages;
pub mod pin;
pub mod pins_file;
pub mod pipeline;
pub mod plan;
pub mod promote;
pub mod protection;
pub mod provider;
pub mod prune;
pub mod recipe;
pub mod registry;
pub mod release;
pub mod report;
pub mod run;
pub mod sbom;
pub mod signals;
pub mod state_dir;
pub mod steps;
pub mod sweep;
pub mod user_data;
pub mod validate;

pub use arch::Arch;
pub use error::{Error, Result};
