//! Gradient-based h2-optimal model order reduction of diagonal (LQO) blocks: `h2` (stable
//! parameterisation, infinite horizon) and `tlh2` (time-limited, unconstrained λ).
//!
//! # Objective
//!
//! For a full block Σ (modes λ, `B̄`, `C̃`, `C̃_rev`, read-out `E`, quadratic forms `N_i`) and a
//! reduced block Σ_r (modes μ, `B̄_r` `[r, m]`, `C̃_r` `[p, r]`, `C̃_rev,r` `[p, r]`, same `E`,
//! `N_i`), the squared h2 error (issue 4, Definitions) is
//!
//! ```text
//! J = ‖Σ − Σ_r‖²_h2 = ⟨M, G⟩ + ⟨𝒩(G), G⟩ − 2⟨M, G_x⟩ − 2⟨𝒩(G_x), G_x⟩ + ⟨M, G_r⟩ + ⟨𝒩(G_r), G_r⟩
//! ```
//!
//! with `M = EᵀE`, `𝒩(X) = Σ_i N_i X N_i`, `⟨A, B⟩ = tr(AᵀB)`, and the (cross) Gramians
//! `G = Σ_j g g ᵀ`, `G_x = Σ_j g g_rᵀ`, `G_r = Σ_j g_r g_rᵀ` (`|j| < T` when time-limited).
//! The quadratic part uses `Σ_{j,l} ‖g(j)ᵀNg(l) − g_r(j)ᵀNg_r(l)‖²_F` expanded with
//! `Σ_{j,l} tr(g(l)ᵀ N g(j) g_r(j)ᵀ N g_r(l)) = tr(N G_x N G_xᵀ)`.
//!
//! # Closed forms (Cauchy-like Gramians)
//!
//! Each Gramian is a sum of one-direction terms `S(a, b) = Σ_{0≤j<T} F_a(j) F_b(j)ᵀ` with
//! `F(j) = 2Re(C̃ Λ^j B̄)` (forward–forward, reverse–reverse with `T`, and the two lag-0 cross
//! terms forward–reverse with `T = 1`; see `gram.rs` for the bidirectional split). Writing
//! `2Re(z) = z + z̄`,
//!
//! ```text
//! S(a, b) = 2Re(C̃_a Q C̃_bᵀ) + 2Re(C̃̄_a Q̄' C̃_bᵀ),
//! Q_ik  = (B̄_a B̄_bᵀ)_ik φ_T(λ_a,i μ_b,k),   Q̄'_ik = (B̄̄_a B̄_bᵀ)_ik φ_T(λ̄_a,i μ_b,k),
//! φ_T(x) = Σ_{0≤j<T} x^j = (1 − x^T)/(1 − x)   (φ_∞(x) = 1/(1 − x)),
//! ```
//!
//! both pieces holomorphic in the right-hand (reduced) parameters `(μ, B̄_b, C̃_b)`.
//!
//! # Gradients (Wirtinger calculus)
//!
//! For a weight `W` (`p × p` real), `tr(W S) = Σ_pieces 2Re(h)`, `h = Σ_ik R_ik Y_ik φ(ν_i μ_k)`
//! with `R = Xᵀ Wᵀ C̃_b`, `Y = Y_a B̄_bᵀ` (`X, Y_a, ν` = `C̃_a, B̄_a, λ_a` or their conjugates).
//! `h` is holomorphic, so the real gradient (`∂/∂Re + i ∂/∂Im`) of `2Re(h)` w.r.t. a complex
//! parameter `z` is `2 conj(∂h/∂z)`, with
//!
//! ```text
//! ∂h/∂μ_k = Σ_i R_ik Y_ik ν_i φ'(ν_i μ_k),  ∂h/∂B̄_b = (R ⊙ Φ)ᵀ Y_a,  ∂h/∂C̃_b = W X (Y ⊙ Φ).
//! ```
//!
//! `J` depends on the reduced parameters through `G_x` (once) and `G_r` (twice, symmetrically),
//! so `dJ = tr(W_x dG_x) + tr(W_r dG_r)` with `W_x = −2M − 4𝒩(G_x)ᵀ`, `W_r = M + 2𝒩(G_r)`, and
//! the `G_r` gradient is twice the gradient w.r.t. its right-hand copy (`W_r` is symmetric).
//! Finally `μ = exp(−exp(a) + i b)` (stable, `h2`) gives `∂J/∂a = Re(ḡ_μ · (−e^a μ))`,
//! `∂J/∂b = Re(ḡ_μ · iμ)`; `tlh2` uses `(Re μ, Im μ)` directly.
//!
//! # Optimiser
//!
//! L-BFGS ([`crate::lbfgs`]) on the objective normalised by `‖Σ‖²_h2`. Stopping rule: stop after
//! `max_iter` iterations, when the largest gradient entry is below `gtol`, when the relative
//! decrease of the objective stays below `ftol` for 3 consecutive iterations, or when the line
//! search fails. The best point seen is returned, and the whole method returns its
//! initialisation if the optimisation did not improve on it.

use crate::block::DiagBlock;
use crate::error::{Error, Result};
use crate::gram;
use crate::modes;
use crate::reduction::BlockReduction;
use faer::{Mat, MatRef, c64};

/// Options of the gradient-based methods (`h2`, `tlh2`, and the per-layer step of `lqo-h2`).
#[derive(Clone, Debug)]
pub struct H2Options {
    /// Maximum L-BFGS iterations.
    pub max_iter: usize,
    /// Stop when the relative objective decrease stays below this for 3 iterations.
    pub ftol: f64,
    /// Stop when `max |∇J/J_0|` is below this.
    pub gtol: f64,
    /// L-BFGS memory (pairs kept).
    pub memory: usize,
    /// Try the modal-truncation initialisation as well as BT (the better one is optimised).
    pub try_modal_init: bool,
    /// Try the balanced-truncation initialisation (when available).
    pub try_bt_init: bool,
}

impl Default for H2Options {
    fn default() -> Self {
        H2Options {
            max_iter: 300,
            ftol: 1e-9,
            gtol: 1e-10,
            memory: 12,
            try_modal_init: true,
            try_bt_init: true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Closed-form pieces
// ---------------------------------------------------------------------------------------------

/// `(φ_T(x), φ_T'(x))`, `φ_T(x) = Σ_{0≤j<T} x^j` (`None`: `1/(1 − x)`, requires `|x| < 1`).
/// Finite `T` is valid for any `x` (direct sum where the quotient would cancel).
pub(crate) fn phi(x: c64, horizon: Option<usize>) -> (c64, c64) {
    let one = c64::new(1.0, 0.0);
    match horizon {
        None => {
            let d = one / (one - x);
            (d, d * d)
        }
        Some(0) => (c64::new(0.0, 0.0), c64::new(0.0, 0.0)),
        Some(1) => (one, c64::new(0.0, 0.0)),
        Some(t) => {
            if t <= 16 || (t as f64) * (one - x).norm() < 0.1 {
                // Horner on φ and φ' = Σ_{j=1}^{T-1} j x^{j-1}.
                let mut f = c64::new(0.0, 0.0);
                let mut df = c64::new(0.0, 0.0);
                for j in (0..t).rev() {
                    df = df * x + f;
                    f = f * x + one;
                    let _ = j;
                }
                (f, df)
            } else {
                let xt1 = x.powu((t - 1) as u32);
                let xt = xt1 * x;
                let f = (one - xt) / (one - x);
                let df = (f - xt1 * (t as f64)) / (one - x);
                (f, df)
            }
        }
    }
}

/// One scan direction of a block: modes, `B̄` `[n, m]`, output matrix `[p, n]`.
#[derive(Clone, Copy)]
pub(crate) struct Dir<'a> {
    pub lam: &'a [c64],
    pub b: MatRef<'a, c64>,
    pub c: MatRef<'a, c64>,
}

/// Gradient w.r.t. one direction's parameters, as real gradients `∂/∂Re + i ∂/∂Im`.
pub(crate) struct DirGrad {
    pub lam: Vec<c64>,
    pub b: Mat<c64>,
    pub c: Mat<c64>,
}

impl DirGrad {
    fn zeros(r: usize, m: usize, p: usize) -> Self {
        DirGrad {
            lam: vec![c64::new(0.0, 0.0); r],
            b: Mat::zeros(r, m),
            c: Mat::zeros(p, r),
        }
    }
}

/// A `p × p` weight `W`: `scale · I` or a dense real matrix (stored complex for the products).
pub(crate) enum Weight {
    Scaled(f64),
    /// Dense real `W`.
    Dense(Mat<f64>),
}

/// `a · z` for real `a`, complex `z` (two real products: half the flops of a complex product).
fn real_mul(a: MatRef<'_, f64>, z: MatRef<'_, c64>) -> Mat<c64> {
    let re = Mat::from_fn(z.nrows(), z.ncols(), |i, j| z[(i, j)].re);
    let im = Mat::from_fn(z.nrows(), z.ncols(), |i, j| z[(i, j)].im);
    let (pr, pi) = (a * &re, a * &im);
    Mat::from_fn(a.nrows(), z.ncols(), |i, j| {
        c64::new(pr[(i, j)], pi[(i, j)])
    })
}

impl Weight {
    fn dense(w: &Mat<f64>) -> Self {
        Weight::Dense(w.clone())
    }
    /// `W · x`.
    fn mul(&self, x: &Mat<c64>) -> Mat<c64> {
        match self {
            Weight::Scaled(s) => Mat::from_fn(x.nrows(), x.ncols(), |i, j| x[(i, j)] * *s),
            Weight::Dense(w) => real_mul(w.as_ref(), x.as_ref()),
        }
    }
    /// `Wᵀ · x`.
    fn tmul(&self, x: MatRef<'_, c64>) -> Mat<c64> {
        match self {
            Weight::Scaled(s) => Mat::from_fn(x.nrows(), x.ncols(), |i, j| x[(i, j)] * *s),
            Weight::Dense(w) => real_mul(w.transpose(), x),
        }
    }
}

fn conj_mat(x: MatRef<'_, c64>) -> Mat<c64> {
    Mat::from_fn(x.nrows(), x.ncols(), |i, j| x[(i, j)].conj())
}

/// `tr(W S(l, r))`, `S(l, r) = Σ_{0≤j<T} 2Re(C̃_l Λ_l^j B̄_l) 2Re(C̃_r Λ_r^j B̄_r)ᵀ`; adds
/// `gscale · ∇_r tr(W S)` to `grad` (module doc, Gradients).
pub(crate) fn pair(
    l: Dir<'_>,
    r: Dir<'_>,
    w: &Weight,
    horizon: Option<usize>,
    grad: Option<(&mut DirGrad, f64)>,
) -> f64 {
    if horizon == Some(0) {
        return 0.0;
    }
    let (nl, nr) = (l.lam.len(), r.lam.len());
    let wc = w.tmul(r.c); // [p, r]
    let mut value = 0.0;
    let mut grad = grad;
    for piece in 0..2 {
        let (x, y, nu): (Mat<c64>, Mat<c64>, Vec<c64>) = if piece == 0 {
            (l.c.to_owned(), l.b.to_owned(), l.lam.to_vec())
        } else {
            (
                conj_mat(l.c),
                conj_mat(l.b),
                l.lam.iter().map(|z| z.conj()).collect(),
            )
        };
        let rr = x.transpose() * &wc; // [nl, nr]
        let yb = &y * r.b.transpose(); // [nl, nr]
        let mut h = c64::new(0.0, 0.0);
        match grad.as_mut() {
            None => {
                for k in 0..nr {
                    for i in 0..nl {
                        let (f, _) = phi(nu[i] * r.lam[k], horizon);
                        h += rr[(i, k)] * yb[(i, k)] * f;
                    }
                }
            }
            Some((g, s)) => {
                let mut rphi = Mat::<c64>::zeros(nl, nr);
                let mut yphi = Mat::<c64>::zeros(nl, nr);
                for k in 0..nr {
                    let mut dmu = c64::new(0.0, 0.0);
                    for i in 0..nl {
                        let (f, df) = phi(nu[i] * r.lam[k], horizon);
                        let ry = rr[(i, k)] * yb[(i, k)];
                        h += ry * f;
                        dmu += ry * nu[i] * df;
                        rphi[(i, k)] = rr[(i, k)] * f;
                        yphi[(i, k)] = yb[(i, k)] * f;
                    }
                    g.lam[k] += dmu.conj() * (2.0 * *s);
                }
                let gb = rphi.transpose() * &y; // [nr, m]
                let gc = w.mul(&(&x * &yphi)); // [p, nr]
                let s2 = 2.0 * *s;
                for k in 0..nr {
                    for j in 0..gb.ncols() {
                        g.b[(k, j)] += gb[(k, j)].conj() * s2;
                    }
                }
                for o in 0..gc.nrows() {
                    for k in 0..nr {
                        g.c[(o, k)] += gc[(o, k)].conj() * s2;
                    }
                }
            }
        }
        value += 2.0 * h.re;
    }
    value
}

/// Quadratic forms `N_i` of an LQO output, dense or in the rank-2 form of the gates
/// `N_i = (e_{sel_i} v_iᵀ + v_i e_{sel_i}ᵀ)/2` (`v` `[s, p]`, row `i` is `v_i`).
#[derive(Clone, Debug)]
pub enum Quad {
    /// Dense symmetric `[p, p]` matrices.
    Dense(Vec<Mat<f64>>),
    /// Rank-2 symmetric forms `(e_{sel_i} v_iᵀ + v_i e_{sel_i}ᵀ)/2`.
    Rank2 { sel: Vec<usize>, v: Mat<f64> },
}

impl Quad {
    /// Whether there are no quadratic outputs.
    pub fn is_empty(&self) -> bool {
        match self {
            Quad::Dense(v) => v.is_empty(),
            Quad::Rank2 { sel, .. } => sel.is_empty(),
        }
    }

    /// `𝒩(X) = Σ_i N_i X N_i`, `[p, p]`.
    pub fn nxn(&self, x: &Mat<f64>) -> Mat<f64> {
        let p = x.nrows();
        match self {
            Quad::Dense(ns) => {
                let mut out = Mat::<f64>::zeros(p, p);
                for n in ns {
                    out += n * x * n;
                }
                out
            }
            Quad::Rank2 { sel, v } => {
                // ¼ Σ_i [(vᵀXe) e vᵀ + (vᵀXv) e eᵀ + X_ee v vᵀ + (eᵀXv) v eᵀ]
                let s = sel.len();
                let vx = v * x; // [s, p]
                let xv = x * v.transpose(); // [p, s]
                let mut out = Mat::<f64>::zeros(p, p);
                let mut gam = Mat::<f64>::zeros(s, p); // diag(γ) V
                for i in 0..s {
                    let e = sel[i];
                    let alpha = vx[(i, e)];
                    let mut beta = 0.0;
                    for c in 0..p {
                        beta += vx[(i, c)] * v[(i, c)];
                    }
                    let gamma = x[(e, e)];
                    let delta = xv[(e, i)];
                    for c in 0..p {
                        out[(e, c)] += 0.25 * alpha * v[(i, c)];
                        out[(c, e)] += 0.25 * delta * v[(i, c)];
                        gam[(i, c)] = 0.25 * gamma * v[(i, c)];
                    }
                    out[(e, e)] += 0.25 * beta;
                }
                out += v.transpose() * &gam;
                out
            }
        }
    }

    /// The dense matrices `N_i`.
    pub fn to_dense(&self, p: usize) -> Vec<Mat<f64>> {
        match self {
            Quad::Dense(ns) => ns.clone(),
            Quad::Rank2 { sel, v } => sel
                .iter()
                .enumerate()
                .map(|(i, &e)| {
                    Mat::from_fn(p, p, |a, b| {
                        let ea = if a == e { v[(i, b)] } else { 0.0 };
                        let eb = if b == e { v[(i, a)] } else { 0.0 };
                        0.5 * (ea + eb)
                    })
                })
                .collect(),
        }
    }
}

fn frob(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    let mut s = 0.0;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            s += a[(i, j)] * b[(i, j)];
        }
    }
    s
}

/// The reduced parameters `(μ, B̄_r, C̃_r, C̃_rev,r)`.
#[derive(Clone, Debug)]
pub(crate) struct Red {
    pub lam: Vec<c64>,
    pub b: Mat<c64>,
    pub c: Mat<c64>,
    pub c_rev: Option<Mat<c64>>,
}

impl Red {
    pub fn from_block(b: &DiagBlock) -> Self {
        Red {
            lam: b.lambda.clone(),
            b: b.b.clone(),
            c: b.c.clone(),
            c_rev: b.c_rev.clone(),
        }
    }
    /// The reduced block with the output structure (`d`, `E`, `N_i`) of `like`.
    pub fn to_block(&self, like: &DiagBlock) -> DiagBlock {
        DiagBlock {
            lambda: self.lam.clone(),
            b: self.b.clone(),
            c: self.c.clone(),
            c_rev: self.c_rev.clone(),
            d: like.d.clone(),
            linear: like.linear.clone(),
            quadratic: like.quadratic.clone(),
        }
    }
    fn dirs(&self) -> (Dir<'_>, Option<Dir<'_>>) {
        let f = Dir {
            lam: &self.lam,
            b: self.b.as_ref(),
            c: self.c.as_ref(),
        };
        let v = self.c_rev.as_ref().map(|cr| Dir {
            lam: &self.lam,
            b: self.b.as_ref(),
            c: cr.as_ref(),
        });
        (f, v)
    }
}

/// Real gradients of the reduced parameters.
pub(crate) struct RedGrad {
    pub lam: Vec<c64>,
    pub b: Mat<c64>,
    pub c: Mat<c64>,
    pub c_rev: Option<Mat<c64>>,
}

/// The terms `(left dir, right dir, horizon, right is reverse)` of a (cross) Gramian.
fn terms<'a>(
    l: (Dir<'a>, Option<Dir<'a>>),
    r: (Dir<'a>, Option<Dir<'a>>),
    horizon: Option<usize>,
) -> Vec<(Dir<'a>, Dir<'a>, Option<usize>, bool)> {
    let one = horizon.map(|t| t.min(1)).or(Some(1));
    let mut v = vec![(l.0, r.0, horizon, false)];
    if let (Some(lv), Some(rv)) = (l.1, r.1) {
        v.push((lv, rv, horizon, true));
    }
    if let Some(rv) = r.1 {
        v.push((l.0, rv, one, true));
    }
    if let Some(lv) = l.1 {
        v.push((lv, r.0, one, false));
    }
    v
}

/// The squared h2 error `J(Σ_r)` of a fixed full LQO block, with gradients (module doc).
pub(crate) struct Objective<'a> {
    full: &'a DiagBlock,
    horizon: Option<usize>,
    m_w: Weight,
    m_dense: Option<Mat<f64>>,
    quad: Option<Quad>,
    /// `‖Σ‖²` (the constant term).
    pub j0: f64,
}

impl<'a> Objective<'a> {
    /// Objective for `full` with read-out `E` (`None`: identity) and quadratic forms `quad`.
    pub fn new(
        full: &'a DiagBlock,
        horizon: Option<usize>,
        linear: Option<&Mat<f64>>,
        quad: Option<Quad>,
    ) -> Self {
        let quad = quad.filter(|q| !q.is_empty());
        let m_dense = linear.map(|e| e.transpose() * e);
        let m_w = match &m_dense {
            None => Weight::Scaled(1.0),
            Some(m) => Weight::dense(m),
        };
        let mut o = Objective {
            full,
            horizon,
            m_w,
            m_dense,
            quad,
            j0: 0.0,
        };
        let fd = o.full_dirs();
        o.j0 = if o.quad.is_some() {
            let g = o.gram_of(fd, fd);
            o.inner(&g, &g)
        } else {
            terms(fd, fd, horizon)
                .into_iter()
                .map(|(l, r, t, _)| pair(l, r, &o.m_w, t, None))
                .sum()
        };
        o
    }

    fn full_dirs(&self) -> (Dir<'a>, Option<Dir<'a>>) {
        let f = self.full;
        (
            Dir {
                lam: &f.lambda,
                b: f.b.as_ref(),
                c: f.c.as_ref(),
            },
            f.c_rev.as_ref().map(|cr| Dir {
                lam: &f.lambda,
                b: f.b.as_ref(),
                c: cr.as_ref(),
            }),
        )
    }

    fn gram_of(&self, l: (Dir<'_>, Option<Dir<'_>>), r: (Dir<'_>, Option<Dir<'_>>)) -> Mat<f64> {
        // Batched `pair_matrix` over the terms: `Σ_pieces Σ_terms 2Re(X Q C̃_bᵀ)` shares the
        // right factor per right direction, so `Z = Σ X Q` is formed first and multiplied once.
        let p = l.0.c.nrows();
        let (nl, nr) = (l.0.lam.len(), r.0.lam.len());
        let mut zf = Mat::<c64>::zeros(p, nr);
        let mut zv = Mat::<c64>::zeros(p, nr);
        let tlist = terms(l, r, self.horizon);
        for piece in 0..2 {
            let conj = piece == 1;
            let y = if conj {
                conj_mat(l.0.b)
            } else {
                l.0.b.to_owned()
            };
            let nu: Vec<c64> =
                l.0.lam
                    .iter()
                    .map(|z| if conj { z.conj() } else { *z })
                    .collect();
            let yb = &y * r.0.b.transpose();
            for (a, _b, t, rev) in &tlist {
                let x = if conj { conj_mat(a.c) } else { a.c.to_owned() };
                let q = Mat::from_fn(nl, nr, |i, k| yb[(i, k)] * phi(nu[i] * r.0.lam[k], *t).0);
                let xq = &x * &q;
                if *rev {
                    zv += &xq;
                } else {
                    zf += &xq;
                }
            }
        }
        let mut g = Mat::<f64>::zeros(p, p);
        let mut add = |z: &Mat<c64>, c: MatRef<'_, c64>| {
            // 2Re(Z Cᵀ) = 2(Re Z Re Cᵀ − Im Z Im Cᵀ)
            let zr = Mat::from_fn(p, nr, |i, k| z[(i, k)].re);
            let zi = Mat::from_fn(p, nr, |i, k| z[(i, k)].im);
            let cr = Mat::from_fn(nr, c.nrows(), |k, o| c[(o, k)].re);
            let ci = Mat::from_fn(nr, c.nrows(), |k, o| c[(o, k)].im);
            g += (&zr * &cr - &zi * &ci) * 2.0;
        };
        add(&zf, r.0.c);
        if let Some(rv) = r.1 {
            add(&zv, rv.c);
        }
        g
    }

    fn m_inner(&self, g: &Mat<f64>) -> f64 {
        match &self.m_dense {
            None => (0..g.nrows()).map(|i| g[(i, i)]).sum(),
            Some(m) => frob(m, g),
        }
    }

    /// `⟨M, X⟩ + ⟨𝒩(X), X⟩`.
    fn inner(&self, x: &Mat<f64>, y: &Mat<f64>) -> f64 {
        let mut s = self.m_inner(x);
        if let Some(q) = &self.quad {
            s += frob(&q.nxn(x), y);
        }
        s
    }

    /// `Σ_terms tr(W S)`; adds `s ·` gradients to `gf` (forward) / `gv` (reverse) when `want`.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        l: (Dir<'_>, Option<Dir<'_>>),
        r: (Dir<'_>, Option<Dir<'_>>),
        w: &Weight,
        s: f64,
        want: bool,
        gf: &mut DirGrad,
        gv: &mut DirGrad,
    ) -> f64 {
        if !want {
            return terms(l, r, self.horizon)
                .into_iter()
                .map(|(a, b, t, _)| pair(a, b, w, t, None))
                .sum();
        }
        // Batched form of `pair` over the terms: all left directions share (λ, B̄), all right
        // directions share (μ, B̄_r), so `Y B̄_rᵀ`, the B̄_r gradient product and the `W ·` of the
        // C̃_r gradients are formed once (same formulas as `pair`).
        let (nl, nr) = (l.0.lam.len(), r.0.lam.len());
        let m = r.0.b.ncols();
        let wc_f = w.tmul(r.0.c);
        let wc_v = r.1.map(|rv| w.tmul(rv.c));
        let p = r.0.c.nrows();
        let mut zc_f = Mat::<c64>::zeros(p, nr); // Σ conj(X (Y ⊙ Φ)) for the forward right dir
        let mut zc_v = Mat::<c64>::zeros(p, nr);
        let mut gb = Mat::<c64>::zeros(nr, m);
        let mut dmu = vec![c64::new(0.0, 0.0); nr];
        let mut value = 0.0;
        let tlist = terms(l, r, self.horizon);
        for piece in 0..2 {
            let conj = piece == 1;
            let y = if conj {
                conj_mat(l.0.b)
            } else {
                l.0.b.to_owned()
            };
            let nu: Vec<c64> =
                l.0.lam
                    .iter()
                    .map(|z| if conj { z.conj() } else { *z })
                    .collect();
            let yb = &y * r.0.b.transpose(); // [nl, nr]
            let xf = if conj {
                conj_mat(l.0.c)
            } else {
                l.0.c.to_owned()
            };
            let xv = l.1.map(|lv| {
                if conj {
                    conj_mat(lv.c)
                } else {
                    lv.c.to_owned()
                }
            });
            let mut rphi_sum = Mat::<c64>::zeros(nl, nr);
            let mut h = c64::new(0.0, 0.0);
            for (a, _b, t, rev) in &tlist {
                let x = if std::ptr::eq(a.c.as_ptr(), l.0.c.as_ptr()) {
                    &xf
                } else {
                    xv.as_ref().expect("reverse left dir")
                };
                let wc = if *rev {
                    wc_v.as_ref().expect("reverse right dir")
                } else {
                    &wc_f
                };
                let rr = x.transpose() * wc; // [nl, nr]
                let mut yphi = Mat::<c64>::zeros(nl, nr);
                for k in 0..nr {
                    let mut dk = c64::new(0.0, 0.0);
                    for i in 0..nl {
                        let (f, df) = phi(nu[i] * r.0.lam[k], *t);
                        let ry = rr[(i, k)] * yb[(i, k)];
                        h += ry * f;
                        dk += ry * nu[i] * df;
                        rphi_sum[(i, k)] += rr[(i, k)] * f;
                        yphi[(i, k)] = yb[(i, k)] * f;
                    }
                    dmu[k] += dk;
                }
                let xq = x * &yphi; // [p, nr]
                let zc = if *rev { &mut zc_v } else { &mut zc_f };
                for kk in 0..nr {
                    for o in 0..p {
                        zc[(o, kk)] += xq[(o, kk)].conj();
                    }
                }
            }
            let gbp = rphi_sum.transpose() * &y; // [nr, m]
            for k in 0..nr {
                for j in 0..m {
                    gb[(k, j)] += gbp[(k, j)].conj();
                }
            }
            value += 2.0 * h.re;
        }
        let s2 = 2.0 * s;
        // dmu accumulates ∂h/∂μ of both pieces; the real gradient is 2 conj(·). gf and gv share
        // μ and B̄_r (the caller sums them), so everything goes into gf.
        for (gl, d) in gf.lam.iter_mut().zip(&dmu) {
            *gl += d.conj() * s2;
        }
        for k in 0..nr {
            for j in 0..m {
                gf.b[(k, j)] += gb[(k, j)] * s2;
            }
        }
        let gcf = w.mul(&zc_f);
        for kk in 0..nr {
            for o in 0..p {
                gf.c[(o, kk)] += gcf[(o, kk)] * s2;
            }
        }
        if r.1.is_some() {
            let gcv = w.mul(&zc_v);
            for kk in 0..nr {
                for o in 0..p {
                    gv.c[(o, kk)] += gcv[(o, kk)] * s2;
                }
            }
        }
        value
    }

    /// `J(red)`; adds the gradient to `grad` when given.
    pub fn eval(&self, red: &Red, mut grad: Option<&mut RedGrad>) -> f64 {
        let fd = self.full_dirs();
        let rd = red.dirs();
        let (r, m, p) = (red.lam.len(), red.b.ncols(), red.c.nrows());
        let mut gf = DirGrad::zeros(r, m, p);
        let mut gv = DirGrad::zeros(r, m, p);
        let want = grad.is_some();
        let value = match &self.quad {
            None => {
                let x = self.run(fd, rd, &self.m_w, -2.0, want, &mut gf, &mut gv);
                let y = self.run(rd, rd, &self.m_w, 2.0, want, &mut gf, &mut gv);
                self.j0 - 2.0 * x + y
            }
            Some(q) => {
                let gx = self.gram_of(fd, rd);
                let gr = self.gram_of(rd, rd);
                let nx = q.nxn(&gx);
                let nr = q.nxn(&gr);
                let value = self.j0 - 2.0 * (self.m_inner(&gx) + frob(&nx, &gx))
                    + self.m_inner(&gr)
                    + frob(&nr, &gr);
                if want {
                    let mut wx = Mat::from_fn(p, p, |i, j| -4.0 * nx[(j, i)]);
                    let mut wr = Mat::from_fn(p, p, |i, j| 2.0 * nr[(i, j)]);
                    match &self.m_dense {
                        None => {
                            for i in 0..p {
                                wx[(i, i)] -= 2.0;
                                wr[(i, i)] += 1.0;
                            }
                        }
                        Some(mm) => {
                            wx -= mm * 2.0;
                            wr += mm;
                        }
                    }
                    self.run(fd, rd, &Weight::dense(&wx), 1.0, want, &mut gf, &mut gv);
                    self.run(rd, rd, &Weight::dense(&wr), 2.0, want, &mut gf, &mut gv);
                }
                value
            }
        };
        if let Some(g) = grad.as_mut() {
            for k in 0..r {
                g.lam[k] += gf.lam[k] + gv.lam[k];
            }
            g.b += &gf.b;
            g.b += &gv.b;
            g.c += &gf.c;
            if let Some(cr) = g.c_rev.as_mut() {
                *cr += &gv.c;
            }
        }
        value
    }
}

// ---------------------------------------------------------------------------------------------
// Parameter vectors
// ---------------------------------------------------------------------------------------------

/// How λ is parameterised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Param {
    /// `μ = exp(−exp(a) + i b)` (always `|μ| < 1`).
    Stable,
    /// `μ = re + i im` (unconstrained).
    Free,
}

pub(crate) fn pack(red: &Red, param: Param) -> Vec<f64> {
    let mut v = Vec::new();
    for z in &red.lam {
        match param {
            Param::Stable => {
                let rho = z.norm().clamp(1e-300, 1.0 - 1e-16);
                v.push((-rho.ln()).ln());
                v.push(z.im.atan2(z.re));
            }
            Param::Free => {
                v.push(z.re);
                v.push(z.im);
            }
        }
    }
    let mut push = |m: &Mat<c64>| {
        for j in 0..m.ncols() {
            for i in 0..m.nrows() {
                v.push(m[(i, j)].re);
                v.push(m[(i, j)].im);
            }
        }
    };
    push(&red.b);
    push(&red.c);
    if let Some(cr) = &red.c_rev {
        push(cr);
    }
    v
}

pub(crate) fn unpack(theta: &[f64], like: &Red, param: Param) -> Red {
    let r = like.lam.len();
    let lam = (0..r)
        .map(|k| {
            let (a, b) = (theta[2 * k], theta[2 * k + 1]);
            match param {
                Param::Stable => c64::from_polar((-a.exp()).exp(), b),
                Param::Free => c64::new(a, b),
            }
        })
        .collect();
    let mut off = 2 * r;
    let mut take = |nr: usize, nc: usize| {
        let mut m = Mat::<c64>::zeros(nr, nc);
        for j in 0..nc {
            for i in 0..nr {
                m[(i, j)] = c64::new(theta[off], theta[off + 1]);
                off += 2;
            }
        }
        m
    };
    let b = take(like.b.nrows(), like.b.ncols());
    let c = take(like.c.nrows(), like.c.ncols());
    let c_rev = like.c_rev.as_ref().map(|cr| take(cr.nrows(), cr.ncols()));
    Red { lam, b, c, c_rev }
}

/// Chain rule from the real gradients of `(μ, B̄, C̃, C̃_rev)` to the parameter vector.
pub(crate) fn grad_to_theta(theta: &[f64], red: &Red, g: &RedGrad, param: Param, out: &mut [f64]) {
    let r = red.lam.len();
    for k in 0..r {
        let gm = g.lam[k];
        match param {
            Param::Stable => {
                let mu = red.lam[k];
                let ea = theta[2 * k].exp();
                out[2 * k] = (gm.conj() * mu * (-ea)).re;
                out[2 * k + 1] = (gm.conj() * mu * c64::new(0.0, 1.0)).re;
            }
            Param::Free => {
                out[2 * k] = gm.re;
                out[2 * k + 1] = gm.im;
            }
        }
    }
    let mut off = 2 * r;
    let mut put = |m: &Mat<c64>| {
        for j in 0..m.ncols() {
            for i in 0..m.nrows() {
                out[off] = m[(i, j)].re;
                out[off + 1] = m[(i, j)].im;
                off += 2;
            }
        }
    };
    put(&g.b);
    put(&g.c);
    if let Some(cr) = &g.c_rev {
        put(cr);
    }
}

/// `J(θ)` and `∇J(θ)` (unnormalised).
pub(crate) fn eval_theta(
    obj: &Objective<'_>,
    like: &Red,
    param: Param,
    theta: &[f64],
    grad: Option<&mut [f64]>,
) -> f64 {
    let red = unpack(theta, like, param);
    match grad {
        None => obj.eval(&red, None),
        Some(out) => {
            let mut g = RedGrad {
                lam: vec![c64::new(0.0, 0.0); red.lam.len()],
                b: Mat::zeros(red.b.nrows(), red.b.ncols()),
                c: Mat::zeros(red.c.nrows(), red.c.ncols()),
                c_rev: red
                    .c_rev
                    .as_ref()
                    .map(|cr| Mat::zeros(cr.nrows(), cr.ncols())),
            };
            let v = obj.eval(&red, Some(&mut g));
            grad_to_theta(theta, &red, &g, param, out);
            v
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------------

/// Modal initialisation: `modal::modal` (the `r` modes with the largest h2 contributions).
pub(crate) fn modal_init(block: &DiagBlock, r: usize) -> DiagBlock {
    match crate::modal::modal(block, r, crate::modal::ModalOrder::H2) {
        Ok(red) => red.block,
        Err(_) => {
            // Unstable full block (tlh2 only): rank by the finite scores anyway.
            let scores = modes::mode_h2_scores(block);
            modes::select_modes(block, &crate::modal::top_r(&scores, r))
        }
    }
}

/// Candidate initialisations (modal always; balanced truncation when available and stable).
fn initial_candidates(block: &DiagBlock, r: usize, opts: &H2Options) -> Vec<DiagBlock> {
    let mut v = Vec::new();
    if opts.try_bt_init
        && let Some(bt) = bt_init(block, r)
    {
        v.push(bt);
    }
    if opts.try_modal_init || v.is_empty() {
        v.push(modal_init(block, r));
    }
    v
}

/// Balanced truncation (`bt::bt`) of the plain SSM (the block's `E`/`N_i` are kept on the
/// result), when it succeeds with `r` stable modes.
pub(crate) fn bt_init(block: &DiagBlock, r: usize) -> Option<DiagBlock> {
    let plain = DiagBlock {
        linear: None,
        quadratic: vec![],
        ..block.clone()
    };
    let red = crate::bt::bt(&plain, r).ok()?.block;
    (red.n_modes() == r && red.max_abs_lambda() < 1.0).then(|| DiagBlock {
        linear: block.linear.clone(),
        quadratic: block.quadratic.clone(),
        ..red
    })
}

/// Picks the candidate with the smallest objective and runs L-BFGS on `obj` from it; returns
/// the best point seen (never worse than the best candidate) and its `J`.
pub(crate) fn optimise(
    obj: &Objective<'_>,
    inits: Vec<Red>,
    param: Param,
    opts: &H2Options,
) -> (Red, f64) {
    let norm = obj.j0.max(1e-300);
    let mut best: Option<(Red, f64)> = None;
    for init in inits {
        let j = obj.eval(&init, None);
        if best
            .as_ref()
            .is_none_or(|b| (j.is_finite() && j < b.1) || !b.1.is_finite())
        {
            best = Some((init, j));
        }
    }
    let (init, j_init) = best.expect("at least one initialisation");
    let theta0 = pack(&init, param);
    let out = crate::lbfgs::minimise(
        |th, g| {
            let v = eval_theta(obj, &init, param, th, Some(g));
            for gi in g.iter_mut() {
                *gi /= norm;
            }
            v / norm
        },
        theta0,
        &crate::lbfgs::LbfgsOptions {
            max_iter: opts.max_iter,
            ftol: opts.ftol,
            gtol: opts.gtol,
            memory: opts.memory,
        },
    );
    let red = unpack(&out.x, &init, param);
    let j = obj.eval(&red, None);
    if j.is_finite() && (j < j_init || !j_init.is_finite()) {
        (red, j)
    } else {
        (init, j_init)
    }
}

/// `h2`: gradient-based h2-optimal reduction of one block to `r` stored modes (module doc).
///
/// Stable parameterisation `μ = exp(−exp(a) + i b)`, free `B̄_r` `[r, m]`, `C̃_r` `[p, r]` (and
/// `C̃_rev,r`), objective `‖Σ − Σ_r‖²_h2` with the block's own `E` and `N_i`. Initialised from
/// balanced truncation (when available) and modal truncation; the result is never worse than the
/// best initialisation. `h2_error` is recomputed by `gram::h2_error` (cancellation-free form).
///
/// # Errors
/// [`Error::Argument`] for `r` outside `1..=n`, [`Error::Unstable`] for an unstable block.
pub fn h2_reduce(block: &DiagBlock, r: usize, opts: &H2Options) -> Result<BlockReduction> {
    block.check_order(r, "h2-optimal reduction")?;
    gram::check_stable(block, "h2: full block")?;
    let quad = (!block.quadratic.is_empty()).then(|| Quad::Dense(block.quadratic.clone()));
    let obj = Objective::new(block, None, block.linear.as_ref(), quad);
    let inits = initial_candidates(block, r, opts)
        .iter()
        .map(Red::from_block)
        .collect();
    let (red, _) = optimise(&obj, inits, Param::Stable, opts);
    let out = red.to_block(block);
    let h2_error = gram::h2_error(block, &out, None)?;
    Ok(BlockReduction {
        block: out,
        h2_error,
        hinf_bound: None,
    })
}

/// `tlh2`: time-limited h2 reduction (lags `|j| < horizon`) with unconstrained λ (parameterised
/// by real and imaginary parts) — the published baseline that may return unstable modes. Never
/// fails for instability: the caller reports it through `max_abs_lambda`. `h2_error` is the
/// time-limited error.
///
/// # Errors
/// [`Error::Argument`] for `r` outside `1..=n` or `horizon = 0`.
pub fn tlh2_reduce(
    block: &DiagBlock,
    r: usize,
    horizon: usize,
    opts: &H2Options,
) -> Result<BlockReduction> {
    block.check_order(r, "h2-optimal reduction")?;
    if horizon == 0 {
        return Err(Error::Argument("tlh2: horizon must be ≥ 1".into()));
    }
    let quad = (!block.quadratic.is_empty()).then(|| Quad::Dense(block.quadratic.clone()));
    let obj = Objective::new(block, Some(horizon), block.linear.as_ref(), quad);
    let inits = initial_candidates(block, r, opts)
        .iter()
        .map(Red::from_block)
        .collect();
    let (red, _) = optimise(&obj, inits, Param::Free, opts);
    let out = red.to_block(block);
    let h2_error = gram::h2_error(block, &out, Some(horizon))?;
    Ok(BlockReduction {
        block: out,
        h2_error,
        hinf_bound: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn cz(rng: &mut ChaCha8Rng) -> c64 {
        c64::new(rng.random::<f64>() - 0.5, rng.random::<f64>() - 0.5)
    }

    fn rand_block(
        rng: &mut ChaCha8Rng,
        n: usize,
        m: usize,
        p: usize,
        bidir: bool,
        rmax: f64,
    ) -> DiagBlock {
        let lambda = (0..n)
            .map(|_| c64::from_polar(rmax * rng.random::<f64>().sqrt(), 3.0 * rng.random::<f64>()))
            .collect();
        let b = Mat::from_fn(n, m, |_, _| cz(rng));
        let c = Mat::from_fn(p, n, |_, _| cz(rng));
        let c_rev = bidir.then(|| Mat::from_fn(p, n, |_, _| cz(rng)));
        DiagBlock {
            lambda,
            b,
            c,
            c_rev,
            d: None,
            linear: None,
            quadratic: vec![],
        }
    }

    fn sym(rng: &mut ChaCha8Rng, p: usize) -> Mat<f64> {
        let a = Mat::from_fn(p, p, |_, _| rng.random::<f64>() - 0.5);
        Mat::from_fn(p, p, |i, j| a[(i, j)] + a[(j, i)])
    }

    /// Central finite differences of `J(θ)` against the closed-form gradient.
    fn fd_check(obj: &Objective<'_>, red: &Red, param: Param) -> f64 {
        let theta = pack(red, param);
        let mut g = vec![0.0; theta.len()];
        eval_theta(obj, red, param, &theta, Some(&mut g));
        let gmax = g.iter().fold(0.0f64, |a, v| a.max(v.abs())).max(1e-8);
        let mut worst = 0.0f64;
        for i in 0..theta.len() {
            let h = 1e-6 * theta[i].abs().max(1.0);
            let mut tp = theta.clone();
            tp[i] += h;
            let mut tm = theta.clone();
            tm[i] -= h;
            let fd = (eval_theta(obj, red, param, &tp, None)
                - eval_theta(obj, red, param, &tm, None))
                / (2.0 * h);
            worst = worst.max((fd - g[i]).abs() / gmax);
        }
        worst
    }

    #[test]
    fn phi_matches_direct_sums() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for t in [1usize, 2, 5, 17, 300] {
            for _ in 0..20 {
                let x = c64::from_polar(0.2 + 0.9 * rng.random::<f64>(), 6.0 * rng.random::<f64>());
                let (f, df) = phi(x, Some(t));
                let (mut fs, mut dfs) = (c64::new(0.0, 0.0), c64::new(0.0, 0.0));
                for j in 0..t {
                    fs += x.powu(j as u32);
                    if j > 0 {
                        dfs += x.powu(j as u32 - 1) * j as f64;
                    }
                }
                assert!(
                    (f - fs).norm() <= 1e-10 * fs.norm().max(1.0),
                    "phi t={t} x={x}"
                );
                assert!(
                    (df - dfs).norm() <= 1e-9 * dfs.norm().max(1.0),
                    "dphi t={t} x={x}"
                );
            }
        }
        // x = 1 exactly: T and T(T-1)/2.
        let (f, df) = phi(c64::new(1.0, 0.0), Some(100));
        assert!((f.re - 100.0).abs() < 1e-9 && (df.re - 4950.0).abs() < 1e-7);
    }

    #[test]
    fn objective_matches_gram_h2_error() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for &bidir in &[false, true] {
            for &hz in &[None, Some(6)] {
                for case in 0..3 {
                    let mut full = rand_block(&mut rng, 5, 3, 4, bidir, 0.9);
                    if case >= 1 {
                        full.linear = Some(Mat::from_fn(2, 4, |_, _| rng.random::<f64>() - 0.5));
                    }
                    if case == 2 {
                        full.quadratic = vec![sym(&mut rng, 4), sym(&mut rng, 4)];
                    }
                    let red_b = {
                        let mut r = rand_block(&mut rng, 2, 3, 4, bidir, 0.8);
                        r.linear = full.linear.clone();
                        r.quadratic = full.quadratic.clone();
                        r
                    };
                    let quad =
                        (!full.quadratic.is_empty()).then(|| Quad::Dense(full.quadratic.clone()));
                    let obj = Objective::new(&full, hz, full.linear.as_ref(), quad);
                    let j = obj.eval(&Red::from_block(&red_b), None);
                    let want = gram::h2_error_sq(&full, &red_b, hz).unwrap();
                    let nrm = gram::h2_norm_sq(&full, hz);
                    assert!(
                        (obj.j0 - nrm).abs() <= 1e-10 * nrm,
                        "j0 {} vs {}",
                        obj.j0,
                        nrm
                    );
                    assert!(
                        (j - want).abs() <= 1e-9 * (want + nrm),
                        "J {j} vs {want} (bidir {bidir}, hz {hz:?}, case {case})"
                    );
                }
            }
        }
    }

    #[test]
    fn rank2_quad_equals_dense() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let p = 5;
        let v = Mat::from_fn(3, p, |_, _| rng.random::<f64>() - 0.5);
        let q = Quad::Rank2 {
            sel: vec![0, 3, 3],
            v,
        };
        let d = Quad::Dense(q.to_dense(p));
        let x = Mat::from_fn(p, p, |_, _| rng.random::<f64>() - 0.5);
        let (a, b) = (q.nxn(&x), d.nxn(&x));
        for i in 0..p {
            for j in 0..p {
                assert!((a[(i, j)] - b[(i, j)]).abs() < 1e-13);
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut worst_all = 0.0f64;
        for &bidir in &[false, true] {
            for &(hz, param) in &[
                (None, Param::Stable),
                (Some(7), Param::Free),
                (Some(7), Param::Stable),
            ] {
                for case in 0..4 {
                    let mut full = rand_block(&mut rng, 5, 3, 4, bidir, 0.9);
                    if case == 1 || case == 3 {
                        full.linear = Some(Mat::from_fn(3, 4, |_, _| rng.random::<f64>() - 0.5));
                    }
                    let quad = match case {
                        2 => Some(Quad::Dense(vec![sym(&mut rng, 4), sym(&mut rng, 4)])),
                        3 => Some(Quad::Rank2 {
                            sel: vec![0, 2, 3],
                            v: Mat::from_fn(3, 4, |_, _| rng.random::<f64>() - 0.5),
                        }),
                        _ => None,
                    };
                    // Free λ outside the unit disc is allowed with a finite horizon.
                    let rmax = if param == Param::Free { 1.15 } else { 0.85 };
                    let red = Red::from_block(&rand_block(&mut rng, 2, 3, 4, bidir, rmax));
                    let obj = Objective::new(&full, hz, full.linear.as_ref(), quad);
                    let w = fd_check(&obj, &red, param);
                    worst_all = worst_all.max(w);
                    assert!(
                        w < 1e-6,
                        "FD mismatch {w:e} (bidir {bidir}, hz {hz:?}, {param:?}, case {case})"
                    );
                }
            }
        }
        println!("worst relative FD gradient error: {worst_all:e}");
    }

    #[test]
    fn h2_never_worse_than_init_and_improves() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for (trial, &bidir) in [false, true, false, true, false, true].iter().enumerate() {
            let full = rand_block(&mut rng, 6 + trial, 3, 2 + trial % 3, bidir, 0.95);
            let r = 2 + trial % 3;
            let res = h2_reduce(&full, r, &H2Options::default()).unwrap();
            let modal = modal_init(&full, r);
            let e_modal = gram::h2_error(&full, &modal, None).unwrap();
            if let Ok(bt) = crate::bt::bt(&full, r) {
                assert!(
                    res.h2_error <= bt.h2_error * (1.0 + 1e-9),
                    "h2 {} > bt {}",
                    res.h2_error,
                    bt.h2_error
                );
                println!("bidir {bidir}: bt {:.4e}", bt.h2_error);
            }
            assert!(
                res.h2_error <= e_modal * (1.0 + 1e-9),
                "h2 {} > modal {}",
                res.h2_error,
                e_modal
            );
            assert!(res.block.max_abs_lambda() < 1.0);
            assert_eq!(res.block.n_modes(), r);
            println!(
                "bidir {bidir}: modal {e_modal:.4e} -> h2 {:.4e}",
                res.h2_error
            );
        }
    }

    #[test]
    fn tlh2_returns_result_with_stability_info() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let full = rand_block(&mut rng, 8, 2, 2, true, 0.97);
        let res = tlh2_reduce(&full, 3, 12, &H2Options::default()).unwrap();
        let init = modal_init(&full, 3);
        let e_init = gram::h2_error(&full, &init, Some(12)).unwrap();
        assert!(res.h2_error.is_finite());
        assert!(res.h2_error <= e_init * (1.0 + 1e-9));
        println!(
            "tlh2: init {e_init:.4e} -> {:.4e}, max|λ| = {}",
            res.h2_error,
            res.block.max_abs_lambda()
        );
    }
}
