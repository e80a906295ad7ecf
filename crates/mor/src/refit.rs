//! Least-squares refit of a reduced block's output matrices on recorded inputs (a post-step that
//! composes with every reducer; see [`crate::recipe`]).
//!
//! Every reducer keeps, for the modes it keeps, read-outs chosen for the *full* state: modal
//! truncations keep the original columns of `C̃`, `C̃_rev`; balanced and h2-optimal reductions
//! project them. Once modes are gone these are no longer the best read-out of the kept states.
//! For fixed reduced dynamics `(Λ̂, B̂)`, the output matrices minimising the output error
//! over recorded inputs are the least-squares fit
//!
//! ```text
//! Ĉ_J = argmin_C Σ_t ‖s_t − C ẑ_t‖² + ρ ‖C‖_F²,       Ĉ_J = [Ĉ_w, Ĉ_rev,w]   ([p, 4r])
//!     = X_ᵀ (G + ρ I)⁻¹,   G = Σ_t ẑ_t ẑ_tᵀ,   X = Σ_t ẑ_t s_tᵀ,
//! ```
//!
//! with `ẑ_t = [ŵ_t; ŵ'_t]` the reduced block's **joint** forward and reverse real states
//! (`w = [Re x; Im x]`, [`crate::balance::real_realization`]; only `ŵ_t` for a causal block) and
//! `s_t` the full block's state output on the same input (`y_t − D u_t`; `D` is shared and
//! unchanged). With white unit-variance input, `G → P̂` and `X → X_cross Cᵀ`, so the fit is the
//! h2-optimal output matrix of the first-order (Wilson) condition `Ĉ P̂ = C X_cross` (Wilson,
//! Int. J. Control 1970; Gugercin, Antoulas & Beattie, SIAM J. Matrix Anal. Appl. 30(2), 2008,
//! Thm 3.4); with recorded inputs the white-noise Gramians become empirical ones, as in
//! [`crate::empirical`]. For a modal truncation (kept states a subset of the full ones) it is the
//! closed form `Ĉ = C P[all, keep] P[keep, keep]⁻¹` of the joint state covariance `P`.
//!
//! The ridge is relative: `ρ = ridge · tr(G) / dim(ẑ)`. The fit is solved through the symmetric
//! eigendecomposition of `G` (faer) as the minimum-norm solution: directions of `ẑ` that the
//! data never excite (`μ + ρ ≤ 1e-12 μ_max`, e.g. the imaginary part of a real mode of a
//! re-diagonalised balanced truncation) get a zero read-out. Because the ridge could in principle make the fit worse
//! than the original read-out on the calibration data, [`BlockRefit::solve`] keeps the original
//! matrices whenever their calibration error is not larger (reported in [`BlockRefitReport`]),
//! so the refit never increases the calibration output error.
//!
//! No labels and no end-to-end training: each layer is fitted to the full model's own output
//! on calibration inputs, the layer-wise reconstruction of post-training pruning.

use crate::block::DiagBlock;
use crate::empirical::real_states;
use crate::error::{Error, Result};
use crate::model::DeepSsm;
use faer::{Mat, MatRef, Side, c64};
use rayon::prelude::*;

/// Options of the refit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RefitOptions {
    /// Relative ridge `ρ / (tr(G) / dim)`, `≥ 0` and finite (module doc).
    pub ridge: f64,
}

impl Default for RefitOptions {
    /// `ridge = 1e-5`, chosen on held-out training reviews (`results/imdb/refit-choice.json`:
    /// 1e-8 and 1e-5 gave the same logit errors, 1e-2 slightly larger ones).
    fn default() -> Self {
        RefitOptions { ridge: 1e-5 }
    }
}

impl RefitOptions {
    /// Checks that the ridge is finite and non-negative.
    ///
    /// # Errors
    /// [`Error::Argument`] otherwise.
    pub fn validate(&self) -> Result<()> {
        if !(self.ridge.is_finite() && self.ridge >= 0.0) {
            return Err(Error::Argument(format!(
                "refit ridge = {} must be finite and ≥ 0 (a relative ridge, e.g. 1e-5)",
                self.ridge
            )));
        }
        Ok(())
    }
}

/// What the refit of one block did, on its calibration data.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BlockRefitReport {
    /// Relative calibration output error `Σ‖s − ŝ‖² / Σ‖s‖²` with the reducer's read-out.
    pub error_before: f64,
    /// The same with the refitted read-out (`≤ error_before`).
    pub error_after: f64,
    /// Whether the reducer's read-out was kept because the fit was no better.
    pub kept_original: bool,
    /// Recorded positions (once per sequence, both scan directions together).
    pub positions: usize,
}

/// Accumulates `G = Σ ẑ ẑᵀ`, `X = Σ ẑ sᵀ` and `Σ ‖s‖²` for the refit of one reduced block.
#[derive(Clone, Debug)]
pub struct BlockRefit {
    full: DiagBlock,
    reduced: DiagBlock,
    /// `Σ ẑ ẑᵀ`, `[k, k]` (`k = 4r`, or `2r` for a causal block).
    gram: Mat<f64>,
    /// `Σ ẑ sᵀ`, `[k, p]`.
    cross: Mat<f64>,
    /// `Σ ‖s‖²`.
    target_sq: f64,
    positions: usize,
}

/// The joint real state `[ŵ, ŵ']` rows `[len, k]` of `block` driven by `u` `[len, m]`.
fn joint_states(block: &DiagBlock, u: MatRef<'_, f64>) -> Result<Mat<f64>> {
    let fwd = real_states(block, u, false)?;
    if !block.is_bidirectional() {
        return Ok(fwd);
    }
    let rev = real_states(block, u, true)?;
    let h = fwd.ncols();
    Ok(Mat::from_fn(u.nrows(), 2 * h, |t, j| {
        if j < h { fwd[(t, j)] } else { rev[(t, j - h)] }
    }))
}

/// The joint real output matrix `C_J = [C_w, C_rev,w]`, `[p, k]`, of `block`.
fn joint_output(block: &DiagBlock) -> Mat<f64> {
    let (_, _, cw, crw) = crate::balance::real_realization(block);
    match crw {
        None => cw,
        Some(cr) => {
            let h = cw.ncols();
            Mat::from_fn(cw.nrows(), 2 * h, |o, j| {
                if j < h { cw[(o, j)] } else { cr[(o, j - h)] }
            })
        }
    }
}

/// The complex `C̃`, `[p, n]`, with real realisation `c_w = [2 Re C̃, −2 Im C̃]` (`[p, 2n]`).
fn complex_output(c_w: MatRef<'_, f64>) -> Mat<c64> {
    let n = c_w.ncols() / 2;
    Mat::from_fn(c_w.nrows(), n, |o, i| {
        c64::new(0.5 * c_w[(o, i)], -0.5 * c_w[(o, n + i)])
    })
}

impl BlockRefit {
    /// An empty accumulator for refitting `reduced`'s `C̃` (and `C̃_rev`) to `full`'s output.
    ///
    /// # Errors
    /// [`Error::Shape`] if the blocks differ in inputs, outputs or scan directions.
    pub fn new(full: &DiagBlock, reduced: &DiagBlock) -> Result<Self> {
        crate::gram::check_compatible(full, reduced)?;
        if full.is_bidirectional() != reduced.is_bidirectional() {
            return Err(Error::Shape(
                "refit: the full and reduced blocks differ in scan directions".into(),
            ));
        }
        let k = reduced.n_modes() * if reduced.is_bidirectional() { 4 } else { 2 };
        Ok(BlockRefit {
            full: full.clone(),
            reduced: reduced.clone(),
            gram: Mat::zeros(k, k),
            cross: Mat::zeros(k, full.n_outputs()),
            target_sq: 0.0,
            positions: 0,
        })
    }

    /// Adds one input sequence `u` `[len, m]` of the full model (true positions only): the
    /// target is the full block's state output on `u`.
    ///
    /// # Errors
    /// [`Error::Shape`] for a wrong channel count; [`Error::Argument`] for a non-finite input.
    pub fn add(&mut self, u: MatRef<'_, f64>) -> Result<()> {
        check_finite(u, "refit input")?;
        let target = state_output(&self.full, u)?;
        self.add_target(u, target.as_ref())
    }

    /// Adds one sequence with an explicit target: the reduced block is driven by `u_hat`
    /// `[len, m]` and fitted to `target` `[len, p]` (the sequential refit drives it with the
    /// reduced upstream's activations and fits the full model's output).
    ///
    /// # Errors
    /// [`Error::Shape`] for mismatched shapes; [`Error::Argument`] for non-finite values.
    pub fn add_target(&mut self, u_hat: MatRef<'_, f64>, target: MatRef<'_, f64>) -> Result<()> {
        if target.nrows() != u_hat.nrows() || target.ncols() != self.full.n_outputs() {
            return Err(Error::Shape(format!(
                "refit: target is {}×{}, expected {}×{}",
                target.nrows(),
                target.ncols(),
                u_hat.nrows(),
                self.full.n_outputs()
            )));
        }
        check_finite(u_hat, "refit input")?;
        check_finite(target, "refit target")?;
        let z = joint_states(&self.reduced, u_hat)?;
        self.gram += z.transpose() * &z;
        self.cross += z.transpose() * target;
        self.target_sq += target.squared_norm_l2();
        self.positions += u_hat.nrows();
        Ok(())
    }

    /// Recorded positions so far.
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// Relative calibration error `(Σ‖s‖² − 2 tr(C X) + tr(C G Cᵀ)) / Σ‖s‖²` of read-out `c`.
    fn relative_error(&self, c: MatRef<'_, f64>) -> f64 {
        let cg = c * &self.gram;
        let mut quad = 0.0;
        let mut lin = 0.0;
        for o in 0..c.nrows() {
            for j in 0..c.ncols() {
                quad += cg[(o, j)] * c[(o, j)];
                lin += c[(o, j)] * self.cross[(j, o)];
            }
        }
        ((self.target_sq - 2.0 * lin + quad) / self.target_sq).max(0.0)
    }

    /// Solves the fit (module doc) and returns the refitted block (`λ̂`, `B̂`, `D`, `E`, `N_i`
    /// unchanged) with its report.
    ///
    /// # Errors
    /// [`Error::Argument`] for a bad ridge or no recorded data; [`Error::LinAlg`] if the
    /// eigendecomposition fails or the solution is not finite.
    pub fn solve(&self, opts: &RefitOptions) -> Result<(DiagBlock, BlockRefitReport)> {
        opts.validate()?;
        if self.positions == 0 || self.target_sq <= 0.0 {
            return Err(Error::Argument(
                "refit: no calibration data recorded (or an all-zero target)".into(),
            ));
        }
        let k = self.gram.nrows();
        let c_orig = joint_output(&self.reduced);
        let error_before = self.relative_error(c_orig.as_ref());
        let trace: f64 = (0..k).map(|i| self.gram[(i, i)]).sum();
        let rho = opts.ridge * trace / k as f64;
        let g = Mat::from_fn(k, k, |i, j| 0.5 * (self.gram[(i, j)] + self.gram[(j, i)]));
        let evd = g
            .self_adjoint_eigen(Side::Lower)
            .map_err(|e| Error::LinAlg(format!("refit: eigendecomposition of G failed ({e:?})")))?;
        let (u, mu) = (evd.U(), evd.S().column_vector());
        let mu_max = (0..k).map(|i| mu[i]).fold(0.0, f64::max);
        // (G + ρI)⁺ on the states the data excite: directions with μ + ρ ≤ 1e-12 μ_max carry no
        // recorded state (e.g. the imaginary part of a real mode) and get a zero read-out.
        let inv: Vec<f64> = (0..k)
            .map(|i| {
                let d = mu[i] + rho;
                if d > 1e-12 * mu_max { 1.0 / d } else { 0.0 }
            })
            .collect();
        let utx = u.transpose() * &self.cross;
        let scaled = Mat::from_fn(k, utx.ncols(), |i, j| inv[i] * utx[(i, j)]);
        let c_new = (u * scaled).transpose().to_owned();
        if !c_new.as_ref().norm_max().is_finite() {
            return Err(Error::LinAlg(
                "refit: the least-squares solution is not finite".into(),
            ));
        }
        let error_after = self.relative_error(c_new.as_ref());
        let kept_original = error_after >= error_before;
        let c_j = if kept_original { c_orig } else { c_new };
        let mut block = self.reduced.clone();
        let h = 2 * block.n_modes();
        block.c = complex_output(c_j.as_ref().subcols(0, h));
        if block.is_bidirectional() {
            block.c_rev = Some(complex_output(c_j.as_ref().subcols(h, h)));
        }
        Ok((
            block,
            BlockRefitReport {
                error_before,
                error_after: error_after.min(error_before),
                kept_original,
                positions: self.positions,
            },
        ))
    }
}

/// The state output `s_t = 2 Re(C̃ x_t) + 2 Re(C̃_rev x'_t)` of `block` driven by `u` `[len, m]`,
/// as rows `[len, p]` (no `D u_t`).
///
/// # Errors
/// [`Error::Shape`] for a wrong channel count.
pub fn state_output(block: &DiagBlock, u: MatRef<'_, f64>) -> Result<Mat<f64>> {
    Ok(joint_states(block, u)? * joint_output(block).transpose())
}

/// The full SSM output `y_t = s_t + D ⊙ u_t` of `block` driven by `u` `[len, m]` (the
/// [`state_output`] plus the feed-through, if any), as rows `[len, p]`: the gate's input.
///
/// # Errors
/// [`Error::Shape`] for a wrong channel count, or a feed-through whose length, `m` and `p`
/// differ.
pub fn ssm_output(block: &DiagBlock, u: MatRef<'_, f64>) -> Result<Mat<f64>> {
    let mut y = state_output(block, u)?;
    if let Some(d) = &block.d {
        if d.len() != y.ncols() || u.ncols() != y.ncols() {
            return Err(Error::Shape(format!(
                "ssm output: feed-through of {} channels for {} inputs and {} outputs",
                d.len(),
                u.ncols(),
                y.ncols()
            )));
        }
        for t in 0..y.nrows() {
            for (o, &dk) in d.iter().enumerate() {
                y[(t, o)] += dk * u[(t, o)];
            }
        }
    }
    Ok(y)
}

fn check_finite(m: MatRef<'_, f64>, what: &str) -> Result<()> {
    if (0..m.ncols()).any(|j| (0..m.nrows()).any(|i| !m[(i, j)].is_finite())) {
        return Err(Error::Argument(format!("{what} holds a non-finite value")));
    }
    Ok(())
}

/// The refit of every layer of a reduced model: one [`BlockRefit`] per layer, fed the layer
/// inputs the **full** model records on each calibration sequence.
#[derive(Clone, Debug)]
pub struct ModelRefit {
    reduced: DeepSsm,
    layers: Vec<BlockRefit>,
}

impl ModelRefit {
    /// An empty accumulator for refitting `reduced` (a reduction of `full`).
    ///
    /// # Errors
    /// [`Error::Shape`] if the models differ in layer count or a layer's shapes.
    pub fn new(full: &DeepSsm, reduced: &DeepSsm) -> Result<Self> {
        if full.layers.len() != reduced.layers.len() {
            return Err(Error::Shape(format!(
                "refit: the full model has {} layers, the reduced one {}",
                full.layers.len(),
                reduced.layers.len()
            )));
        }
        let layers = full
            .layers
            .iter()
            .zip(&reduced.layers)
            .enumerate()
            .map(|(k, (f, r))| BlockRefit::new(&f.ssm, &r.ssm).map_err(|e| layer_err(k, e)))
            .collect::<Result<_>>()?;
        Ok(ModelRefit {
            reduced: reduced.clone(),
            layers,
        })
    }

    /// Adds one calibration sequence: `inputs[ℓ]` is layer ℓ's SSM input `[len, m]` recorded on
    /// the full model (layers in parallel).
    ///
    /// # Errors
    /// [`Error::Shape`] for a wrong layer count or shapes; non-finite inputs.
    pub fn add(&mut self, inputs: &[MatRef<'_, f64>]) -> Result<()> {
        if inputs.len() != self.layers.len() {
            return Err(Error::Shape(format!(
                "refit: {} layer inputs for {} layers",
                inputs.len(),
                self.layers.len()
            )));
        }
        self.layers
            .par_iter_mut()
            .zip(inputs.par_iter())
            .enumerate()
            .try_for_each(|(k, (l, u))| l.add(*u).map_err(|e| layer_err(k, e)))
    }

    /// The refitted model and one report per layer.
    ///
    /// # Errors
    /// Those of [`BlockRefit::solve`], naming the layer.
    pub fn solve(&self, opts: &RefitOptions) -> Result<(DeepSsm, Vec<BlockRefitReport>)> {
        let solved: Vec<(DiagBlock, BlockRefitReport)> = self
            .layers
            .par_iter()
            .enumerate()
            .map(|(k, l)| l.solve(opts).map_err(|e| layer_err(k, e)))
            .collect::<Result<_>>()?;
        let mut model = self.reduced.clone();
        let mut reports = Vec::with_capacity(solved.len());
        for (layer, (block, rep)) in model.layers.iter_mut().zip(solved) {
            layer.ssm = block;
            reports.push(rep);
        }
        Ok((model, reports))
    }
}

fn layer_err(k: usize, e: Error) -> Error {
    match e {
        Error::Argument(m) => Error::Argument(format!("layer {k}: {m}")),
        Error::Shape(m) => Error::Shape(format!("layer {k}: {m}")),
        Error::LinAlg(m) => Error::LinAlg(format!("layer {k}: {m}")),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{real_gramians, real_realization};
    use crate::gram::h2_error;
    use crate::gram::tests::random_block;
    use crate::modes::select_modes;
    use faer::linalg::solvers::Solve;

    fn causal(seed: u64, n: usize, m: usize, p: usize, rmax: f64) -> DiagBlock {
        let mut b = random_block(seed, n, m, p, false, 0, None, rmax);
        b.c_rev = None;
        b
    }

    fn rel(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
        (a - b).norm_max() / b.norm_max()
    }

    /// Simulated `Σ_t ‖s_t − ŝ_t‖² / Σ_t ‖s_t‖²` by the complex recurrences of the block contract.
    fn simulated_error(full: &DiagBlock, red: &DiagBlock, u: &Mat<f64>) -> f64 {
        let out = |b: &DiagBlock| -> Mat<f64> {
            let len = u.nrows();
            let n = b.n_modes();
            let mut s = Mat::<f64>::zeros(len, b.n_outputs());
            let dirs: Vec<(bool, &Mat<c64>)> = std::iter::once((false, &b.c))
                .chain(b.c_rev.as_ref().map(|c| (true, c)))
                .collect();
            for (reverse, c) in dirs {
                let mut x = vec![c64::new(0.0, 0.0); n];
                for k in 0..len {
                    let t = if reverse { len - 1 - k } else { k };
                    for (i, xi) in x.iter_mut().enumerate() {
                        let bu: c64 = (0..b.n_inputs()).map(|j| b.b[(i, j)] * u[(t, j)]).sum();
                        *xi = b.lambda[i] * *xi + bu;
                    }
                    for o in 0..b.n_outputs() {
                        s[(t, o)] += 2.0 * (0..n).map(|i| c[(o, i)] * x[i]).sum::<c64>().re;
                    }
                }
            }
            s
        };
        let (s, sh) = (out(full), out(red));
        (&s - &sh).squared_norm_l2() / s.squared_norm_l2()
    }

    fn noise(seed: u64, len: usize, m: usize) -> Mat<f64> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Mat::from_fn(len, m, |_, _| rng.random::<f64>() - 0.5)
    }

    #[test]
    fn ssm_output_adds_the_feed_through_and_checks_its_shape() {
        let mut block = random_block(3, 4, 3, 3, true, 0, None, 0.8);
        let u = noise(4, 9, 3);
        block.d = Some(vec![0.5, -1.0, 2.0]);
        let y = ssm_output(&block, u.as_ref()).unwrap();
        let s = state_output(&block, u.as_ref()).unwrap();
        for t in 0..9 {
            for (o, d) in [0.5, -1.0, 2.0].into_iter().enumerate() {
                assert!((y[(t, o)] - s[(t, o)] - d * u[(t, o)]).abs() < 1e-14);
            }
        }
        block.d = None;
        assert_eq!(ssm_output(&block, u.as_ref()).unwrap(), s);
        block.d = Some(vec![1.0; 2]);
        assert!(matches!(
            ssm_output(&block, u.as_ref()),
            Err(Error::Shape(_))
        ));
    }

    #[test]
    fn impulse_refit_is_the_h2_optimal_output_matrix() {
        // Unit impulses on each channel make G = P̂_w and X = X_cross C_wᵀ up to the decayed
        // tail (0.7^400), so the fit must satisfy Wilson's condition Ĉ P̂ = C X_cross of the
        // closed-form Gramians, and be a stationary point of the closed-form h2 error.
        let full = causal(11, 7, 3, 2, 0.7);
        for reduced in [
            select_modes(&full, &[0, 2, 5]),
            crate::bt::bt(&full, 3).unwrap().block,
        ] {
            let (m, t) = (full.n_inputs(), 400);
            let mut fit = BlockRefit::new(&full, &reduced).unwrap();
            for s in 0..m {
                let u = Mat::from_fn(t, m, |k, c| if k == 0 && c == s { 1.0 } else { 0.0 });
                fit.add(u.as_ref()).unwrap();
            }
            let (got, rep) = fit.solve(&RefitOptions { ridge: 0.0 }).unwrap();
            assert!(!rep.kept_original && rep.error_after < rep.error_before);
            let (ar, br, _, _) = real_realization(&reduced);
            let (af, bf, cf, _) = real_realization(&full);
            let (p_hat, _) = real_gramians(&reduced, false);
            let mut x = Mat::<f64>::zeros(af.nrows(), ar.nrows());
            let (mut ajb, mut ajb_hat) = (bf.clone(), br.clone());
            for _ in 0..2000 {
                x += &ajb * ajb_hat.transpose();
                ajb = &af * &ajb;
                ajb_hat = &ar * &ajb_hat;
            }
            let (_, _, c_new, _) = real_realization(&got);
            let lhs = &c_new * &p_hat;
            let rhs = &cf * &x;
            assert!(
                rel(&lhs, &rhs) < 1e-8,
                "Wilson residual {}",
                rel(&lhs, &rhs)
            );
            // Stationarity: any perturbation of the read-out raises the closed-form h2 error.
            let e0 = h2_error(&full, &got, None).unwrap();
            for seed in 0..6 {
                let d = noise(seed, got.n_outputs(), 2 * got.n_modes());
                let mut pert = got.clone();
                pert.c = &got.c + complex_output((&d * 1e-3).as_ref());
                assert!(h2_error(&full, &pert, None).unwrap() > e0);
            }
            assert!(e0 <= h2_error(&full, &reduced, None).unwrap());
        }
    }

    #[test]
    fn no_modes_removed_returns_the_original_output() {
        for bidir in [false, true] {
            let mut full = random_block(5, 6, 3, 4, bidir, 0, None, 0.9);
            if !bidir {
                full.c_rev = None;
            }
            let mut fit = BlockRefit::new(&full, &full).unwrap();
            fit.add(noise(1, 300, 3).as_ref()).unwrap();
            let (got, rep) = fit.solve(&RefitOptions { ridge: 0.0 }).unwrap();
            assert!(rep.error_before < 1e-24, "{rep:?}");
            let err = (&got.c - &full.c).norm_max() / full.c.norm_max();
            assert!(err < 1e-8 || rep.kept_original, "C changed by {err}");
            if bidir {
                let (a, b) = (got.c_rev.unwrap(), full.c_rev.unwrap());
                assert!((&a - &b).norm_max() / b.norm_max() < 1e-8 || rep.kept_original);
            }
        }
    }

    #[test]
    fn calibration_error_matches_simulation_and_never_increases() {
        // Bidirectional block, modal and balanced reductions, several ridges: the reported
        // errors equal those of a brute-force complex simulation, and the fit is no worse.
        let full = random_block(21, 8, 3, 3, true, 0, None, 0.9);
        let u = noise(3, 250, 3);
        for reduced in [
            select_modes(&full, &[1, 3, 4, 6]),
            crate::bt::bt(&full, 3).unwrap().block,
        ] {
            for ridge in [0.0, 1e-6, 1e-2, 1e3] {
                let mut fit = BlockRefit::new(&full, &reduced).unwrap();
                fit.add(u.as_ref()).unwrap();
                let (got, rep) = fit.solve(&RefitOptions { ridge }).unwrap();
                assert!(rep.error_after <= rep.error_before);
                let before = simulated_error(&full, &reduced, &u);
                let after = simulated_error(&full, &got, &u);
                assert!((rep.error_before - before).abs() < 1e-9 * before.max(1e-12));
                assert!((rep.error_after - after).abs() < 1e-9 * after.max(1e-12));
                assert!(after <= before * (1.0 + 1e-12));
                assert_eq!(got.lambda, reduced.lambda);
                assert_eq!(got.b, reduced.b);
                if ridge == 0.0 {
                    assert!(after < 0.9 * before, "{after} vs {before}");
                }
            }
        }
    }

    #[test]
    fn modal_refit_is_the_covariance_closed_form() {
        // For kept states that are a subset of the full ones (modal truncation, causal block):
        // Ĉ_w = C_w P[all, keep] P[keep, keep]⁻¹ with P the full state covariance.
        let full = causal(8, 6, 2, 3, 0.85);
        let keep = [0usize, 3, 4];
        let reduced = select_modes(&full, &keep);
        let u = noise(9, 400, 2);
        let mut fit = BlockRefit::new(&full, &reduced).unwrap();
        fit.add(u.as_ref()).unwrap();
        let (got, _) = fit.solve(&RefitOptions { ridge: 0.0 }).unwrap();
        let w = real_states(&full, u.as_ref(), false).unwrap();
        let p = w.transpose() * &w;
        let n = full.n_modes();
        let idx: Vec<usize> = keep
            .iter()
            .copied()
            .chain(keep.iter().map(|i| n + i))
            .collect();
        let p_ak = Mat::from_fn(2 * n, idx.len(), |i, j| p[(i, idx[j])]);
        let p_kk = Mat::from_fn(idx.len(), idx.len(), |i, j| p[(idx[i], idx[j])]);
        let (_, _, cw, _) = real_realization(&full);
        let want = p_kk
            .partial_piv_lu()
            .solve((&cw * &p_ak).transpose())
            .transpose()
            .to_owned();
        let (_, _, c_got, _) = real_realization(&got);
        assert!(rel(&c_got, &want) < 1e-8, "{}", rel(&c_got, &want));
    }

    #[test]
    fn bad_inputs_are_refused() {
        let full = random_block(2, 4, 2, 2, true, 0, None, 0.8);
        let red = select_modes(&full, &[0, 1]);
        let mut fit = BlockRefit::new(&full, &red).unwrap();
        assert!(fit.solve(&RefitOptions::default()).is_err(), "no data");
        let mut u = noise(1, 20, 2);
        assert!(fit.add(noise(1, 20, 3).as_ref()).is_err());
        u[(3, 1)] = f64::INFINITY;
        assert!(fit.add(u.as_ref()).is_err());
        fit.add(noise(2, 20, 2).as_ref()).unwrap();
        assert!(fit.solve(&RefitOptions { ridge: -1.0 }).is_err());
        assert!(fit.solve(&RefitOptions { ridge: f64::NAN }).is_err());
        let mut causal_red = red.clone();
        causal_red.c_rev = None;
        assert!(BlockRefit::new(&full, &causal_red).is_err());
    }
}
