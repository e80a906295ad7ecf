//! HiPPO-N initialisation of S5's state matrix (Smith et al., ICLR 2023, Sec. 4.1 and App. B.1;
//! Gu et al., "How to train your HiPPO", 2022).
//!
//! HiPPO-LegS (Gu et al., 2020, Eq. for LegS): `A_nk = −sqrt((2n+1)(2k+1))` for `n > k`,
//! `−(n+1)` for `n = k`, `0` otherwise. Adding the rank-one term `p pᵀ` with
//! `p_n = sqrt(n + 1/2)` gives the normal part `S = −½ I + K`,
//! `K_nk = −½ sign(n − k) sqrt((2n+1)(2k+1))` (skew-symmetric). Its eigenvalues are
//! `−½ + iμ` where `μ` are the eigenvalues of the Hermitian matrix `−iK` (unitary eigenvectors
//! `V`); they come in conjugate pairs and S5 keeps one of each pair (here, as in S5, the half
//! with `μ < 0`).

use faer::{Mat, Side, c64};

use crate::{Error, Result};

/// HiPPO-N eigen-decomposition of one block of size `m` (even, ≥ 2).
///
/// Returns `(lambda, v)`: the `m/2` kept continuous eigenvalues Λ (`−½ + iμ`, `μ` ascending,
/// all `μ < 0`) and the matching unit eigenvectors `v` `[m, m/2]` of the normal HiPPO-LegS
/// matrix `S` (`S v_j = λ_j v_j`, columns orthonormal).
///
/// # Errors
/// `m` odd or zero, or the eigensolver failing.
pub fn hippo_n(m: usize) -> Result<(Vec<c64>, Mat<c64>)> {
    if m == 0 || !m.is_multiple_of(2) {
        return Err(Error::Config(format!(
            "HiPPO block size ssm_size/blocks = {m} must be even and positive"
        )));
    }
    // M = −iK (Hermitian).
    let k = |n: usize, j: usize| -> f64 {
        let s = ((2 * n + 1) as f64 * (2 * j + 1) as f64).sqrt();
        match n.cmp(&j) {
            std::cmp::Ordering::Greater => -0.5 * s,
            std::cmp::Ordering::Less => 0.5 * s,
            std::cmp::Ordering::Equal => 0.0,
        }
    };
    let herm = Mat::<c64>::from_fn(m, m, |n, j| c64::new(0.0, -k(n, j)));
    let eig = herm
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::Config(format!("HiPPO eigendecomposition (m = {m}) failed: {e:?}")))?;
    let mu = eig.S().column_vector();
    let u = eig.U();
    let half = m / 2;
    let lambda: Vec<c64> = (0..half).map(|j| c64::new(-0.5, mu[j].re)).collect();
    let v = Mat::<c64>::from_fn(m, half, |i, j| u[(i, j)]);
    Ok((lambda, v))
}

/// Block-diagonal HiPPO-N over `blocks` blocks of a state of size `p` (real count):
/// returns Λ `[p/2]` (the block's eigenvalues repeated), `V` `[p, p/2]` block diagonal and
/// `V⁻¹ = Vᴴ` `[p/2, p]` (S5, App. B.1.1: `Λ = (Λ_block ⊗ 1_J)`, `V = blockdiag(V_block, …)`).
///
/// # Errors
/// `p` not divisible by `blocks`, or the block size odd.
pub fn block_hippo(p: usize, blocks: usize) -> Result<(Vec<c64>, Mat<c64>, Mat<c64>)> {
    if blocks == 0 || !p.is_multiple_of(blocks) {
        return Err(Error::Config(format!(
            "ssm_size {p} must be a positive multiple of blocks {blocks}"
        )));
    }
    let m = p / blocks;
    let (lam, vb) = hippo_n(m)?;
    let h = m / 2;
    let lambda: Vec<c64> = (0..blocks).flat_map(|_| lam.iter().copied()).collect();
    let v = Mat::<c64>::from_fn(p, p / 2, |i, j| {
        if i / m == j / h {
            vb[(i % m, j % h)]
        } else {
            c64::new(0.0, 0.0)
        }
    });
    let vinv = Mat::<c64>::from_fn(p / 2, p, |j, i| v[(i, j)].conj());
    Ok((lambda, v, vinv))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s_matrix(m: usize) -> Mat<f64> {
        // S = A_LegS + p pᵀ, built from the LegS definition (not from the closed form above).
        Mat::<f64>::from_fn(m, m, |n, k| {
            let a = if n > k {
                -(((2 * n + 1) * (2 * k + 1)) as f64).sqrt()
            } else if n == k {
                -((n + 1) as f64)
            } else {
                0.0
            };
            a + ((n as f64 + 0.5) * (k as f64 + 0.5)).sqrt()
        })
    }

    #[test]
    fn eigenpairs_of_normal_hippo_legs() {
        for m in [2usize, 8, 16] {
            let (lam, v) = hippo_n(m).unwrap();
            let s = s_matrix(m);
            for j in 0..m / 2 {
                assert!((lam[j].re + 0.5).abs() < 1e-14 && lam[j].im < 0.0);
                for i in 0..m {
                    let sv: c64 = (0..m).map(|k| v[(k, j)] * s[(i, k)]).sum();
                    let lv = lam[j] * v[(i, j)];
                    assert!((sv - lv).norm() < 1e-10 * m as f64, "m={m} j={j}");
                }
                for j2 in 0..m / 2 {
                    let ip: c64 = (0..m).map(|k| v[(k, j)].conj() * v[(k, j2)]).sum();
                    let want = if j == j2 { 1.0 } else { 0.0 };
                    assert!((ip - c64::new(want, 0.0)).norm() < 1e-10);
                }
            }
        }
    }

    #[test]
    fn block_diagonal_structure() {
        let (lam, v, vinv) = block_hippo(16, 4).unwrap();
        assert_eq!(lam.len(), 8);
        assert_eq!(lam[0], lam[2]);
        assert_eq!(v[(0, 2)], c64::new(0.0, 0.0));
        // V⁻¹ V = I on the kept half.
        for a in 0..8 {
            for b in 0..8 {
                let ip: c64 = (0..16).map(|k| vinv[(a, k)] * v[(k, b)]).sum();
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((ip - c64::new(want, 0.0)).norm() < 1e-10);
            }
        }
    }
}
