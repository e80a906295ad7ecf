//! S5 deep state-space model (Smith, Warrington, Linderman, ICLR 2023) in candle.

pub mod config;
pub mod error;
pub mod scan;
pub mod checkpoint;
pub mod optim;
pub mod perf;
pub mod train;

pub use config::{GateKind, ModelConfig, NormKind};
pub use error::{Error, Result};
