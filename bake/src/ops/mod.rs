//! The operations the commands call, one module each (as cargo's `ops`): a command parses its
//! arguments, calls one of these, and prints what it returns.

pub mod audit;
pub mod diff;
pub mod iam;
pub mod pin;
pub mod pins_file;
pub mod plan;
pub mod promote;
pub mod protection;
pub mod prune;
pub mod revoke;
pub mod run;
pub mod sbom;
pub mod sweep;
