//! The diagonal complex linear recurrence of S5 as a candle [`CustomOp2`]/[`CustomOp3`] (CPU).
//!
//! For every batch element `b`, stored complex mode `j` and step `k` (Smith et al., ICLR 2023,
//! Eq. 2–3, run sequentially instead of with an associative scan):
//!
//! - forward  `x_k  = λ̄_j x_{k−1}  + v_k`, `k = 0 … len−1`, `x_{−1} = init` (zero by default);
//! - reverse  `x'_k = λ̄_j x'_{k+1} + v_k`, `k = len−1 … 0`, `x'_{len} = init` (zero by default).
//!
//! `len` is each sequence's TRUE length: the reverse scan starts at the true end, so padding
//! never reaches a true position, and every output at a padded position (`k ≥ len`) is zero.
//! Complex numbers are (re, im) pairs on the last axis; the state is accumulated in `f64`
//! whatever the storage dtype (f32 or f64).
//!
//! Backward (reverse-mode adjoint; for a real loss `L` write `ḡ = ∂L/∂re + i ∂L/∂im`): for the
//! forward direction `h_k = g_k + conj(λ̄) h_{k+1}` (`h_len = 0`), `∂L/∂v_k = h_k`,
//! `∂L/∂λ̄ = Σ_k h_k conj(x_{k−1})`, `∂L/∂init = conj(λ̄) h_0`; the reverse direction is the
//! mirror image. Outputs of both directions share `v` and `λ̄`, so their gradients are summed.
//!
//! Memory layout: `v` is `[b, l, n, 2]` and the output `[b, l, d, n, 2]` (`d` = 1 or 2
//! directions), i.e. exactly the row-major layout of the projections `u B̄ᵀ` and of the
//! read-out `C̃ x` as real matmuls, so no transpose is needed around the scan. Each step reads
//! one contiguous row of `n` modes; the work is split over the batch with rayon.

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor, WithDType,
};
use rayon::prelude::*;

use crate::fused::slice;
use crate::{Error, Result};

/// Which recurrences a scan runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Only the forward (causal) recurrence; output `[b, l, 1, n, 2]`.
    Forward,
    /// Only the reverse recurrence, from each sequence's true end; output `[b, l, 1, n, 2]`.
    Reverse,
    /// Both; output `[b, l, 2, n, 2]` with index 0 = forward, 1 = reverse.
    Both,
}

impl Direction {
    /// Number of directions `d` in the output.
    pub fn n_dirs(self) -> usize {
        match self {
            Direction::Both => 2,
            _ => 1,
        }
    }
    /// Whether output direction slot `slot` is a reverse scan.
    fn is_reverse(self, slot: usize) -> bool {
        match self {
            Direction::Forward => false,
            Direction::Reverse => true,
            Direction::Both => slot == 1,
        }
    }
}

/// Runs the scan: `lambda_bar` `[n, 2]`, `v` `[b, l, n, 2]`, optional `init` `[b, d, n, 2]`
/// (state before the first processed step of each direction: `x_{−1}` forward, `x'_{len}`
/// reverse), `lengths` `[b]` (true lengths, each `≤ l`; `None` = all `l`).
///
/// Returns `x` `[b, l, d, n, 2]` (zero at padded positions), differentiable with respect to
/// `lambda_bar`, `v` and `init`. `lambda_bar`, `v` and `init` must share a dtype (f32 or f64).
///
/// # Errors
/// Shape or dtype mismatch, a length larger than `l`, or a non-CPU device.
pub fn diag_scan(
    lambda_bar: &Tensor,
    v: &Tensor,
    lengths: Option<&[u32]>,
    direction: Direction,
    init: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, l, n, two) = v.dims4()?;
    if two != 2 {
        return Err(Error::Config(format!(
            "diag_scan: v must be [b, l, n, 2] (re, im), got {:?}",
            v.dims()
        )));
    }
    if lambda_bar.dims() != [n, 2] {
        return Err(Error::Config(format!(
            "diag_scan: lambda_bar must be [n={n}, 2], got {:?}",
            lambda_bar.dims()
        )));
    }
    if lambda_bar.dtype() != v.dtype() || !matches!(v.dtype(), DType::F32 | DType::F64) {
        return Err(Error::Config(format!(
            "diag_scan: lambda_bar ({:?}) and v ({:?}) must both be f32 or both f64",
            lambda_bar.dtype(),
            v.dtype()
        )));
    }
    let lengths = match lengths {
        Some(ls) => {
            if ls.len() != b {
                return Err(Error::Config(format!(
                    "diag_scan: {} lengths for a batch of {b}",
                    ls.len()
                )));
            }
            if let Some(bad) = ls.iter().find(|&&x| x as usize > l) {
                return Err(Error::Config(format!(
                    "diag_scan: length {bad} exceeds the padded length {l}"
                )));
            }
            ls.to_vec()
        }
        None => vec![l as u32; b],
    };
    let op = ScanOp { direction, lengths };
    let lambda_bar = lambda_bar.contiguous()?;
    let v = v.contiguous()?;
    match init {
        None => Ok(lambda_bar.apply_op2(&v, op)?),
        Some(init) => {
            let d = direction.n_dirs();
            if init.dims() != [b, d, n, 2] || init.dtype() != v.dtype() {
                return Err(Error::Config(format!(
                    "diag_scan: init must be [b={b}, d={d}, n={n}, 2] of {:?}, got {:?} {:?}",
                    v.dtype(),
                    init.dims(),
                    init.dtype()
                )));
            }
            let init = init.contiguous()?;
            Ok(lambda_bar.apply_op3(&v, &init, op)?)
        }
    }
}

/// The scan op (see the module docs); lengths are stored in the op as they are not
/// differentiable.
#[derive(Clone, Debug)]
pub(crate) struct ScanOp {
    pub(crate) direction: Direction,
    pub(crate) lengths: Vec<u32>,
}

/// One scan of one sequence over all `n` modes. `v` rows have stride `2n`, `out` rows stride
/// `2nd` (starting at this direction's slot).
#[allow(clippy::too_many_arguments)]
fn scan_seq<T: WithDType>(
    lam: &[(f64, f64)],
    v: &[T],
    out: &mut [T],
    out_stride: usize,
    len: usize,
    init: Option<&[T]>,
    reverse: bool,
    sr: &mut [f64],
    si: &mut [f64],
) {
    let n = lam.len();
    match init {
        Some(x0) => {
            for j in 0..n {
                sr[j] = x0[2 * j].to_f64();
                si[j] = x0[2 * j + 1].to_f64();
            }
        }
        None => {
            sr.fill(0.0);
            si.fill(0.0);
        }
    }
    for step in 0..len {
        let k = if reverse { len - 1 - step } else { step };
        let vr = &v[k * 2 * n..(k + 1) * 2 * n];
        let or = &mut out[k * out_stride..k * out_stride + 2 * n];
        let modes = vr
            .chunks_exact(2)
            .zip(or.chunks_exact_mut(2))
            .zip(sr.iter_mut().zip(si.iter_mut()))
            .zip(lam);
        for (((v, o), (sr, si)), &(lr, li)) in modes {
            let xr = lr * *sr - li * *si + v[0].to_f64();
            let xi = lr * *si + li * *sr + v[1].to_f64();
            *sr = xr;
            *si = xi;
            o[0] = T::from_f64(xr);
            o[1] = T::from_f64(xi);
        }
    }
}

impl ScanOp {
    pub(crate) fn fwd<T: WithDType>(
        &self,
        lam: &[T],
        v: &[T],
        init: Option<&[T]>,
        v_dims: (usize, usize, usize),
    ) -> (Vec<T>, Shape) {
        let (b, l, n) = v_dims;
        let d = self.direction.n_dirs();
        let lam: Vec<(f64, f64)> = (0..n)
            .map(|j| (lam[2 * j].to_f64(), lam[2 * j + 1].to_f64()))
            .collect();
        let mut out = crate::fused::zeros(b * l * d * n * 2);
        let per_b = l * d * n * 2;
        if per_b > 0 {
            out.par_chunks_mut(per_b).enumerate().for_each(|(bi, ob)| {
                let mut sr = vec![0.0; n];
                let mut si = vec![0.0; n];
                let vb = &v[bi * l * n * 2..(bi + 1) * l * n * 2];
                let len = self.lengths[bi] as usize;
                for slot in 0..d {
                    let x0 = init.map(|x| &x[(bi * d + slot) * n * 2..(bi * d + slot + 1) * n * 2]);
                    scan_seq(
                        &lam,
                        vb,
                        &mut ob[slot * n * 2..],
                        d * n * 2,
                        len,
                        x0,
                        self.direction.is_reverse(slot),
                        &mut sr,
                        &mut si,
                    );
                }
            });
        }
        (out, Shape::from((b, l, d, n, 2)))
    }

    /// Adjoint scans; returns (grad λ̄ `[n,2]`, grad v `[b,l,n,2]`, grad init `[b,d,n,2]`).
    pub(crate) fn bwd_impl<T: WithDType>(
        &self,
        lam: &[T],
        x: &[T],
        g: &[T],
        init: Option<&[T]>,
        dims: (usize, usize, usize),
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (b, l, n) = dims;
        let d = self.direction.n_dirs();
        let lam: Vec<(f64, f64)> = (0..n)
            .map(|j| (lam[2 * j].to_f64(), lam[2 * j + 1].to_f64()))
            .collect();
        let mut gv = crate::fused::zeros(b * l * n * 2);
        let mut ginit = vec![T::zero(); b * d * n * 2];
        let per_x = l * d * n * 2;
        let glam_parts: Vec<Vec<f64>> = gv
            .par_chunks_mut((l * n * 2).max(1))
            .zip(ginit.par_chunks_mut((d * n * 2).max(1)))
            .enumerate()
            .map(|(bi, (gvb, gib))| {
                let mut glam = vec![0.0f64; 2 * n];
                if l == 0 || n == 0 {
                    return glam;
                }
                let len = self.lengths[bi] as usize;
                let xb = &x[bi * per_x..(bi + 1) * per_x];
                let gb = &g[bi * per_x..(bi + 1) * per_x];
                let mut hr = vec![0.0f64; n];
                let mut hi = vec![0.0f64; n];
                // The state before the first step of the recurrence when there is no initial one.
                let zero_state = vec![T::zero(); 2 * n];
                for slot in 0..d {
                    let rev = self.direction.is_reverse(slot);
                    hr.fill(0.0);
                    hi.fill(0.0);
                    let x0 = init
                        .map(|x| &x[(bi * d + slot) * n * 2..(bi * d + slot + 1) * n * 2])
                        .unwrap_or(&zero_state);
                    for step in 0..len {
                        // Adjoint runs opposite to the recurrence.
                        let k = if rev { step } else { len - 1 - step };
                        let off = (k * d + slot) * n * 2;
                        let gk = &gb[off..off + 2 * n];
                        // Previous state of the recurrence (the one multiplied by λ̄ at k).
                        let prev_k = if rev {
                            (k + 1 < len).then_some(k + 1)
                        } else {
                            k.checked_sub(1)
                        };
                        let prev = match prev_k {
                            Some(p) => {
                                let o = (p * d + slot) * n * 2;
                                &xb[o..o + 2 * n]
                            }
                            None => x0,
                        };
                        let gvk = &mut gvb[k * n * 2..(k + 1) * n * 2];
                        let modes = gk
                            .chunks_exact(2)
                            .zip(prev.chunks_exact(2))
                            .zip(hr.iter_mut().zip(hi.iter_mut()))
                            .zip(lam.iter().zip(glam.chunks_exact_mut(2)))
                            .zip(gvk.chunks_exact_mut(2));
                        for ((((g, p), (hr, hi)), (&(lr, li), gl)), o) in modes {
                            // h = g + conj(λ) h
                            let nr = g[0].to_f64() + lr * *hr + li * *hi;
                            let ni = g[1].to_f64() + lr * *hi - li * *hr;
                            *hr = nr;
                            *hi = ni;
                            // glam += h conj(prev)
                            let (pr, pi) = (p[0].to_f64(), p[1].to_f64());
                            gl[0] += nr * pr + ni * pi;
                            gl[1] += ni * pr - nr * pi;
                            // ∂L/∂v_k: the sum over directions.
                            if slot == 0 {
                                o[0] = T::from_f64(nr);
                                o[1] = T::from_f64(ni);
                            } else {
                                o[0] = T::from_f64(o[0].to_f64() + nr);
                                o[1] = T::from_f64(o[1].to_f64() + ni);
                            }
                        }
                    }
                    // grad init = conj(λ) h at the first processed step.
                    let gi = &mut gib[slot * n * 2..(slot + 1) * n * 2];
                    for j in 0..n {
                        let (lr, li) = lam[j];
                        gi[2 * j] = T::from_f64(lr * hr[j] + li * hi[j]);
                        gi[2 * j + 1] = T::from_f64(lr * hi[j] - li * hr[j]);
                    }
                }
                glam
            })
            .collect();
        let mut glam = vec![0.0f64; 2 * n];
        for p in &glam_parts {
            for (a, b) in glam.iter_mut().zip(p) {
                *a += b;
            }
        }
        (glam.into_iter().map(T::from_f64).collect(), gv, ginit)
    }

    fn cpu_any(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        init: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, l, n, _) = l2.shape().dims4()?;
        match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let i = match init {
                    Some((s, l)) => Some(slice::<f32>(s, l)?),
                    None => None,
                };
                let (o, sh) = self.fwd(slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?, i, (b, l, n));
                Ok((CpuStorage::F32(o), sh))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let i = match init {
                    Some((s, l)) => Some(slice::<f64>(s, l)?),
                    None => None,
                };
                let (o, sh) = self.fwd(slice::<f64>(s1, l1)?, slice::<f64>(s2, l2)?, i, (b, l, n));
                Ok((CpuStorage::F64(o), sh))
            }
            _ => candle_core::bail!("diag_scan: lambda_bar and v must both be f32 or both f64"),
        }
    }

    /// Backward shared by the 2- and 3-input forms.
    fn bwd_any(
        &self,
        lam: &Tensor,
        v: &Tensor,
        init: Option<&Tensor>,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (b, l, n, _) = v.dims4()?;
        let d = self.direction.n_dirs();
        let lam = lam.contiguous()?;
        let res = res.contiguous()?;
        let grad = grad.contiguous()?;
        let init = init.map(|t| t.contiguous()).transpose()?;
        let dev = v.device();
        macro_rules! run {
            ($t:ty) => {{
                let (sl, ll) = lam.storage_and_layout();
                let (sx, lx) = res.storage_and_layout();
                let (sg, lg) = grad.storage_and_layout();
                let si = init.as_ref().map(|t| t.storage_and_layout());
                let (Storage::Cpu(sl), Storage::Cpu(sx), Storage::Cpu(sg)) = (&*sl, &*sx, &*sg)
                else {
                    candle_core::bail!("diag_scan: CPU only");
                };
                let iv = match &si {
                    Some((s, l)) => match &**s {
                        Storage::Cpu(s) => Some(slice::<$t>(s, l)?),
                        _ => candle_core::bail!("diag_scan: CPU only"),
                    },
                    None => None,
                };
                let (gl, gv, gi) = self.bwd_impl(
                    slice::<$t>(sl, ll)?,
                    slice::<$t>(sx, lx)?,
                    slice::<$t>(sg, lg)?,
                    iv,
                    (b, l, n),
                );
                (
                    Tensor::from_vec(gl, (n, 2), dev)?,
                    Tensor::from_vec(gv, (b, l, n, 2), dev)?,
                    Tensor::from_vec(gi, (b, d, n, 2), dev)?,
                )
            }};
        }
        Ok(match v.dtype() {
            DType::F32 => run!(f32),
            DType::F64 => run!(f64),
            dt => candle_core::bail!("diag_scan: unsupported dtype {dt:?}"),
        })
    }
}

impl CustomOp2 for ScanOp {
    fn name(&self) -> &'static str {
        "s5-diag-scan"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu_any(s1, l1, s2, l2, None)
    }

    fn bwd(
        &self,
        lam: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (gl, gv, _) = self.bwd_any(lam, v, None, res, grad)?;
        Ok((Some(gl), Some(gv)))
    }
}

impl CustomOp3 for ScanOp {
    fn name(&self) -> &'static str {
        "s5-diag-scan-init"
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
        self.cpu_any(s1, l1, s2, l2, Some((s3, l3)))
    }

    fn bwd(
        &self,
        lam: &Tensor,
        v: &Tensor,
        init: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gl, gv, gi) = self.bwd_any(lam, v, Some(init), res, grad)?;
        Ok((Some(gl), Some(gv), Some(gi)))
    }
}

/// A batch of complex sequences as nested vectors, `[b][l][n]` of (re, im).
pub type ComplexBatch = Vec<Vec<Vec<(f64, f64)>>>;

/// Plain sequential reference of [`diag_scan`] on `f64` arrays (for tests and checks):
/// `lambda` `[n]` as (re, im), `v` `[b][l][n]`, returns `[b][l][d][n]`.
#[allow(clippy::needless_range_loop)] // index form mirrors the recurrence's notation
pub fn reference_scan(
    lambda: &[(f64, f64)],
    v: &[Vec<Vec<(f64, f64)>>],
    lengths: &[usize],
    direction: Direction,
) -> Vec<ComplexBatch> {
    let n = lambda.len();
    let d = direction.n_dirs();
    v.iter()
        .zip(lengths)
        .map(|(seq, &len)| {
            let l = seq.len();
            let mut out = vec![vec![vec![(0.0, 0.0); n]; d]; l];
            for slot in 0..d {
                let mut s = vec![(0.0, 0.0); n];
                let order: Vec<usize> = if direction.is_reverse(slot) {
                    (0..len).rev().collect()
                } else {
                    (0..len).collect()
                };
                for k in order {
                    for j in 0..n {
                        let (lr, li) = lambda[j];
                        let (xr, xi) = s[j];
                        s[j] = (
                            lr * xr - li * xi + seq[k][j].0,
                            lr * xi + li * xr + seq[k][j].1,
                        );
                        out[k][slot][j] = s[j];
                    }
                }
            }
            out
        })
        .collect()
}
