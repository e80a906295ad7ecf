//! Gramians, h2 norms and h2 errors of diagonal (conjugate-symmetric) blocks, in closed form.
//!
//! # Definitions (issue 4, the `diag-ssm/1` contract)
//!
//! The two-sided kernel of a block is `g(j) ∈ R^{p×m}`:
//! `g(0) = 2Re(C̃B̄) + 2Re(C̃_rev B̄)`, `g(j) = 2Re(C̃ Λ^j B̄)` and `g(−j) = 2Re(C̃_rev Λ^j B̄)` for
//! `j > 0`. The (output) Gramian is `G = Σ_j g(j) g(j)ᵀ ∈ R^{p×p}` and the squared h2 norm of the
//! linear-quadratic-output (LQO) block is
//! `‖Σ‖²_h2 = tr(E G Eᵀ) + Σ_i tr(N_i G N_i G)`. A time-limited (horizon `T`) quantity keeps only
//! the lags `|j| < T`.
//!
//! # Derivation of the closed forms
//!
//! Split the kernel into its forward part `F(j) = 2Re(C̃ Λ^j B̄)` and reverse part
//! `R(j) = 2Re(C̃_rev Λ^j B̄)`, `j ≥ 0`. Then `g(j) = F(j)` (`j > 0`), `g(−j) = R(j)` (`j > 0`) and
//! `g(0) = F(0) + R(0)`, so for two blocks `a`, `b` (same `m`, `p`)
//!
//! ```text
//! Σ_j g_a(j) g_b(j)ᵀ = Σ_{j≥0} F_a(j) F_b(j)ᵀ + Σ_{j≥0} R_a(j) R_b(j)ᵀ
//!                    + F_a(0) R_b(0)ᵀ + R_a(0) F_b(0)ᵀ.
//! ```
//!
//! The forward and reverse scans only meet at lag 0: these last two terms are the whole
//! bidirectional cross term. With `X_a(j) = C̃_a Λ_a^j B̄_a`, `F_a F_bᵀ = (X_a + X̄_a)(X_b + X̄_b)ᵀ
//! = 2Re(X_a X_bᴴ) + 2Re(X_a X_bᵀ)`, and summing the geometric series entry-wise (Λ diagonal)
//!
//! ```text
//! Σ_{0≤j<T} F_a(j) F_b(j)ᵀ = 2Re(C̃_a P_ab C̃_bᴴ) + 2Re(C̃_a P'_ab C̃_bᵀ),
//! (P_ab)_ik  = (B̄_a B̄_bᴴ)_ik · (1 − (λ_a,i λ̄_b,k)^T) / (1 − λ_a,i λ̄_b,k),
//! (P'_ab)_ik = (B̄_a B̄_bᵀ)_ik · (1 − (λ_a,i λ_b,k)^T) / (1 − λ_a,i λ_b,k),
//! ```
//!
//! the Cauchy-like Gramians of the issue (`T = ∞` drops the numerators' powers). The reverse part
//! is the same with `C̃_rev`. For `T = 0` everything is zero; for `T ≥ 1` the lag-0 cross term is
//! always included.
//!
//! # h2 error
//!
//! For blocks with equal `m`, `p`, `E`, `N_i` the error system has kernel `g − g_r` on the
//! linear output and second-order Volterra kernel `h − h_r`, `h(j, l) = g(j)ᵀ N g(l)`. The
//! three-term form `‖Σ‖² − 2⟨Σ, Σ_r⟩ + ‖Σ_r‖²` (cross term `tr(E G_x Eᵀ) + Σ_i tr(N_i G_x N_i G_xᵀ)`,
//! `G_x = Σ_j g(j) g_r(j)ᵀ`) cancels catastrophically for good reductions, so [`h2_error`] uses
//! the direct form: with the difference kernel `g_d = g − g_r` (a block with the modes of both,
//! `C̃_d = [C̃, −C̃_r]`),
//! `‖E g_d‖² = tr(E G_d Eᵀ)` and, since `h − h_r = g_dᵀ N g + g_rᵀ N g_d`,
//! `‖h − h_r‖² = tr(N G_d N G) + tr(N G_r N G_d) + 2 tr(N X N Y)`,
//! `X = Σ_j g_d(j) g_r(j)ᵀ`, `Y = Σ_j g_d(j) g(j)ᵀ`. Every term is then of the size of the error
//! and non-negative up to rounding. The entries of `G_d` are themselves sums of Cauchy terms that
//! cancel, so the squared error keeps an absolute rounding level of about `ε‖Σ‖²`: errors below
//! ~`1e-8 ‖Σ‖` are rounding noise in either form (kernel sums are the reference there).
//! [`h2_error_three_term`] gives the textbook form for comparison.
//!
//! Realisation, balancing and Hankel singular values are in [`crate::balance`]; mode
//! selection and per-mode scores in [`crate::modes`].

use crate::block::DiagBlock;
use crate::error::{Error, Result};
use faer::{Mat, c64};

/// Σ_{0≤j<T} z^j (`T = None`: the infinite sum `1/(1 − z)`, requires `|z| < 1`).
///
/// Near `z = 1` (time-limited only) the quotient is replaced by the direct sum.
fn geo(z: c64, horizon: Option<usize>) -> c64 {
    match horizon {
        None => c64::new(1.0, 0.0) / (c64::new(1.0, 0.0) - z),
        Some(t) => {
            let one = c64::new(1.0, 0.0);
            if (one - z).norm() < 1e-6 {
                let mut s = c64::new(0.0, 0.0);
                let mut zp = one;
                for _ in 0..t {
                    s += zp;
                    zp *= z;
                }
                s
            } else {
                (one - z.powu(t as u32)) / (one - z)
            }
        }
    }
}

fn re2(m: &Mat<c64>) -> Mat<f64> {
    Mat::from_fn(m.nrows(), m.ncols(), |i, j| 2.0 * m[(i, j)].re)
}

fn zero_c(p: usize, n: usize) -> Mat<c64> {
    Mat::zeros(p, n)
}

/// The two-sided kernel `g(j)` of a block, `[p, m]` real (see the module doc):
/// `g(0) = 2Re(C̃B̄) + 2Re(C̃_rev B̄)`, `g(j) = 2Re(C̃Λ^jB̄)`, `g(−j) = 2Re(C̃_rev Λ^jB̄)` (`j > 0`).
///
/// The brute-force reference for every closed form in this module (issue 4, Definitions).
pub fn kernel(block: &DiagBlock, j: i64) -> Mat<f64> {
    let n = block.n_modes();
    let (p, m) = (block.n_outputs(), block.n_inputs());
    let mut out = Mat::<f64>::zeros(p, m);
    let mut add = |c: &Mat<c64>, k: u32| {
        for i in 0..n {
            let lk = block.lambda[i].powu(k);
            for r in 0..p {
                let cl = c[(r, i)] * lk;
                for s in 0..m {
                    out[(r, s)] += 2.0 * (cl * block.b[(i, s)]).re;
                }
            }
        }
    };
    if j >= 0 {
        add(&block.c, j as u32);
    }
    if j <= 0
        && let Some(cr) = &block.c_rev
    {
        add(cr, (-j) as u32);
    }
    out
}

/// Sum over `0 ≤ j < T` of `F_a(j) F_b(j)ᵀ` for one scan direction (`ca`, `cb` the output
/// matrices of that direction): `2Re(C̃_a P_ab C̃_bᴴ) + 2Re(C̃_a P'_ab C̃_bᵀ)`.
fn one_sided_cross(
    a: &DiagBlock,
    ca: &Mat<c64>,
    b: &DiagBlock,
    cb: &Mat<c64>,
    horizon: Option<usize>,
) -> Mat<f64> {
    let (na, nb) = (a.n_modes(), b.n_modes());
    let bbh = &a.b * b.b.adjoint(); // [na, nb]
    let bbt = &a.b * b.b.transpose();
    let p1 = Mat::from_fn(na, nb, |i, k| {
        bbh[(i, k)] * geo(a.lambda[i] * b.lambda[k].conj(), horizon)
    });
    let p2 = Mat::from_fn(na, nb, |i, k| {
        bbt[(i, k)] * geo(a.lambda[i] * b.lambda[k], horizon)
    });
    let t1 = ca * &p1 * cb.adjoint();
    let t2 = ca * &p2 * cb.transpose();
    Mat::from_fn(ca.nrows(), cb.nrows(), |i, k| {
        2.0 * (t1[(i, k)].re + t2[(i, k)].re)
    })
}

/// Cross Gramian `G_ab = Σ_{|j|<T} g_a(j) g_b(j)ᵀ`, `[p, p]` real, in closed form (module doc):
/// forward–forward and reverse–reverse Cauchy-like sums plus the lag-0 cross terms
/// `F_a(0)R_b(0)ᵀ + R_a(0)F_b(0)ᵀ`. A missing `c_rev` counts as zero.
///
/// `horizon = None` is the infinite sum and requires `|λ| < 1` in both blocks (otherwise the
/// result is meaningless; check with [`check_stable`]). Panics if the blocks' `m` or `p` differ.
pub fn cross_gram(a: &DiagBlock, b: &DiagBlock, horizon: Option<usize>) -> Mat<f64> {
    assert_eq!(a.n_inputs(), b.n_inputs(), "cross_gram: m differs");
    assert_eq!(a.n_outputs(), b.n_outputs(), "cross_gram: p differs");
    let p = a.n_outputs();
    if horizon == Some(0) {
        return Mat::zeros(p, p);
    }
    let mut g = one_sided_cross(a, &a.c, b, &b.c, horizon);
    if let (Some(ra), Some(rb)) = (&a.c_rev, &b.c_rev) {
        g += one_sided_cross(a, ra, b, rb, horizon);
    }
    // Lag-0 cross terms between the forward and the reverse scan.
    let f0 = |x: &DiagBlock| re2(&(&x.c * &x.b));
    let r0 = |x: &DiagBlock| x.c_rev.as_ref().map(|cr| re2(&(cr * &x.b)));
    if let Some(rb0) = r0(b) {
        g += f0(a) * rb0.transpose();
    }
    if let Some(ra0) = r0(a) {
        g += ra0 * f0(b).transpose();
    }
    g
}

/// Gramian `G = Σ_{|j|<T} g(j) g(j)ᵀ`, `[p, p]` real symmetric positive semi-definite
/// (= [`cross_gram`]`(block, block, horizon)`).
pub fn gram(block: &DiagBlock, horizon: Option<usize>) -> Mat<f64> {
    let g = cross_gram(block, block, horizon);
    // Symmetrise away rounding.
    let p = g.nrows();
    Mat::from_fn(p, p, |i, k| 0.5 * (g[(i, k)] + g[(k, i)]))
}

pub(crate) fn trace_prod(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    // tr(A B) = Σ_ik A_ik B_ki
    let mut s = 0.0;
    for i in 0..a.nrows() {
        for k in 0..a.ncols() {
            s += a[(i, k)] * b[(k, i)];
        }
    }
    s
}

/// `tr(E G Eᵀ)` (identity `E` when `None`).
fn linear_part(linear: Option<&Mat<f64>>, g: &Mat<f64>) -> f64 {
    match linear {
        None => (0..g.nrows()).map(|i| g[(i, i)]).sum(),
        Some(e) => {
            let eg = e * g;
            let mut s = 0.0;
            for i in 0..e.nrows() {
                for k in 0..e.ncols() {
                    s += eg[(i, k)] * e[(i, k)];
                }
            }
            s
        }
    }
}

/// Squared LQO norm functional `tr(E G_a E_ᵀ)`-style inner product:
/// `tr(E G Eᵀ) + Σ_i tr(N_i G N_i Hᵀ)` for the pair `(G, H)`; `‖Σ‖² = lqo_inner(G, G)`.
fn lqo_inner(block: &DiagBlock, g_lin: &Mat<f64>, g: &Mat<f64>, h: &Mat<f64>) -> f64 {
    let mut s = linear_part(block.linear.as_ref(), g_lin);
    for n in &block.quadratic {
        s += trace_prod(&(n * g * n), &h.transpose().to_owned());
    }
    s
}

/// Squared h2 norm `‖Σ‖²_h2 = tr(E G Eᵀ) + Σ_i tr(N_i G N_i G)` (time-limited with `Some(T)`).
///
/// Infinite for an unstable block with `horizon = None`.
pub fn h2_norm_sq(block: &DiagBlock, horizon: Option<usize>) -> f64 {
    if horizon.is_none() && block.max_abs_lambda() >= 1.0 {
        return f64::INFINITY;
    }
    let g = gram(block, horizon);
    clamp_rounding(lqo_inner(block, &g, &g, &g))
}

/// A squared norm computed as a sum that rounding may leave slightly negative: clamped at 0, but
/// NaN (an overflow inside the sum) is kept so that callers see it instead of a norm of 0.
fn clamp_rounding(x: f64) -> f64 {
    if x.is_nan() { x } else { x.max(0.0) }
}

/// h2 norm of an LQO block, `sqrt(tr(E G Eᵀ) + Σ_i tr(N_i G N_i G))` (issue 4, Definitions);
/// time-limited (lags `|j| < T`) with `horizon = Some(T)`. `f64::INFINITY` for an unstable block
/// with `horizon = None`.
pub fn h2_norm(block: &DiagBlock, horizon: Option<usize>) -> f64 {
    h2_norm_sq(block, horizon).sqrt()
}

/// Errors unless every `|λ_i| < 1`; `what` names the block in the message.
pub fn check_stable(block: &DiagBlock, what: &str) -> Result<()> {
    for (i, l) in block.lambda.iter().enumerate() {
        if l.norm() >= 1.0 || l.norm().is_nan() {
            return Err(Error::Unstable(format!(
                "{what}: mode {i} has |lambda| = {} >= 1 (lambda = {} {:+}i), so the block is not stable; this needs every |lambda| < 1 (only the time-limited h2 norm and tlh2, given a horizon, accept an unstable block)",
                l.norm(),
                l.re,
                l.im
            )));
        }
    }
    Ok(())
}

/// Checks that two blocks can be compared: same `m`, `p`, `E` and `N_i`.
pub fn check_compatible(full: &DiagBlock, red: &DiagBlock) -> Result<()> {
    if full.n_inputs() != red.n_inputs() || full.n_outputs() != red.n_outputs() {
        return Err(Error::Shape(format!(
            "full block has m={}, p={} but reduced block has m={}, p={}",
            full.n_inputs(),
            full.n_outputs(),
            red.n_inputs(),
            red.n_outputs()
        )));
    }
    if full.linear != red.linear {
        return Err(Error::Shape(
            "full and reduced blocks have different linear read-outs E".into(),
        ));
    }
    if full.quadratic != red.quadratic {
        return Err(Error::Shape(
            "full and reduced blocks have different quadratic forms N_i".into(),
        ));
    }
    Ok(())
}

/// The block whose kernel is `g_a − g_b` (modes of both; `C̃ = [C̃_a, −C̃_b]`, `B̄ = [B̄_a; B̄_b]`).
/// `linear`/`quadratic`/`d` are taken from `a`.
pub fn difference_block(a: &DiagBlock, b: &DiagBlock) -> DiagBlock {
    let (na, nb) = (a.n_modes(), b.n_modes());
    let (p, m) = (a.n_outputs(), a.n_inputs());
    let mut lambda = a.lambda.clone();
    lambda.extend_from_slice(&b.lambda);
    let bm = Mat::from_fn(na + nb, m, |i, s| {
        if i < na {
            a.b[(i, s)]
        } else {
            b.b[(i - na, s)]
        }
    });
    let cat = |ca: &Mat<c64>, cb: &Mat<c64>| {
        Mat::from_fn(p, na + nb, |r, i| {
            if i < na { ca[(r, i)] } else { -cb[(r, i - na)] }
        })
    };
    let c = cat(&a.c, &b.c);
    let c_rev = if a.c_rev.is_some() || b.c_rev.is_some() {
        let za = zero_c(p, na);
        let zb = zero_c(p, nb);
        Some(cat(
            a.c_rev.as_ref().unwrap_or(&za),
            b.c_rev.as_ref().unwrap_or(&zb),
        ))
    } else {
        None
    };
    DiagBlock {
        lambda,
        b: bm,
        c,
        c_rev,
        d: a.d.clone(),
        linear: a.linear.clone(),
        quadratic: a.quadratic.clone(),
    }
}

/// The error system `a − b` as [`difference_block`], with every mode of `b` that is a mode of
/// `a` (bitwise equal `λ` and row of `B̄`) merged into it: the merged mode reads out through
/// `C̃_a − C̃_b` (and `C̃_rev,a − C̃_rev,b`), and modes whose read-outs are then exactly zero are
/// dropped. The kernel is the same as [`difference_block`]'s up to rounding, but the
/// cancellations of modal truncation (identical modes with identical read-outs) are exact, so
/// the result has `n_a − r` modes instead of `n_a + r`. Certified gains and Gramians of the error
/// system are tighter and cheaper on this form (`BOUND.md`, "Error systems").
pub fn difference_block_merged(a: &DiagBlock, b: &DiagBlock) -> DiagBlock {
    let (na, nb) = (a.n_modes(), b.n_modes());
    let (p, m) = (a.n_outputs(), a.n_inputs());
    let same_mode = |i: usize, k: usize| {
        a.lambda[i] == b.lambda[k] && (0..m).all(|s| a.b[(i, s)] == b.b[(k, s)])
    };
    // partner[k] = the mode of `a` that mode `k` of `b` merges into.
    let mut taken = vec![false; na];
    let partner: Vec<Option<usize>> = (0..nb)
        .map(|k| {
            let i = (0..na).find(|&i| !taken[i] && same_mode(i, k))?;
            taken[i] = true;
            Some(i)
        })
        .collect();
    let za = zero_c(p, na);
    let zb = zero_c(p, nb);
    let bidir = a.c_rev.is_some() || b.c_rev.is_some();
    let (ra, rb) = (
        a.c_rev.as_ref().unwrap_or(&za),
        b.c_rev.as_ref().unwrap_or(&zb),
    );
    let mut c_a = a.c.clone();
    let mut r_a = ra.clone();
    for (k, pk) in partner.iter().enumerate() {
        if let Some(i) = *pk {
            for r in 0..p {
                c_a[(r, i)] -= b.c[(r, k)];
                r_a[(r, i)] -= rb[(r, k)];
            }
        }
    }
    // Columns of the result: (source, index, sign) for every mode with a non-zero read-out.
    let zero_col = |c: &Mat<c64>, r: &Mat<c64>, i: usize| {
        (0..p).all(|o| c[(o, i)] == c64::new(0.0, 0.0) && r[(o, i)] == c64::new(0.0, 0.0))
    };
    let keep_a: Vec<usize> = (0..na).filter(|&i| !zero_col(&c_a, &r_a, i)).collect();
    let keep_b: Vec<usize> = (0..nb).filter(|&k| partner[k].is_none()).collect();
    let n = keep_a.len() + keep_b.len();
    let lambda: Vec<c64> = keep_a
        .iter()
        .map(|&i| a.lambda[i])
        .chain(keep_b.iter().map(|&k| b.lambda[k]))
        .collect();
    let na2 = keep_a.len();
    let bm = Mat::from_fn(n, m, |j, s| {
        if j < na2 {
            a.b[(keep_a[j], s)]
        } else {
            b.b[(keep_b[j - na2], s)]
        }
    });
    let cat = |ca: &Mat<c64>, cb: &Mat<c64>| {
        Mat::from_fn(p, n, |r, j| {
            if j < na2 {
                ca[(r, keep_a[j])]
            } else {
                -cb[(r, keep_b[j - na2])]
            }
        })
    };
    DiagBlock {
        lambda,
        b: bm,
        c: cat(&c_a, &b.c),
        c_rev: bidir.then(|| cat(&r_a, rb)),
        d: a.d.clone(),
        linear: a.linear.clone(),
        quadratic: a.quadratic.clone(),
    }
}

/// h2 error `‖Σ − Σ_r‖_h2` between a block and its reduction (same `m`, `p`, `E`, `N_i`), in the
/// direct (cancellation-free) form of the module doc; time-limited with `Some(T)`.
///
/// # Errors
/// [`Error::Shape`] if the blocks are not comparable, [`Error::Unstable`] if `horizon = None` and a
/// block has `|λ| ≥ 1`.
pub fn h2_error(full: &DiagBlock, red: &DiagBlock, horizon: Option<usize>) -> Result<f64> {
    Ok(h2_error_sq(full, red, horizon)?.sqrt())
}

/// Squared [`h2_error`].
pub fn h2_error_sq(full: &DiagBlock, red: &DiagBlock, horizon: Option<usize>) -> Result<f64> {
    check_compatible(full, red)?;
    if horizon.is_none() {
        check_stable(full, "full block")?;
        check_stable(red, "reduced block")?;
    }
    let d = difference_block(full, red);
    let gd = gram(&d, horizon);
    let mut e2 = linear_part(full.linear.as_ref(), &gd);
    if !full.quadratic.is_empty() {
        let g = gram(full, horizon);
        let gr = gram(red, horizon);
        let x = cross_gram(&d, red, horizon);
        let y = cross_gram(&d, full, horizon);
        for n in &full.quadratic {
            let ngd = n * &gd;
            e2 += trace_prod(&(&ngd * n), &g);
            e2 += trace_prod(&(n * &gr * n), &gd);
            e2 += 2.0 * trace_prod(&(n * &x * n), &y);
        }
    }
    Ok(clamp_rounding(e2))
}

/// The textbook three-term h2 error `sqrt(‖Σ‖² − 2⟨Σ, Σ_r⟩ + ‖Σ_r‖²)` with
/// `⟨Σ, Σ_r⟩ = tr(E G_x Eᵀ) + Σ_i tr(N_i G_x N_i G_xᵀ)`, `G_x = Σ_j g(j) g_r(j)ᵀ`.
/// Loses relative accuracy when the error is small against the norms; prefer [`h2_error`].
pub fn h2_error_three_term(
    full: &DiagBlock,
    red: &DiagBlock,
    horizon: Option<usize>,
) -> Result<f64> {
    check_compatible(full, red)?;
    if horizon.is_none() {
        check_stable(full, "full block")?;
        check_stable(red, "reduced block")?;
    }
    let g = gram(full, horizon);
    let gr = gram(red, horizon);
    let gx = cross_gram(full, red, horizon);
    let e2 = lqo_inner(full, &g, &g, &g) - 2.0 * lqo_inner(full, &gx, &gx, &gx)
        + lqo_inner(full, &gr, &gr, &gr);
    Ok(e2.max(0.0).sqrt())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::modes::select_modes;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A random block with `|λ| ≤ rmax`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn random_block(
        seed: u64,
        n: usize,
        m: usize,
        p: usize,
        bidir: bool,
        n_quad: usize,
        linear_q: Option<usize>,
        rmax: f64,
    ) -> DiagBlock {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let cz =
            |rng: &mut ChaCha8Rng| c64::new(rng.random::<f64>() - 0.5, rng.random::<f64>() - 0.5);
        let lambda = (0..n)
            .map(|_| {
                let r = rmax * rng.random::<f64>().sqrt();
                let th = std::f64::consts::PI * rng.random::<f64>();
                c64::from_polar(r, th)
            })
            .collect();
        let b = Mat::from_fn(n, m, |_, _| cz(&mut rng));
        let c = Mat::from_fn(p, n, |_, _| cz(&mut rng));
        let c_rev = bidir.then(|| Mat::from_fn(p, n, |_, _| cz(&mut rng)));
        let quadratic = (0..n_quad)
            .map(|_| {
                let a = Mat::from_fn(p, p, |_, _| rng.random::<f64>() - 0.5);
                Mat::from_fn(p, p, |i, j| a[(i, j)] + a[(j, i)])
            })
            .collect();
        let linear = linear_q.map(|q| Mat::from_fn(q, p, |_, _| rng.random::<f64>() - 0.5));
        DiagBlock {
            lambda,
            b,
            c,
            c_rev,
            d: None,
            linear,
            quadratic,
        }
    }

    /// Truncation lag where `max|λ|^j < 1e-18` (or `T`).
    fn lags(blocks: &[&DiagBlock], horizon: Option<usize>) -> i64 {
        let rho = blocks
            .iter()
            .map(|b| b.max_abs_lambda())
            .fold(0.0, f64::max);
        let l = if rho == 0.0 {
            1
        } else {
            ((1e-18f64).ln() / rho.ln()).ceil() as i64 + 1
        };
        horizon.map_or(l, |t| t as i64)
    }

    fn brute_cross(a: &DiagBlock, b: &DiagBlock, horizon: Option<usize>) -> Mat<f64> {
        let l = lags(&[a, b], horizon);
        let p = a.n_outputs();
        let mut g = Mat::<f64>::zeros(p, p);
        for j in -(l - 1)..l {
            g += kernel(a, j) * kernel(b, j).transpose();
        }
        g
    }

    fn brute_h2_err_sq(a: &DiagBlock, b: &DiagBlock, horizon: Option<usize>) -> f64 {
        let l = lags(&[a, b], horizon);
        let ks: Vec<Mat<f64>> = (-(l - 1)..l).map(|j| kernel(a, j) - kernel(b, j)).collect();
        let ka: Vec<Mat<f64>> = (-(l - 1)..l).map(|j| kernel(a, j)).collect();
        let kb: Vec<Mat<f64>> = (-(l - 1)..l).map(|j| kernel(b, j)).collect();
        let p = a.n_outputs();
        let e = a.linear.clone().unwrap_or_else(|| Mat::identity(p, p));
        let mut s = 0.0;
        for k in &ks {
            s += (&e * k).squared_norm_l2();
        }
        for n in &a.quadratic {
            for j in 0..ka.len() {
                for l2 in 0..ka.len() {
                    let h = ka[j].transpose() * n * &ka[l2] - kb[j].transpose() * n * &kb[l2];
                    s += h.squared_norm_l2();
                }
            }
        }
        s
    }

    pub(crate) fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs().max(1e-300)
    }

    pub(crate) fn max_rel_mat(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
        let scale = b.norm_l2().max(1e-300);
        (a - b).norm_l2() / scale
    }

    #[test]
    fn gram_matches_brute_force() {
        for (seed, bidir) in [(1, false), (2, true)] {
            let blk = random_block(seed, 5, 2, 3, bidir, 0, None, 0.8);
            for h in [None, Some(1), Some(7)] {
                let g = gram(&blk, h);
                let gb = brute_cross(&blk, &blk, h);
                assert!(max_rel_mat(&g, &gb) < 1e-12, "bidir={bidir} h={h:?}");
            }
        }
    }

    #[test]
    fn cross_gram_matches_brute_force_mixed_directions() {
        let a = random_block(3, 4, 2, 3, true, 0, None, 0.7);
        let b = random_block(4, 3, 2, 3, false, 0, None, 0.85);
        for h in [None, Some(5)] {
            assert!(max_rel_mat(&cross_gram(&a, &b, h), &brute_cross(&a, &b, h)) < 1e-12);
            assert!(max_rel_mat(&cross_gram(&b, &a, h), &brute_cross(&b, &a, h)) < 1e-12);
        }
    }

    #[test]
    fn h2_norm_and_error_match_brute_force_lqo() {
        let a = random_block(5, 4, 2, 3, true, 2, Some(2), 0.6);
        let mut b = random_block(6, 2, 2, 3, true, 0, None, 0.5);
        b.linear = a.linear.clone();
        b.quadratic = a.quadratic.clone();
        for h in [None, Some(6)] {
            let n2 = h2_norm_sq(&a, h);
            let mut z = select_modes(&a, &[]);
            z.lambda.clear();
            let bn = brute_h2_err_sq(&a, &z, h);
            assert!(rel(n2, bn) < 1e-11, "norm {n2} vs {bn}");
            let e = h2_error(&a, &b, h).unwrap();
            let eb = brute_h2_err_sq(&a, &b, h).sqrt();
            assert!(rel(e, eb) < 1e-11, "err {e} vs {eb}");
            let e3 = h2_error_three_term(&a, &b, h).unwrap();
            assert!(rel(e3, eb) < 1e-9);
        }
    }

    #[test]
    fn h2_error_direct_form_accurate_for_tiny_perturbation() {
        let a = random_block(7, 6, 2, 3, true, 1, None, 0.7);
        let mut b = a.clone();
        for i in 0..b.n_modes() {
            b.c[(0, i)] *= c64::new(1.0 + 1e-7, 0.0);
        }
        let e = h2_error(&a, &b, None).unwrap();
        let eb = brute_h2_err_sq(&a, &b, None).sqrt();
        assert!(rel(e, eb) < 1e-6, "direct {e} vs brute {eb}");
    }
}
