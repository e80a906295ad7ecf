//! Shared helpers of the op tests: flat f64 views of tensors, deterministic inputs, central
//! differences.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};

/// The entries of `t` as f64, flattened row-major.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest absolute entrywise difference of two equally long slices.
pub fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Deterministic f64 values uniform in `[-scale, scale]` (a linear congruential sequence, so
/// tests do not depend on candle's thread-local generator).
pub fn uniform(shape: &[usize], scale: f64, seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let vals: Vec<f64> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2.0 * scale
        })
        .collect();
    Tensor::from_vec(vals, shape, &Device::Cpu).unwrap()
}

/// `(loss(x + eps e_i) − loss(x − eps e_i)) / 2eps` for the f64 variable `var` (restored after).
pub fn central_difference(var: &Var, i: usize, eps: f64, loss: impl Fn() -> f64) -> f64 {
    let base = values(var.as_tensor());
    let set = |d: f64| {
        let mut vals = base.clone();
        vals[i] += d;
        var.set(&Tensor::from_slice(&vals, var.shape(), &Device::Cpu).unwrap())
            .unwrap()
    };
    set(eps);
    let plus = loss();
    set(-eps);
    let minus = loss();
    set(0.0);
    (plus - minus) / (2.0 * eps)
}
