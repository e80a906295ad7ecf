//! Model order reduction (MOR) of diagonal state-space blocks and deep SSMs.
//!
//! Pure math: no ML framework. See `block` for the system definition (`diag-ssm/1`).

pub mod block;
pub mod model;

pub use block::DiagBlock;
pub use faer::c64;
pub use model::{DeepSsm, Gate, Layer, Norm};
