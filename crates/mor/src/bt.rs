//! Balanced truncation (`bt`), square-root method, on the real doubled system, re-diagonalised
//! back to the stored conjugate-symmetric form.
//!
//! # Method
//! 1. Real realisation `w = [Re x; Im x] ∈ R^{2n}` and closed-form Gramians `P_w`, `Q_w`
//!    ([`balance::real_gramians`]). A bidirectional block is balanced **jointly**: forward and
//!    reverse scans share `A_w`, `B_w` (same Λ, B̄), so the causal system
//!    `u → [s_fwd; s_rev]` with stacked outputs `[C_w; C_rev,w]` is balanced and both output
//!    matrices are projected on the same reduced states.
//! 2. Square-root method (Laub, Heath, Paige & Ward, IEEE TAC 32(2), 1987; Antoulas, *Approximation
//!    of Large-Scale Dynamical Systems*, 2005, §7): `P_w = L_pL_pᵀ`, `Q_w = L_qL_qᵀ`,
//!    `L_qᵀL_p = UΣVᵀ`, `T = L_pV_qΣ_q^{−1/2}`, `W = L_qU_qΣ_q^{−1/2}`,
//!    `A_r = WᵀA_wT`, `B_r = WᵀB_w`, `C_r = C_wT` (`q` real states).
//! 3. Re-diagonalisation: `A_r = V M V⁻¹` (faer `eigen`, real Schur based: real eigenvalues come
//!    out with zero imaginary part, complex ones in exact conjugate pairs with conjugate
//!    eigenvectors). With `b = V⁻¹B_r`, `c = C_rV`, the kernel is
//!    `C_rA_r^jB_r = Σ_pairs 2Re(c_k μ_k^j b_k) + Σ_real c_k μ_k^j b_k`.
//!    - a conjugate pair `(μ, μ̄)` becomes one stored mode `(μ, b_k, c_k)` (`Im μ > 0`);
//!    - a real pole `μ` becomes one stored mode with `λ = μ` and **half weights**
//!      `b = b_k/√2`, `c = c_k/√2`, so that `2Re(c μ^j b) = c_k μ^j b_k` (`c_k b_kᵀ` is real).
//!
//!    A stored mode therefore costs 2 real states for a pair but only 1 for a real pole. To
//!    return exactly `r` stored modes, the real order `q` is the largest `q ≤ 2r` whose reduced
//!    `A_r` has `k` real eigenvalues with `q + k ≤ 2r` (stored modes = `(q + k)/2`); usually
//!    `q = 2r, k = 0`. If `(q + k)/2 < r`, the rest are padded with inert modes (`λ = 0`,
//!    `b = 0`, `c = 0`), which change nothing. Each stored mode is finally rescaled
//!    (`b ← s b`, `c ← c/s`, `s = sqrt(‖[c; c_rev]‖/‖b‖)`) to balance its weights.
//!
//! # LQO blocks
//! BT balances the linear state output `s` (`u → s`, or `u → [s_fwd; s_rev]`); a block's
//! read-out `E` and quadratic forms `N_i` are carried over unchanged and do not enter the
//! balancing (the gradient methods `h2` / `lqo-h2` optimise for them). The reported `h2_error` is
//! that of the full LQO output.
//!
//! # Error bound
//! For the (joint) causal system, `‖H − H_r‖_∞ ≤ 2 Σ_{k>q} σ_k` (Enns 1984; Al-Saggaf & Franklin,
//! IEEE TAC 1987 for discrete time). For a causal block this is the reported
//! [`BlockReduction::hinf_bound`]. For a bidirectional block the joint bound holds for each scan
//! direction's error `E_f`, `E_r` separately (each is a sub-block of the stacked error), and the
//! two-sided error operator `E_f(e^{iω}) + E_r(e^{−iω})` is bounded by their sum, so the reported
//! bound is `4 Σ_{k>q} σ_k` with the joint HSV.

use crate::balance;
use crate::block::DiagBlock;
use crate::error::{Error, Result};
use crate::gram;
use crate::reduction::BlockReduction;
use faer::{Mat, c64};

/// A real reduced system from balanced truncation, before re-diagonalisation.
#[derive(Clone, Debug)]
pub struct RealReduced {
    /// `A_r`, `[q, q]`.
    pub a: Mat<f64>,
    /// `B_r`, `[q, m]`.
    pub b: Mat<f64>,
    /// `C_r`, `[p, q]` (forward scan).
    pub c: Mat<f64>,
    /// `C_rev,r`, `[p, q]` (reverse scan, bidirectional blocks).
    pub c_rev: Option<Mat<f64>>,
    /// The (joint) Hankel singular values of the full block, descending, `[2n]`.
    pub hsv: Vec<f64>,
}

impl RealReduced {
    /// The real system's kernel at lag `j` (two-sided, same convention as [`gram::kernel`]).
    pub fn kernel(&self, j: i64) -> Mat<f64> {
        let q = self.a.nrows();
        let mut ak = Mat::<f64>::identity(q, q);
        for _ in 0..j.unsigned_abs() {
            ak = &self.a * &ak;
        }
        let akb = &ak * &self.b;
        let mut out = Mat::<f64>::zeros(self.c.nrows(), self.b.ncols());
        if j >= 0 {
            out += &self.c * &akb;
        }
        if j <= 0
            && let Some(cr) = &self.c_rev
        {
            out += cr * &akb;
        }
        out
    }
}

/// Balancing data reused for several orders.
pub struct Balanced {
    sb: balance::SqrtBalance,
    a: Mat<f64>,
    b: Mat<f64>,
    c: Mat<f64>,
    c_rev: Option<Mat<f64>>,
    /// Number of HSV above `1e-13 σ_1` (the largest usable real order).
    pub rank: usize,
}

impl Balanced {
    /// Square-root balancing of a stable block (joint for bidirectional blocks).
    ///
    /// # Errors
    /// [`Error::Unstable`] for `|λ| ≥ 1`, [`Error::LinAlg`] if a decomposition fails.
    pub fn new(block: &DiagBlock) -> Result<Self> {
        Self::from_balance(block, balance::sqrt_balance(block, true)?)
    }

    /// [`Balanced::new`] with the controllability Gramian replaced by `ctrb` (`[2n, 2n]`; see
    /// [`balance::sqrt_balance_with_ctrb`]): the balancing of empirical BT ([`ebt`]).
    ///
    /// # Errors
    /// As [`balance::sqrt_balance_with_ctrb`].
    pub fn with_ctrb(block: &DiagBlock, ctrb: &Mat<f64>) -> Result<Self> {
        Self::from_balance(block, balance::sqrt_balance_with_ctrb(block, ctrb, true)?)
    }

    fn from_balance(block: &DiagBlock, sb: balance::SqrtBalance) -> Result<Self> {
        let (a, b, c, c_rev) = balance::real_realization(block);
        let s0 = sb.hsv.first().copied().unwrap_or(0.0);
        let rank = sb.hsv.iter().filter(|&&s| s > 1e-13 * s0).count();
        Ok(Self {
            sb,
            a,
            b,
            c,
            c_rev,
            rank,
        })
    }

    /// The joint Hankel singular values, descending.
    pub fn hsv(&self) -> &[f64] {
        &self.sb.hsv
    }

    /// Projection on the `q` leading balanced states (`q ≤ rank`).
    pub fn truncate(&self, q: usize) -> RealReduced {
        let n2 = self.a.nrows();
        let isq: Vec<f64> = (0..q).map(|k| 1.0 / self.sb.hsv[k].sqrt()).collect();
        let vq = Mat::from_fn(n2, q, |i, k| self.sb.v[(i, k)] * isq[k]);
        let uq = Mat::from_fn(n2, q, |i, k| self.sb.u[(i, k)] * isq[k]);
        let t = &self.sb.lp * &vq;
        let w = &self.sb.lq * &uq;
        RealReduced {
            a: w.transpose() * &self.a * &t,
            b: w.transpose() * &self.b,
            c: &self.c * &t,
            c_rev: self.c_rev.as_ref().map(|cr| cr * &t),
            hsv: self.sb.hsv.clone(),
        }
    }
}

/// Re-diagonalises a real system into the stored conjugate-symmetric form (module doc): one
/// stored mode per conjugate pair, one (half-weighted) stored mode per real pole.
///
/// Returns the block (with `template`'s `d`, `linear`, `quadratic`) and the number of real poles.
///
/// # Errors
/// [`Error::LinAlg`] if the eigen-decomposition fails or the eigenvector matrix is singular.
pub fn rediagonalise(real: &RealReduced, template: &DiagBlock) -> Result<(DiagBlock, usize)> {
    let q = real.a.nrows();
    let (p, m) = (real.c.nrows(), real.b.ncols());
    let evd = real.a.eigen().map_err(|e| {
        Error::LinAlg(format!(
            "eigen-decomposition of the reduced A failed: {e:?}"
        ))
    })?;
    let s = evd.S().column_vector();
    let v = evd.U().to_owned();
    let to_c = |x: &Mat<f64>| Mat::from_fn(x.nrows(), x.ncols(), |i, j| c64::new(x[(i, j)], 0.0));
    let lu = v.partial_piv_lu();
    use faer::linalg::solvers::Solve;
    let vb = lu.solve(to_c(&real.b));
    let check = &v * &vb - to_c(&real.b);
    let bscale = real.b.norm_l2().max(1e-300);
    if check.norm_l2() > 1e-6 * bscale || check.norm_l2().is_nan() {
        return Err(Error::LinAlg(format!(
            "reduced A is not diagonalisable to working accuracy (eigenvector solve residual {:.2e})",
            check.norm_l2() / bscale
        )));
    }
    let vc = to_c(&real.c) * &v;
    let vcr = real.c_rev.as_ref().map(|cr| to_c(cr) * &v);
    let mut keep: Vec<(usize, f64)> = vec![]; // (eigen index, weight factor)
    let mut n_real = 0;
    for k in 0..q {
        let mu = s[k];
        if mu.im > 0.0 {
            keep.push((k, 1.0));
        } else if mu.im == 0.0 {
            keep.push((k, std::f64::consts::FRAC_1_SQRT_2));
            n_real += 1;
        }
    }
    let r = keep.len();
    let mut lambda = Vec::with_capacity(r);
    let mut bm = Mat::<c64>::zeros(r, m);
    let mut cm = Mat::<c64>::zeros(p, r);
    let mut crm = vcr.as_ref().map(|_| Mat::<c64>::zeros(p, r));
    for (i, &(k, wgt)) in keep.iter().enumerate() {
        lambda.push(s[k]);
        let bn: f64 = (0..m).map(|j| vb[(k, j)].norm_sqr()).sum::<f64>().sqrt() * wgt;
        let mut cn2: f64 = (0..p).map(|o| vc[(o, k)].norm_sqr()).sum();
        if let Some(x) = &vcr {
            cn2 += (0..p).map(|o| x[(o, k)].norm_sqr()).sum::<f64>();
        }
        let cn = cn2.sqrt() * wgt;
        let sc = if bn > 0.0 && cn > 0.0 {
            (cn / bn).sqrt()
        } else {
            1.0
        };
        for j in 0..m {
            bm[(i, j)] = vb[(k, j)] * (wgt * sc);
        }
        for o in 0..p {
            cm[(o, i)] = vc[(o, k)] * (wgt / sc);
        }
        if let (Some(dst), Some(src)) = (&mut crm, &vcr) {
            for o in 0..p {
                dst[(o, i)] = src[(o, k)] * (wgt / sc);
            }
        }
    }
    Ok((
        DiagBlock {
            lambda,
            b: bm,
            c: cm,
            c_rev: crm,
            d: template.d.clone(),
            linear: template.linear.clone(),
            quadratic: template.quadratic.clone(),
        },
        n_real,
    ))
}

/// Appends `extra` inert modes (`λ = 0`, zero weights).
fn pad(block: &mut DiagBlock, extra: usize) {
    if extra == 0 {
        return;
    }
    let (n, p, m) = (block.n_modes(), block.n_outputs(), block.n_inputs());
    let z = c64::new(0.0, 0.0);
    block.lambda.extend(std::iter::repeat_n(z, extra));
    let grow_rows =
        |x: &Mat<c64>| Mat::from_fn(n + extra, m, |i, j| if i < n { x[(i, j)] } else { z });
    let grow_cols =
        |x: &Mat<c64>| Mat::from_fn(p, n + extra, |o, i| if i < n { x[(o, i)] } else { z });
    block.b = grow_rows(&block.b);
    block.c = grow_cols(&block.c);
    block.c_rev = block.c_rev.as_ref().map(grow_cols);
}

/// Details of a balanced truncation beyond the [`BlockReduction`].
#[derive(Clone, Debug)]
pub struct BtInfo {
    /// Real reduced order `q` actually used (`≤ 2r`).
    pub real_order: usize,
    /// Real poles among the reduced eigenvalues.
    pub n_real_poles: usize,
    /// Inert padding modes appended.
    pub n_padded: usize,
    /// Joint Hankel singular values of the full block.
    pub hsv: Vec<f64>,
    /// The real reduced system (before re-diagonalisation).
    pub real: RealReduced,
}

/// Balanced truncation of a stable block to `r` stored modes (module doc); `h2_error` is the
/// infinite-horizon h2 error of the re-diagonalised block (with the block's `E`, `N_i`).
///
/// # Errors
/// [`Error::Argument`] unless `1 ≤ r ≤ n`; [`Error::Unstable`] for `|λ| ≥ 1`;
/// [`Error::LinAlg`] on a failed decomposition.
pub fn bt(block: &DiagBlock, r: usize) -> Result<BlockReduction> {
    Ok(bt_with_info(block, r)?.0)
}

/// [`bt`] plus the details ([`BtInfo`]).
pub fn bt_with_info(block: &DiagBlock, r: usize) -> Result<(BlockReduction, BtInfo)> {
    block.check_order(r, "balanced truncation")?;
    let bal = Balanced::new(block)?;
    let (red, info) = truncate_balanced(block, r, &bal)?;
    let tail: f64 = bal.hsv()[info.real_order..].iter().sum();
    let factor = if block.is_bidirectional() { 4.0 } else { 2.0 };
    Ok((
        BlockReduction {
            hinf_bound: Some(factor * tail),
            ..red
        },
        info,
    ))
}

/// Empirical balanced truncation (`ebt`) of a stable block to `r` stored modes: [`bt`] with the
/// controllability Gramian replaced by `ctrb` (`[2n, 2n]` in the real state `w = [Re x; Im x]`),
/// the state covariance under the block's recorded inputs
/// ([`crate::empirical::EmpiricalGramian`]; Lall, Marsden & Glavaški 2002). With the closed-form
/// Gramian (white input) it is [`bt`]. The Enns H∞ bound assumes the white-input Gramian and is
/// not reported (`hinf_bound = None`); `h2_error` is the block's infinite-horizon h2 error.
///
/// # Errors
/// As [`bt`], and as [`balance::sqrt_balance_with_ctrb`] for a bad `ctrb`.
pub fn ebt(block: &DiagBlock, r: usize, ctrb: &Mat<f64>) -> Result<BlockReduction> {
    block.check_order(r, "empirical balanced truncation")?;
    let bal = Balanced::with_ctrb(block, ctrb)?;
    Ok(truncate_balanced(block, r, &bal)?.0)
}

/// Truncates a balanced block to `r` stored modes and re-diagonalises it (module doc); the
/// result's `hinf_bound` is `None`.
fn truncate_balanced(
    block: &DiagBlock,
    r: usize,
    bal: &Balanced,
) -> Result<(BlockReduction, BtInfo)> {
    let qmax = (2 * r).min(bal.rank.max(1));
    let mut q = qmax;
    let (mut red, n_real, real) = loop {
        let real = bal.truncate(q);
        let (red, k) = rediagonalise(&real, block)?;
        if q + k <= 2 * r || q == 1 {
            break (red, k, real);
        }
        q -= 1;
    };
    let n_padded = r.saturating_sub(red.n_modes());
    pad(&mut red, n_padded);
    let h2_error = gram::h2_error(block, &red, None)?;
    let info = BtInfo {
        real_order: q,
        n_real_poles: n_real,
        n_padded,
        hsv: bal.hsv().to_vec(),
        real,
    };
    Ok((
        BlockReduction {
            block: red,
            h2_error,
            hinf_bound: None,
        },
        info,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gram::tests::random_block;

    /// Max over a frequency grid of the largest singular value of the causal transfer function
    /// difference `Σ_j (g_a(j) − g_b(j)) e^{−iωj}` (forward scan only), from the stored form.
    fn hinf_err_causal(a: &DiagBlock, b: &DiagBlock, grid: usize) -> f64 {
        let (p, m) = (a.n_outputs(), a.n_inputs());
        let resp = |blk: &DiagBlock, z: c64| {
            let mut h = Mat::<c64>::zeros(p, m);
            for i in 0..blk.n_modes() {
                let l = blk.lambda[i];
                let f = c64::new(1.0, 0.0) / (c64::new(1.0, 0.0) - l * z);
                let fc = c64::new(1.0, 0.0) / (c64::new(1.0, 0.0) - l.conj() * z);
                for o in 0..p {
                    for s in 0..m {
                        h[(o, s)] += blk.c[(o, i)] * blk.b[(i, s)] * f
                            + (blk.c[(o, i)] * blk.b[(i, s)]).conj() * fc;
                    }
                }
            }
            h
        };
        let mut peak: f64 = 0.0;
        for w in 0..grid {
            let om = std::f64::consts::PI * w as f64 / (grid - 1) as f64;
            let z = c64::from_polar(1.0, -om);
            let d = resp(a, z) - resp(b, z);
            peak = peak.max(d.singular_values().unwrap()[0]);
        }
        peak
    }

    #[test]
    fn bt_bound_holds_and_error_decreases() {
        let blk = random_block(21, 10, 2, 3, false, 0, None, 0.95);
        let mut last = f64::INFINITY;
        for r in [2, 4, 6, 8] {
            let (red, info) = bt_with_info(&blk, r).unwrap();
            assert_eq!(red.block.n_modes(), r);
            assert!(red.block.max_abs_lambda() < 1.0);
            let e = hinf_err_causal(&blk, &red.block, 2000);
            let bound = red.hinf_bound.unwrap();
            assert!(
                e <= bound * (1.0 + 1e-9),
                "r={r}: H∞ err {e} > bound {bound}"
            );
            // Lower bound: H∞ error ≥ σ_{q+1}.
            assert!(e >= info.hsv[info.real_order] * (1.0 - 1e-6));
            assert!(red.h2_error < last);
            last = red.h2_error;
        }
        // Full order reproduces the system.
        let full = bt(&blk, 10).unwrap();
        let nrm = gram::h2_norm(&blk, None);
        // The closed-form error is only accurate to ~sqrt(eps)·‖Σ‖ (cancellation); the kernel
        // sum measures the reproduction exactly.
        assert!(
            full.h2_error < 1e-6 * nrm,
            "{} vs norm {nrm}",
            full.h2_error
        );
        let mut e2 = 0.0;
        for j in 0..900 {
            e2 += (gram::kernel(&blk, j) - gram::kernel(&full.block, j)).squared_norm_l2();
        }
        assert!(e2.sqrt() < 1e-11 * nrm, "kernel-sum error {}", e2.sqrt());
    }

    #[test]
    fn rediagonalised_block_equals_real_reduced_system() {
        for (seed, bidir) in [(22, false), (23, true)] {
            let blk = random_block(seed, 8, 2, 3, bidir, 0, None, 0.9);
            let (red, info) = bt_with_info(&blk, 3).unwrap();
            for j in -40..40 {
                if !bidir && j < 0 {
                    continue;
                }
                let kd = gram::kernel(&red.block, j);
                let kr = info.real.kernel(j);
                assert!(
                    (&kd - &kr).norm_l2() < 1e-10 * (1.0 + kr.norm_l2()),
                    "lag {j}"
                );
            }
            // h2 error of the stored form = that of the real system (brute force kernel sums).
            let mut e2 = 0.0;
            for j in -400..400 {
                let d = gram::kernel(&blk, j) - info.real.kernel(j);
                e2 += if !bidir && j < 0 {
                    0.0
                } else {
                    d.squared_norm_l2()
                };
            }
            assert!(
                (red.h2_error - e2.sqrt()).abs() < 1e-9 * e2.sqrt(),
                "{} vs {}",
                red.h2_error,
                e2.sqrt()
            );
        }
    }

    #[test]
    fn real_poles_are_stored_with_half_weights() {
        // Real λ in the full system make real reduced poles likely.
        let mut blk = random_block(24, 6, 1, 1, false, 0, None, 0.9);
        for (i, l) in blk.lambda.iter_mut().enumerate() {
            *l = c64::new(0.9 - 0.15 * i as f64, 0.0);
        }
        for r in 1..=4 {
            let (red, info) = bt_with_info(&blk, r).unwrap();
            assert_eq!(red.block.n_modes(), r);
            assert!(info.real_order + info.n_real_poles + 2 * info.n_padded <= 2 * r);
            for j in 0..60 {
                let kd = gram::kernel(&red.block, j);
                let kr = info.real.kernel(j);
                assert!((&kd - &kr).norm_l2() < 1e-10 * (1.0 + kr.norm_l2()));
            }
        }
        let (_, info) = bt_with_info(&blk, 2).unwrap();
        assert!(info.n_real_poles > 0, "expected real reduced poles");
    }

    #[test]
    fn bt_rejects_bad_order() {
        let blk = random_block(25, 4, 1, 1, false, 0, None, 0.9);
        assert!(bt(&blk, 0).is_err());
        assert!(bt(&blk, 5).is_err());
        let (pw, _) = balance::real_gramians(&blk, true);
        assert!(ebt(&blk, 5, &pw).is_err());
        assert!(ebt(&blk, 2, &Mat::zeros(3, 3)).is_err());
    }

    #[test]
    fn ebt_with_the_white_input_gramian_is_bt() {
        let blk = random_block(26, 6, 3, 2, true, 0, None, 0.9);
        let (pw, _) = balance::real_gramians(&blk, true);
        for r in [1, 3, 5] {
            let a = bt(&blk, r).unwrap();
            let b = ebt(&blk, r, &pw).unwrap();
            let d = gram::h2_error(&a.block, &b.block, None).unwrap();
            assert!(d < 1e-9 * gram::h2_norm(&blk, None), "r = {r}: {d}");
            assert!((a.h2_error - b.h2_error).abs() < 1e-9 * a.h2_error.max(1e-300));
            assert!(b.hinf_bound.is_none() && a.hinf_bound.is_some());
        }
    }

    #[test]
    fn ebt_keeps_exactly_what_the_recorded_inputs_excite() {
        // Input channel 0 drives only modes 0..k; the recorded inputs use channel 0 only. Then
        // the empirical Gramian has rank 2k and ebt to r = k reproduces the response to channel 0
        // exactly, where bt (white input on every channel) does not.
        let (n, m, k) = (6, 3, 2);
        let mut blk = random_block(27, n, m, 2, true, 0, None, 0.9);
        for i in k..n {
            blk.b[(i, 0)] = c64::new(0.0, 0.0);
        }
        let mut acc = crate::empirical::EmpiricalGramian::new(&blk);
        for seq in 0..3 {
            let u = Mat::from_fn(80, m, |t, s| {
                if s == 0 {
                    (((t * 13 + seq * 5) % 17) as f64 - 8.0) / 8.0
                } else {
                    0.0
                }
            });
            acc.add(u.as_ref()).unwrap();
        }
        let p_emp = acc.gramian().unwrap();
        let channel0 = |x: &DiagBlock| {
            let mut y = x.clone();
            y.b = Mat::from_fn(x.n_modes(), 1, |i, _| x.b[(i, 0)]);
            y.d = None;
            y
        };
        let full0 = channel0(&blk);
        let norm0 = gram::h2_norm(&full0, None);
        let e = ebt(&blk, k, &p_emp).unwrap();
        let b = bt(&blk, k).unwrap();
        let err_ebt = gram::h2_error(&full0, &channel0(&e.block), None).unwrap() / norm0;
        let err_bt = gram::h2_error(&full0, &channel0(&b.block), None).unwrap() / norm0;
        assert!(err_ebt < 1e-8, "ebt: relative channel-0 error {err_ebt}");
        assert!(err_bt > 1e-2, "bt: relative channel-0 error {err_bt}");
    }
}
