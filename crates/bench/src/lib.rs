//! The reproduction runner's library: run configuration ([`config`]), evaluation set, results
//! CSV (atomic, resumable), figures, the run manifest, and the stages of a run ([`stages`]: data,
//! training, sweep, verify, and the commands on one checkpoint), which the `bench` binary
//! (`src/main.rs`, only its command line) and the examples call. A stage drives the pieces:
//! e.g. [`stages::sweep`] (the `run`/`sweep` commands: guards, manifest, plots) runs
//! [`sweep::run_sweep`] (the sweep proper: rows, resume, CSV), and [`stages::verify`] recomputes
//! rows that [`verify`] samples and compares.

pub mod backend;
pub mod compressed;
pub mod config;
pub mod data;
pub mod estimate;
pub mod manifest;
pub mod outdir;
pub mod pipeline;
pub mod plot;
pub mod progress;
pub mod reducer;
pub mod results;
pub mod sections;
pub mod stages;
pub mod subset;
pub mod sweep;
pub mod verify;
