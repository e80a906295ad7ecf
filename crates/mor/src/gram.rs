//! Gramians, h2 norms and errors, Hankel singular values (HSV) and per-mode dominance scores of
//! diagonal (conjugate-symmetric) blocks, in closed form.
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
//! # Hankel singular values
//!
//! HSV are those of the causal real system `u → s` with state `w = [Re x; Im x] ∈ R^{2n}`:
//! `A_w = [[Re Λ, −Im Λ], [Im Λ, Re Λ]]`, `B_w = [Re B̄; Im B̄]`, `C_w = [2Re C̃, −2Im C̃]`
//! (so `C_w A_w^j B_w = 2Re(C̃ Λ^j B̄)`). Its Gramians follow from the complex doubled state
//! `z = [x; x̄]` (closed forms `P`, `P'` above, `Q_ik = (C̃ᴴC̃)_ik/(1 − λ̄_i λ_k)`,
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
use faer::{Mat, Side, c64};

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

fn trace_prod(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
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

/// The single-mode sub-block `i` of `block` (same `E`, `N_i`, `d`).
pub fn mode_block(block: &DiagBlock, i: usize) -> DiagBlock {
    select_modes(block, &[i])
}

/// The sub-block keeping the listed stored modes (in the given order); `E`, `N_i`, `d` unchanged.
pub fn select_modes(block: &DiagBlock, keep: &[usize]) -> DiagBlock {
    let (p, m) = (block.n_outputs(), block.n_inputs());
    let r = keep.len();
    DiagBlock {
        lambda: keep.iter().map(|&i| block.lambda[i]).collect(),
        b: Mat::from_fn(r, m, |k, s| block.b[(keep[k], s)]),
        c: Mat::from_fn(p, r, |o, k| block.c[(o, keep[k])]),
        c_rev: block
            .c_rev
            .as_ref()
            .map(|cr| Mat::from_fn(p, r, |o, k| cr[(o, keep[k])])),
        d: block.d.clone(),
        linear: block.linear.clone(),
        quadratic: block.quadratic.clone(),
    }
}

/// Per-mode h2 contribution (used by `modal`): score_i = ‖Σ_i‖²_h2, the squared h2 norm
/// (infinite horizon, with the block's `E` and `N_i`) of the sub-block made of stored mode `i`
/// alone (the conjugate pair `λ_i, λ̄_i`, forward and reverse parts).
///
/// Computed in a rank-4 factored form: the single-mode kernel has columns in the span of
/// `K = [Re c_i, Im c_i, Re c_rev,i, Im c_rev,i]` (`[p, 4]`), so `G_i = K M Kᵀ` with `M` the
/// Gramian of the virtual block with outputs `[1, i, 0, 0]ᵀ` (forward) and `[0, 0, 1, i]ᵀ`
/// (reverse); then `tr(E G_i Eᵀ) = tr(M KᵀEᵀEK)` and `tr(N G_i N G_i) = tr((KᵀNK)M(KᵀNK)M)`:
/// `O(p²)` per mode. Unstable modes (`|λ_i| ≥ 1`) score `+∞`.
pub fn mode_h2_scores(block: &DiagBlock) -> Vec<f64> {
    let p = block.n_outputs();
    let n = block.n_modes();
    let one = c64::new(1.0, 0.0);
    let im = c64::new(0.0, 1.0);
    let zero = c64::new(0.0, 0.0);
    let e = block.linear.clone().unwrap_or_else(|| Mat::identity(p, p));
    (0..n)
        .map(|i| {
            if block.lambda[i].norm() >= 1.0 {
                return f64::INFINITY;
            }
            let k = Mat::from_fn(p, 4, |o, j| {
                let cr = block.c_rev.as_ref().map_or(zero, |c| c[(o, i)]);
                match j {
                    0 => block.c[(o, i)].re,
                    1 => block.c[(o, i)].im,
                    2 => cr.re,
                    _ => cr.im,
                }
            });
            let virt = DiagBlock {
                lambda: vec![block.lambda[i]],
                b: Mat::from_fn(1, block.n_inputs(), |_, s| block.b[(i, s)]),
                c: Mat::from_fn(4, 1, |j, _| [one, im, zero, zero][j]),
                c_rev: Some(Mat::from_fn(4, 1, |j, _| [zero, zero, one, im][j])),
                d: None,
                linear: None,
                quadratic: vec![],
            };
            let mm = gram(&virt, None);
            let ek = &e * &k;
            let mut s = trace_prod(&mm, &(ek.transpose() * &ek));
            for nq in &block.quadratic {
                let knk = k.transpose() * nq * &k;
                let t = &knk * &mm;
                s += trace_prod(&t, &t);
            }
            s.max(0.0)
        })
        .collect()
}

/// Per-mode H∞ dominance scores of LAST (Gwak et al., NeurIPS 2024, Eq. for the H∞ score):
/// `‖c_i‖² ‖b̄_i‖² / (1 − |λ_i|)²` for a causal block (`c_i` = column `i` of `C̃`, `b̄_i` = row `i`
/// of `B̄`, Euclidean norms of the complex vectors) — the square of the H∞ norm bound
/// `‖c_i b̄_iᵀ‖ / (1 − |λ_i|)` of the mode's transfer function `c_i b̄_iᵀ z/(z − λ_i)`.
///
/// Bidirectional blocks: the stored mode's two-sided contribution has frequency response
/// `c_i b̄_iᵀ/(1 − λ_i e^{−iω}) + c_rev,i b̄_iᵀ/(1 − λ_i e^{iω})` (forward lags `j ≥ 0` weighted by
/// `e^{−iωj}`, reverse lags by `e^{iωj}`), whose spectral norm is at most
/// `(‖c_i‖ + ‖c_rev,i‖) ‖b̄_i‖ / (1 − |λ_i|)` for every ω; the score is the square of this H∞
/// bound, `(‖c_i‖ + ‖c_rev,i‖)² ‖b̄_i‖² / (1 − |λ_i|)²` (it reduces to LAST's score when
/// `c_rev = 0`). The public LAST code combines the forward and backward output norms of a
/// bidirectional model as a sum of unsquared norms that, through operator precedence, ends up
/// divided by 4 (as noted in issue 4); we do not reproduce that quirk. Unstable modes score `+∞`.
/// Equal to [`mode_hinf_scores_horizon`] with no horizon.
pub fn mode_hinf_scores(block: &DiagBlock) -> Vec<f64> {
    mode_hinf_scores_horizon(block, None)
}

/// Per-mode H∞ scores over a finite horizon `T` (time-limited variant of [`mode_hinf_scores`]):
/// `(‖c_i‖ + ‖c_rev,i‖)² ‖b̄_i‖² (Σ_{k<T} |λ_i|^k)²`, with
/// `Σ_{k<T} |λ_i|^k = (1 − |λ_i|^T)/(1 − |λ_i|)` (`= T` when `|λ_i| = 1`).
///
/// Why: on inputs of at most `T` steps, only the kernel lags `0 ≤ k < T` act, and the ℓ2 → ℓ2
/// gain of a (block-)Toeplitz operator is at most the ℓ1 norm of its kernel (Young's
/// inequality); the mode's kernel is `c_i b̄_iᵀ λ_i^k` forward and `c_rev,i b̄_iᵀ λ_i^k` reverse,
/// so the square root of this score bounds the mode's gain on sequences of length ≤ `T`. As
/// `T → ∞` it tends to the infinite-horizon score, which over-rates a mode whose time constant
/// `τ = −1/ln|λ_i|` exceeds `T` by up to the factor `1/(1 − e^{−T/τ})` (squared in the score).
/// `horizon = None` is the infinite-horizon score (unstable modes `+∞`); with a horizon every
/// mode has a finite score.
///
/// # Panics
/// If `horizon == Some(0)` (a horizon is a number of steps ≥ 1).
pub fn mode_hinf_scores_horizon(block: &DiagBlock, horizon: Option<usize>) -> Vec<f64> {
    assert!(horizon != Some(0), "the H∞ score horizon must be ≥ 1 step");
    let (p, m) = (block.n_outputs(), block.n_inputs());
    (0..block.n_modes())
        .map(|i| {
            let a = block.lambda[i].norm();
            // Σ_{k<T} a^k, or Σ_{k≥0} a^k = 1/(1 − a) without a horizon.
            let lag_sum = match horizon {
                None if a >= 1.0 => return f64::INFINITY,
                None => 1.0 / (1.0 - a),
                Some(t) if (1.0 - a).abs() < 1e-12 => t as f64,
                // −expm1(T ln a)/(1 − a) = (1 − a^T)/(1 − a) without cancellation for a ≈ 1.
                Some(t) => -f64::exp_m1(t as f64 * a.ln()) / (1.0 - a),
            };
            let cn = (0..p)
                .map(|o| block.c[(o, i)].norm_sqr())
                .sum::<f64>()
                .sqrt();
            let crn = block.c_rev.as_ref().map_or(0.0, |cr| {
                (0..p).map(|o| cr[(o, i)].norm_sqr()).sum::<f64>().sqrt()
            });
            let bn2: f64 = (0..m).map(|s| block.b[(i, s)].norm_sqr()).sum();
            (cn + crn).powi(2) * bn2 * lag_sum.powi(2)
        })
        .collect()
}

/// Per-mode impulse-response energy, the score of AIRE-Prune (Padhy et al., ICLR 2026):
/// `(‖c_i‖² + ‖c_rev,i‖²) ‖b̄_i‖² / (1 − |λ̄_i|²)`, the energy `Σ_{k≥0} ‖c_i b̄_iᵀ λ̄_i^k‖_F²` of
/// the mode's forward kernel plus that of its reverse kernel (`c_rev,i = 0` for a causal block).
/// Unstable modes score `+∞`.
pub fn mode_energy_scores(block: &DiagBlock) -> Vec<f64> {
    let (cn, crn, bn) = mode_norms(block);
    (0..block.n_modes())
        .map(|i| {
            let a2 = block.lambda[i].norm_sqr();
            if a2 >= 1.0 {
                return f64::INFINITY;
            }
            (cn[i].powi(2) + crn[i].powi(2)) * bn[i].powi(2) / (1.0 - a2)
        })
        .collect()
}

/// The per-mode scores exactly as the public code of LAST (`msgwak/LAST`, `s5/ssm.py`) and of
/// AIRE-Prune (`falcon-arrow/AIRE-Prune`, `s5/ssm.py`) compute them for a bidirectional layer:
/// `(‖c_i‖ + ‖c_rev,i‖)/2**2 · ‖b̄_i‖² / (den_i + 1e-8)`, where Python's precedence makes
/// `/2**2` a division by 4 with the column norms **not squared**, and `den_i = (1 − |λ̄_i|)²`
/// (LAST, `energy = false`) or `1 − |λ̄_i|²` (AIRE, `energy = true`). For a causal block the
/// codes use `‖c_i‖² ‖b̄_i‖² / (den_i + 1e-8)`. No score is infinite (the `1e-8`).
pub fn mode_reference_scores(block: &DiagBlock, energy: bool) -> Vec<f64> {
    let (cn, crn, bn) = mode_norms(block);
    (0..block.n_modes())
        .map(|i| {
            let a = block.lambda[i].norm();
            let den = if energy {
                1.0 - a * a
            } else {
                (1.0 - a).powi(2)
            } + 1e-8;
            let c = if block.is_bidirectional() {
                (cn[i] + crn[i]) / 4.0
            } else {
                cn[i].powi(2)
            };
            c * bn[i].powi(2) / den
        })
        .collect()
}

/// Column norms `‖c_i‖`, `‖c_rev,i‖` (0 for a causal block) and row norms `‖b̄_i‖` of a block.
fn mode_norms(block: &DiagBlock) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (p, m, n) = (block.n_outputs(), block.n_inputs(), block.n_modes());
    let col = |c: &Mat<c64>, i: usize| (0..p).map(|o| c[(o, i)].norm_sqr()).sum::<f64>().sqrt();
    (
        (0..n).map(|i| col(&block.c, i)).collect(),
        (0..n)
            .map(|i| block.c_rev.as_ref().map_or(0.0, |cr| col(cr, i)))
            .collect(),
        (0..n)
            .map(|i| {
                (0..m)
                    .map(|s| block.b[(i, s)].norm_sqr())
                    .sum::<f64>()
                    .sqrt()
            })
            .collect(),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
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

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs().max(1e-300)
    }

    fn max_rel_mat(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
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

    #[test]
    fn mode_scores() {
        let blk = random_block(10, 5, 2, 3, true, 2, Some(2), 0.8);
        let s = mode_h2_scores(&blk);
        for (i, si) in s.iter().enumerate() {
            let want = h2_norm_sq(&mode_block(&blk, i), None);
            assert!(rel(*si, want) < 1e-11, "{i}: {si} vs {want}");
        }
        // H∞ score bounds the mode's frequency response (causal part + reverse part).
        let h = mode_hinf_scores(&blk);
        for (i, hi) in h.iter().enumerate() {
            let mb = mode_block(&blk, i);
            let mut peak: f64 = 0.0;
            for w in 0..200 {
                let om = std::f64::consts::PI * w as f64 / 199.0;
                let z = c64::from_polar(1.0, om);
                // Complex (unpaired) mode response: c z/(z−λ) b + c_rev λ... use forward+reverse.
                let l = mb.lambda[0];
                let hf = z / (z - l);
                let hr = c64::new(1.0, 0.0) / (c64::new(1.0, 0.0) - l * z);
                let mat = Mat::from_fn(3, 2, |o, s| {
                    (mb.c[(o, 0)] * hf + mb.c_rev.as_ref().unwrap()[(o, 0)] * hr) * mb.b[(0, s)]
                });
                peak = peak.max(mat.singular_values().unwrap()[0]);
            }
            assert!(peak * peak <= hi * (1.0 + 1e-12));
        }
    }

    #[test]
    fn mode_hinf_scores_with_a_horizon() {
        // Slow and fast modes, some with |λ| close to 1, bidirectional.
        let blk = random_block(11, 6, 2, 3, true, 0, None, 0.999);
        let inf = mode_hinf_scores(&blk);
        // A horizon far beyond every time constant gives LAST's infinite-horizon score.
        let long = mode_hinf_scores_horizon(&blk, Some(1_000_000_000));
        for (a, b) in inf.iter().zip(&long) {
            assert!(rel(*a, *b) < 1e-9, "{a} vs {b}");
        }
        let t = 7;
        let short = mode_hinf_scores_horizon(&blk, Some(t));
        let one = mode_hinf_scores_horizon(&blk, Some(1));
        let (p, m) = (blk.n_outputs(), blk.n_inputs());
        for i in 0..blk.n_modes() {
            let mb = mode_block(&blk, i);
            let l = mb.lambda[0];
            let a = l.norm();
            // The lag sum against a plain loop: score(T) / score(1) = (Σ_{k<T} a^k)².
            let lag_sum: f64 = (0..t).map(|k| a.powi(k as i32)).sum();
            assert!(rel(short[i] / one[i], lag_sum * lag_sum) < 1e-12);
            assert!(short[i] <= inf[i] * (1.0 + 1e-12));
            // The score bounds the gain of the mode's two-sided Toeplitz operator on T steps:
            // y_t = Σ_{s ≤ t} c λ^{t−s} b̄ᵀ u_s + Σ_{s ≥ t} c_rev λ^{s−t} b̄ᵀ u_s.
            let cr = mb.c_rev.as_ref().unwrap();
            let op = Mat::from_fn(p * t, m * t, |row, col| {
                let (tt, o) = (row / p, row % p);
                let (ss, q) = (col / m, col % m);
                let mut v = c64::new(0.0, 0.0);
                if ss <= tt {
                    v += mb.c[(o, 0)] * l.powi((tt - ss) as i32) * mb.b[(0, q)];
                }
                if ss >= tt {
                    v += cr[(o, 0)] * l.powi((ss - tt) as i32) * mb.b[(0, q)];
                }
                v
            });
            let gain = op.singular_values().unwrap()[0];
            assert!(
                gain * gain <= short[i] * (1.0 + 1e-12),
                "{i}: {gain}² vs {}",
                short[i]
            );
        }
        // An unstable mode: infinite without a horizon, finite with one.
        let mut unstable = blk.clone();
        unstable.lambda[0] = c64::new(1.01, 0.0);
        assert!(mode_hinf_scores(&unstable)[0].is_infinite());
        assert!(mode_hinf_scores_horizon(&unstable, Some(t))[0].is_finite());
    }

    #[test]
    fn energy_and_reference_scores_match_their_definitions() {
        for bidir in [false, true] {
            let b = random_block(11, 5, 3, 4, bidir, 0, None, 0.95);
            let energy = mode_energy_scores(&b);
            let last_ref = mode_reference_scores(&b, false);
            let aire_ref = mode_reference_scores(&b, true);
            for i in 0..5 {
                // Brute-force kernel energy Σ_k ‖c b̄ᵀ λ^k‖_F² over both directions.
                let lam = b.lambda[i];
                let mut e = 0.0;
                let mut pow = c64::new(1.0, 0.0);
                for _ in 0..5000 {
                    for c in std::iter::once(&b.c).chain(b.c_rev.as_ref()) {
                        for o in 0..4 {
                            for j in 0..3 {
                                e += (c[(o, i)] * b.b[(i, j)] * pow).norm_sqr();
                            }
                        }
                    }
                    pow *= lam;
                }
                assert!(
                    (e - energy[i]).abs() <= 1e-9 * e,
                    "mode {i}: {e} vs {}",
                    energy[i]
                );
                // The reference codes' arithmetic, spelled out.
                let cn = (0..4).map(|o| b.c[(o, i)].norm_sqr()).sum::<f64>().sqrt();
                let crn = b.c_rev.as_ref().map_or(0.0, |cr| {
                    (0..4).map(|o| cr[(o, i)].norm_sqr()).sum::<f64>().sqrt()
                });
                let bn2: f64 = (0..3).map(|j| b.b[(i, j)].norm_sqr()).sum();
                let c = if bidir { (cn + crn) / 4.0 } else { cn * cn };
                let a = lam.norm();
                let want_last = c * bn2 / ((1.0 - a).powi(2) + 1e-8);
                let want_aire = c * bn2 / ((1.0 - a * a) + 1e-8);
                assert!((last_ref[i] - want_last).abs() <= 1e-12 * want_last);
                assert!((aire_ref[i] - want_aire).abs() <= 1e-12 * want_aire);
            }
        }
        let mut unstable = random_block(2, 3, 2, 2, true, 0, None, 0.9);
        unstable.lambda[1] = c64::new(1.0, 0.0);
        assert!(mode_energy_scores(&unstable)[1].is_infinite());
        assert!(mode_reference_scores(&unstable, true)[1].is_finite());
    }
}
