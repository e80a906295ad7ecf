//! Export of a trained S5 model to `mor`'s plain-array [`mor::DeepSsm`], and import of reduced
//! systems back into a runnable [`S5Model`].
//!
//! Export (per layer): the discretised system (ZOH, S5 Eq. 6) Λ̄ `[n]`, B̄ `[n, H]`, C̃ and C̃₂
//! `[H, n]` (complex, `c64`), D `[H]`; the evaluation-mode norm (BatchNorm as scale/shift); the
//! gate `W` `[H, H]`, `b` `[H]`; the decoder. The embedding is not part of `mor`'s model.

use crate::layer::S5Layer;
use crate::model::S5Model;
use crate::ssm::S5Ssm;
use crate::{Error, Result};

/// Exports `model` for model order reduction; `max_len` is the longest input the model is run
/// on (the horizon of time-limited reduction methods).
///
/// # Errors
/// Candle errors only.
pub fn to_mor(model: &S5Model, max_len: usize) -> Result<mor::DeepSsm> {
    let layers = model
        .layers
        .iter()
        .map(|l| {
            Ok(mor::Layer {
                norm: l.norm.to_mor()?,
                ssm: l.ssm.to_block()?,
                gate: l.gate.to_mor()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let f64s = crate::params::to_f64_vec;
    let (c, h) = model.decoder_w.dims2()?;
    let w = f64s(&model.decoder_w)?;
    Ok(mor::DeepSsm {
        layers,
        decoder_w: faer::Mat::from_fn(c, h, |i, j| w[i * h + j]),
        decoder_b: f64s(&model.decoder_b)?,
        max_len,
    })
}

/// A model whose SSMs are the (reduced) discrete diagonal systems of `reduced` — any order per
/// layer, stored directly as `lambda_bar`, `b_bar`, `C`, `C2`, `D` — and whose encoder, norms,
/// gates and decoder are shared with `model` (tensors are shared, not copied). A layer's `D`
/// comes from the block when present, else from `model`.
///
/// # Errors
/// A layer count or width that does not match `model`, a bidirectional mismatch, or a block with
/// an LQO read-out.
pub fn with_reduced(model: &S5Model, reduced: &mor::DeepSsm) -> Result<S5Model> {
    if reduced.layers.len() != model.layers.len() {
        return Err(Error::Config(format!(
            "reduced model has {} layers, the S5 model {}",
            reduced.layers.len(),
            model.layers.len()
        )));
    }
    let h = model.config().d_model;
    let dtype = model.encoder.dtype();
    let device = model.encoder.device();
    let layers = model
        .layers
        .iter()
        .zip(&reduced.layers)
        .enumerate()
        .map(|(i, (l, r))| {
            if r.ssm.is_bidirectional() != l.ssm.c2.is_some() {
                return Err(Error::Config(format!(
                    "layer {i}: reduced block bidirectional = {}, model layer bidirectional = {}",
                    r.ssm.is_bidirectional(),
                    l.ssm.c2.is_some()
                )));
            }
            let ssm = S5Ssm::from_block(&r.ssm, h, &l.ssm.d, dtype, device)
                .map_err(|e| Error::Config(format!("layer {i}: {e}")))?;
            Ok(S5Layer {
                norm: l.norm.clone(),
                ssm,
                gate: l.gate.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(S5Model::from_parts(
        model.config().clone(),
        model.encoder.clone(),
        layers,
        model.decoder_w.clone(),
        model.decoder_b.clone(),
    ))
}
