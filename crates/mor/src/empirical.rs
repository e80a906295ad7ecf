//! Empirical controllability Gramians: the state covariance of a block driven by recorded inputs.
//!
//! Balanced truncation weighs the states by the controllability Gramian
//! `P_w = Σ_{j≥0} A_w^j B_w B_wᵀ (A_w^j)ᵀ`, the state covariance under **white** unit-variance
//! input. A layer of a trained deep SSM does not see white input: its input is the previous
//! layer's output, with its own spectrum and channel correlations. The empirical Gramian replaces
//! `P_w` by the covariance of the states the layer actually visits,
//!
//! ```text
//! P_emp = (1/N) Σ_sequences Σ_t w_t w_tᵀ,   w_t = [Re x_t; Im x_t],   x_t = Λ̄ x_{t−1} + B̄ u_t,
//! ```
//!
//! over the `N` recorded positions (the empirical Gramians of Lall, Marsden & Glavaški, Int. J.
//! Robust Nonlinear Control 12(6), 2002, there from impulse responses; with recorded inputs it is
//! the snapshot covariance of balanced POD, Rowley, Int. J. Bifurcation Chaos 15(3), 2005). For
//! white unit-variance input it converges to `P_w` ([`crate::balance::real_gramians`]); for unit
//! impulses on each input channel, summed over channels, `N · P_emp` is exactly the finite-horizon
//! `P_w` (tested). A bidirectional block's forward and reverse scans share `Λ̄`, `B̄` and are
//! balanced jointly ([`crate::bt`]); their state covariances differ (the reverse scan sees the
//! sequence backwards), and the Gramian used is their average.

use crate::block::DiagBlock;
use crate::error::{Error, Result};
use faer::{Mat, MatRef};

/// Accumulates the empirical controllability Gramian of one block over input sequences.
///
/// `P_emp` is `[2n, 2n]` in the real state `w = [Re x; Im x]` of [`crate::balance::real_realization`]
/// (module doc for the formula and sources). Accumulation is in f64.
#[derive(Clone, Debug)]
pub struct EmpiricalGramian {
    lambda_re: Vec<f64>,
    lambda_im: Vec<f64>,
    /// `Re B̄ᵀ`, `Im B̄ᵀ`, `[m, n]` each.
    b_re_t: Mat<f64>,
    b_im_t: Mat<f64>,
    bidirectional: bool,
    /// `Σ w_t w_tᵀ` over every recorded position (and scan direction), `[2n, 2n]`.
    sum: Mat<f64>,
    /// Recorded positions, counted once per scan direction.
    count: usize,
}

impl EmpiricalGramian {
    /// An empty accumulator for `block` (its `Λ̄`, `B̄` and scan directions; the outputs do not
    /// enter a controllability Gramian).
    pub fn new(block: &DiagBlock) -> Self {
        let n = block.n_modes();
        let m = block.n_inputs();
        Self {
            lambda_re: block.lambda.iter().map(|l| l.re).collect(),
            lambda_im: block.lambda.iter().map(|l| l.im).collect(),
            b_re_t: Mat::from_fn(m, n, |s, i| block.b[(i, s)].re),
            b_im_t: Mat::from_fn(m, n, |s, i| block.b[(i, s)].im),
            bidirectional: block.is_bidirectional(),
            sum: Mat::zeros(2 * n, 2 * n),
            count: 0,
        }
    }

    /// Adds one input sequence `u` `[len, m]` (row `t` is `u_t`; true positions only, no
    /// padding): its forward scan from `x = 0`, and for a bidirectional block also its reverse
    /// scan from the last row.
    ///
    /// # Errors
    /// [`Error::Shape`] if `u` does not have `m` columns; [`Error::Argument`] if it holds a
    /// non-finite value.
    pub fn add(&mut self, u: MatRef<'_, f64>) -> Result<()> {
        let (len, m) = (u.nrows(), self.b_re_t.nrows());
        if u.ncols() != m {
            return Err(Error::Shape(format!(
                "empirical Gramian: input has {} channels, the block has m = {m}",
                u.ncols()
            )));
        }
        if (0..len).any(|t| (0..m).any(|s| !u[(t, s)].is_finite())) {
            return Err(Error::Argument(
                "empirical Gramian: the input holds a non-finite value".into(),
            ));
        }
        // B̄ u_t for every t: real and imaginary parts, [len, n] each.
        let v_re = u * &self.b_re_t;
        let v_im = u * &self.b_im_t;
        self.scan(&v_re, &v_im, false);
        if self.bidirectional {
            self.scan(&v_re, &v_im, true);
        }
        Ok(())
    }

    /// Runs one scan over the driven terms `v = B̄ u` and adds `Σ_t w_t w_tᵀ` to the sum.
    fn scan(&mut self, v_re: &Mat<f64>, v_im: &Mat<f64>, reverse: bool) {
        let w = scan(&self.lambda_re, &self.lambda_im, v_re, v_im, reverse);
        self.sum += w.transpose() * &w;
        self.count += w.nrows();
    }

    /// Recorded positions so far (counted once per scan direction).
    pub fn positions(&self) -> usize {
        self.count
    }

    /// The empirical Gramian `P_emp = Σ w_t w_tᵀ / N`, `[2n, 2n]`, symmetric.
    ///
    /// # Errors
    /// [`Error::Argument`] if no position was recorded.
    pub fn gramian(&self) -> Result<Mat<f64>> {
        if self.count == 0 {
            return Err(Error::Argument(
                "empirical Gramian: no input recorded (add at least one sequence)".into(),
            ));
        }
        let k = self.sum.nrows();
        let s = 1.0 / self.count as f64;
        Ok(Mat::from_fn(k, k, |i, j| {
            0.5 * s * (self.sum[(i, j)] + self.sum[(j, i)])
        }))
    }
}

/// The real states `w_t = [Re x_t; Im x_t]` of `block` driven by `u` `[len, m]` from `x = 0`, as
/// rows `[len, 2n]`: the forward scan `x_t = Λ̄ x_{t−1} + B̄ u_t`, or with `reverse` the reverse
/// scan `x_t = Λ̄ x_{t+1} + B̄ u_t` from the last row. The block's output is `w_t C_wᵀ` with the
/// `C_w` (or `C_rev,w`) of [`crate::balance::real_realization`].
///
/// # Errors
/// [`Error::Shape`] if `u` does not have `m` columns.
pub fn real_states(block: &DiagBlock, u: MatRef<'_, f64>, reverse: bool) -> Result<Mat<f64>> {
    let (n, m) = (block.n_modes(), block.n_inputs());
    if u.ncols() != m {
        return Err(Error::Shape(format!(
            "input has {} channels, the block has m = {m}",
            u.ncols()
        )));
    }
    let v_re = u * Mat::from_fn(m, n, |s, i| block.b[(i, s)].re);
    let v_im = u * Mat::from_fn(m, n, |s, i| block.b[(i, s)].im);
    let (lr, li): (Vec<f64>, Vec<f64>) = block.lambda.iter().map(|l| (l.re, l.im)).unzip();
    Ok(scan(&lr, &li, &v_re, &v_im, reverse))
}

/// One diagonal scan over the driven terms `v = B̄ u` (`[len, n]`, real and imaginary parts):
/// the states `[len, 2n]` as `[Re x_t, Im x_t]` rows.
fn scan(
    lambda_re: &[f64],
    lambda_im: &[f64],
    v_re: &Mat<f64>,
    v_im: &Mat<f64>,
    reverse: bool,
) -> Mat<f64> {
    let (len, n) = (v_re.nrows(), v_re.ncols());
    let mut w = Mat::<f64>::zeros(len, 2 * n);
    let (mut xr, mut xi) = (vec![0.0; n], vec![0.0; n]);
    for k in 0..len {
        let t = if reverse { len - 1 - k } else { k };
        for i in 0..n {
            let (lr, li) = (lambda_re[i], lambda_im[i]);
            let r = lr * xr[i] - li * xi[i] + v_re[(t, i)];
            let im = lr * xi[i] + li * xr[i] + v_im[(t, i)];
            xr[i] = r;
            xi[i] = im;
            w[(t, i)] = r;
            w[(t, n + i)] = im;
        }
    }
    w
}

/// Per-mode output energy under recorded inputs (the ranking of `emodal`): for stored mode `i`,
/// the mean squared norm of its contribution `2 Re(c_i x_{t,i})` to the state output `s`
/// (`c_i` the column of `C̃`; for a bidirectional block plus that of `C̃_rev`), from the `2×2`
/// block of `P_emp` at `(Re x_i, Im x_i)`:
///
/// ```text
/// e_i = Σ_{C ∈ {C̃, C̃_rev}} Σ_o 4 (Re(c_oi)² P_rr − 2 Re(c_oi) Im(c_oi) P_ri + Im(c_oi)² P_ii).
/// ```
///
/// Cross-mode terms are left out, as in modal truncation; the block's LQO read-out (`E`, `N_i`)
/// does not enter. With the white-input Gramian `P_w` a causal block's energies are its per-mode
/// h2 contributions [`crate::modes::mode_h2_scores`] (tested); with recorded inputs they measure
/// the output power each mode carries on those inputs. A bidirectional block's reverse part uses
/// the same (averaged, see the module doc) covariance as its forward part.
///
/// # Errors
/// [`Error::Shape`] if `p_emp` is not `[2n, 2n]`.
pub fn mode_output_energies(block: &DiagBlock, p_emp: &Mat<f64>) -> Result<Vec<f64>> {
    let n = block.n_modes();
    if p_emp.nrows() != 2 * n || p_emp.ncols() != 2 * n {
        return Err(Error::Shape(format!(
            "empirical Gramian is {}×{}, the block's real state has {} entries",
            p_emp.nrows(),
            p_emp.ncols(),
            2 * n
        )));
    }
    let outputs: Vec<&Mat<faer::c64>> = std::iter::once(&block.c)
        .chain(block.c_rev.as_ref())
        .collect();
    Ok((0..n)
        .map(|i| {
            let (prr, pri, pii) = (p_emp[(i, i)], p_emp[(i, n + i)], p_emp[(n + i, n + i)]);
            outputs
                .iter()
                .map(|c| {
                    (0..c.nrows())
                        .map(|o| {
                            let (a, b) = (c[(o, i)].re, c[(o, i)].im);
                            4.0 * (a * a * prr - 2.0 * a * b * pri + b * b * pii)
                        })
                        .sum::<f64>()
                })
                .sum()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gram::tests::random_block;

    /// `Σ_{0≤j<T} A^j B Bᵀ (A^j)ᵀ` of the real realisation, by brute force.
    fn finite_gramian(block: &DiagBlock, t: usize) -> Mat<f64> {
        let (a, b, _, _) = crate::balance::real_realization(block);
        let mut ajb = b.clone();
        let mut p = Mat::<f64>::zeros(a.nrows(), a.nrows());
        for _ in 0..t {
            p += &ajb * ajb.transpose();
            ajb = &a * &ajb;
        }
        p
    }

    #[test]
    fn unit_impulses_give_the_controllability_gramian() {
        // Causal block: an impulse on channel s at t = 0 drives w_t = A^t B e_s, so over the m
        // impulse sequences of length T, N · P_emp = Σ_{j<T} A^j B Bᵀ (A^j)ᵀ exactly.
        let mut block = random_block(3, 5, 3, 2, false, 0, None, 0.7);
        block.c_rev = None;
        let (m, t) = (block.n_inputs(), 60);
        let mut acc = EmpiricalGramian::new(&block);
        for s in 0..m {
            let u = Mat::from_fn(t, m, |k, c| if k == 0 && c == s { 1.0 } else { 0.0 });
            acc.add(u.as_ref()).unwrap();
        }
        assert_eq!(acc.positions(), m * t);
        let p = acc.gramian().unwrap() * (m * t) as f64;
        let want = finite_gramian(&block, t);
        let err = (&p - &want).norm_max() / want.norm_max();
        assert!(err < 1e-13, "relative error {err}");
        // … and the closed-form infinite-horizon Gramian once the impulse response has decayed.
        let (pw, _) = crate::balance::real_gramians(&block, false);
        let err = (&p - &pw).norm_max() / pw.norm_max();
        assert!(err < 1e-8, "against the closed form: {err}");
    }

    #[test]
    fn bidirectional_block_averages_both_scan_directions() {
        let block = random_block(4, 4, 2, 2, true, 0, None, 0.8);
        assert!(block.is_bidirectional());
        let mut causal = block.clone();
        causal.c_rev = None;
        let u = Mat::from_fn(37, 2, |t, s| ((t * 7 + s * 3) % 11) as f64 - 5.0);
        let u_rev = Mat::from_fn(37, 2, |t, s| u[(36 - t, s)]);
        let mut both = EmpiricalGramian::new(&block);
        both.add(u.as_ref()).unwrap();
        let (mut fwd, mut bwd) = (
            EmpiricalGramian::new(&causal),
            EmpiricalGramian::new(&causal),
        );
        fwd.add(u.as_ref()).unwrap();
        bwd.add(u_rev.as_ref()).unwrap();
        let want = (fwd.gramian().unwrap() + bwd.gramian().unwrap()) * 0.5;
        let got = both.gramian().unwrap();
        assert!((&got - &want).norm_max() < 1e-12 * want.norm_max());
        assert_eq!(both.positions(), 2 * 37);
    }

    #[test]
    fn mode_energies_are_the_measured_output_power_of_each_mode() {
        // Causal block: e_i · N is exactly Σ_t ‖2 Re(c_i x_{t,i})‖² of a simulation.
        let mut block = random_block(6, 4, 3, 2, false, 0, None, 0.9);
        block.c_rev = None;
        let (m, len) = (3, 50);
        let u = Mat::from_fn(len, m, |t, s| (((t * 5 + s * 11) % 13) as f64 - 6.0) / 6.0);
        let mut acc = EmpiricalGramian::new(&block);
        acc.add(u.as_ref()).unwrap();
        let e = mode_output_energies(&block, &acc.gramian().unwrap()).unwrap();
        for (i, &ei) in e.iter().enumerate() {
            let mut x = faer::c64::new(0.0, 0.0);
            let mut power = 0.0;
            for t in 0..len {
                let bu: faer::c64 = (0..m).map(|s| block.b[(i, s)] * u[(t, s)]).sum();
                x = block.lambda[i] * x + bu;
                power += (0..block.n_outputs())
                    .map(|o| (2.0 * (block.c[(o, i)] * x).re).powi(2))
                    .sum::<f64>();
            }
            let want = power / len as f64;
            assert!(
                (ei - want).abs() <= 1e-12 * want,
                "mode {i}: {ei} vs {want}"
            );
        }
        // With the white-input Gramian: the per-mode h2 contributions of `modal`.
        let (pw, _) = crate::balance::real_gramians(&block, false);
        let e = mode_output_energies(&block, &pw).unwrap();
        let h2 = crate::modes::mode_h2_scores(&block);
        for (a, b) in e.iter().zip(&h2) {
            assert!((a - b).abs() <= 1e-10 * b, "{a} vs {b}");
        }
        assert!(mode_output_energies(&block, &Mat::zeros(3, 3)).is_err());
    }

    #[test]
    fn bad_inputs_are_rejected() {
        let block = random_block(5, 3, 2, 2, false, 0, None, 0.8);
        let mut acc = EmpiricalGramian::new(&block);
        assert!(acc.gramian().is_err());
        assert!(acc.add(Mat::<f64>::zeros(4, 3).as_ref()).is_err());
        let mut u = Mat::<f64>::zeros(4, 2);
        u[(1, 1)] = f64::NAN;
        assert!(acc.add(u.as_ref()).is_err());
    }
}
