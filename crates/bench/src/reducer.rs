//! Reduction of a trained S5 model by any recipe ([`Reducer`]): the calibration (training)
//! reviews a recipe needs ([`Calibration`]), the data-driven parts computed from them (the
//! `lqo-h2` layer weights, the empirical Gramians of `ebt`/`emodal`, the `sens` allocation's cost
//! curves) and the post-steps (`refit`, `refit-seq`).

use crate::pipeline::{EvalSet, bound_inputs, evaluate};
use crate::progress::bar;
use crate::sections::{ALLOCATION_REVIEWS, CALIBRATION_REVIEWS};
use crate::subset::balanced_subset;
use anyhow::{Context, Result, bail};
use mor::alloc::{Allocation, CostCurve};
use mor::bound::prepare_bound;
use mor::recipe::{PostStep, Recipe};
use mor::reduce::{ReduceOptions, reduce_model};
use rayon::prelude::*;
use s5::S5Model;
use std::collections::HashMap;
use std::time::Instant;

/// `lqo-h2`'s layer weights from data: the first-order factors `∂bound/∂ε_ℓ` of the
/// a-posteriori output-error bound (`mor::bound::BoundPrep::evaluate_measured`) on each review of
/// `calibration`, from the full model's measured activations, averaged over the reviews.
///
/// # Errors
/// Evaluation or bound errors; an empty calibration set.
pub fn calibrated_layer_weights(
    model: &S5Model,
    deep: &mor::DeepSsm,
    calibration: &EvalSet,
) -> Result<Vec<f64>> {
    if calibration.is_empty() {
        bail!("the lqo-h2 calibration set is empty");
    }
    let ev = evaluate(model, calibration, None, true)?;
    let inputs = bound_inputs(model, calibration)?;
    let prep = prepare_bound(deep, None, calibration.max_len().max(1))?;
    let mut sum = vec![0.0; deep.layers.len()];
    for (inp, m) in inputs.iter().zip(&ev.measured) {
        let rep = prep.evaluate_measured(inp, m)?;
        for (s, w) in sum.iter_mut().zip(&rep.layer_weights) {
            *s += w;
        }
    }
    let n = inputs.len() as f64;
    Ok(sum.into_iter().map(|s| s / n).collect())
}

/// The empirical controllability Gramian of every layer's SSM block (`[2n, 2n]` each, layer
/// order; `mor::empirical`): the state covariance of the block under the inputs the full model
/// feeds it on the `calibration` reviews (training reviews; their true positions, both scan
/// directions of a bidirectional layer). What `ebt` balances with and `emodal` ranks by.
///
/// # Errors
/// An empty calibration set; model or shape errors.
pub fn empirical_gramians(
    model: &S5Model,
    deep: &mor::DeepSsm,
    calibration: &EvalSet,
) -> Result<Vec<faer::Mat<f64>>> {
    if calibration.is_empty() {
        bail!("no calibration reviews to record the empirical Gramians on");
    }
    let mut acc: Vec<mor::empirical::EmpiricalGramian> = deep
        .layers
        .iter()
        .map(|l| mor::empirical::EmpiricalGramian::new(&l.ssm))
        .collect();
    let pb = bar(calibration.len() as u64, "gramian");
    for tokens in &calibration.tokens {
        let inputs = model.ssm_inputs(tokens)?;
        for (a, u) in acc.iter_mut().zip(&inputs) {
            let h = u.len() / tokens.len();
            a.add(faer::MatRef::from_row_major_slice(u, tokens.len(), h))?;
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(acc
        .iter()
        .map(mor::empirical::EmpiricalGramian::gramian)
        .collect::<mor::Result<_>>()?)
}

/// A reduced model and what its post-step did.
pub struct Reduced {
    /// The reduction (after the post-step, if any).
    pub reduction: mor::ModelReduction,
    /// Per-layer reports of a refit post-step.
    pub refit: Option<Vec<mor::refit::BlockRefitReport>>,
}

/// The training reviews a run calibrates on (never test reviews), three class-balanced samples
/// seeded with `eval.seed`:
/// - `reducers`: the data-driven reducers' own calibration ([`CALIBRATION_REVIEWS`]: the
///   `lqo-h2` layer weights, the empirical Gramians of `ebt`/`emodal`);
/// - `refit`: the refit post-steps' fitting set (`sweep.refit_reviews`); it contains `reducers`;
/// - `allocation`: the `sens` allocation's cost set ([`ALLOCATION_REVIEWS`]), disjoint from
///   `refit` so that the costs of a refitted layer are measured out of sample (when the training
///   split is too small for a disjoint set, the refit set itself, with a warning).
pub struct Calibration {
    /// The reducers' calibration set.
    pub reducers: EvalSet,
    /// The refit set.
    pub refit: EvalSet,
    /// The allocation cost set.
    pub allocation: EvalSet,
}

impl Calibration {
    /// Draws the three sets from `train` (module doc): `n_refit` refit reviews, seeded with
    /// `seed`, batched by `batch_size`.
    ///
    /// # Errors
    /// An empty split, `n_refit = 0`, a review that tokenizes to nothing.
    pub fn sample(
        train: &lra::Split,
        tok: &dyn lra::Tokenize,
        batch_size: usize,
        seed: u64,
        n_refit: usize,
    ) -> Result<Self> {
        if n_refit == 0 {
            bail!("the refit set needs at least one training review");
        }
        let labels: Vec<usize> = train.labels.iter().map(|&l| usize::from(l)).collect();
        let set = |idx: Vec<usize>, what: &str| {
            EvalSet::from_indices(train, tok, idx, batch_size)
                .with_context(|| format!("building the {what} set of training reviews"))
        };
        let refit_idx = balanced_subset(&labels, n_refit, seed);
        let wider = balanced_subset(&labels, n_refit + ALLOCATION_REVIEWS, seed);
        let mut alloc_idx: Vec<usize> = wider
            .into_iter()
            .filter(|i| refit_idx.binary_search(i).is_err())
            .collect();
        if alloc_idx.is_empty() {
            tracing::warn!(
                "the training split ({} reviews) leaves none outside the {} refit reviews: the \
                 `sens` allocation measures its costs on the refit set",
                labels.len(),
                refit_idx.len()
            );
            alloc_idx.clone_from(&refit_idx);
        }
        Ok(Calibration {
            reducers: set(
                balanced_subset(&labels, CALIBRATION_REVIEWS, seed),
                "calibration",
            )?,
            refit: set(refit_idx, "refit")?,
            allocation: set(alloc_idx, "allocation")?,
        })
    }
}

/// The per-layer cost curves of the `sens` allocation of one reducer (with or without a refit),
/// and what measuring them took.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sensitivity {
    /// The recipe whose reducer and post-step the costs were measured with (no allocation).
    pub recipe: String,
    /// `sens` (measured logit change) or `first-order` (predicted by `s5::sensitivity`).
    pub allocation: String,
    /// One curve per layer: orders and mean squared logit change on the allocation set.
    pub curves: Vec<CostCurve>,
    /// Reviews of the allocation set.
    pub reviews: usize,
    /// Wall seconds of the measurement.
    pub seconds: f64,
}

/// Reduces an S5 model by any [`Recipe`]: computes the calibration data a recipe needs once, on
/// first need (the `lqo-h2` layer weights, the empirical Gramians of `ebt`/`emodal`, the cost
/// curves of the `sens` allocation), runs the reducer at the recipe's allocation, then the
/// post-step on the calibration (training) reviews. Used by the sweep and by `bench compress`, so
/// both reduce identically.
pub struct Reducer<'a> {
    /// The full model.
    pub model: &'a S5Model,
    /// Its export to `mor`.
    pub deep: mor::DeepSsm,
    /// Options of the reducers (calibration data is filled in here when first computed).
    pub opts: ReduceOptions,
    /// Options of the refit post-steps.
    pub refit: mor::refit::RefitOptions,
    /// Training reviews for the data-driven parts, if any.
    calibration: Option<&'a Calibration>,
    /// Cost curves of the `sens` and `first-order` allocations, per reducer, whether it is
    /// refitted, and the allocation.
    sensitivity: HashMap<(mor::Method, bool, Allocation), Sensitivity>,
    /// Per layer, how well the gate's LQO models describe it on the calibration reviews
    /// (`None` for a gate whose LQO model is exact), once `lqo-h2` has fitted them.
    pub gate_fit: Option<Vec<Option<mor::gatefit::GateFitReport>>>,
}

impl<'a> Reducer<'a> {
    /// Exports `model` (sequences up to `max_len`); `calibration` holds the training reviews
    /// of the data-driven parts.
    pub fn new(
        model: &'a S5Model,
        max_len: usize,
        opts: ReduceOptions,
        refit: mor::refit::RefitOptions,
        calibration: Option<&'a Calibration>,
    ) -> Result<Self> {
        refit.validate()?;
        Ok(Reducer {
            model,
            deep: s5::to_mor(model, max_len)?,
            opts,
            refit,
            calibration,
            sensitivity: HashMap::new(),
            gate_fit: None,
        })
    }

    fn calibration(&self, recipe: Recipe) -> Result<&'a Calibration> {
        self.calibration.with_context(|| {
            format!("{recipe} needs calibration reviews (training reviews); none were given")
        })
    }

    /// Computes the reducer's own calibration data if it needs some and has none yet: the
    /// gates' LQO models of `lqo-h2`, the bound's layer weights of the bound-weighted
    /// allocations, the empirical Gramians of `ebt`/`emodal`.
    fn prepare(&mut self, recipe: Recipe) -> Result<()> {
        use mor::Method::{LqoH2, LqoH2Taylor};
        let m = recipe.reducer;
        if m == LqoH2 && self.opts.lqo.terms.is_none() {
            let t0 = Instant::now();
            let cal = &self.calibration(recipe)?.reducers;
            let (terms, reports) = fit_gates(self.model, &self.deep, cal)?;
            tracing::info!(
                "lqo-h2: gate LQO models fitted at the operating point on {} calibration reviews \
                 in {:.1} s; relative output error per layer (Taylor at y = 0 → fitted): {}",
                cal.len(),
                t0.elapsed().as_secs_f64(),
                reports
                    .iter()
                    .map(|r| r.map_or("exact".into(), |r| format!(
                        "{:.3}→{:.3}",
                        r.taylor_error, r.fitted_error
                    )))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            self.opts.lqo.terms = Some(terms);
            self.gate_fit = Some(reports);
        }
        let bound_weighted = match m {
            LqoH2 => recipe.alloc == Some(Allocation::Bound),
            LqoH2Taylor => matches!(recipe.alloc, None | Some(Allocation::Bound)),
            _ => false,
        };
        if bound_weighted && self.opts.lqo.layer_weights.is_none() {
            let cal = &self.calibration(recipe)?.reducers;
            let w = calibrated_layer_weights(self.model, &self.deep, cal)?;
            tracing::info!(
                "lqo-h2 layer weights from {} calibration reviews: {}",
                cal.len(),
                w.iter()
                    .map(|x| format!("{x:.3e}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            self.opts.lqo.layer_weights = Some(w);
        }
        if matches!(m, mor::Method::Ebt | mor::Method::Emodal) && self.opts.ctrb_gramians.is_empty()
        {
            let t0 = Instant::now();
            let cal = &self.calibration(recipe)?.reducers;
            self.opts.ctrb_gramians = empirical_gramians(self.model, &self.deep, cal)?;
            tracing::info!(
                "{m}: empirical Gramians of {} layers from {} calibration reviews in {:.1} s",
                self.opts.ctrb_gramians.len(),
                cal.len(),
                t0.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    /// The orders of `recipe`'s allocation for the budget of `ratio`, or `None` for the
    /// reducer's own allocation.
    fn orders(&mut self, recipe: Recipe, ratio: f64) -> Result<Option<Vec<usize>>> {
        let ns: Vec<usize> = self.deep.layers.iter().map(|l| l.ssm.n_modes()).collect();
        let Some(alloc) = recipe.alloc else {
            return Ok(None);
        };
        let budget = mor::reduce::mode_budget(&ns, ratio)?;
        Ok(Some(match alloc {
            Allocation::Uniform => mor::modal::uniform_allocation(&ns, budget),
            Allocation::Bound => mor::lqo::bound_orders(
                &self.deep,
                budget,
                &mor::reduce::lqo_options(recipe.reducer, &self.deep, &self.opts),
            )?,
            Allocation::Sensitivity | Allocation::FirstOrder => {
                let curves = &self.sensitivity(recipe)?.curves;
                mor::alloc::min_cost_orders(curves, budget)?
            }
        }))
    }

    /// Reduces with `recipe`, removing the fraction `ratio` of the SSM modes.
    ///
    /// # Errors
    /// A recipe that needs calibration data without a calibration set; reduction errors.
    pub fn reduce(&mut self, recipe: Recipe, ratio: f64) -> Result<Reduced> {
        let m = recipe.reducer;
        self.prepare(recipe)?;
        let mut reduction = match self.orders(recipe, ratio)? {
            None => reduce_model(&self.deep, m, ratio, &self.opts),
            Some(orders) => mor::reduce::reduce_model_orders(&self.deep, m, &orders, &self.opts),
        }
        .with_context(|| format!("reducing with {recipe} at ratio {ratio}"))?;
        if let Some(ov) = recipe.overrides {
            self.prepare(Recipe::from(ov.method))?;
            reduction = mor::reduce::apply_override(
                &self.deep,
                reduction,
                ov.method,
                &ov.layer_list(),
                &self.opts,
            )
            .with_context(|| format!("{recipe} at ratio {ratio}: the layer override"))?;
        }
        let refit = match recipe.post {
            None => None,
            Some(post) => {
                let t0 = Instant::now();
                let cal = &self.calibration(recipe)?.refit;
                let (model, reports) = match post {
                    PostStep::Refit => {
                        refit(self.model, &self.deep, &reduction.model, cal, &self.refit)?
                    }
                    PostStep::RefitSeq => refit_sequential(
                        self.model,
                        &self.deep,
                        &reduction.model,
                        cal,
                        &self.refit,
                    )?,
                };
                tracing::info!(
                    "{recipe} @ {ratio}: relative calibration output error per layer {} in {:.1} s",
                    reports
                        .iter()
                        .map(|r| format!("{:.3}→{:.3}", r.error_before, r.error_after))
                        .collect::<Vec<_>>()
                        .join(", "),
                    t0.elapsed().as_secs_f64()
                );
                reduction.model = model;
                Some(reports)
            }
        };
        Ok(Reduced { reduction, refit })
    }

    /// What the data-driven parts measured so far, for `<run>/calibration.json`: the `sens`
    /// cost curves by base recipe and the gate fits of `lqo-h2` (empty if nothing was measured).
    pub fn calibration_report(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut out = serde_json::Map::new();
        for s in self.sensitivity.values() {
            if let Ok(v) = serde_json::to_value(s) {
                out.insert(format!("{} costs {}", s.allocation, s.recipe), v);
            }
        }
        if let Some(g) = &self.gate_fit
            && let Ok(v) = serde_json::to_value(g)
        {
            out.insert("lqo-h2 gate fit per layer".into(), v);
        }
        out
    }

    /// The cost curves of the `sens` allocation for `recipe`'s reducer and post-step (measured
    /// on first need, then cached; [`mor::alloc`]). For each layer ℓ and each order `k` of
    /// [`mor::alloc::sensitivity_grid`], layer ℓ alone is reduced to `k` modes by the reducer,
    /// refitted on the refit set if the recipe has a post-step (for one reduced layer `refit` and
    /// `refit-seq` coincide), and the cost is the mean over the allocation set of
    /// `‖logits − logits_full‖²`; for `@first-order`, its first-order prediction
    /// `‖J_ℓ (𝒮_ℓ − 𝒮̂_ℓ) u_ℓ‖²` from one linearisation of the full model on the allocation set
    /// (`s5::sensitivity::layer_change`). The refit accumulators of all `(ℓ, k)` are fed in one
    /// pass over the refit set.
    ///
    /// # Errors
    /// No calibration set; reduction, refit or model errors.
    pub fn sensitivity(&mut self, recipe: Recipe) -> Result<&Sensitivity> {
        let alloc = match recipe.alloc {
            Some(a @ Allocation::FirstOrder) => a,
            _ => Allocation::Sensitivity,
        };
        let key = (recipe.reducer, recipe.post.is_some(), alloc);
        if !self.sensitivity.contains_key(&key) {
            self.prepare(recipe)?;
            let base = Recipe {
                alloc: None,
                post: recipe.post.map(|_| PostStep::Refit),
                ..recipe
            };
            let cal = self.calibration(recipe)?;
            let s = measure_sensitivity(self, base, cal, alloc == Allocation::FirstOrder)?;
            tracing::info!(
                "{base}: {} allocation costs of {} layers on {} training reviews in {:.0} s",
                alloc.name(),
                s.curves.len(),
                s.reviews,
                s.seconds
            );
            self.sensitivity.insert(key, s);
        }
        Ok(&self.sensitivity[&key])
    }
}

/// Per layer, a gate's fitted LQO terms and the fit's report (`None`: the LQO model is exact).
pub type GateFits = (
    Vec<Option<mor::gatefit::LqoTerms>>,
    Vec<Option<mor::gatefit::GateFitReport>>,
);

/// The LQO model of every layer's gate fitted at its operating point ([`mor::gatefit`]) on the
/// gate inputs `y = s + D u` the full model records on `calibration` (training reviews), with
/// the per-layer report; `None` for a gate whose LQO model is exact.
///
/// # Errors
/// An empty calibration set; model or fit errors.
pub fn fit_gates(model: &S5Model, deep: &mor::DeepSsm, calibration: &EvalSet) -> Result<GateFits> {
    if calibration.is_empty() {
        bail!("no calibration reviews to fit the gates' LQO models on");
    }
    let mut fits: Vec<Option<mor::gatefit::GateFit>> =
        deep.layers.iter().map(mor::gatefit::GateFit::new).collect();
    let pb = bar(calibration.len() as u64, "gates  ");
    for tokens in &calibration.tokens {
        pb.inc(1);
        let inputs = layer_inputs(model, tokens)?;
        fits.par_iter_mut()
            .zip(inputs.par_iter())
            .zip(deep.layers.par_iter())
            .try_for_each(|((fit, u), layer)| -> Result<()> {
                let Some(fit) = fit else { return Ok(()) };
                let y = mor::refit::ssm_output(&layer.ssm, u.as_ref())?;
                Ok(fit.add(y.as_ref())?)
            })?;
    }
    pb.finish_and_clear();
    let mut terms = Vec::with_capacity(fits.len());
    let mut reports = Vec::with_capacity(fits.len());
    for (l, fit) in fits.iter().enumerate() {
        match fit {
            None => {
                terms.push(None);
                reports.push(None);
            }
            Some(f) => {
                let (t, r) = f
                    .solve()
                    .with_context(|| format!("gate fit of layer {l}"))?;
                terms.push(Some(t));
                reports.push(Some(r));
            }
        }
    }
    Ok((terms, reports))
}

/// [`Reducer::sensitivity`]'s measurement for `base` (a reducer, optionally `+refit`): the
/// measured logit change, or with `first_order` its first-order prediction.
fn measure_sensitivity(
    r: &Reducer<'_>,
    base: Recipe,
    cal: &Calibration,
    first_order: bool,
) -> Result<Sensitivity> {
    let t0 = Instant::now();
    let set = &cal.allocation;
    let full = if first_order {
        Vec::new()
    } else {
        evaluate(r.model, set, None, false)?.logits
    };
    let lins = if first_order {
        let dev = candle_core::Device::Cpu;
        set.batches
            .iter()
            .map(|b| {
                let tokens = candle_core::Tensor::from_slice(&b.tokens, (b.batch, b.len), &dev)?;
                let lengths = candle_core::Tensor::from_slice(&b.lengths, b.batch, &dev)?;
                Ok(r.model.linearise(&tokens, &lengths)?)
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let grid: Vec<(usize, usize)> = r
        .deep
        .layers
        .iter()
        .enumerate()
        .flat_map(|(l, layer)| {
            let n = layer.ssm.n_modes();
            mor::alloc::sensitivity_grid(n)
                .into_iter()
                .filter(move |&k| k < n)
                .map(move |k| (l, k))
        })
        .collect();
    let mut blocks: Vec<mor::DiagBlock> = grid
        .par_iter()
        .map(|&(l, k)| {
            Ok(
                mor::reduce::reduce_layer(&r.deep, l, base.reducer, k, &r.opts)
                    .with_context(|| format!("{base}: layer {l} alone at order {k}"))?
                    .block,
            )
        })
        .collect::<Result<_>>()?;
    if base.post.is_some() {
        let mut fits: Vec<mor::refit::BlockRefit> = grid
            .iter()
            .zip(&blocks)
            .map(|(&(l, _), b)| mor::refit::BlockRefit::new(&r.deep.layers[l].ssm, b))
            .collect::<mor::Result<_>>()?;
        let pb = bar(cal.refit.len() as u64, "sens refit");
        for tokens in &cal.refit.tokens {
            let inputs = layer_inputs(r.model, tokens)?;
            fits.par_iter_mut()
                .zip(&grid)
                .try_for_each(|(f, &(l, _))| f.add(inputs[l].as_ref()))?;
            pb.inc(1);
        }
        pb.finish_and_clear();
        blocks = fits
            .par_iter()
            .map(|f| Ok(f.solve(&r.refit)?.0))
            .collect::<mor::Result<_>>()?;
    }
    let mut curves: Vec<mor::alloc::CostCurve> = r
        .deep
        .layers
        .iter()
        .map(|l| mor::alloc::CostCurve {
            n_modes: l.ssm.n_modes(),
            orders: Vec::new(),
            costs: Vec::new(),
        })
        .collect();
    let pb = bar(grid.len() as u64, "sens cost");
    for (&(l, k), block) in grid.iter().zip(blocks) {
        pb.set_message(format!("layer {l}, order {k}"));
        pb.inc(1);
        let mut deep = r.deep.clone();
        deep.layers[l].ssm = block;
        let reduced = s5::with_reduced(r.model, &deep)?;
        let cost = if first_order {
            let mut total = 0.0;
            for lin in &lins {
                let lc = s5::sensitivity::layer_change(
                    lin,
                    l,
                    &r.model.layers[l].ssm,
                    &reduced.layers[l].ssm,
                )?;
                total += lc.change.iter().flatten().map(|v| v * v).sum::<f64>();
            }
            total / set.len().max(1) as f64
        } else {
            let logits = evaluate(&reduced, set, None, false)?.logits;
            logits
                .iter()
                .zip(&full)
                .map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>())
                .sum::<f64>()
                / set.len().max(1) as f64
        };
        if !cost.is_finite() {
            bail!(
                "{base}: layer {l} alone at order {k} gives non-finite logits on calibration reviews"
            );
        }
        curves[l].orders.push(k);
        curves[l].costs.push(cost);
    }
    pb.finish_and_clear();
    for c in &mut curves {
        c.orders.push(c.n_modes);
        c.costs.push(0.0);
    }
    Ok(Sensitivity {
        recipe: base.to_string(),
        allocation: if first_order { "first-order" } else { "sens" }.into(),
        curves,
        reviews: set.len(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Each layer's SSM input on `tokens` as `[len, m]` matrices (layer order;
/// [`S5Model::ssm_inputs`]).
///
/// # Errors
/// Model errors (an empty sequence, a token outside the vocabulary).
pub fn layer_inputs(model: &S5Model, tokens: &[u32]) -> Result<Vec<faer::Mat<f64>>> {
    let len = tokens.len();
    Ok(model
        .ssm_inputs(tokens)?
        .into_iter()
        .map(|u| {
            let h = u.len() / len;
            faer::MatRef::from_row_major_slice(&u, len, h).to_owned()
        })
        .collect())
}

/// The `refit` post-step ([`mor::refit`]): every layer of `reduced` refitted to the full model's
/// layer outputs on the layer inputs the full model records on `calibration`.
///
/// # Errors
/// An empty calibration set; model, shape or solver errors.
pub fn refit(
    model: &S5Model,
    deep: &mor::DeepSsm,
    reduced: &mor::DeepSsm,
    calibration: &EvalSet,
    opts: &mor::refit::RefitOptions,
) -> Result<(mor::DeepSsm, Vec<mor::refit::BlockRefitReport>)> {
    if calibration.is_empty() {
        bail!("no calibration reviews to refit on");
    }
    let mut fit = mor::refit::ModelRefit::new(deep, reduced)?;
    let pb = bar(calibration.len() as u64, "refit  ");
    for tokens in &calibration.tokens {
        let inputs = layer_inputs(model, tokens)?;
        let refs: Vec<_> = inputs.iter().map(faer::Mat::as_ref).collect();
        fit.add(&refs)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(fit.solve(opts)?)
}

/// The `refit-seq` post-step: layers refitted in order, layer ℓ driven by the inputs of the
/// reduced model whose layers `< ℓ` are already refitted, and fitted to the full model's layer
/// output `s_ℓ + D u_ℓ` (its target for the state output is `s_ℓ + D (u_ℓ − û_ℓ)`), so it
/// compensates the upstream error as far as a read-out can.
///
/// # Errors
/// As [`refit`].
pub fn refit_sequential(
    model: &S5Model,
    deep: &mor::DeepSsm,
    reduced: &mor::DeepSsm,
    calibration: &EvalSet,
    opts: &mor::refit::RefitOptions,
) -> Result<(mor::DeepSsm, Vec<mor::refit::BlockRefitReport>)> {
    if calibration.is_empty() {
        bail!("no calibration reviews to refit on");
    }
    let mut current = reduced.clone();
    let mut reports = Vec::with_capacity(deep.layers.len());
    for l in 0..deep.layers.len() {
        let upstream = s5::with_reduced(model, &current)?;
        let full_block = &deep.layers[l].ssm;
        let mut fit = mor::refit::BlockRefit::new(full_block, &current.layers[l].ssm)?;
        for tokens in &calibration.tokens {
            let u = layer_inputs(model, tokens)?.swap_remove(l);
            let u_hat = layer_inputs(&upstream, tokens)?.swap_remove(l);
            let mut target = mor::refit::state_output(full_block, u.as_ref())?;
            if let Some(d) = &full_block.d {
                for t in 0..target.nrows() {
                    for (o, &dk) in d.iter().enumerate() {
                        target[(t, o)] += dk * (u[(t, o)] - u_hat[(t, o)]);
                    }
                }
            }
            fit.add_target(u_hat.as_ref(), target.as_ref())?;
        }
        let (block, rep) = fit
            .solve(opts)
            .with_context(|| format!("refit-seq of layer {l}"))?;
        current.layers[l].ssm = block;
        reports.push(rep);
    }
    Ok((current, reports))
}
