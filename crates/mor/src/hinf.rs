//! Certified upper bound on the H∞ norm of a stable diagonal block (two-sided, bidirectional).
//!
//! The block's kernel `g(j)` (module `gram`: `g(j) = 2 Re(C̃ Λ^j B̄)` for `j ≥ 0` from the forward
//! scan, `g(−j) = 2 Re(C̃_rev Λ^j B̄)` from the reverse scan, both at `j = 0`) plus the feed-through
//! `D` has the symbol, for `z = e^{iω}`,
//!
//! ```text
//! G(ω) = Σ_i [ c_i b_iᵀ/(1 − λ_i z⁻¹) + c̄_i b̄_iᵀ/(1 − λ̄_i z⁻¹)
//!            + r_i b_iᵀ/(1 − λ_i z)  + r̄_i b̄_iᵀ/(1 − λ̄_i z) ] + diag(D)
//! ```
//!
//! (`c_i`, `r_i` columns of `C̃`, `C̃_rev`; `b_i` rows of `B̄`). On sequences of any length `L` the
//! block acts as the finite section `T_L` of the Laurent operator with this symbol, so
//! `‖T_L‖₂ ≤ ‖G‖_∞ = sup_ω σ_max(G(ω))` (Böttcher & Silbermann, *Introduction to Large Truncated
//! Toeplitz Matrices*, 1999, Sec. 6.1): a valid ℓ2→ℓ2 gain for the bound of `BOUND.md`, usually far
//! below the ℓ1 kernel sum of Frobenius norms.
//!
//! A frequency grid only gives a lower estimate; the supremum is certified by branch and bound on
//! `[0, π]` (`G(−ω) = conj G(ω)` as the kernel is real). On an interval `I` with midpoint `m` and
//! radius `ρ`, each term `f(ω) = 1/(1 − μ e^{∓iω})` satisfies
//! `|f(ω) − f(m)| ≤ |μ| ρ / (d_I(μ) d_m(μ))`, `d` the distance from the pole to the arc (or to the
//! point `e^{im}`), so `σ_max(G(ω)) ≤ σ_max(G(m)) + ρ Σ_t ‖c_t‖ ‖b_t‖ |μ_t| / (d_I d_m)` on `I`.
//! The largest such interval bound is an upper bound on `‖G‖_∞` at every stage; intervals are
//! split until it is within `rel_tol` of the best value seen or the evaluation budget is spent.

use std::collections::BinaryHeap;
use std::f64::consts::PI;

use faer::{Mat, c64};

use crate::DiagBlock;

/// Result of [`hinf_upper_bound`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HinfBound {
    /// Certified upper bound on `sup_ω σ_max(G(ω))` (`∞` for a block with `|λ| ≥ 1`).
    pub upper: f64,
    /// Largest `σ_max(G(ω))` evaluated (a lower bound, up to rounding).
    pub lower: f64,
    /// Frequencies evaluated.
    pub evaluations: usize,
}

/// Stacked factors of the symbol: `G(ω) = C_s diag(w(ω)) B_s + diag(D)`.
struct Symbol {
    /// `[p, 4n]`: `C̃, conj C̃, C̃_rev, conj C̃_rev` (the last two only when bidirectional).
    c: Mat<c64>,
    /// `[4n, m]`: `B̄, conj B̄, B̄, conj B̄`.
    b: Mat<c64>,
    /// Pole of each stacked term as seen from `e^{iω}` (forward: `λ`; reverse: `conj λ`, since
    /// `|1 − μ e^{iω}| = |e^{iω} − conj μ|`), and whether the term is a reverse one.
    poles: Vec<(c64, bool)>,
    /// `‖c_t‖₂ ‖b_t‖₂` per stacked term.
    weight: Vec<f64>,
    d: Vec<f64>,
}

impl Symbol {
    fn new(block: &DiagBlock) -> Self {
        let (n, m, p) = (block.n_modes(), block.n_inputs(), block.n_outputs());
        let mut cols: Vec<(Vec<c64>, Vec<c64>, c64, bool)> = Vec::new();
        let mut push = |c: &Mat<c64>, rev: bool| {
            for i in 0..n {
                let ci: Vec<c64> = (0..p).map(|r| c[(r, i)]).collect();
                let bi: Vec<c64> = (0..m).map(|s| block.b[(i, s)]).collect();
                let lam = block.lambda[i];
                let conj = |v: &[c64]| v.iter().map(|z| z.conj()).collect::<Vec<_>>();
                // Forward terms see the pole μ, reverse terms its conjugate.
                let (p1, p2) = if rev {
                    (lam.conj(), lam)
                } else {
                    (lam, lam.conj())
                };
                cols.push((ci.clone(), bi.clone(), p1, rev));
                cols.push((conj(&ci), conj(&bi), p2, rev));
            }
        };
        push(&block.c, false);
        if let Some(cr) = &block.c_rev {
            push(cr, true);
        }
        let k = cols.len();
        let norm = |v: &[c64]| v.iter().map(|z| z.norm_sqr()).sum::<f64>().sqrt();
        Symbol {
            c: Mat::from_fn(p, k, |r, t| cols[t].0[r]),
            b: Mat::from_fn(k, m, |t, s| cols[t].1[s]),
            poles: cols.iter().map(|c| (c.2, c.3)).collect(),
            weight: cols.iter().map(|c| norm(&c.0) * norm(&c.1)).collect(),
            d: block.d.clone().unwrap_or_default(),
        }
    }

    /// `σ_max(G(ω))` enlarged for rounding, and `Σ_t weight_t / d_m` (for the interval bound).
    fn sigma_max(&self, omega: f64) -> (f64, Vec<f64>) {
        let z = c64::new(omega.cos(), omega.sin());
        let (k, m) = (self.b.nrows(), self.b.ncols());
        // |1 − μ z̄| = |z − μ| for forward terms; |1 − μ' z| = |z − conj μ'| = |z − pole| for
        // reverse ones (pole stored conjugated): the distance is |z − pole| in both cases.
        let mut dist = Vec::with_capacity(k);
        let mut scaled = Mat::<c64>::zeros(k, m);
        for t in 0..k {
            let (pole, rev) = self.poles[t];
            // Forward: 1/(1 − μ z⁻¹) = z/(z − μ); reverse: 1/(1 − μ' z) = z̄/(z̄ − μ') with μ' =
            // conj(pole), i.e. conj(z/(z − pole)).
            let f = z / (z - pole);
            let w = if rev { f.conj() } else { f };
            dist.push((z - pole).norm());
            for s in 0..m {
                scaled[(t, s)] = w * self.b[(t, s)];
            }
        }
        let mut g = &self.c * &scaled;
        for (i, &d) in self.d.iter().enumerate() {
            g[(i, i)] += c64::new(d, 0.0);
        }
        let s = sigma_max_upper(&g);
        // Rounding of the sum of k rank-one terms.
        let terms: f64 = self.weight.iter().zip(&dist).map(|(w, d)| w / d).sum();
        let eps = f64::EPSILON;
        (s + 16.0 * (k as f64 + 2.0) * eps * terms, dist)
    }

    /// `Σ_t weight_t |μ_t| / (d_I d_m)` over the interval `[a, b]` (within `[0, π]`).
    fn slope(&self, a: f64, b: f64, dist_mid: &[f64]) -> f64 {
        self.poles
            .iter()
            .zip(&self.weight)
            .zip(dist_mid)
            .map(|(((pole, _), w), dm)| {
                let r = pole.norm();
                let theta = pole.arg();
                // The distance |e^{iω} − pole| grows with the wrapped angle |ω − θ|.
                let inside = (a..=b).contains(&theta)
                    || (a..=b).contains(&(theta + 2.0 * PI))
                    || (a..=b).contains(&(theta - 2.0 * PI));
                let di = if inside {
                    1.0 - r
                } else {
                    let at = |w: f64| (c64::new(w.cos(), w.sin()) - pole).norm();
                    at(a).min(at(b))
                };
                w * r / (di * dm)
            })
            .sum()
    }
}

/// Upper bound on `σ_max(G)` from the largest eigenvalue of the smaller Gram matrix (`G Gᴴ` or
/// `Gᴴ G`, Hermitian): cheaper than the singular values. Rounding: forming the Gram matrix in
/// floating point errs by at most `γ_k ‖G‖²_F` in the 2-norm (Higham, *Accuracy and Stability
/// of Numerical Algorithms*, 2002, Sec. 3.5), the Hermitian eigensolver's backward error is
/// `O(n ε ‖G Gᴴ‖)`; both are covered by adding `4(k + n + 16) ε ‖G‖²_F` (`‖G‖²_F ≥ ‖G‖²_2`) before
/// the square root. `∞` if the eigensolver fails.
fn sigma_max_upper(g: &Mat<c64>) -> f64 {
    let (p, m) = (g.nrows(), g.ncols());
    if p == 0 || m == 0 {
        return 0.0;
    }
    let gram = if p <= m {
        g * g.adjoint()
    } else {
        g.adjoint() * g
    };
    let n = gram.nrows();
    let k = p.max(m);
    let frob2: f64 = g.norm_l2().powi(2);
    match gram.self_adjoint_eigenvalues(faer::Side::Lower) {
        Ok(ev) => {
            // Sorted in nondecreasing order (faer's contract).
            let lmax = ev.last().copied().unwrap_or(0.0);
            let slack = 4.0 * (k + n + 16) as f64 * f64::EPSILON * frob2;
            (lmax + slack).max(0.0).sqrt()
        }
        Err(_) => f64::INFINITY,
    }
}

#[derive(PartialEq)]
struct Interval {
    upper: f64,
    a: f64,
    b: f64,
}
impl Eq for Interval {}
impl PartialOrd for Interval {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Interval {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.upper.total_cmp(&other.upper)
    }
}

/// Certified upper bound on `‖G‖_∞ = sup_ω σ_max(G(ω))` of `block` (kernel plus `D`; see the
/// module doc), refined until it is within `rel_tol` (relative) of the largest value evaluated or
/// `max_evals` frequencies were evaluated; always a valid upper bound, `∞` if some `|λ_i| ≥ 1`.
/// Blocks with an LQO read-out (`linear`/`quadratic`) are bounded on their state output `s_k`.
pub fn hinf_upper_bound(block: &DiagBlock, rel_tol: f64, max_evals: usize) -> HinfBound {
    if block.max_abs_lambda() >= 1.0 {
        return HinfBound {
            upper: f64::INFINITY,
            lower: 0.0,
            evaluations: 0,
        };
    }
    let sym = Symbol::new(block);
    let mut heap = BinaryHeap::new();
    let mut lower = 0.0f64;
    let mut evals = 0;
    let push = |heap: &mut BinaryHeap<Interval>, a: f64, b: f64, lower: &mut f64| {
        let mid = 0.5 * (a + b);
        let (s, dist) = sym.sigma_max(mid);
        *lower = lower.max(s);
        let upper = s + 0.5 * (b - a) * sym.slope(a, b, &dist);
        heap.push(Interval { upper, a, b });
    };
    let start = 32usize;
    for i in 0..start {
        let (a, b) = (
            PI * i as f64 / start as f64,
            PI * (i + 1) as f64 / start as f64,
        );
        push(&mut heap, a, b, &mut lower);
        evals += 1;
    }
    loop {
        let top = heap.pop().expect("intervals remain");
        if !top.upper.is_finite() || top.upper <= lower * (1.0 + rel_tol) || evals + 2 > max_evals {
            return HinfBound {
                upper: top.upper,
                lower,
                evaluations: evals,
            };
        }
        let mid = 0.5 * (top.a + top.b);
        push(&mut heap, top.a, mid, &mut lower);
        push(&mut heap, mid, top.b, &mut lower);
        evals += 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The Gram-eigenvalue bound is never below the largest singular value and within rounding of
    /// it, for wide, tall and square matrices (both Gram orientations) and a rank-one one.
    #[test]
    fn sigma_max_upper_matches_the_largest_singular_value() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut cases: Vec<Mat<c64>> = [(5, 9), (9, 5), (16, 16), (1, 7)]
            .iter()
            .map(|&(p, m)| {
                Mat::from_fn(p, m, |_, _| {
                    c64::new(rng.random::<f64>() - 0.5, rng.random::<f64>() - 0.5)
                })
            })
            .collect();
        cases.push(Mat::from_fn(6, 4, |i, j| {
            c64::new((i + 1) as f64, 0.0) * c64::new(0.0, (j + 2) as f64)
        }));
        for g in &cases {
            let svd = g.singular_values().unwrap()[0];
            let up = sigma_max_upper(g);
            assert!(up >= svd, "{up} < {svd}");
            assert!(up <= svd * (1.0 + 1e-12), "{up} vs {svd}");
        }
        assert_eq!(sigma_max_upper(&Mat::<c64>::zeros(3, 0)), 0.0);
    }
}
