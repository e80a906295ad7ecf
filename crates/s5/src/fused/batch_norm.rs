//! BatchNorm with a mask: training-mode statistics over true (unpadded) positions only, with a
//! hand-written backward, and the evaluation-mode affine map.

use super::*;

/// Per-channel sums `Σ_i f(i, row_i)` over the rows of `[N, H]` data, in parallel units of
/// [`ROWS`] rows: each unit accumulates in f64, the units are merged in order (the same sum
/// whatever the thread schedule).
fn row_sums<T: WithDType>(
    z: &[T],
    h: usize,
    f: impl Fn(usize, &[T], &mut [f64]) + Sync,
) -> Vec<f64> {
    z.par_chunks(ROWS * h)
        .enumerate()
        .map(|(c, zc)| {
            let mut acc = vec![0.0f64; h];
            for (i, row) in zc.chunks(h).enumerate() {
                f(c * ROWS + i, row, &mut acc);
            }
            acc
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(vec![0.0; h], add_partials)
}

/// Mean and biased variance `[H]` (f64) over the rows of `z` `[N, H]` whose `mask` entry is true
/// (two passes; `nt` = number of true rows ≥ 1).
pub(crate) fn masked_stats<T: WithDType>(
    zs: &[T],
    mask: &[bool],
    h: usize,
) -> (Vec<f64>, Vec<f64>) {
    let nt = mask.iter().filter(|&&m| m).count().max(1) as f64;
    let mut mean = row_sums(zs, h, |i, row, acc| {
        if mask[i] {
            for (a, x) in acc.iter_mut().zip(row) {
                *a += x.to_f64();
            }
        }
    });
    mean.iter_mut().for_each(|m| *m /= nt);
    let mut var = row_sums(zs, h, |i, row, acc| {
        if mask[i] {
            for ((a, x), m) in acc.iter_mut().zip(row).zip(&mean) {
                let d = x.to_f64() - m;
                *a += d * d;
            }
        }
    });
    var.iter_mut().for_each(|v| *v /= nt);
    (mean, var)
}

/// Fused training-mode BatchNorm over the rows of `z` `[N, H]` whose `mask` entry is 1
/// (statistics over true positions only; all rows are normalised):
/// `u_i = γ (z_i − μ)/σ + β`, `μ = Σ_i m_i z_i / N_t`, `σ² = Σ_i m_i (z_i − μ)² / N_t + ε`
/// (two passes, f64 accumulation, in the storage dtype otherwise).
/// Backward (Ioffe & Szegedy, 2015, Sec. 3, with the mask): `∂L/∂β = Σ_i g_i`,
/// `∂L/∂γ = Σ_i g_i x̂_i`, `∂L/∂z_i = (γ/σ) [g_i − (m_i/N_t)(Σ_j g_j + x̂_i Σ_j g_j x̂_j)]`.
///
/// Returns `u` `[N, H]` and the (detached) batch mean and biased variance `[H]` (f64) for the
/// running statistics.
///
/// # Errors
/// Shape/dtype mismatches, no true row, a dtype other than f32/f64, a non-CPU tensor.
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
    let (mean, var) = {
        let (s, l) = z.storage_and_layout();
        let candle_core::Storage::Cpu(s) = &*s else {
            return Err(Error::Config("masked_batch_norm: CPU tensors only".into()));
        };
        let stats = |s: &CpuStorage| -> candle_core::Result<(Vec<f64>, Vec<f64>)> {
            by_dtype!(s, |T| Ok(masked_stats(slice::<T>(s, l)?, mask, h)))
        };
        stats(s)?
    };
    let op = MaskedBn {
        mask: mask.to_vec(),
        mean: mean.clone(),
        inv_std: var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect(),
    };
    let u = z.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    Ok((u, mean, var))
}

/// Evaluation-mode BatchNorm of `z` `[N, H]` with given statistics (`mean`, biased `var`,
/// `[H]`): `u_i = γ (z_i − μ)/sqrt(var + ε) + β` in one pass; differentiable in `z`, `γ`, `β`
/// (the statistics are constants).
///
/// # Errors
/// Shape/dtype mismatches, a dtype other than f32/f64, a non-CPU tensor.
pub fn batch_norm_eval(
    z: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    mean: &[f64],
    var: &[f64],
    eps: f64,
) -> Result<Tensor> {
    let (n, h) = z.dims2()?;
    if weight.dims() != [h] || bias.dims() != [h] || mean.len() != h || var.len() != h {
        return Err(Error::Config(format!(
            "batch_norm_eval: z {:?}, weight {:?}, bias {:?}, {} means, {} variances",
            z.dims(),
            weight.dims(),
            bias.dims(),
            mean.len(),
            var.len()
        )));
    }
    let op = MaskedBn {
        mask: vec![false; n],
        mean: mean.to_vec(),
        inv_std: var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect(),
    };
    Ok(z.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?)
}

/// BatchNorm as one op: statistics `mean`, `inv_std` fixed at construction; rows with a true
/// `mask` entry contributed to them (none in evaluation mode).
pub(crate) struct MaskedBn {
    pub(crate) mask: Vec<bool>,
    pub(crate) mean: Vec<f64>,
    pub(crate) inv_std: Vec<f64>,
}

impl MaskedBn {
    /// `u = γ (z − mean) inv_std + β` over the rows of `z` `[N, H]` (`γ` = `g`, `β` = `b`, `[H]`).
    pub(crate) fn fwd_slices<T: WithDType>(&self, z: &[T], g: &[T], b: &[T]) -> Vec<T> {
        let h = g.len();
        let scale: Vec<f64> = (0..h).map(|k| g[k].to_f64() * self.inv_std[k]).collect();
        let shift: Vec<T> = (0..h)
            .map(|k| T::from_f64(b[k].to_f64() - scale[k] * self.mean[k]))
            .collect();
        let scale: Vec<T> = scale.into_iter().map(T::from_f64).collect();
        let mut out = zeros(z.len());
        out.par_chunks_mut(ROWS * h)
            .zip(z.par_chunks(ROWS * h))
            .for_each(|(o, z)| {
                crate::vmath::with_simd(
                    #[inline(always)]
                    || {
                        for (o, z) in o.chunks_exact_mut(h).zip(z.chunks_exact(h)) {
                            for (((o, &z), &a), &b) in o.iter_mut().zip(z).zip(&scale).zip(&shift) {
                                *o = z * a + b;
                            }
                        }
                    },
                )
            });
        out
    }

    /// `(∂L/∂z [N, H], ∂L/∂γ [H], ∂L/∂β [H])` for the upstream gradient `gs` `[N, H]`, `gam` = γ
    /// (see [`masked_batch_norm`]).
    pub(crate) fn bwd_slices<T: WithDType>(
        &self,
        zs: &[T],
        gs: &[T],
        gam: &[f64],
        (n, h): (usize, usize),
    ) -> (Vec<T>, Vec<f64>, Vec<f64>) {
        // True rows (none in evaluation mode, where the statistics are constants).
        let nt = self.mask.iter().filter(|&&m| m).count().max(1) as f64;
        // x̂ = z·inv_std − mean·inv_std, in the storage dtype.
        let a: Vec<T> = self.inv_std.iter().map(|&s| T::from_f64(s)).collect();
        let c: Vec<T> = (0..h)
            .map(|k| T::from_f64(-self.mean[k] * self.inv_std[k]))
            .collect();
        // s1 = Σ_i g_i, s2 = Σ_i g_i x̂_i over all rows.
        let s1 = row_sums(gs, h, |_, g, acc| {
            for (a, g) in acc.iter_mut().zip(g) {
                *a += g.to_f64();
            }
        });
        let s2 = row_sums(zs, h, |row, zr, acc| {
            let gr = &gs[row * h..(row + 1) * h];
            for ((acc, (&g, &z)), (&a, &c)) in
                acc.iter_mut().zip(gr.iter().zip(zr)).zip(a.iter().zip(&c))
            {
                *acc += (g * (z * a + c)).to_f64();
            }
        });
        // ∂L/∂z_i = γ inv_std (g_i − (m_i/N_t)(s1 + x̂_i s2)).
        let ga: Vec<T> = (0..h)
            .map(|k| T::from_f64(gam[k] * self.inv_std[k]))
            .collect();
        let t1: Vec<T> = (0..h).map(|k| T::from_f64(s1[k] / nt)).collect();
        let t2: Vec<T> = (0..h).map(|k| T::from_f64(s2[k] / nt)).collect();
        let mut dz = zeros(n * h);
        dz.par_chunks_mut(ROWS * h)
            .enumerate()
            .for_each(|(cidx, dc)| {
                for (i, d) in dc.chunks_mut(h).enumerate() {
                    let row = cidx * ROWS + i;
                    let (zr, gr) = (&zs[row * h..(row + 1) * h], &gs[row * h..(row + 1) * h]);
                    let cols = d.iter_mut().zip(gr).zip(ga.iter());
                    if self.mask[row] {
                        let consts = zr.iter().zip(a.iter().zip(&c)).zip(t1.iter().zip(&t2));
                        for (((d, &g), &ga), ((&z, (&a, &c)), (&t1, &t2))) in cols.zip(consts) {
                            let xh = z * a + c;
                            *d = ga * (g - (t1 + xh * t2));
                        }
                    } else {
                        for ((d, &g), &ga) in cols {
                            *d = ga * g;
                        }
                    }
                }
            });
        (dz, s2, s1)
    }
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
            let out = self.fwd_slices(z, g, b);
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
        let grad = grad.contiguous()?;
        let gam: Vec<f64> = weight.to_dtype(candle_core::DType::F64)?.to_vec1()?;
        let (sz, lz) = z.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let (Storage::Cpu(sz), Storage::Cpu(sg)) = (&*sz, &*sg) else {
            candle_core::bail!("masked_batch_norm: CPU only");
        };
        let dev = z.device();
        by_dtype!(sz, |T| {
            let (zs, gs) = (slice::<T>(sz, lz)?, slice::<T>(sg, lg)?);
            let (dz, s2, s1) = self.bwd_slices(zs, gs, &gam, (n, h));
            let to_t = |v: Vec<f64>| -> Vec<T> { v.into_iter().map(T::from_f64).collect() };
            Ok((
                Some(Tensor::from_vec(dz, (n, h), dev)?),
                Some(Tensor::from_vec(to_t(s2), h, dev)?),
                Some(Tensor::from_vec(to_t(s1), h, dev)?),
            ))
        })
    }
}
