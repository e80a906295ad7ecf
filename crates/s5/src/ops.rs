//! Fused elementwise ops with hand-written backward (CPU), to cut the number of tensor passes and
//! autograd edges of the gate (FACTS.md: elementwise ops and autograd edges dominate on CPU).
//!
//! - [`gelu_tanh`]: `GELU_tanh(x) = ½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))` (Hendrycks &
//!   Gimpel, 2016, tanh approximation; as candle's `gelu` and jax's `nn.gelu`), derivative
//!   `½ (1 + t) + ½ x (1 − t²) √(2/π) (1 + 3·0.044715 x²)` with `t` the tanh above; one pass
//!   forward, one pass backward (candle's own `gelu` backward builds ~14 tensor ops).
//! - [`mul_sigmoid`]: `y ⊙ σ(a)` (the `half_glu2` gate), gradients `g ⊙ σ(a)` and
//!   `g ⊙ y ⊙ σ(a)(1 − σ(a))` in one pass.
//!
//! Inputs must be f32 or f64; non-contiguous inputs are made contiguous first.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::Result;

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const COEF: f64 = 0.044_715;
const CHUNK: usize = 1 << 14;

fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&T::cpu_storage_as_slice(s)?[a..b]),
        None => candle_core::bail!("fused op: input must be contiguous"),
    }
}

#[inline]
fn gelu_parts(x: f64) -> (f64, f64) {
    let t = (SQRT_2_OVER_PI * (x + COEF * x * x * x)).tanh();
    let y = 0.5 * x * (1.0 + t);
    let dy =
        0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * x * x);
    (y, dy)
}

#[inline]
fn sigmoid(a: f64) -> f64 {
    1.0 / (1.0 + (-a).exp())
}

/// Parallel map of one input into a new vector.
fn map1<T: WithDType>(x: &[T], f: impl Fn(f64) -> f64 + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            for (o, &x) in o.iter_mut().zip(x) {
                *o = T::from_f64(f(x.to_f64()));
            }
        });
    out
}

/// Parallel map of two inputs into a new vector.
fn map2<T: WithDType>(x: &[T], y: &[T], f: impl Fn(f64, f64) -> f64 + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
        .for_each(|(o, (x, y))| {
            for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                *o = T::from_f64(f(x.to_f64(), y.to_f64()));
            }
        });
    out
}

macro_rules! dispatch {
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

struct GeluTanh;
struct GeluTanhGrad;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "s5-gelu-tanh"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        dispatch!(s, |T| {
            let out = map1(contiguous::<T>(s, l)?, |x| gelu_parts(x).0);
            Ok((T::to_cpu_storage_owned(out), l.shape().clone()))
        })
    }
    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            arg.contiguous()?
                .apply_op2_no_bwd(&grad.contiguous()?, &GeluTanhGrad)?,
        ))
    }
}

impl CustomOp2 for GeluTanhGrad {
    fn name(&self) -> &'static str {
        "s5-gelu-tanh-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        dispatch!(s1, |T| {
            let out = map2(
                contiguous::<T>(s1, l1)?,
                contiguous::<T>(s2, l2)?,
                |x, g| g * gelu_parts(x).1,
            );
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }
}

/// `GELU_tanh(x)`, same shape and dtype, with a fused backward.
///
/// # Errors
/// A dtype other than f32/f64, or a non-CPU tensor.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(GeluTanh)?)
}

struct MulSigmoid;
struct MulSigmoidGrad;

impl CustomOp2 for MulSigmoid {
    fn name(&self) -> &'static str {
        "s5-mul-sigmoid"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        dispatch!(s1, |T| {
            let out = map2(
                contiguous::<T>(s1, l1)?,
                contiguous::<T>(s2, l2)?,
                |y, a| y * sigmoid(a),
            );
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }
    fn bwd(
        &self,
        y: &Tensor,
        a: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let both = y.contiguous()?.apply_op3_no_bwd(
            &a.contiguous()?,
            &grad.contiguous()?,
            &MulSigmoidGrad,
        )?;
        let gy = both.get(0)?;
        let ga = both.get(1)?;
        Ok((Some(gy), Some(ga)))
    }
}

impl CustomOp3 for MulSigmoidGrad {
    fn name(&self) -> &'static str {
        "s5-mul-sigmoid-grad"
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
        dispatch!(s1, |T| {
            let (y, a, g) = (
                contiguous::<T>(s1, l1)?,
                contiguous::<T>(s2, l2)?,
                contiguous::<T>(s3, l3)?,
            );
            let n = y.len();
            // Output [2, ...]: row 0 = ∂/∂y = g σ(a), row 1 = ∂/∂a = g y σ(a)(1 − σ(a)).
            let mut out = vec![T::from_f64(0.0); 2 * n];
            let (gy, ga) = out.split_at_mut(n);
            gy.par_chunks_mut(CHUNK)
                .zip(ga.par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(c, (gy, ga))| {
                    let off = c * CHUNK;
                    for i in 0..gy.len() {
                        let s = sigmoid(a[off + i].to_f64());
                        let gg = g[off + i].to_f64();
                        gy[i] = T::from_f64(gg * s);
                        ga[i] = T::from_f64(gg * y[off + i].to_f64() * s * (1.0 - s));
                    }
                });
            let mut dims = vec![2];
            dims.extend_from_slice(l1.shape().dims());
            Ok((T::to_cpu_storage_owned(out), Shape::from(dims)))
        })
    }
}

/// `y ⊙ σ(a)` for `y`, `a` of the same shape and dtype, with a fused backward.
///
/// # Errors
/// Shape or dtype mismatch, a dtype other than f32/f64, or a non-CPU tensor.
pub fn mul_sigmoid(y: &Tensor, a: &Tensor) -> Result<Tensor> {
    if y.shape() != a.shape() || y.dtype() != a.dtype() {
        return Err(crate::Error::Config(format!(
            "mul_sigmoid: y {:?} {:?} and a {:?} {:?} must match",
            y.dims(),
            y.dtype(),
            a.dims(),
            a.dtype()
        )));
    }
    Ok(y.contiguous()?.apply_op2(&a.contiguous()?, MulSigmoid)?)
}

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
        return Err(crate::Error::Config(format!(
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
        dispatch!(s1, |T| {
            let (z, g, b) = (
                contiguous::<T>(s1, l1)?,
                contiguous::<T>(s2, l2)?,
                contiguous::<T>(s3, l3)?,
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
