//! Reduction methods and their results (the pyMOR split: a model, a reductor, a result that knows
//! its error).

use crate::block::DiagBlock;
use crate::model::DeepSsm;

/// A reduction method; names are the ones used everywhere (CLI, configs, CSV, plots).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Method {
    /// Keep the r most dominant modes (per-mode h2 contribution).
    #[serde(rename = "modal")]
    Modal,
    /// Balanced truncation (square-root method), re-diagonalised.
    #[serde(rename = "bt")]
    Bt,
    /// LAST (Gwak et al., NeurIPS 2024): layer-normalised H∞ scores, one global threshold.
    #[serde(rename = "last")]
    Last,
    /// Un-normalised H∞ scores, one global threshold (LAST paper baseline).
    #[serde(rename = "global-hinf")]
    GlobalHinf,
    /// H∞ scores, equal pruning ratio per layer (LAST paper baseline).
    #[serde(rename = "uniform-hinf")]
    UniformHinf,
    /// Gradient-based h2-optimal MOR per block (stable parameterisation).
    #[serde(rename = "h2")]
    H2,
    /// Time-limited h2 gradient MOR (unconstrained λ; may return unstable models).
    #[serde(rename = "tlh2")]
    Tlh2,
    /// Sakamoto & Sato (arXiv 2510.14542): LQO layers, h2 errors weighted by the output-error bound.
    #[serde(rename = "lqo-h2")]
    LqoH2,
}

impl Method {
    /// All methods, in the order used in tables and plots.
    pub const ALL: [Method; 8] = [
        Method::Modal,
        Method::Bt,
        Method::Last,
        Method::GlobalHinf,
        Method::UniformHinf,
        Method::H2,
        Method::Tlh2,
        Method::LqoH2,
    ];

    /// The canonical name (`modal`, `bt`, `last`, `global-hinf`, `uniform-hinf`, `h2`, `tlh2`, `lqo-h2`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Modal => "modal",
            Method::Bt => "bt",
            Method::Last => "last",
            Method::GlobalHinf => "global-hinf",
            Method::UniformHinf => "uniform-hinf",
            Method::H2 => "h2",
            Method::Tlh2 => "tlh2",
            Method::LqoH2 => "lqo-h2",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Method {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Method::ALL.iter().map(|m| m.name()).collect();
                crate::Error::Argument(format!(
                    "unknown method `{s}`; expected one of: {}",
                    names.join(", ")
                ))
            })
    }
}

/// The result of reducing one block.
#[derive(Clone, Debug)]
pub struct BlockReduction {
    /// The reduced block, same diagonal conjugate-symmetric form, `r` stored modes.
    pub block: DiagBlock,
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
