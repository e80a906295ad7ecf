//! A whole deep SSM as `mor` sees it: per layer a norm, a diagonal SSM block and a gate, then
//! masked mean pooling and a linear decoder. Plain arrays only (no ML framework types); `s5`
//! converts its candle model to and from this.
//!
//! Layer `ℓ` maps its input `z` (`[len, h]`) to `z + gate(ssm(norm(z)))`, where `ssm` includes
//! the feed-through `D ⊙ u`.

use crate::block::DiagBlock;
use faer::{Mat, MatRef};

/// The prenorm of a layer, in evaluation mode.
#[derive(Clone, Debug, PartialEq)]
pub enum Norm {
    /// BatchNorm in evaluation mode: the per-channel affine map `u = scale ⊙ z + shift`, with
    /// `scale = γ / sqrt(running_var + eps)`, `shift = β − scale ⊙ running_mean`; each `[h]`.
    Batch { scale: Vec<f64>, shift: Vec<f64> },
    /// LayerNorm over the `h` channels: `u = γ ⊙ (z − mean) / sqrt(var + eps) + β`.
    Layer {
        gamma: Vec<f64>,
        beta: Vec<f64>,
        eps: f64,
    },
    /// No norm.
    Identity,
}

/// The gate applied to the SSM output `y` (`[h]` per position).
#[derive(Clone, Debug, PartialEq)]
pub enum Gate {
    /// S5's `half_glu2`: `g = GELU_tanh(y)`, `out = y ⊙ σ(W g + b)`; `w` `[h, h]`, `b` `[h]`.
    HalfGlu2 { w: Mat<f64>, b: Vec<f64> },
    /// `out = y ⊙ (W y + b)`: makes the layer exactly linear-quadratic in `y`; `w` `[h, h]`, `b` `[h]`.
    Quadratic { w: Mat<f64>, b: Vec<f64> },
    /// `out = y`.
    Identity,
}

impl Gate {
    /// The gate's output for gate inputs `y` `[len, h]` (one row per position), `[len, h]`. With
    /// the SSM output including the feed-through, `y = s + D ⊙ u`, this is what the layer adds to
    /// its residual stream; with the state output `s` alone, the LQO system's output.
    ///
    /// # Panics
    /// If `y` does not have the gate's `h` columns.
    pub fn output(&self, y: MatRef<'_, f64>) -> Mat<f64> {
        match self {
            Gate::Identity => y.to_owned(),
            Gate::Quadratic { w, b } => {
                let a = y * w.transpose();
                Mat::from_fn(y.nrows(), y.ncols(), |t, i| y[(t, i)] * (a[(t, i)] + b[i]))
            }
            Gate::HalfGlu2 { w, b } => {
                let g = Mat::from_fn(y.nrows(), y.ncols(), |t, j| gelu_tanh(y[(t, j)]));
                let a = &g * w.transpose();
                Mat::from_fn(y.nrows(), y.ncols(), |t, i| {
                    y[(t, i)] * sigmoid(a[(t, i)] + b[i])
                })
            }
        }
    }
}

/// `GELU_tanh(x) = x/2 (1 + tanh(√(2/π)(x + 0.044715 x³)))` (S5's GELU).
pub fn gelu_tanh(x: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
}

/// The derivative of [`gelu_tanh`].
pub fn gelu_tanh_deriv(x: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let t = (k * (x + 0.044715 * x * x * x)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
}

/// The logistic function `σ(x) = 1 / (1 + e^{−x})`.
pub(crate) fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// One residual layer: `z ↦ z + gate(ssm(norm(z)))`.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// Prenorm (evaluation mode).
    pub norm: Norm,
    /// The discrete diagonal SSM (with `d` = feed-through; `m = p = h`, `linear`/`quadratic` unset).
    pub ssm: DiagBlock,
    /// Gate after the SSM.
    pub gate: Gate,
}

/// A deep SSM classifier: embedding (not needed by `mor`), layers, masked mean pooling over the
/// true length, then `logits = decoder_w · pooled + decoder_b`.
#[derive(Clone, Debug, PartialEq)]
pub struct DeepSsm {
    /// The residual layers, input side first.
    pub layers: Vec<Layer>,
    /// Decoder weight, `[classes, h]`.
    pub decoder_w: Mat<f64>,
    /// Decoder bias, `[classes]`.
    pub decoder_b: Vec<f64>,
    /// Longest input sequence the model is run on (tokens); the horizon of time-limited methods.
    pub max_len: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(rows: usize, cols: usize, scale: f64, seed: u64) -> Mat<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Mat::from_fn(rows, cols, |_, _| scale * rng.random_range(-1.0..1.0))
    }

    #[test]
    fn quadratic_gate_is_its_lqo_model() {
        // out = E y + (yᵀ N_i y)_i with the exact LQO terms of crate::lqo (dense N_i).
        let (h, len) = (5, 7);
        let w = random(h, h, 1.0, 1);
        let b: Vec<f64> = (0..h).map(|i| 0.3 * i as f64 - 0.5).collect();
        let layer = Layer {
            norm: Norm::Identity,
            ssm: crate::gram::tests::random_block(3, 2, h, h, false, 0, None, 0.9),
            gate: Gate::Quadratic { w, b },
        };
        let (e, n) = crate::lqo::lqo_terms(&layer);
        let y = random(len, h, 2.0, 2);
        let out = layer.gate.output(y.as_ref());
        for t in 0..len {
            let yt = Mat::from_fn(h, 1, |i, _| y[(t, i)]);
            let lin = &e * &yt;
            for i in 0..h {
                let quad = (yt.transpose() * &n[i] * &yt)[(0, 0)];
                assert!(
                    (out[(t, i)] - lin[(i, 0)] - quad).abs() < 1e-12,
                    "t {t} i {i}"
                );
            }
        }
    }

    #[test]
    fn half_glu2_gate_matches_the_per_position_formula() {
        // out_i = y_i σ(Σ_j W_ij GELU(y_j) + b_i), written out per entry.
        let (h, len) = (4, 6);
        let w = random(h, h, 1.5, 3);
        let b = vec![-2.0, 0.0, 0.5, 3.0];
        let gate = Gate::HalfGlu2 {
            w: w.clone(),
            b: b.clone(),
        };
        let y = random(len, h, 3.0, 4);
        let out = gate.output(y.as_ref());
        for t in 0..len {
            for i in 0..h {
                let a: f64 = (0..h)
                    .map(|j| w[(i, j)] * gelu_tanh(y[(t, j)]))
                    .sum::<f64>()
                    + b[i];
                let want = y[(t, i)] / (1.0 + (-a).exp());
                assert!((out[(t, i)] - want).abs() < 1e-12, "t {t} i {i}");
            }
        }
        assert_eq!(Gate::Identity.output(y.as_ref()), y);
    }

    #[test]
    fn gelu_derivative_matches_finite_differences() {
        for x in [-4.0, -1.3, -0.2, 0.0, 0.7, 2.5] {
            let fd = (gelu_tanh(x + 1e-6) - gelu_tanh(x - 1e-6)) / 2e-6;
            assert!((fd - gelu_tanh_deriv(x)).abs() < 1e-8, "{x}");
        }
    }
}
