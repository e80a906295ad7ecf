//! The reproduction runner's library: run configuration, evaluation set, results CSV (atomic,
//! resumable), figures and the run manifest. The `bench` binary (`src/main.rs`) wires these to
//! the `lra`, `s5` and `mor` crates.

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
