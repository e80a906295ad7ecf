//! Model order reduction (MOR) of diagonal state-space blocks and deep SSMs.
//!
//! Pure math: no ML framework. See `block` for the system definition (`diag-ssm/1`).

pub mod block;
pub mod bt;
pub mod error;
pub mod gram;
pub mod h2opt;
pub mod io;
pub mod modal;
pub mod model;
pub mod reduce;

pub use block::DiagBlock;
pub use error::{Error, Result};
pub use faer::c64;
pub use model::{DeepSsm, Gate, Layer, Norm};
pub use reduce::{BlockReduction, Method, ModelReduction};
