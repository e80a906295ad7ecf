//! S5 deep state-space model (Smith, Warrington, Linderman, ICLR 2023) in candle.

pub mod config;

pub use config::{GateKind, ModelConfig, NormKind};
