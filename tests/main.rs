//! bake's integration tests, built as one binary so the AWS SDK and bake are linked once.
//! One module per area; `common` holds the shared helpers (a throwaway project, the moto
//! emulator, the in-process provider). The VM tier is `vm` (the local provider on QEMU) and
//! `rehearsal` (the AWS engine on QEMU-backed instances); `.config/nextest.toml` runs those one
//! at a time.

mod common;

mod audit;
mod aws;
mod aws_mocks;
mod bad_input;
mod iam_policy;
mod imagebuilder;
mod key_and_plan;
mod kill;
mod parser_props;
mod pipeline_run;
mod promotion;
mod readme;
mod reads;
mod registry;
mod rehearsal;
mod runner;
mod schedule;
mod step_scripts;
mod terraform;
mod vm;
