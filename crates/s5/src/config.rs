//! Model hyperparameters (the `[model]` section of a run config, and `config.json` beside a
//! checkpoint).

use serde::{Deserialize, Serialize};

/// Prenorm kind of each layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// BatchNorm over (batch, time), statistics over true (unpadded) positions only.
    Batch,
    /// LayerNorm over the `h` channels of each position.
    Layer,
}

/// Gate after the SSM of each layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateKind {
    /// S5's `half_glu2`: `out = y ⊙ σ(W GELU_tanh(y) + b)`.
    HalfGlu2,
    /// `out = y ⊙ (W y + b)`: each layer exactly a linear-quadratic-output (LQO) system.
    Quadratic,
}

/// Architecture of an S5 classifier (Smith et al., ICLR 2023, Sec. 3 and App. G).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Vocabulary size of the embedding (257 for LRA byte level: bytes + 1, 0 = padding).
    pub vocab_size: usize,
    /// Number of classes of the decoder (2 for IMDb).
    pub n_classes: usize,
    /// Model width H (channels).
    pub d_model: usize,
    /// Number of residual S5 layers.
    pub n_layers: usize,
    /// State size P (real count); stored as P/2 complex modes (conjugate symmetry).
    pub ssm_size: usize,
    /// Number J of HiPPO-N blocks that the P states are split into at initialisation.
    pub blocks: usize,
    /// Whether each layer also runs a reverse scan read by its own C̃₂.
    pub bidirectional: bool,
    /// Prenorm kind.
    pub norm: NormKind,
    /// Gate kind.
    pub gate: GateKind,
    /// Dropout probability (broadcast over time), applied in training only.
    pub dropout: f64,
    /// Smallest initial step Δ (log-uniform initialisation of `log_step`).
    pub dt_min: f64,
    /// Largest initial step Δ.
    pub dt_max: f64,
}
