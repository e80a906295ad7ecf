//! The whole discrete diagonal SSM `u ↦ y` of an S5 layer as ONE candle autograd node (CPU).
//!
//! With `v = u W_B` (projection by `B̄`), `x = scan(λ̄, v)` (the recurrence of [`crate::scan`], one
//! or two directions) and the real read-out `W_C` (`x W_C = 2 Re(C̃ x) (+ 2 Re(C̃₂ x'))`,
//! Smith et al., ICLR 2023, Eq. 2–3):
//!
//! ```text
//! y = x W_C + u ⊙ D                       [b·l, H]
//! ```
//!
//! Backward for an upstream gradient `g = ∂L/∂y` (all products are real matmuls on row-major
//! `[rows, features]` buffers):
//!
//! ```text
//! ∂L/∂W_C = xᵀ g        ∂L/∂x = g W_Cᵀ        ∂L/∂D = Σ_rows g ⊙ u
//! (∂L/∂λ̄, ∂L/∂v) = adjoint scan of ∂L/∂x (crate::scan)
//! ∂L/∂W_B = uᵀ ∂L/∂v    ∂L/∂u = g ⊙ D + ∂L/∂v W_Bᵀ
//! ```
//!
//! Why one node: built from candle ops the same map is a reshape, a matmul, a reshape, the scan,
//! a reshape, a matmul, a reshape and the feed-through — eight edges whose backward each
//! zero-fills and adds a full activation. Here the only large edge is `u`; the
//! scan states `x` are kept from the forward pass for the backward (the same memory the
//! unfused graph kept), the matmuls call `gemm` (the kernel candle uses) directly.
//!
//! The small parameters travel as one flat vector `θ = [λ̄ (n·2), W_B (H·2n), W_C (d·2n·H), D (H)]`
//! built with `Tensor::cat`, whose own backward splits `∂L/∂θ` again.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use crate::fused::{Mat, matmul, matmul_on, slice};
use crate::scan::{Direction, ScanOp};
use crate::{Error, Result};

/// Applies the discrete diagonal SSM to `u` `[b, l, H]` (true `lengths` `[b]`, each `≤ l`):
/// `lambda_bar` `[n, 2]` (Λ̄ as re/im), `w_b` `[H, 2n]` (column `(j, re/im)` = `B̄[j, :, re/im]`),
/// `w_c` `[d·2n, H]` (rows `(direction, mode, re/im)` = `(2 Re C̃, −2 Im C̃)`), `d` `[H]`.
/// Returns `y` `[b, l, H]`; at padded positions `y = D ⊙ u` (the states are zero there, so they
/// never reach a true position). Differentiable in every tensor argument; one autograd node.
///
/// # Errors
/// Shapes that do not fit together, mixed dtypes or a dtype other than f32/f64, a length
/// larger than `l`, a non-CPU tensor.
pub fn ssm_apply(
    u: &Tensor,
    lambda_bar: &Tensor,
    w_b: &Tensor,
    w_c: &Tensor,
    d: &Tensor,
    lengths: &[u32],
    direction: Direction,
) -> Result<Tensor> {
    let (b, l, h) = u.dims3()?;
    let n = lambda_bar.dim(0)?;
    let dirs = direction.n_dirs();
    let ok = lambda_bar.dims() == [n, 2]
        && w_b.dims() == [h, 2 * n]
        && w_c.dims() == [dirs * 2 * n, h]
        && d.dims() == [h]
        && lengths.len() == b;
    if !ok {
        return Err(Error::Config(format!(
            "ssm_apply: u {:?}, lambda_bar {:?}, w_b {:?}, w_c {:?}, d {:?}, {} lengths; expected \
             u [b, l, H], lambda_bar [n, 2], w_b [H, 2n], w_c [{dirs}·2n, H], d [H], b lengths",
            u.dims(),
            lambda_bar.dims(),
            w_b.dims(),
            w_c.dims(),
            d.dims(),
            lengths.len()
        )));
    }
    if let Some(bad) = lengths.iter().find(|&&x| x as usize > l) {
        return Err(Error::Config(format!(
            "ssm_apply: length {bad} exceeds the padded length {l}"
        )));
    }
    let dt = u.dtype();
    if !matches!(dt, DType::F32 | DType::F64)
        || [lambda_bar, w_b, w_c, d].iter().any(|t| t.dtype() != dt)
    {
        return Err(Error::Config(format!(
            "ssm_apply: all tensors must share one dtype, f32 or f64 (u is {dt:?})"
        )));
    }
    if ![u, lambda_bar, w_b, w_c, d].iter().any(|t| t.track_op()) {
        return Ok(infer(u, lambda_bar, w_b, w_c, d, lengths, direction)?);
    }
    let theta = pack_theta(lambda_bar, w_b, w_c, d)?;
    let op = SsmOp {
        scan: ScanOp {
            direction,
            lengths: lengths.to_vec(),
        },
        n,
        states: Mutex::new(None),
    };
    Ok(u.contiguous()?.apply_op2(&theta, op)?)
}

/// The flat parameter vector `θ = [λ̄, W_B, W_C, D]` (see the module doc).
pub(crate) fn pack_theta(
    lambda_bar: &Tensor,
    w_b: &Tensor,
    w_c: &Tensor,
    d: &Tensor,
) -> candle_core::Result<Tensor> {
    let parts = [lambda_bar, w_b, w_c, d].map(|t| t.flatten_all());
    let [a, b, c, e] = parts;
    Tensor::cat(&[a?, b?, c?, e?], 0)
}

/// The forward pass without gradients, one sequence at a time (sequences in parallel): the
/// projections, states and read-out of a sequence (`[l, d·2n]`, ≈ 2 MB at `l = 2048`) stay in
/// cache between the scan and the read-out matmul, and no batch-sized state buffer is allocated.
fn infer(
    u: &Tensor,
    lambda_bar: &Tensor,
    w_b: &Tensor,
    w_c: &Tensor,
    d: &Tensor,
    lengths: &[u32],
    direction: Direction,
) -> candle_core::Result<Tensor> {
    let (b, l, h) = u.dims3()?;
    let n = lambda_bar.dim(0)?;
    let dn = direction.n_dirs() * 2 * n;
    let theta = pack_theta(lambda_bar, w_b, w_c, d)?;
    let u = u.contiguous()?;
    let (su, lu) = u.storage_and_layout();
    let (st, lt) = theta.storage_and_layout();
    let (Storage::Cpu(su), Storage::Cpu(st)) = (&*su, &*st) else {
        candle_core::bail!("ssm op: CPU only");
    };
    macro_rules! run {
        ($t:ty) => {{
            let (us, ts) = (slice::<$t>(su, lu)?, slice::<$t>(st, lt)?);
            let th = split_theta(ts, n, h, direction.n_dirs())?;
            let mut y = vec![<$t>::default(); b * l * h];
            if l > 0 && h > 0 {
                y.par_chunks_mut(l * h).enumerate().for_each(|(bi, yb)| {
                    let ub = &us[bi * l * h..(bi + 1) * l * h];
                    let scan = ScanOp {
                        direction,
                        lengths: vec![lengths[bi]],
                    };
                    let seq = gemm::Parallelism::None;
                    let mut v = vec![<$t>::default(); l * 2 * n];
                    let (wb, wc) = (Mat::rows(th.w_b, 2 * n), Mat::rows(th.w_c, h));
                    matmul_on(&mut v, (l, 2 * n, h), Mat::rows(ub, h), wb, false, seq);
                    let (x, _) = scan.fwd(th.lam, &v, None, (1, l, n));
                    for (yr, ur) in yb.chunks_exact_mut(h).zip(ub.chunks_exact(h)) {
                        for ((y, &u), &d) in yr.iter_mut().zip(ur).zip(th.d) {
                            *y = u * d;
                        }
                    }
                    matmul_on(yb, (l, h, dn), Mat::rows(&x, dn), wc, true, seq);
                });
            }
            Tensor::from_vec(y, (b, l, h), u.device())
        }};
    }
    match su {
        CpuStorage::F32(_) => run!(f32),
        CpuStorage::F64(_) => run!(f64),
        _ => candle_core::bail!("ssm op: only f32 and f64 are supported"),
    }
}

/// The op: `scan` carries the direction and true lengths; `states` keeps the forward pass's
/// scan states `x` `[b·l, d·2n]` for the backward.
pub(crate) struct SsmOp {
    pub(crate) scan: ScanOp,
    pub(crate) n: usize,
    pub(crate) states: Mutex<Option<CpuStorage>>,
}

/// Views of the flat parameter vector θ.
struct Theta<'a, T> {
    lam: &'a [T],
    w_b: &'a [T],
    w_c: &'a [T],
    d: &'a [T],
}

fn split_theta<T>(
    theta: &[T],
    n: usize,
    h: usize,
    dirs: usize,
) -> candle_core::Result<Theta<'_, T>> {
    let sizes = [2 * n, 2 * n * h, dirs * 2 * n * h, h];
    if theta.len() != sizes.iter().sum::<usize>() {
        candle_core::bail!(
            "ssm op: parameter vector has {} entries, expected {}",
            theta.len(),
            sizes.iter().sum::<usize>()
        );
    }
    let (lam, rest) = theta.split_at(sizes[0]);
    let (w_b, rest) = rest.split_at(sizes[1]);
    let (w_c, d) = rest.split_at(sizes[2]);
    Ok(Theta { lam, w_b, w_c, d })
}

/// Rows per parallel work unit of the elementwise parts.
const ROWS: usize = 256;

impl SsmOp {
    pub(crate) fn fwd<T: WithDType>(
        &self,
        u: &[T],
        theta: &[T],
        (b, l, h): (usize, usize, usize),
    ) -> candle_core::Result<(Vec<T>, Vec<T>)> {
        let n = self.n;
        let dirs = self.scan.direction.n_dirs();
        let th = split_theta(theta, n, h, dirs)?;
        let rows = b * l;
        let mut v = crate::fused::zeros(rows * 2 * n);
        matmul(
            &mut v,
            (rows, 2 * n, h),
            Mat::rows(u, h),
            Mat::rows(th.w_b, 2 * n),
            false,
        );
        let (x, _) = self.scan.fwd(th.lam, &v, None, (b, l, n));
        drop(v);
        let mut y = crate::fused::zeros(rows * h);
        y.par_chunks_mut(ROWS * h)
            .zip(u.par_chunks(ROWS * h))
            .for_each(|(y, u)| {
                for (y, u) in y.chunks_exact_mut(h).zip(u.chunks_exact(h)) {
                    for ((y, &u), &d) in y.iter_mut().zip(u).zip(th.d) {
                        *y = u * d;
                    }
                }
            });
        matmul(
            &mut y,
            (rows, h, dirs * 2 * n),
            Mat::rows(&x, dirs * 2 * n),
            Mat::rows(th.w_c, h),
            true,
        );
        Ok((y, x))
    }

    /// Returns `(∂L/∂u [b·l·H], ∂L/∂θ)`.
    pub(crate) fn bwd_impl<T: WithDType>(
        &self,
        u: &[T],
        theta: &[T],
        x: &[T],
        g: &[T],
        (b, l, h): (usize, usize, usize),
    ) -> candle_core::Result<(Vec<T>, Vec<T>)> {
        let n = self.n;
        let dirs = self.scan.direction.n_dirs();
        let th = split_theta(theta, n, h, dirs)?;
        let rows = b * l;
        let dn = dirs * 2 * n;
        // ∂L/∂W_C = xᵀ g
        let mut g_wc = vec![T::zero(); dn * h];
        matmul(
            &mut g_wc,
            (dn, h, rows),
            Mat::t(x, dn),
            Mat::rows(g, h),
            false,
        );
        // ∂L/∂x = g W_Cᵀ
        let mut gx = crate::fused::zeros(rows * dn);
        matmul(
            &mut gx,
            (rows, dn, h),
            Mat::rows(g, h),
            Mat::t(th.w_c, h),
            false,
        );
        let (g_lam, gv, _) = self.scan.bwd_impl(th.lam, x, &gx, None, (b, l, n));
        drop(gx);
        // ∂L/∂W_B = uᵀ ∂L/∂v
        let mut g_wb = vec![T::zero(); h * 2 * n];
        matmul(
            &mut g_wb,
            (h, 2 * n, rows),
            Mat::t(u, h),
            Mat::rows(&gv, 2 * n),
            false,
        );
        // ∂L/∂u = g ⊙ D + ∂L/∂v W_Bᵀ, and ∂L/∂D = Σ_rows g ⊙ u (partials merged in f64)
        let mut gu = crate::fused::zeros(rows * h);
        let g_d = gu
            .par_chunks_mut(ROWS * h)
            .zip(u.par_chunks(ROWS * h).zip(g.par_chunks(ROWS * h)))
            .map(|(o, (u, g))| {
                let mut part = vec![0.0f64; h];
                for ((o, u), g) in o
                    .chunks_exact_mut(h)
                    .zip(u.chunks_exact(h))
                    .zip(g.chunks_exact(h))
                {
                    let cols = o.iter_mut().zip(part.iter_mut());
                    for ((o, p), ((&u, &g), &d)) in cols.zip(u.iter().zip(g).zip(th.d)) {
                        *o = g * d;
                        *p += (g * u).to_f64();
                    }
                }
                part
            })
            .collect::<Vec<_>>()
            // Merged in order: the same sum whatever the thread schedule.
            .into_iter()
            .fold(vec![0.0f64; h], |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            });
        matmul(
            &mut gu,
            (rows, h, 2 * n),
            Mat::rows(&gv, 2 * n),
            Mat::t(th.w_b, 2 * n),
            true,
        );
        let mut g_theta = g_lam;
        g_theta.extend_from_slice(&g_wb);
        g_theta.extend_from_slice(&g_wc);
        g_theta.extend(g_d.into_iter().map(T::from_f64));
        Ok((gu, g_theta))
    }
}

impl CustomOp2 for SsmOp {
    fn name(&self) -> &'static str {
        "s5-ssm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims3()?;
        let (y, x) = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (y, x) = self.fwd(slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?, dims)?;
                (CpuStorage::F32(y), CpuStorage::F32(x))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (y, x) = self.fwd(slice::<f64>(s1, l1)?, slice::<f64>(s2, l2)?, dims)?;
                (CpuStorage::F64(y), CpuStorage::F64(x))
            }
            _ => candle_core::bail!("ssm op: u and θ must both be f32 or both f64"),
        };
        *self.states.lock().expect("ssm op: state cache poisoned") = Some(x);
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        u: &Tensor,
        theta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dims = u.dims3()?;
        let grad = grad.contiguous()?;
        let (su, lu) = u.storage_and_layout();
        let (st, lt) = theta.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let (Storage::Cpu(su), Storage::Cpu(st), Storage::Cpu(sg)) = (&*su, &*st, &*sg) else {
            candle_core::bail!("ssm op: CPU only");
        };
        let mut cache = self.states.lock().expect("ssm op: state cache poisoned");
        macro_rules! run {
            ($t:ty, $variant:ident) => {{
                let (u_s, th_s) = (slice::<$t>(su, lu)?, slice::<$t>(st, lt)?);
                // A second backward through the same graph finds the states still cached; a
                // cache of the wrong dtype (impossible by construction) is recomputed.
                if !matches!(&*cache, Some(CpuStorage::$variant(_))) {
                    *cache = Some(CpuStorage::$variant(self.fwd(u_s, th_s, dims)?.1));
                }
                let Some(CpuStorage::$variant(x)) = &*cache else {
                    unreachable!()
                };
                let (gu, gt) = self.bwd_impl(u_s, th_s, x, slice::<$t>(sg, lg)?, dims)?;
                (
                    Tensor::from_vec(gu, u.shape(), u.device())?,
                    Tensor::from_vec(gt, theta.shape(), theta.device())?,
                )
            }};
        }
        let (gu, gt) = match su {
            CpuStorage::F32(_) => run!(f32, F32),
            CpuStorage::F64(_) => run!(f64, F64),
            _ => candle_core::bail!("ssm op: only f32 and f64 are supported"),
        };
        Ok((Some(gu), Some(gt)))
    }
}
