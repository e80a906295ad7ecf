//! `lqo-h2`: each layer as a linear-quadratic-output (LQO) system, h2-optimal reduction of the
//! layers weighted by the output-error bound (the method of Sakamoto & Sato, arXiv 2510.14542,
//! as reconstructed here).
//!
//! # Layers as LQO systems
//!
//! A layer's gate maps the SSM state output `y ∈ R^h` (per position) to `out ∈ R^h`. Its linear
//! part `E y` and quadratic part `(yᵀ N_1 y, …, yᵀ N_h y)` define an LQO system
//! (issue 4, Definitions) whose h2 norm is `tr(E G Eᵀ) + Σ_i tr(N_i G N_i G)`.
//!
//! * `quadratic` gate, `out_i = y_i (w_iᵀ y + b_i)` (`w_i` row `i` of `W`): exactly
//!   `E = diag(b)` and `y_i (w_iᵀ y) = yᵀ N_i y` with the symmetric `N_i = (e_i w_iᵀ + w_i e_iᵀ)/2`.
//! * `half_glu2` gate, `out_i = y_i σ(a_i)`, `a = W GELU(y) + b`: around `y = 0`,
//!   `GELU_tanh(y) = y/2 · (1 + tanh(√(2/π)(y + 0.044715 y³))) = y/2 + y²/√(2π) + O(y⁴)`, so
//!   `a = b + W y/2 + O(y²)` and `σ(a_i) = σ(b_i) + σ'(b_i) (w_iᵀ y)/2 + O(y²)`. Multiplying by
//!   `y_i`, `out_i = σ(b_i) y_i + σ'(b_i)/2 · y_i (w_iᵀ y) + O(y³)` (the `y²` term of GELU only
//!   enters at third order). Hence `E = diag(σ(b))` and
//!   `N_i = σ'(b_i)/2 · (e_i w_iᵀ + w_i e_iᵀ)/2`, `σ'(b) = σ(b)(1 − σ(b))`.
//! * identity gate: `E = I`, no `N_i`.
//!
//! The feed-through `D u` is shared by the full and the reduced layer and is not part of the
//! norm (issue 4). The `N_i` are rank 2, so `Σ_i N_i X N_i` costs `O(h³)` instead of `O(h⁴)`
//! (`h2opt::Quad::Rank2`).
//!
//! # Objective and allocation
//!
//! `min Σ_ℓ w_ℓ ‖Σ_ℓ − Σ_ℓ,r‖_h2(LQO)` subject to `Σ_ℓ r_ℓ = budget`, where `w_ℓ` are the layer
//! factors of the output-error bound (`BOUND.md`): given (`LqoOptions::layer_weights`, e.g. from
//! the bound on measured activations of calibration inputs), or those of `bound::layer_weights`
//! for a worst-case input of length `weight_len` with embedded entries bounded by `weight_linf`. For a fixed allocation
//! the terms are independent, so each layer minimises its own LQO h2 error by the gradient method
//! of `h2opt` (stable parameterisation, closed-form gradients, L-BFGS; in parallel over layers).
//! The allocation is greedy on the bound: start from a floor of modes per layer
//! (`LqoOptions::floor_fraction` of the uniform share, at least `min_per_layer`) and add, one
//! at a time, the mode with the largest decrease of `w_ℓ e_ℓ(r_ℓ)` per kept mode (all layers of a
//! model have the same parameter cost per mode), where `e_ℓ(k)` is the LQO h2 error of modal
//! truncation to `k` modes, computed exactly on a grid of orders and interpolated linearly in
//! `log e` between grid points.

use crate::block::DiagBlock;
use crate::bound;
use crate::error::{Error, Result};
use crate::gatefit::LqoTerms;
use crate::gram;
use crate::h2opt::{self, H2Options, Objective, Param, Quad, Red};
use crate::model::{DeepSsm, Gate, Layer, sigmoid};
use crate::modes;
use crate::reduction::{BlockReduction, ModelReduction};
use faer::Mat;
use rayon::prelude::*;

/// Options of [`reduce_model_lqo`].
#[derive(Clone, Debug)]
pub struct LqoOptions {
    /// Per-layer optimiser options.
    pub h2: H2Options,
    /// Sequence length for the bound's layer weights (`None`: the model's `max_len`).
    pub weight_len: Option<usize>,
    /// Bound on the embedded input entries for the layer weights.
    pub weight_linf: f64,
    /// Layer weights `w_ℓ` to use instead of the worst-case ones (`None`): e.g. the first-order
    /// factors of the a-posteriori bound (`bound::BoundPrep::evaluate_measured`) averaged over
    /// calibration inputs. One positive finite entry per layer.
    pub layer_weights: Option<Vec<f64>>,
    /// Modes every layer keeps at least (≥ 1).
    pub min_per_layer: usize,
    /// Every layer also keeps at least `floor_fraction · budget / layers` modes (rounded down).
    /// The bound's layer factors are products of worst-case Lipschitz constants and span many
    /// orders of magnitude (1e27 to 1e62 over 6 layers of the paper-scale benchmark), so the pure
    /// greedy would give every mode to the first layer; the floor keeps this share uniform and
    /// lets the bound allocate the rest. `0.0` gives the pure greedy.
    pub floor_fraction: f64,
    /// Run the gradient refinement (otherwise: modal truncation at the allocated orders).
    pub refine: bool,
    /// Per layer, the LQO read-out fitted at the gate's operating point
    /// ([`crate::gatefit`]); `None` (or a layer's exact LQO gate) = [`lqo_structured`].
    pub terms: Option<Vec<Option<LqoTerms>>>,
    /// Horizon `T` of a time-limited LQO h2 objective (lags `|j| < T`); `None` = infinite.
    pub horizon: Option<usize>,
}

impl Default for LqoOptions {
    fn default() -> Self {
        LqoOptions {
            h2: H2Options {
                max_iter: 150,
                ..H2Options::default()
            },
            weight_len: None,
            weight_linf: 1.0,
            layer_weights: None,
            min_per_layer: 1,
            floor_fraction: 0.5,
            refine: true,
            terms: None,
            horizon: None,
        }
    }
}

/// The LQO read-out of a layer in structured form: `E` (`None` = identity) and the rank-2
/// quadratic forms (module doc).
pub fn lqo_structured(layer: &Layer) -> (Option<Mat<f64>>, Option<Quad>) {
    let h = layer.ssm.n_outputs();
    match &layer.gate {
        Gate::Identity => (None, None),
        Gate::Quadratic { w, b } => (
            Some(Mat::from_fn(h, h, |i, j| if i == j { b[i] } else { 0.0 })),
            Some(Quad::Rank2 {
                sel: (0..h).collect(),
                v: w.clone(),
            }),
        ),
        Gate::HalfGlu2 { w, b } => {
            let s: Vec<f64> = b.iter().map(|&x| sigmoid(x)).collect();
            (
                Some(Mat::from_fn(h, h, |i, j| if i == j { s[i] } else { 0.0 })),
                Some(Quad::Rank2 {
                    sel: (0..h).collect(),
                    v: Mat::from_fn(h, w.ncols(), |i, j| 0.5 * s[i] * (1.0 - s[i]) * w[(i, j)]),
                }),
            )
        }
    }
}

/// The layer as an LQO system (module doc): `E` `[q, h]` and the symmetric `N_i` `[h, h]`
/// (`q = h` outputs, one `N_i` per output channel; none for the identity gate). Exact for
/// `Gate::Quadratic`; the second-order expansion around `y = 0` for `Gate::HalfGlu2`.
pub fn lqo_terms(layer: &Layer) -> (Mat<f64>, Vec<Mat<f64>>) {
    let h = layer.ssm.n_outputs();
    let (e, q) = lqo_structured(layer);
    (
        e.unwrap_or_else(|| Mat::identity(h, h)),
        q.map(|q| q.to_dense(h)).unwrap_or_default(),
    )
}

/// LQO h2 error of a reduced SSM block of a layer (three-term closed form with the structured
/// `N_i` of [`lqo_structured`]; the SSM's own `linear`/`quadratic` are ignored).
pub fn lqo_h2_error(layer: &Layer, reduced: &DiagBlock) -> Result<f64> {
    let (e, quad) = lqo_structured(layer);
    lqo_h2_error_with(layer, reduced, LqoTerms { e, quad }, None)
}

/// LQO h2 error of a reduced SSM block of a layer with the read-out `terms`, time-limited to
/// lags `|j| < T` with `horizon = Some(T)`.
///
/// # Errors
/// [`Error::Unstable`] for an unstable block; [`Error::Shape`] for mismatched blocks.
pub fn lqo_h2_error_with(
    layer: &Layer,
    reduced: &DiagBlock,
    terms: LqoTerms,
    horizon: Option<usize>,
) -> Result<f64> {
    gram::check_stable(&layer.ssm, "lqo: full block")?;
    gram::check_stable(reduced, "lqo: reduced block")?;
    if reduced.n_inputs() != layer.ssm.n_inputs() || reduced.n_outputs() != layer.ssm.n_outputs() {
        return Err(Error::Shape(format!(
            "lqo: reduced block is {}x{} (p x m), layer SSM is {}x{}",
            reduced.n_outputs(),
            reduced.n_inputs(),
            layer.ssm.n_outputs(),
            layer.ssm.n_inputs()
        )));
    }
    let obj = Objective::new(&layer.ssm, horizon, terms.e.as_ref(), terms.quad);
    Ok(obj.eval(&Red::from_block(reduced), None).max(0.0).sqrt())
}

/// The `k` most dominant modes (per-mode h2 score of the linear SSM), for every `k`.
fn modal_ranking(block: &DiagBlock) -> Vec<usize> {
    let scores = modes::mode_h2_scores(&DiagBlock {
        linear: None,
        quadratic: vec![],
        ..block.clone()
    });
    let mut idx: Vec<usize> = (0..block.n_modes()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    idx
}

fn take_top(block: &DiagBlock, rank: &[usize], k: usize) -> DiagBlock {
    let mut keep = rank[..k].to_vec();
    keep.sort_unstable();
    modes::select_modes(block, &keep)
}

/// Orders at which the modal error curve is evaluated exactly.
fn order_grid(n: usize) -> Vec<usize> {
    let mut g = vec![];
    let mut k = 1usize;
    while k < n {
        g.push(k);
        k = if k < 4 {
            k + 1
        } else {
            (k as f64 * 1.4).ceil() as usize
        };
    }
    g.push(n);
    g
}

/// `e(k)` for `k = 0..=n` (`e(n) = 0`), exact on the grid, log-linear in between.
fn modal_error_curve(layer: &Layer, obj: &Objective<'_>) -> Vec<f64> {
    let n = layer.ssm.n_modes();
    let rank = modal_ranking(&layer.ssm);
    let grid = order_grid(n);
    let vals: Vec<(usize, f64)> = grid
        .iter()
        .map(|&k| {
            if k == n {
                (k, 0.0)
            } else {
                let red = take_top(&layer.ssm, &rank, k);
                (k, obj.eval(&Red::from_block(&red), None).max(0.0).sqrt())
            }
        })
        .collect();
    let mut e = vec![0.0; n + 1];
    e[0] = obj.j0.max(0.0).sqrt();
    for w in vals.windows(2) {
        let ((k0, e0), (k1, e1)) = (w[0], w[1]);
        for (k, ek) in e.iter_mut().enumerate().take(k1 + 1).skip(k0) {
            let t = (k - k0) as f64 / (k1 - k0) as f64;
            *ek = if e0 > 0.0 && e1 > 0.0 {
                (e0.ln() * (1.0 - t) + e1.ln() * t).exp()
            } else {
                e0 * (1.0 - t) + e1 * t
            };
        }
    }
    if let Some(&(k0, e0)) = vals.first() {
        // Between 0 and the first grid point.
        let full = e[0];
        for (k, ek) in e.iter_mut().enumerate().take(k0 + 1).skip(1) {
            let t = k as f64 / k0 as f64;
            *ek = full * (1.0 - t) + e0 * t;
        }
    }
    e[n] = 0.0;
    e
}

/// Greedy allocation of `budget` modes: maximise the decrease of `Σ_ℓ w_ℓ e_ℓ(r_ℓ)` per mode.
fn allocate(
    curves: &[Vec<f64>],
    weights: &[f64],
    budget: usize,
    min_per_layer: usize,
) -> Vec<usize> {
    let mut r: Vec<usize> = curves
        .iter()
        .map(|c| min_per_layer.min(c.len() - 1).max(1))
        .collect();
    let mut used: usize = r.iter().sum();
    while used < budget {
        let mut best: Option<(usize, f64)> = None;
        for (l, c) in curves.iter().enumerate() {
            if r[l] + 1 < c.len() {
                let gain = weights[l] * (c[r[l]] - c[r[l] + 1]);
                if best.is_none_or(|b| gain > b.1) {
                    best = Some((l, gain));
                }
            }
        }
        match best {
            Some((l, _)) => {
                r[l] += 1;
                used += 1;
            }
            None => break,
        }
    }
    r
}

/// The LQO read-out of layer `l` that `opts` asks for: the fitted terms if given, else the
/// gate's structural model ([`lqo_structured`]).
pub fn layer_terms(layer: &Layer, l: usize, opts: &LqoOptions) -> LqoTerms {
    match opts
        .terms
        .as_ref()
        .and_then(|t| t.get(l).cloned().flatten())
    {
        Some(t) => t,
        None => {
            let (e, quad) = lqo_structured(layer);
            LqoTerms { e, quad }
        }
    }
}

/// `lqo-h2` for a whole model: allocate `budget` kept modes (stored complex modes, summed over
/// layers) by the output-error bound ([`bound_orders`]) and reduce each layer's SSM by
/// gradient-based LQO-h2 optimisation ([`reduce_layer`]). `layer_h2_errors` are the LQO h2
/// errors of the layers.
///
/// # Errors
/// Those of [`bound_orders`] and [`reduce_layer`].
pub fn reduce_model_lqo(
    model: &DeepSsm,
    budget: usize,
    opts: &LqoOptions,
) -> Result<ModelReduction> {
    let orders = bound_orders(model, budget, opts)?;
    reduce_model_lqo_orders(model, &orders, opts)
}

/// The bound-weighted allocation of `lqo-h2`: every layer keeps the floor
/// (`opts.floor_fraction`, `opts.min_per_layer`), then modes go greedily to the layer whose
/// weighted modal LQO-h2 error drops most (module doc).
///
/// # Errors
/// [`Error::Argument`] if `budget` is smaller than `layers · min_per_layer` (at least one per
/// layer) or larger than the total number of modes, or for bad `layer_weights`;
/// [`Error::Unstable`] for an unstable layer; errors of the bound's weights.
pub fn bound_orders(model: &DeepSsm, budget: usize, opts: &LqoOptions) -> Result<Vec<usize>> {
    let nl = model.layers.len();
    let total: usize = model.layers.iter().map(|l| l.ssm.n_modes()).sum();
    let minp = opts.min_per_layer.max(1);
    if budget < nl * minp || budget > total {
        return Err(Error::Argument(format!(
            "lqo-h2: budget {budget} must be in {}..={total} ({nl} layers, at least {minp} mode(s) each)",
            nl * minp
        )));
    }
    for (i, l) in model.layers.iter().enumerate() {
        gram::check_stable(&l.ssm, &format!("lqo-h2: layer {i}"))?;
    }
    let weights = match &opts.layer_weights {
        Some(w) => {
            if w.len() != nl || w.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                return Err(Error::Argument(format!(
                    "lqo-h2: layer_weights {w:?} must hold {nl} positive finite values"
                )));
            }
            w.clone()
        }
        None => {
            let len = opts.weight_len.unwrap_or(model.max_len).max(1);
            bound::layer_weights(model, len, opts.weight_linf)?
        }
    };
    let curves: Vec<Vec<f64>> = model
        .layers
        .par_iter()
        .enumerate()
        .map(|(l, layer)| {
            let t = layer_terms(layer, l, opts);
            let obj = Objective::new(&layer.ssm, opts.horizon, t.e.as_ref(), t.quad);
            modal_error_curve(layer, &obj)
        })
        .collect();
    let floor = ((opts.floor_fraction.clamp(0.0, 1.0) * budget as f64 / nl as f64).floor()
        as usize)
        .max(minp);
    Ok(allocate(&curves, &weights, budget, floor))
}

/// `lqo-h2` of one layer at order `k`: the h2-optimal reduction of the layer's SSM with the LQO
/// read-out `terms` ([`layer_terms`]; time-limited with `opts.horizon`), started from the modal
/// truncation at `k` (and balanced truncation with `opts.h2.try_bt_init`), stable
/// parameterisation; `opts.refine = false` returns the modal truncation. `h2_error` is the LQO
/// h2 error.
///
/// # Errors
/// [`Error::Argument`] for `k` outside `1..=n`; [`Error::Unstable`] for an unstable block.
pub fn reduce_layer(
    layer: &Layer,
    k: usize,
    terms: LqoTerms,
    opts: &LqoOptions,
) -> Result<BlockReduction> {
    let n = layer.ssm.n_modes();
    layer.ssm.check_order(k, "LQO h2 reduction")?;
    gram::check_stable(&layer.ssm, "lqo-h2: block")?;
    let obj = Objective::new(&layer.ssm, opts.horizon, terms.e.as_ref(), terms.quad);
    let rank = modal_ranking(&layer.ssm);
    let modal = take_top(&layer.ssm, &rank, k);
    let red = if k == n {
        Red::from_block(&layer.ssm)
    } else if opts.refine {
        let mut inits = vec![Red::from_block(&modal)];
        if opts.h2.try_bt_init
            && let Some(bt) = h2opt::bt_init(&layer.ssm, k)
        {
            inits.push(Red::from_block(&bt));
        }
        h2opt::optimise(&obj, inits, Param::Stable, &opts.h2).0
    } else {
        Red::from_block(&modal)
    };
    let j = obj.eval(&red, None);
    let mut blk = red.to_block(&layer.ssm);
    blk.linear = layer.ssm.linear.clone();
    blk.quadratic = layer.ssm.quadratic.clone();
    Ok(BlockReduction {
        block: blk,
        h2_error: j.max(0.0).sqrt(),
        hinf_bound: None,
    })
}

/// `lqo-h2` of every layer at the given `orders` ([`reduce_layer`], layers in parallel).
///
/// # Errors
/// [`Error::Argument`] for a wrong number of orders; those of [`reduce_layer`], naming the layer.
pub fn reduce_model_lqo_orders(
    model: &DeepSsm,
    orders: &[usize],
    opts: &LqoOptions,
) -> Result<ModelReduction> {
    if orders.len() != model.layers.len() {
        return Err(Error::Argument(format!(
            "lqo-h2: {} orders for {} layers",
            orders.len(),
            model.layers.len()
        )));
    }
    let reds: Vec<BlockReduction> = model
        .layers
        .par_iter()
        .zip(orders.par_iter())
        .enumerate()
        .map(|(l, (layer, &k))| {
            reduce_layer(layer, k, layer_terms(layer, l, opts), opts).map_err(|e| match e {
                Error::Argument(m) => Error::Argument(format!("layer {l}: {m}")),
                Error::Unstable(m) => Error::Unstable(format!("layer {l}: {m}")),
                other => other,
            })
        })
        .collect::<Result<_>>()?;
    Ok(crate::reduction::assemble(model, reds))
}
