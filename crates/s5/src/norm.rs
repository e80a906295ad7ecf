//! Prenorms: BatchNorm whose statistics exclude padded positions, and LayerNorm, both built from
//! differentiable candle ops (`candle_nn::LayerNorm` has no backward).
//!
//! BatchNorm (Ioffe & Szegedy, 2015; flax defaults as in S5: momentum 0.9, eps 1e-5, biased
//! variance): in training `u = γ ⊙ (z − μ_B)/sqrt(σ²_B + ε) + β` with `μ_B`, `σ²_B` over the
//! TRUE positions of the batch only, and `running ← 0.9 running + 0.1 batch`; in evaluation the
//! running statistics are used. LayerNorm (Ba et al., 2016; flax eps 1e-6) normalises each
//! position over its `H` channels.

use candle_core::{D, Tensor};
use candle_nn::VarBuilder;

use crate::params::param;
use crate::{NormKind, Result};

/// BatchNorm momentum (weight of the old running value), as flax's `nn.BatchNorm` default.
pub const BN_MOMENTUM: f64 = 0.9;
/// BatchNorm ε (flax default).
pub const BN_EPS: f64 = 1e-5;
/// LayerNorm ε (flax default).
pub const LN_EPS: f64 = 1e-6;

/// Where the true (unpadded) positions of a batch are.
#[derive(Clone, Debug)]
pub struct Mask {
    /// `[1, b·l]`: 1 at true positions, 0 at padding (masked sums as one matmul).
    pub row: Tensor,
    /// `[b, 1, l]`: `1/len_b` at true positions (masked mean pooling as a batched matmul).
    pub pool: Tensor,
    /// Number of true positions `Σ_b len_b`.
    pub n_true: usize,
    /// `[b·l]`: whether each position is true.
    pub rows: Vec<bool>,
}

impl Mask {
    /// Builds the masks for `lengths` (each `1 ≤ len ≤ l`) with tensors like `like`.
    ///
    /// # Errors
    /// Candle errors only (lengths are validated by the model).
    pub fn new(lengths: &[u32], l: usize, like: &Tensor) -> Result<Self> {
        let b = lengths.len();
        let mut row = vec![0f32; b * l];
        // f64 so that an f64 model pools with 1/len exact to f64 precision.
        let mut pool = vec![0f64; b * l];
        for (bi, &len) in lengths.iter().enumerate() {
            let len = len as usize;
            for k in 0..len {
                row[bi * l + k] = 1.0;
                pool[bi * l + k] = 1.0 / len as f64;
            }
        }
        let dev = like.device();
        Ok(Self {
            rows: row.iter().map(|&x| x != 0.0).collect(),
            row: Tensor::from_vec(row, (1, b * l), dev)?.to_dtype(like.dtype())?,
            pool: Tensor::from_vec(pool, (b, 1, l), dev)?.to_dtype(like.dtype())?,
            n_true: lengths.iter().map(|&x| x as usize).sum(),
        })
    }
}

/// The prenorm of a layer.
#[derive(Clone, Debug)]
pub enum Norm {
    /// Masked BatchNorm; `running_mean`/`running_var` live in the VarMap (checkpointed) but are
    /// not trainable.
    Batch {
        /// γ `[H]`.
        weight: Tensor,
        /// β `[H]`.
        bias: Tensor,
        /// Running mean `[H]`.
        running_mean: Tensor,
        /// Running (biased) variance `[H]`.
        running_var: Tensor,
    },
    /// LayerNorm over channels.
    Layer {
        /// γ `[H]`.
        weight: Tensor,
        /// β `[H]`.
        bias: Tensor,
    },
}

impl Norm {
    /// Creates (or loads) the norm under `vb`: `weight` = 1, `bias` = 0, `running_mean` = 0,
    /// `running_var` = 1.
    ///
    /// # Errors
    /// A stored tensor of the wrong shape.
    pub fn new(kind: NormKind, h: usize, vb: &VarBuilder) -> Result<Self> {
        let weight = param(vb, "weight", h, vec![1.0; h])?;
        let bias = param(vb, "bias", h, vec![0.0; h])?;
        Ok(match kind {
            NormKind::Batch => Norm::Batch {
                weight,
                bias,
                running_mean: param(vb, "running_mean", h, vec![0.0; h])?,
                running_var: param(vb, "running_var", h, vec![1.0; h])?,
            },
            NormKind::Layer => Norm::Layer { weight, bias },
        })
    }

    /// Trainable tensors (names relative to the `norm` prefix).
    pub fn named_params(&self) -> Vec<(&'static str, &Tensor)> {
        match self {
            Norm::Batch { weight, bias, .. } | Norm::Layer { weight, bias } => {
                vec![("weight", weight), ("bias", bias)]
            }
        }
    }

    /// Normalises `z` `[b, l, H]`. In training BatchNorm uses (and records into the running
    /// statistics) the statistics over the true positions given by `mask`.
    ///
    /// # Errors
    /// Shape mismatches.
    pub fn forward(&self, z: &Tensor, mask: &Mask, train: bool) -> Result<Tensor> {
        let (b, l, h) = z.dims3()?;
        match self {
            Norm::Layer { weight, bias } => {
                let mean = z.mean_keepdim(D::Minus1)?;
                let zc = z.broadcast_sub(&mean)?;
                let var = zc.sqr()?.mean_keepdim(D::Minus1)?;
                let inv = (var + LN_EPS)?.sqrt()?.recip()?;
                Ok(zc
                    .broadcast_mul(&inv)?
                    .broadcast_mul(weight)?
                    .broadcast_add(bias)?)
            }
            Norm::Batch {
                weight,
                bias,
                running_mean,
                running_var,
            } => {
                if !train {
                    let f64s = crate::params::to_f64_vec;
                    let u = crate::fused::batch_norm_eval(
                        &z.reshape((b * l, h))?,
                        weight,
                        bias,
                        &f64s(running_mean)?,
                        &f64s(running_var)?,
                        BN_EPS,
                    )?;
                    return Ok(u.reshape((b, l, h))?);
                }
                let (u, mean, var) = crate::fused::masked_batch_norm(
                    &z.reshape((b * l, h))?,
                    &mask.rows,
                    weight,
                    bias,
                    BN_EPS,
                )?;
                self.record_batch_stats(mean, var)?;
                Ok(u.reshape((b, l, h))?)
            }
        }
    }

    /// Normalises `z` `[b, l, H]` as training does (BatchNorm: by the mean and biased variance of
    /// the batch's true positions) but without touching the running statistics, and returns
    /// those statistics (`None` for LayerNorm, which has none). Used to measure a network in
    /// batch-statistics mode and to re-estimate its running statistics ([`PooledStats`]).
    ///
    /// # Errors
    /// Shape mismatches.
    pub fn forward_batch_stats(
        &self,
        z: &Tensor,
        mask: &Mask,
    ) -> Result<(Tensor, Option<BatchStats>)> {
        let (b, l, h) = z.dims3()?;
        let Norm::Batch { weight, bias, .. } = self else {
            return Ok((self.forward(z, mask, false)?, None));
        };
        let (u, mean, var) = crate::fused::masked_batch_norm(
            &z.reshape((b * l, h))?.detach(),
            &mask.rows,
            weight,
            bias,
            BN_EPS,
        )?;
        let stats = BatchStats {
            n_true: mask.n_true,
            mean,
            var,
        };
        Ok((u.reshape((b, l, h))?, Some(stats)))
    }

    /// Overwrites BatchNorm's running mean and (biased) variance, each `[H]`; nothing for
    /// LayerNorm.
    ///
    /// # Errors
    /// A length other than `H`.
    pub fn set_running_stats(&self, mean: &[f64], var: &[f64]) -> Result<()> {
        self.blend_running_stats(mean, var, 0.0)
    }

    /// Moves BatchNorm's running statistics towards a batch's mean and biased variance `[H]`
    /// (`running ← m · running + (1 − m) · batch`, `m` = [`BN_MOMENTUM`]); nothing for LayerNorm.
    ///
    /// # Errors
    /// A length other than `H`.
    pub fn record_batch_stats(&self, mean: Vec<f64>, var: Vec<f64>) -> Result<()> {
        self.blend_running_stats(&mean, &var, BN_MOMENTUM)
    }

    /// `running ← keep · running + (1 − keep) · new` for the mean and the variance.
    fn blend_running_stats(&self, mean: &[f64], var: &[f64], keep: f64) -> Result<()> {
        let Norm::Batch {
            running_mean,
            running_var,
            ..
        } = self
        else {
            return Ok(());
        };
        let blend = |run: &Tensor, v: &[f64]| -> Result<()> {
            let h = run.dims1()?;
            if v.len() != h {
                return Err(crate::Error::Config(format!(
                    "BatchNorm running statistics: {} values for {h} channels",
                    v.len()
                )));
            }
            let v = Tensor::from_slice(v, h, run.device())?.to_dtype(run.dtype())?;
            let new = if keep == 0.0 {
                v
            } else {
                ((run.detach() * keep)? + (v * (1.0 - keep))?)?
            };
            run.slice_set(&new, 0, 0)?;
            Ok(())
        };
        blend(running_mean, mean)?;
        blend(running_var, var)
    }

    /// The evaluation-mode norm for `mor`.
    ///
    /// # Errors
    /// Candle errors only.
    pub fn to_mor(&self) -> Result<mor::Norm> {
        let v = crate::params::to_f64_vec;
        Ok(match self {
            Norm::Batch {
                weight,
                bias,
                running_mean,
                running_var,
            } => {
                let (g, b, m, var) = (v(weight)?, v(bias)?, v(running_mean)?, v(running_var)?);
                let scale: Vec<f64> = g
                    .iter()
                    .zip(&var)
                    .map(|(g, s)| g / (s + BN_EPS).sqrt())
                    .collect();
                let shift = b
                    .iter()
                    .zip(&m)
                    .zip(&scale)
                    .map(|((b, m), s)| b - s * m)
                    .collect();
                mor::Norm::Batch { scale, shift }
            }
            Norm::Layer { weight, bias } => mor::Norm::Layer {
                gamma: v(weight)?,
                beta: v(bias)?,
                eps: LN_EPS,
            },
        })
    }
}

/// The BatchNorm statistics of one batch: mean and biased variance `[H]` over its `n_true`
/// true positions.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStats {
    /// Number of true positions the statistics are over.
    pub n_true: usize,
    /// Mean `[H]`.
    pub mean: Vec<f64>,
    /// Biased variance `[H]`.
    pub var: Vec<f64>,
}

/// Population statistics pooled from per-batch [`BatchStats`]: the exact mean and biased variance
/// of the union of the batches' positions (Chan, Golub & LeVeque, 1979, the pairwise update of
/// count, mean and sum of squared deviations). Setting these as the running statistics of a
/// fixed network is "precise BatchNorm" (Wu & Johnson, 2021, "Rethinking 'Batch' in BatchNorm",
/// Sec. 3): it replaces the exponential moving average, which mixes statistics of weights from
/// the last ≈ 1/(1 − momentum) steps, by statistics of the final weights.
#[derive(Clone, Debug, Default)]
pub struct PooledStats {
    n: usize,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl PooledStats {
    /// Adds one batch.
    ///
    /// # Errors
    /// A batch whose channel count differs from the earlier ones'.
    pub fn add(&mut self, batch: &BatchStats) -> Result<()> {
        let h = batch.mean.len();
        if batch.var.len() != h || (self.n > 0 && self.mean.len() != h) {
            return Err(crate::Error::Config(format!(
                "PooledStats::add: a batch of {} means / {} variances after batches of {} channels",
                h,
                batch.var.len(),
                self.mean.len()
            )));
        }
        if batch.n_true == 0 {
            return Ok(());
        }
        if self.n == 0 {
            self.mean = vec![0.0; h];
            self.m2 = vec![0.0; h];
        }
        let (na, nb) = (self.n as f64, batch.n_true as f64);
        let n = na + nb;
        for c in 0..h {
            let delta = batch.mean[c] - self.mean[c];
            self.mean[c] += delta * nb / n;
            self.m2[c] += batch.var[c] * nb + delta * delta * na * nb / n;
        }
        self.n += batch.n_true;
        Ok(())
    }

    /// Number of positions pooled so far.
    pub fn count(&self) -> usize {
        self.n
    }

    /// `(mean, biased variance)` `[H]` of all positions added; `None` before the first.
    pub fn finish(&self) -> Option<(Vec<f64>, Vec<f64>)> {
        (self.n > 0).then(|| {
            let n = self.n as f64;
            (self.mean.clone(), self.m2.iter().map(|m| m / n).collect())
        })
    }
}
