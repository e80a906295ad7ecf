//! Real realisation of diagonal blocks, the Gramians of the real doubled system, square-root
//! balancing and Hankel singular values (HSV).
//!
//! # Hankel singular values
//!
//! HSV are those of the causal real system `u → s` with state `w = [Re x; Im x] ∈ R^{2n}`:
//! `A_w = [[Re Λ, −Im Λ], [Im Λ, Re Λ]]`, `B_w = [Re B̄; Im B̄]`, `C_w = [2Re C̃, −2Im C̃]`
//! (so `C_w A_w^j B_w = 2Re(C̃ Λ^j B̄)`). Its Gramians follow from the complex doubled state
//! `z = [x; x̄]` (closed forms `P`, `P'` of [`crate::gram`], `Q_ik = (C̃ᴴC̃)_ik/(1 − λ̄_i λ_k)`,
//! `Q'_ik = (C̃ᴴC̃̄)_ik/(1 − λ̄_i λ̄_k)`) through `w = T⁻¹z`, `T = [[I, iI], [I, −iI]]`:
//!
//! ```text
//! P_w = ½ [[Re(P + P'), Im(P' − P)], [Im(P' + P), Re(P − P')]],
//! Q_w = 2 [[Re(Q + Q'), Im(Q' − Q)], [Im(Q' + Q), Re(Q − Q')]].
//! ```
//!
//! `σ_k = sqrt(λ_k(P_w Q_w))` are computed by the square-root method (Laub et al., IEEE TAC 1987):
//! `P_w = L_p L_pᵀ`, `Q_w = L_q L_qᵀ`, `σ = svd(L_qᵀ L_p)`.

use crate::block::DiagBlock;
use crate::error::{Error, Result};
use crate::gram::check_stable;
use faer::{Mat, Side, c64};

/// Complex closed-form Gramian blocks of the doubled state `z = [x; x̄]`:
/// `P_ik = (B̄B̄ᴴ)_ik/(1 − λ_iλ̄_k)`, `P'_ik = (B̄B̄ᵀ)_ik/(1 − λ_iλ_k)`.
fn complex_ctrb(block: &DiagBlock) -> (Mat<c64>, Mat<c64>) {
    let n = block.n_modes();
    let l = &block.lambda;
    let bbh = &block.b * block.b.adjoint();
    let bbt = &block.b * block.b.transpose();
    let one = c64::new(1.0, 0.0);
    (
        Mat::from_fn(n, n, |i, k| bbh[(i, k)] / (one - l[i] * l[k].conj())),
        Mat::from_fn(n, n, |i, k| bbt[(i, k)] / (one - l[i] * l[k])),
    )
}

/// `Q_ik = (C̃ᴴC̃)_ik/(1 − λ̄_iλ_k)`, `Q'_ik = (C̃ᴴC̃̄)_ik/(1 − λ̄_iλ̄_k)` summed over the given
/// output matrices (stacked outputs).
fn complex_obsv(block: &DiagBlock, cs: &[&Mat<c64>]) -> (Mat<c64>, Mat<c64>) {
    let n = block.n_modes();
    let l = &block.lambda;
    let mut chc = Mat::<c64>::zeros(n, n);
    let mut chcc = Mat::<c64>::zeros(n, n);
    for c in cs {
        chc += c.adjoint() * *c;
        chcc += c.adjoint() * c.conjugate();
    }
    let one = c64::new(1.0, 0.0);
    (
        Mat::from_fn(n, n, |i, k| chc[(i, k)] / (one - l[i].conj() * l[k])),
        Mat::from_fn(n, n, |i, k| {
            chcc[(i, k)] / (one - l[i].conj() * l[k].conj())
        }),
    )
}

/// Real realisation `(A_w, B_w, C_w, C_rev_w)` of a block in the state `w = [Re x; Im x]`
/// (module doc): `A_w` `[2n, 2n]`, `B_w` `[2n, m]`, `C_w` `[p, 2n]`.
pub fn real_realization(block: &DiagBlock) -> (Mat<f64>, Mat<f64>, Mat<f64>, Option<Mat<f64>>) {
    let n = block.n_modes();
    let l = &block.lambda;
    let a = Mat::from_fn(2 * n, 2 * n, |i, k| {
        if i % n != k % n {
            return 0.0;
        }
        let li = l[i % n];
        match (i < n, k < n) {
            (true, true) | (false, false) => li.re,
            (true, false) => -li.im,
            (false, true) => li.im,
        }
    });
    let b = Mat::from_fn(2 * n, block.n_inputs(), |i, s| {
        if i < n {
            block.b[(i, s)].re
        } else {
            block.b[(i - n, s)].im
        }
    });
    let cw = |c: &Mat<c64>| {
        Mat::from_fn(c.nrows(), 2 * n, |r, i| {
            if i < n {
                2.0 * c[(r, i)].re
            } else {
                -2.0 * c[(r, i - n)].im
            }
        })
    };
    (a, b, cw(&block.c), block.c_rev.as_ref().map(cw))
}

/// Real controllability and observability Gramians `(P_w, Q_w)`, `[2n, 2n]`, of the causal real
/// system in the state `w = [Re x; Im x]` (module doc). With `joint = true` the observability
/// Gramian is that of the stacked outputs `[C̃; C̃_rev]` (shared states; used by balanced
/// truncation of bidirectional blocks); otherwise of `C̃` alone. Requires `|λ| < 1`.
pub fn real_gramians(block: &DiagBlock, joint: bool) -> (Mat<f64>, Mat<f64>) {
    let n = block.n_modes();
    let (p, p2) = complex_ctrb(block);
    let mut cs = vec![&block.c];
    if joint && let Some(cr) = &block.c_rev {
        cs.push(cr);
    }
    let (q, q2) = complex_obsv(block, &cs);
    let pw = Mat::from_fn(2 * n, 2 * n, |i, k| {
        let (ii, kk) = (i % n, k % n);
        let (a, b) = (p[(ii, kk)], p2[(ii, kk)]);
        0.5 * match (i < n, k < n) {
            (true, true) => a.re + b.re,
            (true, false) => b.im - a.im,
            (false, true) => b.im + a.im,
            (false, false) => a.re - b.re,
        }
    });
    let qw = Mat::from_fn(2 * n, 2 * n, |i, k| {
        let (ii, kk) = (i % n, k % n);
        let (a, b) = (q[(ii, kk)], q2[(ii, kk)]);
        2.0 * match (i < n, k < n) {
            (true, true) => a.re + b.re,
            (true, false) => b.im - a.im,
            (false, true) => b.im + a.im,
            (false, false) => a.re - b.re,
        }
    });
    let sym = |m: Mat<f64>| {
        let k = m.nrows();
        Mat::from_fn(k, k, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]))
    };
    (sym(pw), sym(qw))
}

/// A square-root factor `L` with `M ≈ L Lᵀ` of a symmetric positive semi-definite matrix:
/// Cholesky when it succeeds, otherwise the eigen-decomposition with negative eigenvalues
/// (rounding) clamped to zero.
pub fn psd_factor(m: &Mat<f64>) -> Result<Mat<f64>> {
    if let Ok(llt) = m.llt(Side::Lower) {
        return Ok(llt.L().to_owned());
    }
    let evd = m
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::LinAlg(format!("symmetric eigen-decomposition failed: {e:?}")))?;
    let s = evd.S().column_vector();
    let u = evd.U();
    Ok(Mat::from_fn(m.nrows(), m.ncols(), |i, k| {
        u[(i, k)] * s[k].max(0.0).sqrt()
    }))
}

/// Square-root balancing data of a real system: factors `L_p`, `L_q` and the SVD
/// `L_qᵀ L_p = U Σ Vᵀ` (Σ = HSV, descending).
pub struct SqrtBalance {
    /// `L_p` with `P_w = L_p L_pᵀ`, `[2n, 2n]`.
    pub lp: Mat<f64>,
    /// `L_q` with `Q_w = L_q L_qᵀ`, `[2n, 2n]`.
    pub lq: Mat<f64>,
    /// Left singular vectors `U`, `[2n, 2n]`.
    pub u: Mat<f64>,
    /// Right singular vectors `V`, `[2n, 2n]`.
    pub v: Mat<f64>,
    /// Hankel singular values, descending, `[2n]`.
    pub hsv: Vec<f64>,
}

/// Square-root balancing of a stable block's real doubled system (`joint`: stacked outputs
/// `[C̃; C̃_rev]`, see [`real_gramians`]).
///
/// # Errors
/// [`Error::Unstable`] for `|λ| ≥ 1`; [`Error::LinAlg`] if a decomposition fails.
pub fn sqrt_balance(block: &DiagBlock, joint: bool) -> Result<SqrtBalance> {
    check_stable(block, "block")?;
    let (pw, qw) = real_gramians(block, joint);
    balance_factors(&pw, &qw)
}

/// [`sqrt_balance`] with the controllability Gramian `P_w` replaced by `ctrb` (`[2n, 2n]`,
/// symmetric positive semi-definite; e.g. an [`crate::empirical::EmpiricalGramian`]); the
/// observability Gramian is the block's own (joint for `joint`).
///
/// # Errors
/// [`Error::Unstable`] for `|λ| ≥ 1`; [`Error::Shape`] if `ctrb` is not `[2n, 2n]`;
/// [`Error::Argument`] if it is not finite; [`Error::LinAlg`] if a decomposition fails.
pub fn sqrt_balance_with_ctrb(
    block: &DiagBlock,
    ctrb: &Mat<f64>,
    joint: bool,
) -> Result<SqrtBalance> {
    check_stable(block, "block")?;
    let n2 = 2 * block.n_modes();
    if ctrb.nrows() != n2 || ctrb.ncols() != n2 {
        return Err(Error::Shape(format!(
            "controllability Gramian is {}×{}, the block's real state has {n2} entries",
            ctrb.nrows(),
            ctrb.ncols()
        )));
    }
    if !ctrb.norm_max().is_finite() {
        return Err(Error::Argument(
            "controllability Gramian holds a non-finite value".into(),
        ));
    }
    let (_, qw) = real_gramians(block, joint);
    let sym = Mat::from_fn(n2, n2, |i, j| 0.5 * (ctrb[(i, j)] + ctrb[(j, i)]));
    balance_factors(&sym, &qw)
}

/// Square-root factors of `P_w`, `Q_w` and the SVD of `L_qᵀ L_p`.
fn balance_factors(pw: &Mat<f64>, qw: &Mat<f64>) -> Result<SqrtBalance> {
    let lp = psd_factor(pw)?;
    let lq = psd_factor(qw)?;
    let m = lq.transpose() * &lp;
    let svd = m
        .svd()
        .map_err(|e| Error::LinAlg(format!("SVD of L_q^T L_p failed: {e:?}")))?;
    let s = svd.S().column_vector();
    let hsv = (0..s.nrows()).map(|i| s[i]).collect();
    Ok(SqrtBalance {
        lp,
        lq,
        u: svd.U().to_owned(),
        v: svd.V().to_owned(),
        hsv,
    })
}

/// Hankel singular values of the causal real system `u → s` (states `x` and `x̄`, i.e.
/// `w = [Re x; Im x]`), `2n` values, descending (issue 4, Definitions; square-root method of
/// Laub et al. 1987 on the closed-form diagonal Gramians, module doc). `c_rev` is ignored.
///
/// # Errors
/// [`Error::Unstable`] if some `|λ_i| ≥ 1`; [`Error::LinAlg`] if a decomposition fails.
pub fn hsv(block: &DiagBlock) -> Result<Vec<f64>> {
    Ok(sqrt_balance(block, false)?.hsv)
}

/// Hankel singular values of the joint causal system `u → [s_fwd; s_rev]` (shared states,
/// stacked outputs `[C̃; C̃_rev]`), the values balanced truncation of a bidirectional block uses;
/// equal to [`hsv`] for a causal block.
pub fn hsv_joint(block: &DiagBlock) -> Result<Vec<f64>> {
    Ok(sqrt_balance(block, true)?.hsv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gram::tests::{max_rel_mat, random_block, rel};
    use crate::gram::{h2_norm, kernel};
    use crate::modes::select_modes;

    #[test]
    fn real_realization_kernel_and_gramians() {
        let blk = random_block(8, 3, 2, 2, true, 0, None, 0.7);
        let (a, b, c, cr) = real_realization(&blk);
        let cr = cr.unwrap();
        let n2 = a.nrows();
        let (pw, qw) = real_gramians(&blk, true);
        let mut pb = Mat::<f64>::zeros(n2, n2);
        let mut qb = Mat::<f64>::zeros(n2, n2);
        let mut ak = Mat::<f64>::identity(n2, n2);
        for j in 0..300 {
            let f = &c * &ak * &b;
            let r = &cr * &ak * &b;
            let kf = kernel(&blk, j);
            let kr = kernel(&blk, -j);
            if j > 0 {
                assert!((&f - &kf).norm_l2() < 1e-12);
                assert!((&r - &kr).norm_l2() < 1e-12);
            }
            let akb = &ak * &b;
            pb += &akb * akb.transpose();
            let cak = &c * &ak;
            let rak = &cr * &ak;
            qb += cak.transpose() * &cak + rak.transpose() * &rak;
            ak = &a * &ak;
        }
        assert!(max_rel_mat(&pw, &pb) < 1e-12);
        assert!(max_rel_mat(&qw, &qb) < 1e-12);
    }

    #[test]
    fn hsv_match_dense_eigenvalues_and_are_permutation_invariant() {
        let blk = random_block(9, 6, 2, 3, false, 0, None, 0.9);
        let s = hsv(&blk).unwrap();
        assert_eq!(s.len(), 12);
        let (pw, qw) = real_gramians(&blk, false);
        let ev = (&pw * &qw).eigenvalues().unwrap();
        let mut e: Vec<f64> = ev.iter().map(|z| z.re.max(0.0).sqrt()).collect();
        e.sort_by(|x, y| y.total_cmp(x));
        for k in 0..12 {
            assert!(
                (s[k] - e[k]).abs() < 1e-9 * s[0],
                "{k}: {} vs {}",
                s[k],
                e[k]
            );
            if k > 0 {
                assert!(s[k] <= s[k - 1]);
            }
        }
        let perm = [3, 0, 5, 1, 4, 2];
        let pb = select_modes(&blk, &perm);
        let sp = hsv(&pb).unwrap();
        for k in 0..12 {
            assert!((s[k] - sp[k]).abs() < 1e-12 * s[0]);
        }
        assert!(rel(h2_norm(&pb, None), h2_norm(&blk, None)) < 1e-13);
    }
}
