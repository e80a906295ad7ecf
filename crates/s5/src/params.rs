//! Parameter creation through a [`VarBuilder`] with S5's initialisers, deterministic from a seed.
//!
//! A parameter already present in the builder (a loaded checkpoint, or a `VarMap` that already
//! holds it) is taken as is (shape-checked by candle); otherwise it is created in the builder and
//! filled with the initial values. Initial values are always drawn, so the random stream (and
//! hence every initial value) does not depend on which parameters already exist.

use candle_core::{Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Result;

/// Deterministic random source for initialisation.
pub struct InitRng(ChaCha8Rng);

impl InitRng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }

    /// Standard normal sample (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1: f64 = self.0.random_range(f64::EPSILON..1.0);
        let u2: f64 = self.0.random_range(0.0..1.0);
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Uniform sample in `[a, b)`.
    pub fn uniform(&mut self, a: f64, b: f64) -> f64 {
        self.0.random_range(a..b)
    }

    /// `count` samples of flax's `lecun_normal` for a given `fan_in`: a standard normal truncated
    /// to `[−2, 2]`, times `sqrt(1/fan_in) / 0.879625661` (the truncated normal's std), as
    /// `jax.nn.initializers.variance_scaling(1, "fan_in", "truncated_normal")`.
    pub fn lecun_normal(&mut self, count: usize, fan_in: usize) -> Vec<f64> {
        let std = (1.0 / fan_in.max(1) as f64).sqrt() / 0.879_625_661_034_239_8;
        (0..count)
            .map(|_| {
                loop {
                    let z = self.normal();
                    if z.abs() <= 2.0 {
                        break z * std;
                    }
                }
            })
            .collect()
    }
}

/// Gets parameter `name` of `shape` from `vb`, creating it with `values` (row-major, `f64`,
/// converted to the builder's dtype) when the builder does not hold it yet.
///
/// # Errors
/// A stored tensor of another shape (from candle, naming the tensor), or `values` of the wrong
/// length.
pub fn param<S: Into<Shape>>(
    vb: &VarBuilder,
    name: &str,
    shape: S,
    values: Vec<f64>,
) -> Result<Tensor> {
    let shape: Shape = shape.into();
    if vb.contains_tensor(name) {
        return Ok(vb.get(shape, name)?);
    }
    let t = vb.get_with_hints(shape.clone(), name, Init::Const(0.0))?;
    let init = Tensor::from_vec(values, shape, vb.device())?.to_dtype(vb.dtype())?;
    t.slice_set(&init, 0, 0)?;
    Ok(t)
}

/// Every element of `t` (any shape, any dtype), row-major, as f64: how parameters and
/// activations leave candle for `mor` and the runner.
///
/// # Errors
/// Candle errors (a dtype that cannot be cast).
pub fn to_f64_vec(t: &candle_core::Tensor) -> crate::Result<Vec<f64>> {
    Ok(t.flatten_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1::<f64>()?)
}
