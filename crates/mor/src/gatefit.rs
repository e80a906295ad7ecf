//! The LQO model of a gate at its operating point: a statistical (Bussgang) linearisation with a
//! least-squares quadratic part, fitted on recorded gate inputs.
//!
//! `lqo-h2` sees each layer as a linear-quadratic-output system `out ≈ E y + (yᵀ N_i y)_i` of
//! the SSM output `y` ([`crate::lqo`]). For S5's `half_glu2` gate, `out = y ⊙ σ(W GELU(y) + b)`,
//! the second-order Taylor expansion at `y = 0` ([`crate::lqo::lqo_structured`]) gives
//! `E = diag(σ(b))`, but on real inputs the gate's argument sits far from `b` and most entries
//! are saturated, so that model describes the gate poorly. This module fits the model where the
//! gate works instead, on the gate inputs `y_t` the full model records on calibration (training)
//! sequences:
//!
//! - **linear part** (Bussgang, 1952; the statistical linearisation of a memoryless
//!   non-linearity): `E = mean_t ∂out/∂y (y_t)`, the average Jacobian, here
//!   `∂out_i/∂y_j = δ_ij σ(a_i) + y_i σ'(a_i) W_ij GELU'(y_j)`, `a = W GELU(y) + b`; a dense
//!   `[h, h]` matrix;
//! - **quadratic part**: the rank-2 forms of the Taylor model, `c_i · y_i (w_iᵀ y)` with `w_i`
//!   row `i` of `W`, with each `c_i` fitted by least squares to the residual
//!   `out_i − (E y)_i` (Taylor: `c_i = σ'(b_i)/2`).
//!
//! The fit also reports each model's relative output error `Σ_t ‖out_t − model(y_t)‖² / Σ_t
//! ‖out_t‖²` on the same data, for the Taylor model and for the fitted one. Both are computed
//! from second moments accumulated in one pass (no stored activations). Gates that are already
//! linear-quadratic (`quadratic`, identity) need no fit: their LQO model is exact.

use crate::error::{Error, Result};
use crate::h2opt::Quad;
use crate::model::{Gate, Layer, sigmoid};
pub use crate::model::{gelu_tanh, gelu_tanh_deriv};
use faer::{Mat, MatRef};

/// An LQO read-out of a layer: `E` (`None` = identity) and the quadratic forms.
#[derive(Clone, Debug)]
pub struct LqoTerms {
    /// Linear part `E`, `[h, h]`.
    pub e: Option<Mat<f64>>,
    /// Quadratic forms `N_i`.
    pub quad: Option<Quad>,
}

/// Relative output errors of the two LQO models of a gate on the fitting data.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct GateFitReport {
    /// `Σ‖out − model‖² / Σ‖out‖²` of the Taylor model at `y = 0`.
    pub taylor_error: f64,
    /// The same for the fitted (Bussgang + least-squares) model.
    pub fitted_error: f64,
    /// Mean gate opening `mean σ(a)` over positions and channels.
    pub mean_opening: f64,
    /// Recorded positions.
    pub positions: usize,
}

/// One-pass accumulator of the fit of a `half_glu2` gate ([module doc](self)).
#[derive(Clone, Debug)]
pub struct GateFit {
    w: Mat<f64>,
    b: Vec<f64>,
    /// `Σ_t J_t`.
    jac: Mat<f64>,
    /// `Σ y yᵀ`, `Σ y outᵀ`, `Σ y qᵀ` (`q_i = y_i (w_iᵀ y)`), each `[h, h]`.
    yy: Mat<f64>,
    yo: Mat<f64>,
    yq: Mat<f64>,
    /// Per channel: `Σ out²`, `Σ out q`, `Σ q²`.
    oo: Vec<f64>,
    oq: Vec<f64>,
    qq: Vec<f64>,
    opening: f64,
    positions: usize,
}

impl GateFit {
    /// An empty fit for `layer`'s gate, or `None` when its LQO model is exact (`quadratic`,
    /// identity).
    pub fn new(layer: &Layer) -> Option<Self> {
        let Gate::HalfGlu2 { w, b } = &layer.gate else {
            return None;
        };
        let h = b.len();
        let z = || Mat::<f64>::zeros(h, h);
        Some(GateFit {
            w: w.clone(),
            b: b.clone(),
            jac: z(),
            yy: z(),
            yo: z(),
            yq: z(),
            oo: vec![0.0; h],
            oq: vec![0.0; h],
            qq: vec![0.0; h],
            opening: 0.0,
            positions: 0,
        })
    }

    /// Adds the gate inputs `y` `[len, h]` of one sequence (true positions only).
    ///
    /// # Errors
    /// [`Error::Shape`] for a wrong channel count; [`Error::Argument`] for non-finite values.
    pub fn add(&mut self, y: MatRef<'_, f64>) -> Result<()> {
        let h = self.b.len();
        if y.ncols() != h {
            return Err(Error::Shape(format!(
                "gate fit: {} channels, the gate has {h}",
                y.ncols()
            )));
        }
        if (0..h).any(|j| (0..y.nrows()).any(|t| !y[(t, j)].is_finite())) {
            return Err(Error::Argument("gate fit: a non-finite gate input".into()));
        }
        let len = y.nrows();
        let g = Mat::from_fn(len, h, |t, j| gelu_tanh(y[(t, j)]));
        let a = &g * self.w.transpose();
        let wy = y * self.w.transpose();
        let (mut s, mut ys, mut gd) = (g.clone(), g.clone(), g);
        let mut out = Mat::<f64>::zeros(len, h);
        let mut q = Mat::<f64>::zeros(len, h);
        for t in 0..len {
            for i in 0..h {
                let yi = y[(t, i)];
                let si = sigmoid(a[(t, i)] + self.b[i]);
                s[(t, i)] = si;
                ys[(t, i)] = yi * si * (1.0 - si);
                gd[(t, i)] = gelu_tanh_deriv(yi);
                out[(t, i)] = yi * si;
                q[(t, i)] = yi * wy[(t, i)];
                self.oo[i] += out[(t, i)] * out[(t, i)];
                self.oq[i] += out[(t, i)] * q[(t, i)];
                self.qq[i] += q[(t, i)] * q[(t, i)];
                self.opening += si;
            }
        }
        // Σ_t J_t = diag(Σ σ(a)) + (Σ_t (y ⊙ σ'(a)) GELU'(y)ᵀ) ⊙ W.
        let cross = ys.transpose() * &gd;
        for i in 0..h {
            for j in 0..h {
                self.jac[(i, j)] += cross[(i, j)] * self.w[(i, j)];
            }
            self.jac[(i, i)] += (0..len).map(|t| s[(t, i)]).sum::<f64>();
        }
        self.yy += y.transpose() * y;
        self.yo += y.transpose() * &out;
        self.yq += y.transpose() * &q;
        self.positions += len;
        Ok(())
    }

    /// `Σ_t (out_i − e_iᵀ y − c q_i)²` for channel `i` with linear row `e_i` (`e(j)`) and
    /// quadratic coefficient `c`.
    fn channel_error(&self, i: usize, e: &dyn Fn(usize) -> f64, c: f64) -> f64 {
        let h = self.b.len();
        let mut ey_out = 0.0;
        let mut ey_q = 0.0;
        let mut eyye = 0.0;
        for j in 0..h {
            let ej = e(j);
            if ej == 0.0 {
                continue;
            }
            ey_out += ej * self.yo[(j, i)];
            ey_q += ej * self.yq[(j, i)];
            eyye += ej * (0..h).map(|k| self.yy[(j, k)] * e(k)).sum::<f64>();
        }
        self.oo[i] - 2.0 * ey_out - 2.0 * c * self.oq[i]
            + eyye
            + 2.0 * c * ey_q
            + c * c * self.qq[i]
    }

    /// The fitted LQO terms and the report.
    ///
    /// # Errors
    /// [`Error::Argument`] when nothing was recorded.
    pub fn solve(&self) -> Result<(LqoTerms, GateFitReport)> {
        if self.positions == 0 {
            return Err(Error::Argument("gate fit: no gate inputs recorded".into()));
        }
        let h = self.b.len();
        let n = self.positions as f64;
        let e = Mat::from_fn(h, h, |i, j| self.jac[(i, j)] / n);
        // c_i = Σ (out_i − e_iᵀ y) q_i / Σ q_i².
        let c: Vec<f64> = (0..h)
            .map(|i| {
                let num = self.oq[i] - (0..h).map(|j| e[(i, j)] * self.yq[(j, i)]).sum::<f64>();
                if self.qq[i] > 0.0 {
                    num / self.qq[i]
                } else {
                    0.0
                }
            })
            .collect();
        let total: f64 = self.oo.iter().sum();
        let s0: Vec<f64> = self.b.iter().map(|&x| sigmoid(x)).collect();
        let taylor: f64 = (0..h)
            .map(|i| {
                let diag = |j: usize| if j == i { s0[i] } else { 0.0 };
                self.channel_error(i, &diag, 0.5 * s0[i] * (1.0 - s0[i]))
            })
            .sum();
        let fitted: f64 = (0..h)
            .map(|i| self.channel_error(i, &|j| e[(i, j)], c[i]))
            .sum();
        let rel = |x: f64| {
            if total > 0.0 {
                (x / total).max(0.0)
            } else {
                0.0
            }
        };
        let terms = LqoTerms {
            e: Some(e),
            quad: Some(Quad::Rank2 {
                sel: (0..h).collect(),
                v: Mat::from_fn(h, h, |i, j| c[i] * self.w[(i, j)]),
            }),
        };
        Ok((
            terms,
            GateFitReport {
                taylor_error: rel(taylor),
                fitted_error: rel(fitted),
                mean_opening: self.opening / (n * h as f64),
                positions: self.positions,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gram::tests::random_block;
    use crate::model::Norm;
    use rand::{Rng, SeedableRng};

    fn layer(h: usize, seed: u64) -> Layer {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Layer {
            norm: Norm::Identity,
            ssm: random_block(seed, 3, h, h, false, 0, None, 0.9),
            gate: Gate::HalfGlu2 {
                w: Mat::from_fn(h, h, |_, _| rng.random_range(-1.0..1.0)),
                b: (0..h).map(|_| rng.random_range(-3.0..3.0)).collect(),
            },
        }
    }

    fn gate_out(l: &Layer, y: &[f64]) -> Vec<f64> {
        let out = l.gate.output(MatRef::from_row_major_slice(y, 1, y.len()));
        (0..y.len()).map(|i| out[(0, i)]).collect()
    }

    #[test]
    fn fit_is_the_mean_jacobian_and_errors_match_brute_force() {
        let h = 4;
        let l = layer(h, 5);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let len = 300;
        let y = Mat::from_fn(len, h, |_, _| 2.0 * rng.random_range(-1.0..1.0) + 0.5);
        let mut fit = GateFit::new(&l).unwrap();
        fit.add(y.as_ref().subrows(0, 120)).unwrap();
        fit.add(y.as_ref().subrows(120, 180)).unwrap();
        let (terms, rep) = fit.solve().unwrap();
        let e = terms.e.unwrap();
        // E: the mean of finite-difference Jacobians.
        let mut jbar = Mat::<f64>::zeros(h, h);
        for t in 0..len {
            let yt: Vec<f64> = (0..h).map(|j| y[(t, j)]).collect();
            for j in 0..h {
                let (mut p, mut m) = (yt.clone(), yt.clone());
                p[j] += 1e-6;
                m[j] -= 1e-6;
                let (op, om) = (gate_out(&l, &p), gate_out(&l, &m));
                for i in 0..h {
                    jbar[(i, j)] += (op[i] - om[i]) / 2e-6 / len as f64;
                }
            }
        }
        assert!(
            (&e - &jbar).norm_max() < 1e-7,
            "{:?}",
            (&e - &jbar).norm_max()
        );
        // Output errors of both models, by brute force.
        let Gate::HalfGlu2 { w, b } = &l.gate else {
            unreachable!()
        };
        let Some(Quad::Rank2 { v, .. }) = terms.quad else {
            panic!()
        };
        let (mut tot, mut et, mut ef) = (0.0, 0.0, 0.0);
        let mut best_c_err = 0.0;
        for t in 0..len {
            let yt: Vec<f64> = (0..h).map(|j| y[(t, j)]).collect();
            let out = gate_out(&l, &yt);
            for i in 0..h {
                let wy: f64 = (0..h).map(|j| w[(i, j)] * yt[j]).sum();
                let vy: f64 = (0..h).map(|j| v[(i, j)] * yt[j]).sum();
                let s0 = sigmoid(b[i]);
                let taylor = s0 * yt[i] + 0.5 * s0 * (1.0 - s0) * yt[i] * wy;
                let ey: f64 = (0..h).map(|j| e[(i, j)] * yt[j]).sum();
                let fitted = ey + yt[i] * vy;
                tot += out[i] * out[i];
                et += (out[i] - taylor).powi(2);
                ef += (out[i] - fitted).powi(2);
                best_c_err += (out[i] - ey).powi(2);
            }
        }
        assert!(
            (rep.taylor_error - et / tot).abs() < 1e-9,
            "{} vs {}",
            rep.taylor_error,
            et / tot
        );
        assert!(
            (rep.fitted_error - ef / tot).abs() < 1e-9,
            "{} vs {}",
            rep.fitted_error,
            ef / tot
        );
        // The least-squares quadratic never does worse than none.
        assert!(ef <= best_c_err + 1e-9);
        assert_eq!(rep.positions, len);
        assert!(
            GateFit::new(&Layer {
                gate: Gate::Identity,
                ..l.clone()
            })
            .is_none()
        );
        let mut bad = GateFit::new(&l).unwrap();
        assert!(bad.add(Mat::<f64>::zeros(3, h + 1).as_ref()).is_err());
        assert!(bad.solve().is_err());
    }
}
