//! Precise BatchNorm (Wu & Johnson, 2021, Sec. 3): re-estimates every BatchNorm layer's running
//! statistics from the final weights ([`recalibrate_batch_norm`]).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use lra::{Batcher, Encoded};
use serde::{Deserialize, Serialize};

use crate::model::{Mode, S5Model, argmax};
use crate::norm::{BN_EPS, Norm, PooledStats};
use crate::params::to_f64_vec;
use crate::{Error, Result};

/// What [`recalibrate_batch_norm`] did and measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Recalibration {
    /// Calibration reviews (training split).
    pub reviews: usize,
    /// Batches they were run in.
    pub batches: usize,
    /// Accuracy on the calibration reviews in batch-statistics mode (no dropout, BatchNorm by
    /// each batch's statistics): what the weights achieve when the normalisation matches.
    pub batch_stats_accuracy: f64,
    /// Accuracy on the same reviews in evaluation mode with the old running statistics.
    pub running_stats_accuracy: f64,
    /// Per BatchNorm layer, the largest shift of a channel's mean in units of its old running
    /// standard deviation, `max_c |μ_new − μ_old| / sqrt(σ²_old + ε)`.
    pub mean_shift: Vec<f64>,
    /// Per BatchNorm layer, the largest `|ln(σ²_new / σ²_old)|` over channels.
    pub var_log_ratio: Vec<f64>,
    /// Wall seconds.
    pub seconds: f64,
}

/// Precise BatchNorm (Wu & Johnson, 2021, Sec. 3): replaces every BatchNorm layer's running
/// statistics (an exponential moving average over the last ≈ 10 training steps, i.e. over
/// earlier weights) by the exact population statistics of the current weights over `data`
/// (training reviews), run without dropout in batches of `batch_size` drawn as in training
/// (seeded shuffle, length bucketing). The weights are not changed. Also measures the accuracy
/// on `data` with the old running statistics and in batch-statistics mode.
///
/// # Errors
/// Empty `data`, a model without BatchNorm, candle errors.
pub fn recalibrate_batch_norm(
    model: &S5Model,
    data: Encoded,
    batch_size: usize,
    seed: u64,
    pb: Option<&indicatif::ProgressBar>,
) -> Result<Recalibration> {
    let t0 = Instant::now();
    let dev = Device::Cpu;
    if data.is_empty() {
        return Err(Error::Config(
            "recalibration: no calibration reviews".into(),
        ));
    }
    let old: Vec<Option<(Vec<f64>, Vec<f64>)>> = model
        .layers
        .iter()
        .map(|l| match &l.norm {
            Norm::Batch {
                running_mean,
                running_var,
                ..
            } => Ok(Some((to_f64_vec(running_mean)?, to_f64_vec(running_var)?))),
            Norm::Layer { .. } => Ok(None),
        })
        .collect::<Result<_>>()?;
    if old.iter().all(Option::is_none) {
        return Err(Error::Config(
            "recalibration: the model has no BatchNorm layer to recalibrate".into(),
        ));
    }
    let reviews = data.len();
    let batcher = Batcher::new(data, batch_size, seed)?;
    let mut pooled = vec![PooledStats::default(); model.layers.len()];
    let (mut correct_batch, mut correct_running, mut batches) = (0usize, 0usize, 0usize);
    for b in batcher.train_epoch(0) {
        let tokens = Tensor::from_slice(&b.tokens, (b.batch, b.len), &dev)?;
        let lengths = Tensor::from_slice(&b.lengths, b.batch, &dev)?;
        let (logits, stats) = model.forward_batch_stats(&tokens, &lengths)?;
        for (p, s) in pooled.iter_mut().zip(&stats) {
            if let Some(s) = s {
                p.add(s)?;
            }
        }
        let running = model.forward(&tokens, &lengths, Mode::Eval)?;
        let count = |t: &Tensor| -> Result<usize> {
            let rows = t.to_dtype(DType::F64)?.to_vec2::<f64>()?;
            Ok(rows
                .iter()
                .zip(&b.labels)
                .filter(|(r, y)| argmax(r) == **y as usize)
                .count())
        };
        correct_batch += count(&logits)?;
        correct_running += count(&running)?;
        batches += 1;
        if let Some(pb) = pb {
            pb.inc(b.batch as u64);
        }
    }
    let new: Vec<Option<(Vec<f64>, Vec<f64>)>> = pooled.iter().map(|p| p.finish()).collect();
    let (mut mean_shift, mut var_log_ratio) = (Vec::new(), Vec::new());
    for (o, n) in old.iter().zip(&new) {
        if let (Some((m0, v0)), Some((m1, v1))) = (o, n) {
            let fold = |it: &mut dyn Iterator<Item = f64>| it.fold(0.0f64, f64::max);
            mean_shift.push(fold(
                &mut m0
                    .iter()
                    .zip(m1)
                    .zip(v0)
                    .map(|((a, b), v)| (b - a).abs() / (v + BN_EPS).sqrt()),
            ));
            var_log_ratio.push(fold(
                &mut v0
                    .iter()
                    .zip(v1)
                    .map(|(a, b)| ((b + BN_EPS) / (a + BN_EPS)).ln().abs()),
            ));
        }
    }
    model.set_running_stats(&new)?;
    Ok(Recalibration {
        reviews,
        batches,
        batch_stats_accuracy: correct_batch as f64 / reviews as f64,
        running_stats_accuracy: correct_running as f64 / reviews as f64,
        mean_shift,
        var_log_ratio,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
