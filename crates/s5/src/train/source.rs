//! Batches and where they come from: the tensors of a batch, the per-epoch [`BatchSource`] and
//! its two [`lra::Batcher`] sources.

use candle_core::{Device, Tensor};

use crate::Result;

pub use lra::Batch;

/// A batch as tensors: tokens `[batch, len]` u32, lengths `[batch]` u32, labels `[batch]` u32.
///
/// # Errors
/// Candle errors if the vectors do not match `batch` × `len`.
pub fn batch_tensors(batch: &Batch, device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let tokens = Tensor::from_slice(&batch.tokens, (batch.batch, batch.len), device)?;
    let lengths = Tensor::from_slice(&batch.lengths, batch.batch, device)?;
    let labels = Tensor::from_slice(&batch.labels, batch.batch, device)?;
    Ok((tokens, lengths, labels))
}

/// Where batches come from: one deterministic sequence of batches per epoch.
pub trait BatchSource {
    /// Number of batches in every epoch.
    fn num_batches(&self) -> usize;
    /// The batches of epoch `epoch` (0-based), in training order; the same `epoch` must give the
    /// same sequence every time (resume replays it and skips what was consumed).
    ///
    /// # Errors
    /// Data errors.
    fn epoch(&mut self, epoch: usize) -> Result<Box<dyn Iterator<Item = Result<Batch>> + '_>>;
}

/// The training batches of an [`lra::Batcher`]: epoch `e` is `Batcher::train_epoch(e)` (seeded
/// shuffle with length bucketing).
pub struct TrainBatches<'a>(pub &'a lra::Batcher);

impl BatchSource for TrainBatches<'_> {
    fn num_batches(&self) -> usize {
        self.0.num_batches()
    }
    fn epoch(&mut self, epoch: usize) -> Result<Box<dyn Iterator<Item = Result<Batch>> + '_>> {
        Ok(Box::new(self.0.train_epoch(epoch as u64).map(Ok)))
    }
}

/// The evaluation batches of an [`lra::Batcher`] (deterministic, sorted by length), the same for
/// every epoch.
pub struct EvalBatches<'a>(pub &'a lra::Batcher);

impl BatchSource for EvalBatches<'_> {
    fn num_batches(&self) -> usize {
        self.0.num_batches()
    }
    fn epoch(&mut self, _epoch: usize) -> Result<Box<dyn Iterator<Item = Result<Batch>> + '_>> {
        Ok(Box::new(self.0.eval_batches().map(Ok)))
    }
}
