//! The hyperparameters of a training run (the `[train]` section of a run config) and their
//! validation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::optim::LogStepGroup;
use crate::{Error, Result};

/// Hyperparameters of a training run (the `[train]` section of a run config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Number of passes over the training set.
    pub epochs: usize,
    /// Sequences per batch (used by the batcher that feeds the trainer).
    pub batch_size: usize,
    /// Peak learning rate of the regular group (everything but Λ, B̃ and — unless
    /// `log_step_group = "regular"` — `log_step`).
    pub lr: f64,
    /// Peak learning rate of the SSM group (Λ re/im, B̃, and `log_step` unless
    /// `log_step_group = "regular"`); no weight decay.
    pub ssm_lr: f64,
    /// Decoupled weight decay of the regular group (AdamW, scaled by the learning rate).
    pub weight_decay: f64,
    /// Learning rate both groups anneal to (cosine) and start from (warmup). Default 0.
    #[serde(default)]
    pub min_lr: f64,
    /// Steps of linear warmup before the cosine decay. Default 0.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Clip the global L2 norm of the gradient to this value. Default: no clipping.
    #[serde(default)]
    pub grad_clip: Option<f64>,
    /// Seed of the data order and the dropout masks.
    pub seed: u64,
    /// Length bucketing of the training batches: each epoch's shuffled reviews are cut into chunks
    /// of this many batches, each chunk sorted by length before it is cut into batches (see
    /// [`lra::Batcher`]), so a batch is padded only to lengths close to its own. `1` gives plain
    /// random batches, as the public S5 code trains (there padded to the maximum length): on LRA
    /// IMDb at `max_len` 4,096 that is 3.1× the tokens per epoch of the default at batch 50 (99.4M
    /// against 32.5M true tokens, measured on the training reviews). Default
    /// [`lra::Batcher::BUCKET_BATCHES`] (100).
    #[serde(default = "default_bucket_batches")]
    pub bucket_batches: usize,
    /// Save a checkpoint every this many steps (0: only at epoch ends). Default 0.
    #[serde(default)]
    pub checkpoint_every: usize,
    /// Step checkpoints kept on disk (older ones are deleted). Default 2.
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// From this epoch on (1-based), keep the weights at each epoch end as a plain checkpoint
    /// (`model.safetensors`, `config.json`, `tokenizer.json`; no optimiser state) in
    /// `<run dir>/epochs/step-NNNNNNNN/`, never deleted: the members of a stochastic weight
    /// average (`bench swa`; Izmailov et al., 2018). A resumed run rewrites the same files.
    /// Default: none kept.
    #[serde(default)]
    pub keep_epoch_weights_from: Option<usize>,
    /// Evaluate on the test set after each epoch. Default true.
    #[serde(default = "default_true")]
    pub eval_each_epoch: bool,
    /// Write a row of the training log every this many steps. Default 10.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Stop after this many optimiser steps in total (the schedule still spans all epochs;
    /// resume continues). Default: run all epochs.
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Draw a progress bar with ETA on stderr. Default true.
    #[serde(default = "default_true")]
    pub progress: bool,
    /// Warm start: a fresh run (no checkpoint in the run directory yet) begins from the weights
    /// and BatchNorm running statistics of this checkpoint directory (`model.safetensors` +
    /// `config.json` of the same model), with new optimiser moments and a new warmup + cosine
    /// schedule — one more cycle of a cosine schedule with warm restarts (Loshchilov & Hutter,
    /// "SGDR", ICLR 2017). Ignored when the run directory already holds a checkpoint (resume
    /// wins). Default: random initialisation.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// The optimiser group of the timescales `log_step`: `"ssm"` (default: `ssm_lr`, no weight
    /// decay) or `"regular"` (`lr` and `weight_decay`, S5's `--dt_global=True`, used by the S5
    /// paper's IMDb run); see [`LogStepGroup`].
    #[serde(default)]
    pub log_step_group: LogStepGroup,
}

fn default_bucket_batches() -> usize {
    lra::Batcher::BUCKET_BATCHES
}
fn default_keep() -> usize {
    2
}
fn default_true() -> bool {
    true
}
fn default_log_every() -> usize {
    10
}

impl TrainConfig {
    /// Check ranges.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.epochs == 0 {
            return bad("train.epochs must be ≥ 1".into());
        }
        if self.batch_size == 0 {
            return bad("train.batch_size must be ≥ 1".into());
        }
        if self.bucket_batches == 0 {
            return bad(
                "train.bucket_batches must be ≥ 1 (1 = random batches, no bucketing)".into(),
            );
        }
        for (name, v) in [
            ("lr", self.lr),
            ("ssm_lr", self.ssm_lr),
            ("weight_decay", self.weight_decay),
            ("min_lr", self.min_lr),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("train.{name} = {v} must be finite and ≥ 0"));
            }
        }
        if let Some(c) = self.grad_clip
            && !(c.is_finite() && c > 0.0)
        {
            return bad(format!("train.grad_clip = {c} must be finite and > 0"));
        }
        if self.log_every == 0 {
            return bad("train.log_every must be ≥ 1".into());
        }
        Ok(())
    }
}
