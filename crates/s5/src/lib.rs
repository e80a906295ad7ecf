//! S5 deep state-space model (Smith, Warrington, Linderman, ICLR 2023) in candle.

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod export;
pub mod fused;
pub mod gate;
pub mod hippo;
pub mod infer;
pub mod layer;
pub mod model;
pub mod norm;
pub mod optim;
pub mod params;
pub mod perf;
pub mod recalibrate;
pub mod scan;
pub mod sensitivity;
pub mod ssm;
pub mod ssm_op;
pub mod stack;
pub mod train;
pub mod vmath;

pub use config::{GateKind, ModelConfig, NormKind};
pub use error::{Error, Result};
pub use export::{to_mor, with_reduced};
pub use model::{Mode, S5Model, is_ssm_param};
