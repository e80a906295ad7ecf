//! Certified bounds on a gate's Jacobian over per-position boxes (issue 31; `BOUND.md`, "Gates
//! on per-position boxes").
//!
//! The output-error bound needs, per layer, a Lipschitz constant of the gate on a convex set
//! that holds the SSM outputs of both models at every position. [`crate::bound`] uses the global
//! box `‖v‖_∞ ≤ Y`, on which the `half_glu2` gate's constant is `1 + Y ‖W‖₂ · 1.13/4`. Here the
//! box is `B_k(R) = {v : |v_c − y_{k,c}| ≤ R for every channel c}`, centred on the full model's
//! output `y_k` at position `k`: it holds the reduced model's output `ŷ_k` whenever
//! `‖ŷ − y‖_∞ ≤ R`, and by the mean-value theorem on the segment from `y_k` to `ŷ_k` (inside the
//! convex box) `‖gate(ŷ_k) − gate(y_k)‖₂ ≤ sup_{v ∈ B_k(R)} ‖J(v)‖₂ ‖ŷ_k − y_k‖₂`, so the maximum
//! over positions of [`GateBox::jacobian_bound`] is a Lipschitz constant for the whole sequence.
//!
//! `half_glu2`, `out = v ⊙ σ(a)`, `a = W GELU(v) + b`, has the Jacobian
//! `J = diag(σ(a)) + diag(v ⊙ σ'(a)) W diag(GELU'(v))`. Interval enclosures over the box give
//! `GELU(v_j) ∈ [g⁻_j, g⁺_j]` (exact: `GELU_tanh` decreases up to its minimum at `x* ≈ −0.7525`
//! and increases after it), `a_c ∈ [m_c − ρ_c, m_c + ρ_c]` with `m = W (g⁺ + g⁻)/2 + b`,
//! `ρ = |W| (g⁺ − g⁻)/2`, hence `σ(a_c) ≤ σ(m_c + ρ_c)`, `σ'(a_c) ≤ σ'(max(0, |m_c| − ρ_c))`,
//! `|v_c σ'(a_c)| ≤ p_c = (|y_c| + R) σ'(…)`, and `|GELU'(v_j)| ≤ d_j = min(1.13, max of
//! |GELU'| at the interval's ends + 0.798 R)` (`|GELU_tanh''| ≤ √(2/π) < 0.798`). Then
//!
//! ```text
//! ‖J‖₂ ≤ max_c σ(m_c + ρ_c) + min( max_c p_c · ‖W‖₂ · max_j d_j ,
//!                                  sqrt( max_c p_c (|W| d)_c · max_j d_j (|W|ᵀ p)_j ) )
//! ```
//!
//! (triangle inequality; the second term bounds `‖diag(p)|W|diag(d)‖₂` by the Schur test).
//! `quadratic`, `out = v ⊙ (W v + b)`: `J = diag(W v + b) + diag(v) W`, so with `p_c = |y_c| + R`,
//! `‖J‖₂ ≤ max_c (|W y_k + b|_c + R ‖w_c‖₁) + min(max_c p_c ‖W‖₂, sqrt(max_c p_c ‖w_c‖₁ · max_j
//! (|W|ᵀ p)_j))`. Identity: 1.
//!
//! The bound shrinks to the point Jacobian's bound as `R → 0` and is only useful while the
//! interval of `a` stays narrow (`ρ_c ≈ ‖w_c‖₁ · 1.13 R`); for wide boxes it is no better than
//! the global constant. On the reference model it loses to the global constant at every radius
//! that separates a reduced model from the full one at 60 % of the modes removed, so
//! [`crate::bound`] does not use it (measurements in `BOUND.md`, "Gates on per-position boxes").

use faer::{Mat, MatRef};

use crate::model::{Gate, gelu_tanh, gelu_tanh_deriv, sigmoid};

/// Upper bound on `max_x |GELU_tanh''(x)|` (`= √(2/π) ≈ 0.79788`, reached at 0; checked on a
/// fine grid in the tests).
pub const GELU_TANH_DERIV2_MAX: f64 = 0.798;

/// Upper bound on `max_x |GELU_tanh'(x)|` (`1.12899…`).
const GELU_TANH_DERIV_MAX: f64 = crate::bound::GELU_TANH_DERIV_MAX;

/// Relative allowance for the rounding of the `f64` sums below (each is a sum of at most `h`
/// products of non-negative or bounded terms; `h · 2⁻⁵³` is far below it for any `h` < 10⁶).
const ROUNDING: f64 = 1e-9;

/// A gate's weights prepared for Jacobian bounds on boxes (`|W|`, `‖W‖₂`, row 1-norms).
#[derive(Clone, Debug)]
pub struct GateBox {
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Identity,
    HalfGlu2(Weights),
    Quadratic(Weights),
}

#[derive(Clone, Debug)]
struct Weights {
    w: Mat<f64>,
    w_abs: Mat<f64>,
    b: Vec<f64>,
    /// `‖W‖₂` (with a small safety margin).
    wnorm: f64,
    /// `‖w_c‖₁` per output channel.
    row_l1: Vec<f64>,
    /// `x*`, the minimiser of `GELU_tanh`, and a lower bound on `GELU_tanh(x*)`.
    gelu_argmin: f64,
    gelu_min: f64,
}

/// The minimiser of `GELU_tanh` (where its derivative changes sign, on `[−2, 0]`), by bisection.
fn gelu_argmin() -> f64 {
    let (mut lo, mut hi) = (-2.0f64, 0.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if gelu_tanh_deriv(mid) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

impl Weights {
    fn new(w: &Mat<f64>, b: &[f64]) -> crate::Result<Self> {
        let x = gelu_argmin();
        Ok(Self {
            w: w.clone(),
            w_abs: Mat::from_fn(w.nrows(), w.ncols(), |i, j| w[(i, j)].abs()),
            b: b.to_vec(),
            wnorm: crate::bound::spectral_norm(w)?,
            row_l1: (0..w.nrows())
                .map(|c| (0..w.ncols()).map(|j| w[(c, j)].abs()).sum())
                .collect(),
            gelu_argmin: x,
            // The minimum is flat (GELU' = 0 there): the bisection's error moves it by far less.
            gelu_min: gelu_tanh(x) - 1e-12,
        })
    }

    /// `GELU_tanh([lo, hi]) ⊂ [g⁻, g⁺]`. The pad covers the rounding of `gelu_tanh`: relative
    /// for large values, absolute (`1 + tanh` cancels for negative arguments) for small ones.
    fn gelu_range(&self, lo: f64, hi: f64) -> (f64, f64) {
        let (a, b) = (gelu_tanh(lo), gelu_tanh(hi));
        let low = if lo < self.gelu_argmin && self.gelu_argmin < hi {
            self.gelu_min
        } else {
            a.min(b)
        };
        let pad = ROUNDING * a.abs().max(b.abs()) + 1e-15 * (1.0 + lo.abs().max(hi.abs()));
        (low - pad, a.max(b) + pad)
    }

    /// Bounds, for `M = diag(q) W diag(e)` with `|q_c| ≤ p_c` and `|e_j| ≤ d_j` (`d = None`: all
    /// ones), `‖M‖₂ ≤ min(max p · ‖W‖₂ · max d, ‖diag(p) |W| diag(d)‖₂)`, the latter by the Schur
    /// test `sqrt(max row sum · max column sum)` (`‖M‖₂ ≤ ‖|M|‖₂`, monotone in the entries).
    fn scaled_norm(&self, p: &[f64], d: Option<&[f64]>) -> f64 {
        let h = self.w.ncols();
        let pmax = p.iter().fold(0.0f64, |a, &x| a.max(x));
        let dmax = d.map_or(1.0, |d| d.iter().fold(0.0f64, |a, &x| a.max(x)));
        let crude = pmax * self.wnorm * dmax;
        // Row sums of diag(p)|W|diag(d) and column sums.
        let mut rows = 0.0f64;
        for (c, &pc) in p.iter().enumerate() {
            let s = match d {
                Some(d) => (0..h).map(|j| self.w_abs[(c, j)] * d[j]).sum::<f64>(),
                None => self.row_l1[c],
            };
            rows = rows.max(pc * s);
        }
        let mut cols = 0.0f64;
        for j in 0..h {
            let s: f64 = p
                .iter()
                .enumerate()
                .map(|(c, &pc)| pc * self.w_abs[(c, j)])
                .sum();
            cols = cols.max(s * d.map_or(1.0, |d| d[j]));
        }
        crude.min((rows * cols).sqrt()) * (1.0 + ROUNDING)
    }
}

/// Upper bound on `|GELU_tanh'|` over `[lo, hi]`: every point is within `(hi − lo)/2` of an
/// end, and `|GELU_tanh''| ≤ 0.798`; never above the global `1.13`. The absolute `1e-15` covers
/// the rounding of `gelu_tanh_deriv`.
fn gelu_deriv_bound(lo: f64, hi: f64) -> f64 {
    let ends = gelu_tanh_deriv(lo).abs().max(gelu_tanh_deriv(hi).abs());
    GELU_TANH_DERIV_MAX.min(ends + GELU_TANH_DERIV2_MAX * 0.5 * (hi - lo) + 1e-15)
}

/// Upper bound on `σ'(a) = σ(a)(1 − σ(a))` over `[m − ρ, m + ρ]`: `σ'` is even and decreases in
/// `|a|`, so its largest value is at the point closest to 0, `x = max(0, |m| − ρ)`; evaluated as
/// `e^{−x}/(1 + e^{−x})²`, which keeps its relative accuracy where `1 − σ(x)` would round to 0.
fn sigmoid_deriv_max(m: f64, rho: f64) -> f64 {
    let e = (-(m.abs() - rho).max(0.0)).exp();
    e / ((1.0 + e) * (1.0 + e)) * (1.0 + ROUNDING)
}

impl GateBox {
    /// Prepares `gate` (one SVD of `W`).
    ///
    /// # Errors
    /// [`crate::Error::LinAlg`] if the SVD fails.
    pub fn new(gate: &Gate) -> crate::Result<Self> {
        let kind = match gate {
            Gate::Identity => Kind::Identity,
            Gate::HalfGlu2 { w, b } => Kind::HalfGlu2(Weights::new(w, b)?),
            Gate::Quadratic { w, b } => Kind::Quadratic(Weights::new(w, b)?),
        };
        Ok(Self { kind })
    }

    /// Upper bound on `sup ‖J(v)‖₂` over the box `|v_c − y_c| ≤ radius` (module docs), `y` one
    /// position's gate input `[h]`, `radius ≥ 0` (a negative radius counts as 0; NaN gives `∞`).
    ///
    /// # Panics
    /// If `y` does not have the gate's `h` entries.
    pub fn jacobian_bound(&self, y: &[f64], radius: f64) -> f64 {
        if radius.is_nan() {
            // An unknown box certifies nothing.
            return f64::INFINITY;
        }
        let r = radius.max(0.0);
        match &self.kind {
            Kind::Identity => 1.0,
            Kind::HalfGlu2(wt) => {
                let h = wt.w.ncols();
                assert_eq!(
                    y.len(),
                    h,
                    "gate input of {} channels, gate of {h}",
                    y.len()
                );
                let (mut mid, mut half, mut d) = (vec![0.0; h], vec![0.0; h], vec![0.0; h]);
                for j in 0..h {
                    let (lo, hi) = (y[j] - r, y[j] + r);
                    let (g0, g1) = wt.gelu_range(lo, hi);
                    mid[j] = 0.5 * (g0 + g1);
                    half[j] = 0.5 * (g1 - g0);
                    d[j] = gelu_deriv_bound(lo, hi);
                }
                let gmax = mid.iter().fold(0.0f64, |a, x| a.max(x.abs())) + r;
                let (mut sig, mut p) = (0.0f64, vec![0.0; h]);
                for c in 0..h {
                    let m: f64 = (0..h).map(|j| wt.w[(c, j)] * mid[j]).sum::<f64>() + wt.b[c];
                    let rho: f64 = (0..h).map(|j| wt.w_abs[(c, j)] * half[j]).sum::<f64>()
                        + ROUNDING * (wt.row_l1[c] * gmax + wt.b[c].abs());
                    sig = sig.max(sigmoid(m + rho));
                    p[c] = (y[c].abs() + r) * sigmoid_deriv_max(m, rho);
                }
                (sig + wt.scaled_norm(&p, Some(&d))) * (1.0 + ROUNDING)
            }
            Kind::Quadratic(wt) => {
                let h = wt.w.ncols();
                assert_eq!(
                    y.len(),
                    h,
                    "gate input of {} channels, gate of {h}",
                    y.len()
                );
                let ymax = y.iter().fold(0.0f64, |a, x| a.max(x.abs()));
                let mut diag = 0.0f64;
                for c in 0..h {
                    let a: f64 = (0..h).map(|j| wt.w[(c, j)] * y[j]).sum::<f64>() + wt.b[c];
                    let slack = ROUNDING * (wt.row_l1[c] * ymax + wt.b[c].abs());
                    diag = diag.max(a.abs() + wt.row_l1[c] * r + slack);
                }
                let p: Vec<f64> = y.iter().map(|v| v.abs() + r).collect();
                (diag + wt.scaled_norm(&p, None)) * (1.0 + ROUNDING)
            }
        }
    }

    /// For each radius `R` in `radii`, the maximum over the rows of `y` (`[len, h]`, one
    /// position per row) of [`GateBox::jacobian_bound`]: a Lipschitz constant of the gate on
    /// the union of the boxes `B_k(R)`, for pairs of points in one box.
    ///
    /// # Panics
    /// If `y` does not have the gate's `h` columns.
    pub fn lipschitz_profile(&self, y: MatRef<'_, f64>, radii: &[f64]) -> Vec<f64> {
        let mut row = vec![0.0; y.ncols()];
        let mut out = vec![0.0f64; radii.len()];
        for k in 0..y.nrows() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = y[(k, j)];
            }
            for (o, &r) in out.iter_mut().zip(radii) {
                *o = o.max(self.jacobian_bound(&row, r));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    //! Each interval enclosure on its own against dense samples of its interval (the Jacobian
    //! bound as a whole is tested in `tests/gate_box.rs`).
    use super::*;
    use rand::{Rng, SeedableRng};

    fn samples(lo: f64, hi: f64, extra: &[f64]) -> Vec<f64> {
        let mut xs: Vec<f64> = (0..=2000)
            .map(|i| lo + (hi - lo) * i as f64 / 2000.0)
            .collect();
        xs.extend(extra.iter().copied().filter(|x| (lo..=hi).contains(x)));
        xs
    }

    fn intervals() -> Vec<(f64, f64)> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut out = vec![
            (-0.8, -0.7),
            (0.5, 2.5),
            (-2.5, -0.5),
            (-40.0, -30.0),
            (-3.0, 5.0),
        ];
        for _ in 0..200 {
            let c: f64 = rng.random_range(-8.0..8.0);
            let r = [0.0, 1e-3, 0.3, 2.0, 6.0][rng.random_range(0..5)];
            out.push((c - r, c + r));
        }
        out
    }

    #[test]
    fn gelu_range_encloses_gelu_and_is_tight() {
        let gate = Weights::new(&Mat::identity(1, 1), &[0.0]).unwrap();
        let xstar = gate.gelu_argmin;
        for (lo, hi) in intervals() {
            let (g0, g1) = gate.gelu_range(lo, hi);
            let vals: Vec<f64> = samples(lo, hi, &[xstar])
                .iter()
                .map(|&x| gelu_tanh(x))
                .collect();
            let (min, max) = vals
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            assert!(
                g0 <= min && max <= g1,
                "[{lo}, {hi}]: [{g0}, {g1}] vs [{min}, {max}]"
            );
            // Tight up to the pads (the exact minimum is at x* when it is inside).
            assert!(
                min - g0 < 1e-6 && g1 - max < 1e-6,
                "[{lo}, {hi}]: loose [{g0}, {g1}]"
            );
        }
    }

    #[test]
    fn gelu_deriv_bound_encloses_the_derivative() {
        let mut interior_needed = false;
        for (lo, hi) in intervals() {
            let d = gelu_deriv_bound(lo, hi);
            let max = samples(lo, hi, &[])
                .iter()
                .fold(0.0f64, |a, &x| a.max(gelu_tanh_deriv(x).abs()));
            assert!(max <= d, "[{lo}, {hi}]: |GELU'| reaches {max} > {d}");
            let ends = gelu_tanh_deriv(lo).abs().max(gelu_tanh_deriv(hi).abs());
            interior_needed |= max > ends + 1e-6;
        }
        // The intervals include ones whose maximum is inside (where the GELU'' term matters).
        assert!(interior_needed);
    }

    #[test]
    fn sigmoid_deriv_max_encloses_the_derivative() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        for _ in 0..300 {
            let m: f64 = rng.random_range(-60.0..60.0);
            let rho: f64 = [0.0, 0.1, 3.0, 30.0][rng.random_range(0..4)];
            let bound = sigmoid_deriv_max(m, rho);
            for a in samples(m - rho, m + rho, &[0.0]) {
                // σ(a) σ(−a) keeps its relative accuracy for large |a|.
                let exact = sigmoid(a) * sigmoid(-a);
                assert!(exact <= bound, "m {m} ρ {rho} a {a}: σ' {exact} > {bound}");
            }
        }
        assert!(sigmoid_deriv_max(40.0, 0.0) > 0.0);
    }

    #[test]
    fn nan_radius_certifies_nothing() {
        let gb = GateBox::new(&Gate::HalfGlu2 {
            w: Mat::identity(2, 2),
            b: vec![0.0; 2],
        })
        .unwrap();
        assert_eq!(gb.jacobian_bound(&[0.5, 1.0], f64::NAN), f64::INFINITY);
    }
}
