//! Gates after the SSM (S5's `half_glu2`, and `quadratic`).
//!
//! - `half_glu2` (S5 code, `SequenceLayer`): `g = drop(GELU_tanh(y))`, `out = y ⊙ σ(W g + b)`;
//! - `quadratic`: `out = y ⊙ (W y + b)`, which makes the layer a linear-quadratic-output system.
//!
//! `W` is `[H, H]` stored `[out, in]` (candle's linear convention), initialised lecun-normal
//! (fan-in `H`), `b` = 0.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::fused::ChannelMask;
use crate::params::{InitRng, param};
use crate::{GateKind, Result};

/// A gate with its dense map.
#[derive(Clone, Debug)]
pub struct Gate {
    /// Which gate.
    pub kind: GateKind,
    /// `W` `[H, H]` (`[out, in]`).
    pub weight: Tensor,
    /// `b` `[H]`.
    pub bias: Tensor,
}

/// `x W^T + b` for `x` `[b, l, H]`, as one 2-D matmul.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (bb, l, h) = x.dims3()?;
    let o = w.dims()[0];
    Ok(x.reshape((bb * l, h))?
        .matmul(&w.t()?)?
        .broadcast_add(b)?
        .reshape((bb, l, o))?)
}

impl Gate {
    /// Creates (or loads) `weight`, `bias` under `vb`.
    ///
    /// # Errors
    /// A stored tensor of the wrong shape.
    pub fn new(kind: GateKind, h: usize, vb: &VarBuilder, rng: &mut InitRng) -> Result<Self> {
        let w = rng.lecun_normal(h * h, h);
        Ok(Self {
            kind,
            weight: param(vb, "weight", (h, h), w)?,
            bias: param(vb, "bias", h, vec![0.0; h])?,
        })
    }

    /// The residual stream after this layer, `x + gate(y)`, for the residual stream `x` and the
    /// SSM output `y` `[b, l, H]`, with S5's two dropout sites: `drop_in` on the GELU output of
    /// `half_glu2` (before the dense map) and `drop_out` on the gate's output (before the
    /// residual add). `half_glu2` runs as one fused op ([`crate::fused::glu_residual`]);
    /// `quadratic` as candle ops.
    ///
    /// # Errors
    /// Shape mismatches.
    pub fn residual(
        &self,
        x: &Tensor,
        y: &Tensor,
        drop_in: Option<&ChannelMask>,
        drop_out: Option<&ChannelMask>,
    ) -> Result<Tensor> {
        match self.kind {
            GateKind::HalfGlu2 => {
                crate::fused::glu_residual(x, y, &self.weight, &self.bias, drop_in, drop_out)
            }
            GateKind::Quadratic => {
                let mut out = (y * linear(y, &self.weight, &self.bias)?)?;
                if let Some(m) = drop_out {
                    out = out.broadcast_mul(&m.to_tensor(&out)?)?;
                }
                Ok((x + out)?)
            }
        }
    }

    /// The gate for `mor`.
    ///
    /// # Errors
    /// Candle errors only.
    pub fn to_mor(&self) -> Result<mor::Gate> {
        let h = self.bias.dims()[0];
        let w = crate::params::to_f64_vec(&self.weight)?;
        let b = crate::params::to_f64_vec(&self.bias)?;
        let w = faer::Mat::from_fn(h, h, |i, j| w[i * h + j]);
        Ok(match self.kind {
            GateKind::HalfGlu2 => mor::Gate::HalfGlu2 { w, b },
            GateKind::Quadratic => mor::Gate::Quadratic { w, b },
        })
    }
}
