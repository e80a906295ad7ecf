//! First-order estimate of the logit change a reduction causes (issue 31; the aligned form of
//! the review in `shared/notes/bound-and-refit-review.md`, §3, rung R6):
//!
//! ```text
//! logits(u) − logits_r(u) ≈ Σ_ℓ J_ℓ (𝒮_ℓ − 𝒮̂_ℓ) u_ℓ,    J_ℓ = ∂logits/∂y_ℓ
//! ```
//!
//! `y_ℓ` is layer ℓ's SSM output (before the gate) and `u_ℓ` its input on the **full** model's
//! trajectory; `J_ℓ` comes from candle's backward pass through the evaluation-mode network (one
//! pass per logit). It is exact to first order in the layer errors and an **estimate, not a
//! bound**: the conservative form `Σ_ℓ ‖J_ℓ‖₂ ‖(𝒮_ℓ − 𝒮̂_ℓ) u_ℓ‖₂` drops the alignment, and
//! neither covers the second-order remainder.

use candle_core::{DType, Tensor, Var};

use crate::model::S5Model;
use crate::norm::Mask;
use crate::{Error, Result};

/// The full model's trajectory on one batch with the logit Jacobians of every layer's SSM
/// output: what [`first_order_estimate`] needs, computed once per batch and reused for any
/// number of reduced models.
pub struct Linearisation {
    /// Logits of the full model `[b, classes]`.
    pub logits: Vec<Vec<f64>>,
    /// Per layer, the SSM input `u_ℓ` `[b, l, H]` (detached, evaluation mode).
    pub inputs: Vec<Tensor>,
    /// Per layer and class `k`, `∂logit_k/∂y_ℓ` `[b, l, H]` (zero at padded positions).
    pub jacobians: Vec<Vec<Tensor>>,
    /// Per sequence and layer, `‖J_ℓ‖₂`: the largest singular value of the `[classes, l·H]`
    /// Jacobian of the logits with respect to the layer's SSM output (`[b][n_layers]`).
    pub sensitivity: Vec<Vec<f64>>,
    lengths: Vec<u32>,
    mask: Tensor,
}

/// Per sequence, the first-order estimate of the logit change of one reduced model.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    /// The predicted change `Σ_ℓ J_ℓ (𝒮_ℓ − 𝒮̂_ℓ) u_ℓ` of the logits, full minus reduced
    /// `[classes]`.
    pub change: Vec<f64>,
    /// `‖Σ_ℓ J_ℓ (𝒮_ℓ − 𝒮̂_ℓ) u_ℓ‖₂` (logit units).
    pub estimate: f64,
    /// `Σ_ℓ ‖J_ℓ‖₂ ‖(𝒮_ℓ − 𝒮̂_ℓ) u_ℓ‖₂` (logit units; ≥ `estimate`).
    pub conservative: f64,
    /// Per layer, `‖J_ℓ (𝒮_ℓ − 𝒮̂_ℓ) u_ℓ‖₂`: the layer's own first-order contribution.
    pub contributions: Vec<f64>,
    /// Per layer, `‖(𝒮_ℓ − 𝒮̂_ℓ) u_ℓ‖₂` over the true positions.
    pub error_l2: Vec<f64>,
    /// Per layer, the largest `|(𝒮_ℓ − 𝒮̂_ℓ) u_ℓ|` entry over the true positions.
    pub error_peak: Vec<f64>,
}

impl S5Model {
    /// The evaluation-mode trajectory and logit Jacobians of `tokens` `[b, l]` (u32) with true
    /// `lengths` `[b]` ([`Linearisation`]): one forward pass through the autograd ops and one
    /// backward pass per class.
    ///
    /// # Errors
    /// As [`S5Model::forward`].
    pub fn linearise(&self, tokens: &Tensor, lengths: &Tensor) -> Result<Linearisation> {
        let (l, _, lens) = self.checked_inputs(tokens, lengths)?;
        let (b, h) = (lens.len(), self.config().d_model);
        let flat = tokens.flatten_all()?;
        let mut x = self.encoder.index_select(&flat, 0)?.reshape((b, l, h))?;
        let mask = Mask::new(&lens, l, &x)?;
        let (mut inputs, mut taps) = (Vec::new(), Vec::new());
        for layer in &self.layers {
            let u = layer.norm.forward(&x, &mask, false)?;
            let y = layer.ssm.forward_t(&u, &lens, true)?;
            // A zero variable added to y: its gradient is ∂logits/∂y_ℓ (candle keeps gradients
            // of variables only).
            let tap = Var::zeros((b, l, h), y.dtype(), y.device())?;
            let y_tapped = (&y + tap.as_tensor())?;
            x = layer.gate.residual(&x, &y_tapped, None, None)?;
            inputs.push(u.detach());
            taps.push(tap);
        }
        let pooled = mask.pool.matmul(&x)?.squeeze(1)?;
        let logits = pooled
            .matmul(&self.decoder_w.t()?)?
            .broadcast_add(&self.decoder_b)?;
        let classes = logits.dim(1)?;
        let mut jacobians = vec![Vec::with_capacity(classes); taps.len()];
        for k in 0..classes {
            let grads = logits.narrow(1, k, 1)?.sum_all()?.backward()?;
            for (li, tap) in taps.iter().enumerate() {
                let g = grads
                    .get(tap.as_tensor())
                    .ok_or_else(|| Error::Config(format!("no gradient reached layer {li}")))?;
                jacobians[li].push(g.detach());
            }
        }
        let row_mask = mask.row.reshape((b, l, 1))?.to_dtype(DType::F64)?;
        let sensitivity = sensitivities(&jacobians, b)?;
        Ok(Linearisation {
            logits: logits.to_dtype(DType::F64)?.to_vec2()?,
            inputs,
            jacobians,
            sensitivity,
            lengths: lens,
            mask: row_mask,
        })
    }
}

/// `[b][n_layers]` largest singular values of the per-sequence `[classes, l·H]` Jacobians, from
/// their `classes × classes` Gram matrices.
fn sensitivities(jacobians: &[Vec<Tensor>], b: usize) -> Result<Vec<Vec<f64>>> {
    let mut out = vec![Vec::with_capacity(jacobians.len()); b];
    for per_class in jacobians {
        let k = per_class.len();
        let mut gram = vec![vec![vec![0.0; k]; k]; b];
        for i in 0..k {
            for j in i..k {
                let g = inner(&per_class[i], &per_class[j])?;
                for (bi, v) in g.into_iter().enumerate() {
                    gram[bi][i][j] = v;
                    gram[bi][j][i] = v;
                }
            }
        }
        for (bi, g) in gram.iter().enumerate() {
            out[bi].push(largest_eigenvalue(g).max(0.0).sqrt());
        }
    }
    Ok(out)
}

/// Per sequence `Σ_{t,c} a[b,t,c] · c[b,t,c]` in f64, `[b]`.
fn inner(a: &Tensor, c: &Tensor) -> Result<Vec<f64>> {
    Ok((a.to_dtype(DType::F64)? * c.to_dtype(DType::F64)?)?
        .sum((1, 2))?
        .to_vec1()?)
}

/// Largest eigenvalue of a small symmetric matrix (power iteration on the shifted matrix; exact
/// closed forms for sizes 1 and 2).
fn largest_eigenvalue(m: &[Vec<f64>]) -> f64 {
    match m.len() {
        0 => 0.0,
        1 => m[0][0],
        2 => {
            let (a, b, d) = (m[0][0], m[0][1], m[1][1]);
            0.5 * (a + d) + (0.25 * (a - d) * (a - d) + b * b).sqrt()
        }
        n => {
            let mut v = vec![1.0; n];
            let mut lam = 0.0;
            for _ in 0..500 {
                let w: Vec<f64> = (0..n)
                    .map(|i| (0..n).map(|j| m[i][j] * v[j]).sum())
                    .collect();
                let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
                if norm == 0.0 {
                    return 0.0;
                }
                lam = norm;
                v = w.into_iter().map(|x| x / norm).collect();
            }
            lam
        }
    }
}

/// The first-order estimate of `logits(u) − logits_r(u)` per sequence of the batch `lin` was
/// computed on, for `reduced`, a reduction of `full` (the model `lin` comes from; same layers,
/// norms and gates, only the SSMs differ): runs every full and reduced SSM on the full model's
/// recorded inputs `u_ℓ`. `lin` can be kept and reused for any number of reductions.
///
/// # Errors
/// [`Error::Config`] if a model has another number of layers than `lin`; candle errors (shapes).
pub fn first_order_estimate(
    lin: &Linearisation,
    full: &S5Model,
    reduced: &S5Model,
) -> Result<Vec<Estimate>> {
    if reduced.layers.len() != lin.inputs.len() || full.layers.len() != lin.inputs.len() {
        return Err(Error::Config(format!(
            "first-order estimate: the models have {} and {} layers, the linearisation {}",
            full.layers.len(),
            reduced.layers.len(),
            lin.inputs.len()
        )));
    }
    let b = lin.lengths.len();
    let classes = lin.logits.first().map_or(0, Vec::len);
    let mut change = vec![vec![0.0; classes]; b];
    let mut out: Vec<Estimate> = (0..b)
        .map(|_| Estimate {
            change: Vec::new(),
            estimate: 0.0,
            conservative: 0.0,
            contributions: Vec::new(),
            error_l2: Vec::new(),
            error_peak: Vec::new(),
        })
        .collect();
    for (li, (layer, full_layer)) in reduced.layers.iter().zip(&full.layers).enumerate() {
        let lc = layer_change(lin, li, &full_layer.ssm, &layer.ssm)?;
        for (bi, e) in out.iter_mut().enumerate() {
            for (acc, v) in change[bi].iter_mut().zip(&lc.change[bi]) {
                *acc += v;
            }
            e.contributions.push(norm2(&lc.change[bi]));
            e.error_l2.push(lc.error_l2[bi]);
            e.error_peak.push(lc.error_peak[bi]);
            e.conservative += lin.sensitivity[bi][li] * lc.error_l2[bi];
        }
    }
    for (e, c) in out.iter_mut().zip(change) {
        e.estimate = norm2(&c);
        e.change = c;
    }
    Ok(out)
}

/// One layer's part of [`first_order_estimate`], per sequence of the batch.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerChange {
    /// `J_ℓ (𝒮_ℓ − 𝒮̂_ℓ) u_ℓ`, `[b][classes]`: the first-order logit change of this layer alone.
    pub change: Vec<Vec<f64>>,
    /// `‖(𝒮_ℓ − 𝒮̂_ℓ) u_ℓ‖₂` over the true positions, `[b]`.
    pub error_l2: Vec<f64>,
    /// Largest `|(𝒮_ℓ − 𝒮̂_ℓ) u_ℓ|` entry over the true positions, `[b]`.
    pub error_peak: Vec<f64>,
}

/// The first-order logit change of replacing layer `layer`'s SSM `full` by `reduced` alone, on
/// the batch of `lin` (both SSMs run on the recorded input `u_ℓ`).
///
/// # Errors
/// [`Error::Config`] for a layer index outside `lin`; candle errors (shapes).
pub fn layer_change(
    lin: &Linearisation,
    layer: usize,
    full: &crate::ssm::S5Ssm,
    reduced: &crate::ssm::S5Ssm,
) -> Result<LayerChange> {
    let (Some(u), Some(jacs)) = (lin.inputs.get(layer), lin.jacobians.get(layer)) else {
        return Err(Error::Config(format!(
            "first-order estimate: layer {layer} of a linearisation of {} layers",
            lin.inputs.len()
        )));
    };
    let b = lin.lengths.len();
    let classes = jacs.len();
    let y = full.forward_t(u, &lin.lengths, false)?;
    let y_red = reduced.forward_t(u, &lin.lengths, false)?;
    let d = (y.to_dtype(DType::F64)? - y_red.to_dtype(DType::F64)?)?.broadcast_mul(&lin.mask)?;
    let error_l2: Vec<f64> = d.sqr()?.sum((1, 2))?.sqrt()?.to_vec1()?;
    let error_peak: Vec<f64> = d.abs()?.max(2)?.max(1)?.to_vec1()?;
    let mut change = vec![vec![0.0; classes]; b];
    for (k, jac) in jacs.iter().enumerate() {
        for (bi, v) in inner(jac, &d)?.into_iter().enumerate() {
            change[bi][k] = v;
        }
    }
    Ok(LayerChange {
        change,
        error_l2,
        error_peak,
    })
}

fn norm2(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}
