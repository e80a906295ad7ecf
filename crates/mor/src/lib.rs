//! Model order reduction (MOR) of diagonal state-space blocks and deep SSMs.
//!
//! Pure math: no ML framework. See [`block`] for the system definition (`diag-ssm/1`).
//!
//! - [`gram`]: closed-form (Cauchy-like) Gramians, h2 norms and errors (also time-limited),
//!   Hankel singular values, per-mode h2 and H∞ scores — each formula checked against brute-force
//!   kernel sums in the tests.
//! - [`empirical`]: empirical controllability Gramians (state covariances under recorded inputs).
//! - [`io`]: `diag-ssm/1` JSON and safetensors reading/writing with validation, atomic writes.
//! - Methods: [`modal`] (`modal`, `last`, `global-hinf`, `uniform-hinf` and the budget
//!   allocations), [`bt`] (balanced truncation, re-diagonalised; `ebt` with an empirical
//!   Gramian), `h2opt` (`h2`, `tlh2`), `lqo`
//!   (`lqo-h2`); [`reduce`] dispatches by [`Method`] for one block ([`reduce::reduce_block`]) or a
//!   whole model ([`reduce::reduce_model`]).
//! - `bound`: the output-error bound of a reduced model (see `BOUND.md`).
//! - [`memory`]: the memory a command needs, estimated from the block's sizes before allocating.

pub mod alloc;
pub mod block;
pub mod bound;
pub mod bt;
pub mod empirical;
pub mod error;
pub mod gatefit;
pub mod gram;
pub mod h2opt;
pub mod hinf;
pub mod io;
pub mod lqo;
pub mod memory;
pub mod modal;
pub mod model;
pub mod recipe;
pub mod reduce;
pub mod refit;

pub use block::DiagBlock;
pub use error::{Error, Result};
pub use faer::c64;
pub use model::{DeepSsm, Gate, Layer, Norm};
pub use reduce::{
    BlockReduction, Method, ModelReduction, ReduceOptions, reduce_block, reduce_model,
};
