//! Fused per-channel ops of an S5 layer (CPU, hand-written backward), each replacing two or three
//! candle ops and their autograd edges (every edge costs a zero-fill and an add of a full
//! activation in the backward; FACTS.md):
//!
//! - [`gelu_dropout`]: `GELU_tanh(y) ⊙ m₁` — the gate's first half with S5's dropout on the GELU
//!   output;
//! - [`sigmoid_gate`]: `y ⊙ σ(a + b) ⊙ m₂` — the `half_glu2` gate with its bias and the dropout on
//!   the layer output (S5: `x + drop(y ⊙ σ(W drop(GELU(y)) + b))`);
//! - [`masked_batch_norm`]: training-mode BatchNorm whose statistics exclude padded positions.
//!
//! GELU is the tanh approximation `GELU_tanh(x) = ½ x (1 + tanh(√(2/π)(x + 0.044715 x³)))`
//! (Hendrycks & Gimpel, 2016; as candle's `gelu` and jax's `nn.gelu`).
//!
//! Activations are `[batch, len, H]`, contiguous, f32 or f64; per-channel vectors are `[H]`;
//! dropout masks are [`ChannelMask`]s, broadcast over time as in S5 (one mask per sequence and
//! channel). f32 uses the vectorised kernels of [`crate::vmath`]; f64 uses libm (the reference of
//! the finite-difference tests in `tests/model_ops.rs`).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::{Error, Result};

/// Rows (`[H]` vectors) per parallel work unit.
const ROWS: usize = 128;

/// Elementwise math of the fused ops in the storage dtype.
trait Real: WithDType {
    fn sigmoid(self) -> Self;
    /// `(GELU_tanh(x), GELU_tanh'(x))`.
    fn gelu(self) -> (Self, Self);
}

impl Real for f32 {
    #[inline(always)]
    fn sigmoid(self) -> Self {
        crate::vmath::sigmoid_f32(self)
    }
    #[inline(always)]
    fn gelu(self) -> (Self, Self) {
        crate::vmath::gelu_tanh_f32(self)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    #[inline(always)]
    fn gelu(self) -> (Self, Self) {
        const C: f64 = 0.797_884_560_802_865_4;
        const K: f64 = 0.044_715;
        let t = (C * (self + K * self * self * self)).tanh();
        let dy = 0.5 * (1.0 + t) + 0.5 * self * (1.0 - t * t) * C * (1.0 + 3.0 * K * self * self);
        (0.5 * self * (1.0 + t), dy)
    }
}

/// A dropout mask broadcast over time: `values[b·H + c]` multiplies channel `c` of every position
/// of sequence `b` (0 for a dropped channel, `1/(1 − p)` for a kept one).
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelMask {
    /// Sequences in the batch.
    pub batch: usize,
    /// Channels `H`.
    pub channels: usize,
    /// `[batch, H]`, row-major.
    pub values: Arc<Vec<f32>>,
}

impl ChannelMask {
    /// A mask from its `[batch, H]` values.
    ///
    /// # Errors
    /// [`Error::Config`] if `values.len() != batch · channels`.
    pub fn new(batch: usize, channels: usize, values: Vec<f32>) -> Result<Self> {
        if values.len() != batch * channels {
            return Err(Error::Config(format!(
                "ChannelMask: {} values for {batch} × {channels}",
                values.len()
            )));
        }
        Ok(Self {
            batch,
            channels,
            values: Arc::new(values),
        })
    }

    /// The mask as a `[batch, 1, H]` tensor of `like`'s dtype and device (for unfused paths).
    ///
    /// # Errors
    /// Candle errors only.
    pub fn to_tensor(&self, like: &Tensor) -> Result<Tensor> {
        Ok(
            Tensor::from_slice(&self.values, (self.batch, 1, self.channels), like.device())?
                .to_dtype(like.dtype())?,
        )
    }

    fn check(&self, b: usize, h: usize) -> candle_core::Result<()> {
        if self.batch != b || self.channels != h {
            candle_core::bail!(
                "dropout mask is {}×{}, the activation has batch {b} and {h} channels",
                self.batch,
                self.channels
            );
        }
        Ok(())
    }

    fn as_vec<T: WithDType>(&self) -> Vec<T> {
        self.values.iter().map(|&v| T::from_f64(v as f64)).collect()
    }
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&T::cpu_storage_as_slice(s)?[a..b]),
        None => candle_core::bail!("fused op: input must be contiguous"),
    }
}

/// `(batch, len, H)` of a `[batch, len, H]` layout.
fn dims(l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    l.shape().dims3()
}

fn check_vec(name: &str, l: &Layout, h: usize) -> candle_core::Result<()> {
    if l.shape().dims() != [h] {
        candle_core::bail!("{name} must be [{h}], got {:?}", l.shape().dims());
    }
    Ok(())
}

macro_rules! by_dtype {
    ($s:expr, |$t:ident| $body:expr) => {
        match $s {
            CpuStorage::F32(_) => {
                type $t = f32;
                $body
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                $body
            }
            _ => candle_core::bail!("fused op: only f32 and f64 are supported"),
        }
    };
}

/// Sums per-chunk partial `[H]` vectors.
fn add_partials(mut a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
    a
}

/// `out[r, k] = f(x[r, k], y[r, k], m[seq(r), k], k)` over a `[b, len, H]` activation (rows
/// `r`, sequence `seq(r) = r / len`), in parallel work units of [`ROWS`] rows, vectorised by
/// [`crate::vmath::with_simd`]; `m = 1` without a mask.
fn map_rows<T: Real>(
    x: &[T],
    y: &[T],
    len: usize,
    h: usize,
    mask: Option<&ChannelMask>,
    f: impl Fn(T, T, T, usize) -> T + Sync,
) -> Vec<T> {
    let ones = vec![T::from_f64(1.0); h];
    let mask: Option<Vec<T>> = mask.map(|m| m.as_vec());
    let mut out = vec![T::from_f64(0.0); x.len()];
    out.par_chunks_mut(ROWS * h)
        .zip(x.par_chunks(ROWS * h).zip(y.par_chunks(ROWS * h)))
        .enumerate()
        .for_each(|(c, (o, (x, y)))| {
            crate::vmath::with_simd(
                #[inline(always)]
                || {
                    for (i, ((o, x), y)) in o
                        .chunks_mut(h)
                        .zip(x.chunks(h))
                        .zip(y.chunks(h))
                        .enumerate()
                    {
                        let m = match &mask {
                            Some(m) => mask_row(m, c * ROWS + i, len, h),
                            None => &ones,
                        };
                        for k in 0..h {
                            o[k] = f(x[k], y[k], m[k], k);
                        }
                    }
                },
            )
        });
    out
}

// ---------------------------------------------------------------------------------------------
// GELU_tanh(y) ⊙ m

struct GeluDropout {
    mask: Option<ChannelMask>,
}
struct GeluDropoutGrad {
    mask: Option<ChannelMask>,
}

/// Row `r` of a `[b, l, H]` activation belongs to sequence `r / l`.
#[inline(always)]
fn mask_row<T>(m: &[T], row: usize, len: usize, h: usize) -> &[T] {
    let b = row / len;
    &m[b * h..(b + 1) * h]
}

impl CustomOp1 for GeluDropout {
    fn name(&self) -> &'static str {
        "s5-gelu-dropout"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, len, h) = dims(l)?;
        if let Some(m) = &self.mask {
            m.check(b, h)?;
        }
        by_dtype!(s, |T| {
            let y = slice::<T>(s, l)?;
            let out = map_rows(y, y, len, h, self.mask.as_ref(), |y, _, m, _| {
                y.gelu().0 * m
            });
            Ok((T::to_cpu_storage_owned(out), l.shape().clone()))
        })
    }
    fn bwd(&self, y: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(
            &grad.contiguous()?,
            &GeluDropoutGrad {
                mask: self.mask.clone(),
            },
        )?))
    }
}

impl CustomOp2 for GeluDropoutGrad {
    fn name(&self) -> &'static str {
        "s5-gelu-dropout-grad"
    }
    /// `g ⊙ m ⊙ GELU_tanh'(y)`.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, len, h) = dims(l1)?;
        by_dtype!(s1, |T| {
            let (y, g) = (slice::<T>(s1, l1)?, slice::<T>(s2, l2)?);
            let out = map_rows(y, g, len, h, self.mask.as_ref(), |y, g, m, _| {
                g * m * y.gelu().1
            });
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }
}

/// `GELU_tanh(y) ⊙ m` for `y` `[batch, len, H]` and an optional dropout mask, with a fused
/// backward (`∂/∂y = g ⊙ m ⊙ GELU_tanh'(y)`). GELU_tanh as in [`crate::fused::gelu_tanh`].
///
/// # Errors
/// A mask of another batch or width, a rank other than 3, a dtype other than f32/f64.
pub fn gelu_dropout(y: &Tensor, mask: Option<&ChannelMask>) -> Result<Tensor> {
    Ok(y.contiguous()?.apply_op1(GeluDropout {
        mask: mask.cloned(),
    })?)
}

// ---------------------------------------------------------------------------------------------
// y ⊙ σ(a + b) ⊙ m

struct SigmoidGate {
    mask: Option<ChannelMask>,
}
struct SigmoidGateGrad {
    mask: Option<ChannelMask>,
    bias: Vec<f64>,
}

impl CustomOp3 for SigmoidGate {
    fn name(&self) -> &'static str {
        "s5-sigmoid-gate"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, len, h) = dims(l1)?;
        check_vec("gate bias", l3, h)?;
        if let Some(m) = &self.mask {
            m.check(b, h)?;
        }
        by_dtype!(s1, |T| {
            let (y, a, bias) = (
                slice::<T>(s1, l1)?,
                slice::<T>(s2, l2)?,
                slice::<T>(s3, l3)?,
            );
            let out = map_rows(y, a, len, h, self.mask.as_ref(), |y, a, m, k| {
                y * (a + bias[k]).sigmoid() * m
            });
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }
    fn bwd(
        &self,
        y: &Tensor,
        a: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = y.elem_count();
        let h = bias.elem_count();
        let op = SigmoidGateGrad {
            mask: self.mask.clone(),
            bias: bias.to_dtype(candle_core::DType::F64)?.to_vec1()?,
        };
        let all = y.apply_op3_no_bwd(a, &grad.contiguous()?, &op)?;
        let gy = all.narrow(0, 0, n)?.reshape(y.shape())?;
        let ga = all.narrow(0, n, n)?.reshape(y.shape())?;
        let gb = all.narrow(0, 2 * n, h)?;
        Ok((Some(gy), Some(ga), Some(gb)))
    }
}

impl CustomOp3 for SigmoidGateGrad {
    fn name(&self) -> &'static str {
        "s5-sigmoid-gate-grad"
    }
    /// Inputs `y`, `a`, `g` `[b, l, H]`; output flat `[2·b·l·H + H]`: with `s = σ(a + bias)`,
    /// `∂/∂y = g m s`, `∂/∂a = g m y s (1 − s)`, `∂/∂bias = Σ_rows ∂/∂a`.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, len, h) = dims(l1)?;
        by_dtype!(s1, |T| {
            let (y, a, g) = (
                slice::<T>(s1, l1)?,
                slice::<T>(s2, l2)?,
                slice::<T>(s3, l3)?,
            );
            let bias: Vec<T> = self.bias.iter().map(|&b| T::from_f64(b)).collect();
            let mask: Option<Vec<T>> = self.mask.as_ref().map(|m| m.as_vec());
            let n = y.len();
            let mut out = vec![T::from_f64(0.0); 2 * n + h];
            let (gy, rest) = out.split_at_mut(n);
            let (ga, gb) = rest.split_at_mut(n);
            let chunk = ROWS * h;
            let sum = gy
                .par_chunks_mut(chunk)
                .zip(ga.par_chunks_mut(chunk))
                .enumerate()
                .map(|(c, (gy, ga))| {
                    // Per-unit partial sums in the storage dtype (≤ ROWS terms), merged in f64.
                    let mut part = vec![T::from_f64(0.0); h];
                    let off = c * chunk;
                    let ones = vec![T::from_f64(1.0); h];
                    crate::vmath::with_simd(
                        #[inline(always)]
                        || {
                            for (i, (gy, ga)) in gy.chunks_mut(h).zip(ga.chunks_mut(h)).enumerate()
                            {
                                let row = off + i * h;
                                let (y, a, g) =
                                    (&y[row..row + h], &a[row..row + h], &g[row..row + h]);
                                let m = match &mask {
                                    Some(m) => mask_row(m, c * ROWS + i, len, h),
                                    None => &ones,
                                };
                                for k in 0..h {
                                    let gm = g[k] * m[k];
                                    let s = (a[k] + bias[k]).sigmoid();
                                    gy[k] = gm * s;
                                    let d = gm * y[k] * s * (T::from_f64(1.0) - s);
                                    ga[k] = d;
                                    part[k] += d;
                                }
                            }
                        },
                    );
                    part.iter().map(|p| p.to_f64()).collect::<Vec<f64>>()
                })
                .collect::<Vec<_>>()
                // Merged in order: the same sum whatever the thread schedule.
                .into_iter()
                .fold(vec![0.0; h], add_partials);
            for (o, s) in gb.iter_mut().zip(sum) {
                *o = T::from_f64(s);
            }
            Ok((T::to_cpu_storage_owned(out), Shape::from(2 * n + h)))
        })
    }
}

/// `y ⊙ σ(a + bias) ⊙ m` for `y`, `a` `[batch, len, H]`, `bias` `[H]` and an optional dropout
/// mask, with a fused backward (`s = σ(a + bias)`: `∂/∂y = g m s`, `∂/∂a = g m y s (1 − s)`,
/// `∂/∂bias = Σ_{b,l} ∂/∂a`; partial sums over ≤ 128 rows in the storage dtype, merged in f64). The `half_glu2` gate of S5 with its bias.
///
/// # Errors
/// Shapes or dtypes that do not match, a mask of another batch or width, a dtype other than
/// f32/f64.
pub fn sigmoid_gate(
    y: &Tensor,
    a: &Tensor,
    bias: &Tensor,
    mask: Option<&ChannelMask>,
) -> Result<Tensor> {
    if y.shape() != a.shape() || y.rank() != 3 || bias.dims() != [y.dims()[2]] {
        return Err(Error::Config(format!(
            "sigmoid_gate: y {:?}, a {:?} must be the same [b, l, H] and bias {:?} must be [H]",
            y.dims(),
            a.dims(),
            bias.dims()
        )));
    }
    Ok(y.contiguous()?.apply_op3(
        &a.contiguous()?,
        &bias.contiguous()?,
        SigmoidGate {
            mask: mask.cloned(),
        },
    )?)
}

// ---------------------------------------------------------------------------------------------
// BatchNorm with a mask

/// Fused training-mode BatchNorm over the rows of `z` `[N, H]` whose `mask` entry is 1
/// (statistics over true positions only; all rows are normalised):
/// `u_i = γ (z_i − μ)/σ + β`, `μ = Σ_i m_i z_i / N_t`, `σ² = Σ_i m_i (z_i − μ)² / N_t + ε`.
/// Backward (Ioffe & Szegedy, 2015, Sec. 3, with the mask): `∂L/∂β = Σ_i g_i`,
/// `∂L/∂γ = Σ_i g_i x̂_i`, `∂L/∂z_i = (γ/σ) [g_i − (m_i/N_t)(Σ_j g_j + x̂_i Σ_j g_j x̂_j)]`.
///
/// Returns `u` `[N, H]` and the (detached) batch mean and biased variance `[H]` (f64) for the
/// running statistics.
///
/// # Errors
/// Shape/dtype mismatches, no true row, a non-CPU tensor.
pub fn masked_batch_norm(
    z: &Tensor,
    mask: &[bool],
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Vec<f64>, Vec<f64>)> {
    let (n, h) = z.dims2()?;
    if mask.len() != n || !mask.iter().any(|&m| m) || weight.dims() != [h] || bias.dims() != [h] {
        return Err(Error::Config(format!(
            "masked_batch_norm: z {:?}, mask {} (needs ≥ 1 true row), weight {:?}, bias {:?}",
            z.dims(),
            mask.len(),
            weight.dims(),
            bias.dims()
        )));
    }
    let z = z.contiguous()?;
    let zs: Vec<f64> = z
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    let nt = mask.iter().filter(|&&m| m).count() as f64;
    let mut mean = vec![0.0; h];
    for (row, _) in zs.chunks(h).zip(mask).filter(|(_, m)| **m) {
        for (a, &x) in mean.iter_mut().zip(row) {
            *a += x;
        }
    }
    mean.iter_mut().for_each(|m| *m /= nt);
    let mut var = vec![0.0; h];
    for (row, _) in zs.chunks(h).zip(mask).filter(|(_, m)| **m) {
        for ((a, &x), &m) in var.iter_mut().zip(row).zip(&mean) {
            *a += (x - m) * (x - m);
        }
    }
    var.iter_mut().for_each(|v| *v /= nt);
    let op = MaskedBn {
        mask: mask.to_vec(),
        mean: mean.clone(),
        inv_std: var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect(),
    };
    let u = z.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    Ok((u, mean, var))
}

struct MaskedBn {
    mask: Vec<bool>,
    mean: Vec<f64>,
    inv_std: Vec<f64>,
}

impl CustomOp3 for MaskedBn {
    fn name(&self) -> &'static str {
        "s5-masked-batch-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        by_dtype!(s1, |T| {
            let (z, g, b) = (
                slice::<T>(s1, l1)?,
                slice::<T>(s2, l2)?,
                slice::<T>(s3, l3)?,
            );
            let h = g.len();
            let scale: Vec<f64> = (0..h).map(|k| g[k].to_f64() * self.inv_std[k]).collect();
            let shift: Vec<f64> = (0..h)
                .map(|k| b[k].to_f64() - scale[k] * self.mean[k])
                .collect();
            let mut out = vec![T::from_f64(0.0); z.len()];
            out.par_chunks_mut(h * 64)
                .zip(z.par_chunks(h * 64))
                .for_each(|(o, z)| {
                    for (o, z) in o.chunks_mut(h).zip(z.chunks(h)) {
                        for k in 0..h {
                            o[k] = T::from_f64(z[k].to_f64() * scale[k] + shift[k]);
                        }
                    }
                });
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }
    fn bwd(
        &self,
        z: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, h) = z.dims2()?;
        let dt = z.dtype();
        let zs: Vec<f64> = z
            .to_dtype(candle_core::DType::F64)?
            .flatten_all()?
            .to_vec1()?;
        let gs: Vec<f64> = grad
            .to_dtype(candle_core::DType::F64)?
            .flatten_all()?
            .to_vec1()?;
        let gam: Vec<f64> = weight.to_dtype(candle_core::DType::F64)?.to_vec1()?;
        let nt = self.mask.iter().filter(|&&m| m).count() as f64;
        let (mut s1, mut s2) = (vec![0.0; h], vec![0.0; h]);
        for (zr, gr) in zs.chunks(h).zip(gs.chunks(h)) {
            for k in 0..h {
                let xh = (zr[k] - self.mean[k]) * self.inv_std[k];
                s1[k] += gr[k];
                s2[k] += gr[k] * xh;
            }
        }
        let mut dz = vec![0.0; n * h];
        dz.par_chunks_mut(h)
            .zip(zs.par_chunks(h).zip(gs.par_chunks(h)))
            .zip(self.mask.par_iter())
            .for_each(|((d, (zr, gr)), &m)| {
                let mf = if m { 1.0 / nt } else { 0.0 };
                for k in 0..h {
                    let xh = (zr[k] - self.mean[k]) * self.inv_std[k];
                    d[k] = gam[k] * self.inv_std[k] * (gr[k] - mf * (s1[k] + xh * s2[k]));
                }
            });
        let dev = z.device();
        Ok((
            Some(Tensor::from_vec(dz, (n, h), dev)?.to_dtype(dt)?),
            Some(Tensor::from_vec(s2, h, dev)?.to_dtype(dt)?),
            Some(Tensor::from_vec(s1, h, dev)?.to_dtype(dt)?),
        ))
    }
}
