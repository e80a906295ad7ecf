//! A whole deep SSM as `mor` sees it: per layer a norm, a diagonal SSM block and a gate, then
//! masked mean pooling and a linear decoder. Plain arrays only (no ML framework types); `s5`
//! converts its candle model to and from this.
//!
//! Layer `ℓ` maps its input `z` (`[len, h]`) to `z + gate(ssm(norm(z)))`, where `ssm` includes
//! the feed-through `D ⊙ u`.

use crate::block::DiagBlock;
use faer::Mat;

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
