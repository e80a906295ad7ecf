//! Model order reduction (MOR) of diagonal state-space blocks and deep SSMs.
//!
//! Pure math: no ML framework. See [`block`] for the system definition (`diag-ssm/1`).
//!
//! - [`gram`]: closed-form (Cauchy-like) Gramians, h2 norms and errors (also time-limited);
//!   [`balance`]: the real realisation, its Gramians, square-root balancing and Hankel singular
//!   values; [`modes`]: mode selection and per-mode h2, H∞ and energy scores — each formula
//!   checked against brute-force kernel sums in the tests.
//! - [`empirical`]: empirical controllability Gramians (state covariances under recorded inputs).
//! - [`io`]: `diag-ssm/1` JSON and safetensors reading/writing with validation, atomic writes.
//! - Methods: [`modal`] (`modal`, `emodal`, `last`, `aire`, `last-ref`, `aire-ref`,
//!   `global-hinf`, `uniform-hinf` and the budget allocations), [`bt`] (balanced truncation,
//!   re-diagonalised; `ebt` with an empirical Gramian), `h2opt` (`h2`, `tlh2`), `lqo` (`lqo-h2`,
//!   `lqo-h2-taylor`), [`gatefit`] (the gate's LQO model at its operating point); [`reduce`]
//!   dispatches by [`Method`] for one block ([`reduce::reduce_block`]), one layer of a model
//!   ([`reduce::reduce_layer`]) or a whole model ([`reduce::reduce_model`],
//!   [`reduce::reduce_model_orders`]); their results are [`reduction`] types.
//! - Recipes ([`recipe`]): `<method>[<layers>=<method>][@<allocation>][+<post-step>]`, a method ×
//!   optional per-layer reducer overrides × an order allocation ([`alloc`]: `uniform`, `bound`,
//!   `sens`, `first-order`) × a post-step ([`refit`]: `refit`, `refit-seq`).
//! - [`hinf`]: certified upper bounds of H∞ norms (used by the bound); [`gate_box`]: certified
//!   bounds on a gate's Jacobian over per-position boxes (measured against the bound's constants).
//! - `bound`: the output-error bound of a reduced model (see `BOUND.md`).
//! - [`memory`]: the memory a command needs, estimated from the block's sizes before allocating.
//!
//! # Adding a reduction method
//!
//! A new block reducer touches two library files, and every name list (the CLIs' answer to an
//! unknown name, config validation, plot order, the sweep's default methods, recipe parsing)
//! follows from [`Method::ALL`]:
//! 1. `src/reduce.rs`: a variant of [`Method`] (with its `serde` name), its entry in
//!    [`Method::ALL`] and [`Method::name`], and its arm in [`reduce::reduce_block`] (the block
//!    reduction at order `r`). If the method needs data of its layer (a Gramian, an LQO model),
//!    add the arm in [`reduce::reduce_layer`] instead; if its own allocation is not "the same
//!    ratio in every layer", add it to [`reduce::reduce_model`]. The allocations of
//!    [`alloc`] that need no LQO model (`uniform`, `sens`, `first-order`; `bound` is for the LQO
//!    methods) and every post-step then compose with it (`<new>@sens+refit`).
//! 2. The module holding the reduction itself (e.g. `src/modal.rs` for a new score), returning a
//!    [`reduce::BlockReduction`].
//! 3. `crates/bench/src/plot.rs`: its colour in `method_rgb` (the match is exhaustive, so the
//!    workspace does not build until it has one; a test checks no two methods share one), and
//!    optionally a line in the method list of `configs/imdb.toml`.
//!
//! Tried in session 25 on a scratch branch (not merged): a reducer `first` that keeps the first
//! `r` stored modes is 13 lines in `src/reduce.rs` (reusing `modal::truncate_modes`) and 1 in
//! `crates/bench/src/plot.rs`; `cargo check --workspace --all-targets` passes with nothing else
//! changed.
//!
//! Data-driven methods also say what calibration they need in
//! [`recipe::Recipe::needs_calibration`] and get it computed in `bench`'s `Reducer::prepare`.

pub mod alloc;
pub mod balance;
pub mod block;
pub mod bound;
pub mod bt;
pub mod empirical;
pub mod error;
pub mod gate_box;
pub mod gatefit;
pub mod gram;
pub mod h2opt;
pub mod hinf;
pub mod io;
pub mod lbfgs;
pub mod lqo;
pub mod memory;
pub mod modal;
pub mod model;
pub mod modes;
pub mod recipe;
pub mod reduce;
pub mod reduction;
pub mod refit;

pub use block::DiagBlock;
pub use error::{Error, Result};
pub use faer::c64;
pub use model::{DeepSsm, Gate, Layer, Norm};
pub use reduce::{
    BlockReduction, Method, ModelReduction, ReduceOptions, reduce_block, reduce_model,
};
