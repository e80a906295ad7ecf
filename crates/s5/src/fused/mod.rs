//! Fused per-channel ops of an S5 layer (CPU, hand-written backward), each replacing two or three
//! candle ops and their autograd edges (every edge costs a zero-fill and an add of a full
//! activation in candle's backward pass):
//!
//! - [`glu_residual`]: `x + y ⊙ σ(W (GELU_tanh(y) ⊙ m₁) + b) ⊙ m₂` — the `half_glu2` gate with
//!   both of S5's dropout sites and the residual add (S5: `x + drop(y ⊙ σ(W drop(GELU(y)) + b))`);
//! - [`masked_batch_norm`]: training-mode BatchNorm whose statistics exclude padded positions.
//!
//! GELU is the tanh approximation `GELU_tanh(x) = ½ x (1 + tanh(√(2/π)(x + 0.044715 x³)))`
//! (Hendrycks & Gimpel, 2016; as candle's `gelu` and jax's `nn.gelu`).
//!
//! Activations are `[batch, len, H]`, contiguous, f32 or f64; per-channel vectors are `[H]`;
//! dropout masks are [`ChannelMask`]s, broadcast over time as in S5 (one mask per sequence and
//! channel). f32 uses the vectorised kernels of [`crate::vmath`]; f64 uses libm (the reference of
//! the finite-difference tests in `tests/model_ops.rs`).

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use crate::{Error, Result};

/// Rows (`[H]` vectors) per parallel work unit.
const ROWS: usize = 128;

/// Elementwise math of the fused ops in the storage dtype.
pub(crate) trait Real: WithDType {
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

/// A zero-filled buffer of `n` elements, filled by the rayon pool. The ops' outputs and gradients
/// are `[batch, len, ·]` buffers of several MiB; `vec![0; n]` zero-fills them on the calling
/// thread while the pool waits (a profile of a training step: ~15 % of its wall time).
pub(crate) fn zeros<T: WithDType>(n: usize) -> Vec<T> {
    // SAFETY: `fill` writes every element of the chunk.
    unsafe { par_init(n, |_, c| c.fill(MaybeUninit::new(T::zero()))) }
}

/// A copy of `x`, written by the rayon pool (see [`zeros`]).
pub(crate) fn copied<T: WithDType>(x: &[T]) -> Vec<T> {
    // SAFETY: the chunk at `off` is at most `x.len() − off` long, so the zip writes all of it.
    unsafe {
        par_init(x.len(), |off, c| {
            for (d, &v) in c.iter_mut().zip(&x[off..]) {
                d.write(v);
            }
        })
    }
}

/// A buffer of `n` elements whose chunks `init(offset, chunk)` writes in parallel.
///
/// # Safety
/// `init` must write every element of the chunk it is given (the buffer is then read as `T`).
unsafe fn par_init<T: WithDType>(
    n: usize,
    init: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    const CHUNK: usize = 1 << 16;
    let mut v = Vec::with_capacity(n);
    let spare = &mut v.spare_capacity_mut()[..n];
    spare
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, c)| init(i * CHUNK, c));
    // SAFETY: by the caller's promise `init` wrote every element of every chunk: all `n`.
    unsafe { v.set_len(n) };
    v
}

/// The contiguous data of a CPU storage as a slice of `T` (the custom ops' inputs).
pub(crate) fn slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&T::cpu_storage_as_slice(s)?[a..b]),
        None => candle_core::bail!("s5 op: inputs must be contiguous"),
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

/// `out[r, k] = f(x[r, k], y[r, k], m[seq(r), k])` over a `[b, len, H]` activation (rows
/// `r`, sequence `seq(r) = r / len`), in parallel work units of [`ROWS`] rows, vectorised by
/// [`crate::vmath::with_simd`]; `m = 1` without a mask.
fn map_rows<T: Real>(
    x: &[T],
    y: &[T],
    len: usize,
    h: usize,
    mask: Option<&ChannelMask>,
    f: impl Fn(T, T, T) -> T + Sync,
) -> Vec<T> {
    let ones = vec![T::from_f64(1.0); h];
    let mask: Option<Vec<T>> = mask.map(|m| m.as_vec());
    let mut out = zeros(x.len());
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
                        for (((o, &x), &y), &m) in o.iter_mut().zip(x).zip(y).zip(m) {
                            *o = f(x, y, m);
                        }
                    }
                },
            )
        });
    out
}

/// Row `r` of a `[b, l, H]` activation belongs to sequence `r / l`.
#[inline(always)]
fn mask_row<T>(m: &[T], row: usize, len: usize, h: usize) -> &[T] {
    let b = row / len;
    &m[b * h..(b + 1) * h]
}

mod batch_norm;
mod glu;

pub(crate) use batch_norm::{MaskedBn, masked_stats};
pub use batch_norm::{batch_norm_eval, masked_batch_norm};
pub use glu::glu_residual;
pub(crate) use glu::{GluResidual, Mat, matmul, matmul_on};

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel buffer helpers at sizes around their chunk length (2¹⁶).
    #[test]
    fn parallel_buffers_equal_serial_ones() {
        for n in [0, 1, 1000, 1 << 16, (1 << 16) + 1, 3 * (1 << 16) - 7] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
            assert_eq!(copied(&x), x, "copied, n = {n}");
            assert_eq!(zeros::<f64>(n), vec![0.0; n], "zeros, n = {n}");
        }
    }
}
