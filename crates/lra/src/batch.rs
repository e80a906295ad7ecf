//! Bucketed batching: seeded shuffling, length bucketing within large random chunks (so that padding
//! is small), a deterministic evaluation order, true lengths and a padding mask per batch.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::store::Split;
use crate::tokenizer::{PAD, Tokenize};
use crate::{Error, Result};

/// A tokenized split: `tokens[i]` (unpadded, at most `max_len` ids) has label `labels[i]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids per example, `[n][len_i]`.
    pub tokens: Vec<Vec<u32>>,
    /// Labels, `[n]` (0 = negative, 1 = positive).
    pub labels: Vec<u32>,
}

impl Encoded {
    /// Tokenizes every review of `split`.
    pub fn new(tokenizer: &dyn Tokenize, split: &Split) -> Self {
        Self {
            tokens: split.texts.iter().map(|t| tokenizer.encode(t)).collect(),
            labels: split.labels.iter().map(|&l| u32::from(l)).collect(),
        }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// `true` without examples.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Number of true tokens (padding excluded) over all examples.
    pub fn num_tokens(&self) -> usize {
        self.tokens.iter().map(Vec::len).sum()
    }
}

/// A padded batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Token ids `[batch, len]`, row-major, padded with 0 after each true length.
    pub tokens: Vec<u32>,
    /// True lengths `[batch]` (≥ 1 unless the text is empty).
    pub lengths: Vec<u32>,
    /// Labels `[batch]`.
    pub labels: Vec<u32>,
    /// Example indices into the [`Encoded`] split, `[batch]`.
    pub indices: Vec<usize>,
    /// Number of rows.
    pub batch: usize,
    /// Row length: the longest true length in this batch (not the tokenizer's `max_len`).
    pub len: usize,
}

impl Batch {
    /// Padding mask `[batch, len]`, row-major, f32: 1.0 at real tokens (`t < lengths[b]`), 0.0 at padding.
    pub fn mask(&self) -> Vec<f32> {
        let mut m = vec![0f32; self.batch * self.len];
        for (b, &l) in self.lengths.iter().enumerate() {
            m[b * self.len..b * self.len + l as usize].fill(1.0);
        }
        m
    }

    /// `true` if position `t` of row `b` is a real token, not padding.
    pub fn is_token(&self, b: usize, t: usize) -> bool {
        t < self.lengths[b] as usize
    }

    /// Number of padding positions, `batch * len - Σ lengths`.
    pub fn padding(&self) -> usize {
        self.batch * self.len - self.lengths.iter().map(|&l| l as usize).sum::<usize>()
    }
}

/// Makes batches of an [`Encoded`] split.
///
/// Training order (per epoch): a seeded random permutation (ChaCha8, stream = epoch), cut into
/// chunks of `bucket_batches × batch_size` examples, each chunk sorted by length (descending) and cut
/// into batches, then the batches shuffled. Every example appears exactly once per epoch; the last
/// batch may be smaller. Evaluation order: all examples sorted by length (descending, ties by index),
/// no randomness.
#[derive(Clone, Debug)]
pub struct Batcher {
    data: Encoded,
    batch_size: usize,
    bucket_batches: usize,
    seed: u64,
}

impl Batcher {
    /// Default number of batches per bucketing chunk.
    pub const BUCKET_BATCHES: usize = 100;

    /// A batcher over `data` with batches of `batch_size` and the given seed.
    ///
    /// Errors: [`Error::Invalid`] if `batch_size` is 0 or the token and label counts differ.
    pub fn new(data: Encoded, batch_size: usize, seed: u64) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::Invalid("batch size must be at least 1".into()));
        }
        if data.tokens.len() != data.labels.len() {
            return Err(Error::Invalid(format!(
                "{} token sequences but {} labels",
                data.tokens.len(),
                data.labels.len()
            )));
        }
        Ok(Self {
            data,
            batch_size,
            bucket_batches: Self::BUCKET_BATCHES,
            seed,
        })
    }

    /// Sets the chunk size of length bucketing in batches (1 = no bucketing: random batches).
    pub fn with_bucket_batches(mut self, bucket_batches: usize) -> Self {
        self.bucket_batches = bucket_batches.max(1);
        self
    }

    /// The tokenized split.
    pub fn data(&self) -> &Encoded {
        &self.data
    }

    /// Batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches per epoch (the last one may be smaller).
    pub fn num_batches(&self) -> usize {
        self.data.len().div_ceil(self.batch_size)
    }

    /// Example indices of each training batch of `epoch`.
    pub fn train_order(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch);
        let mut perm: Vec<usize> = (0..self.data.len()).collect();
        perm.shuffle(&mut rng);
        let chunk = self.batch_size * self.bucket_batches;
        let mut batches = Vec::with_capacity(self.num_batches());
        for part in perm.chunks_mut(chunk) {
            part.sort_by_key(|&i| std::cmp::Reverse(self.data.tokens[i].len()));
            batches.extend(part.chunks(self.batch_size).map(<[usize]>::to_vec));
        }
        batches.shuffle(&mut rng);
        batches
    }

    /// Positions a model computes in training epoch `epoch`: Σ over its batches of rows × row
    /// length (the longest true length in the batch), i.e. the true tokens plus the padding. The
    /// cost of an epoch is proportional to it; compare with [`Encoded::num_tokens`].
    pub fn computed_tokens(&self, epoch: u64) -> usize {
        self.train_order(epoch)
            .iter()
            .map(|ix| {
                ix.len()
                    * ix.iter()
                        .map(|&i| self.data.tokens[i].len())
                        .max()
                        .unwrap_or(0)
            })
            .sum()
    }

    /// Example indices of each evaluation batch (deterministic, sorted by length).
    pub fn eval_order(&self) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(self.data.tokens[i].len()), i));
        order
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// Pads the given examples into a [`Batch`] of row length max true length.
    ///
    /// Panics if an index is out of range.
    pub fn batch(&self, indices: &[usize]) -> Batch {
        let len = indices
            .iter()
            .map(|&i| self.data.tokens[i].len())
            .max()
            .unwrap_or(0);
        let mut tokens = vec![PAD; indices.len() * len];
        for (row, &i) in indices.iter().enumerate() {
            let t = &self.data.tokens[i];
            tokens[row * len..row * len + t.len()].copy_from_slice(t);
        }
        Batch {
            tokens,
            lengths: indices
                .iter()
                .map(|&i| self.data.tokens[i].len() as u32)
                .collect(),
            labels: indices.iter().map(|&i| self.data.labels[i]).collect(),
            indices: indices.to_vec(),
            batch: indices.len(),
            len,
        }
    }

    /// The training batches of `epoch`.
    pub fn train_epoch(&self, epoch: u64) -> impl Iterator<Item = Batch> + '_ {
        self.train_order(epoch)
            .into_iter()
            .map(|ix| self.batch(&ix))
    }

    /// The evaluation batches.
    pub fn eval_batches(&self) -> impl Iterator<Item = Batch> + '_ {
        self.eval_order().into_iter().map(|ix| self.batch(&ix))
    }
}
