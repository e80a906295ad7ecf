//! The results of a reduction, below every reducer (the reducers return them, [`crate::reduce`]
//! dispatches to the reducers).

use crate::model::DeepSsm;

/// The result of reducing one block.
#[derive(Clone, Debug)]
pub struct BlockReduction {
    /// The reduced block, same diagonal conjugate-symmetric form, `r` stored modes.
    pub block: crate::block::DiagBlock,
    /// h2 error ‖Σ − Σ_r‖_h2 (time-limited when the method is).
    pub h2_error: f64,
    /// A priori H∞ error bound when the method has one (BT: 2 Σ discarded HSV).
    pub hinf_bound: Option<f64>,
}

/// The result of reducing every layer of a model.
#[derive(Clone, Debug)]
pub struct ModelReduction {
    /// The reduced model (norms, gates, decoder unchanged).
    pub model: DeepSsm,
    /// Stored complex modes kept per layer.
    pub kept_modes: Vec<usize>,
    /// h2 error of each layer's SSM block (with the layer's LQO output for `lqo-h2`).
    pub layer_h2_errors: Vec<f64>,
    /// Per-layer H∞ bound where the method provides one.
    pub hinf_bounds: Option<Vec<f64>>,
    /// Whether every reduced mode has `|λ| < 1`.
    pub stable: bool,
    /// Largest `|λ|` over all reduced layers.
    pub max_abs_lambda: f64,
}

/// Builds a [`ModelReduction`] from per-layer block reductions (norms, gates, decoder unchanged).
pub fn assemble(model: &DeepSsm, reds: Vec<BlockReduction>) -> ModelReduction {
    let mut out = model.clone();
    let mut kept = vec![];
    let mut errs = vec![];
    let mut bounds = vec![];
    for (layer, red) in out.layers.iter_mut().zip(reds) {
        kept.push(red.block.n_modes());
        errs.push(red.h2_error);
        bounds.push(red.hinf_bound);
        layer.ssm = red.block;
    }
    let max_abs_lambda = out
        .layers
        .iter()
        .map(|l| l.ssm.max_abs_lambda())
        .fold(0.0, f64::max);
    ModelReduction {
        model: out,
        kept_modes: kept,
        layer_h2_errors: errs,
        hinf_bounds: bounds
            .iter()
            .all(Option::is_some)
            .then(|| bounds.into_iter().flatten().collect()),
        stable: max_abs_lambda < 1.0,
        max_abs_lambda,
    }
}
