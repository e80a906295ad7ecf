//! A tiny stand-in classifier and synthetic data for the training/checkpoint tests: embedding,
//! masked mean pooling, an "SSM-named" mixing matrix, a running statistic (frozen, checkpointed)
//! and a linear decoder, with seeded dropout. Parameter names follow the S5 model's naming so the
//! optimiser groups apply.
#![allow(dead_code, clippy::result_large_err)]

use std::cell::Cell;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use s5::train::{Batch, BatchSource, Classifier, TrainConfig};
use s5::{GateKind, ModelConfig, NormKind, Result};

pub const VOCAB: usize = 12;
pub const H: usize = 8;

pub struct Toy {
    emb: Tensor,
    mix: Tensor,
    lam: Tensor,
    running_mean: candle_core::Var,
    dec_w: Tensor,
    dec_b: Tensor,
    dropout: f64,
    /// Forward call (0-based) whose logits are replaced by NaN.
    pub poison_call: Cell<Option<usize>>,
    calls: Cell<usize>,
}

pub fn model_config() -> ModelConfig {
    ModelConfig {
        vocab_size: VOCAB,
        n_classes: 2,
        d_model: H,
        n_layers: 1,
        ssm_size: H,
        blocks: 1,
        bidirectional: false,
        norm: NormKind::Batch,
        gate: GateKind::HalfGlu2,
        dropout: 0.1,
        dt_min: 0.001,
        dt_max: 0.1,
    }
}

impl Toy {
    /// A toy model whose variables are created in `varmap`; `init_seed` varies the initial values.
    pub fn new(varmap: &VarMap, init_seed: u64) -> Result<Self> {
        let dev = Device::Cpu;
        let vb = VarBuilder::from_varmap(varmap, DType::F32, &dev);
        let mut rng = ChaCha8Rng::seed_from_u64(init_seed);
        let mut randn = |shape: &[usize], scale: f32| -> Result<Tensor> {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| (rng.random::<f32>() - 0.5) * 2.0 * scale)
                .collect();
            Ok(Tensor::from_vec(v, shape, &dev)?)
        };
        let emb0 = randn(&[VOCAB, H], 1.0)?;
        let mix0 = randn(&[H, H], 0.5)?;
        let dec0 = randn(&[2, H], 0.3)?;
        let emb = vb.get_with_hints((VOCAB, H), "encoder.weight", Init::Const(0.0))?;
        let mix = vb.get_with_hints((H, H), "layers.0.seq.B", Init::Const(0.0))?;
        let lam = vb.get_with_hints(H, "layers.0.seq.Lambda_re", Init::Const(-0.5))?;
        vb.get_with_hints(H, "layers.0.norm.running_mean", Init::Const(0.0))?;
        let dec_w = vb.get_with_hints((2, H), "decoder.weight", Init::Const(0.0))?;
        let dec_b = vb.get_with_hints(2, "decoder.bias", Init::Const(0.0))?;
        let data = varmap.data().lock().unwrap();
        data["encoder.weight"].set(&emb0)?;
        data["layers.0.seq.B"].set(&mix0)?;
        data["decoder.weight"].set(&dec0)?;
        let running_mean = data["layers.0.norm.running_mean"].clone();
        drop(data);
        Ok(Self {
            emb,
            mix,
            lam,
            running_mean,
            dec_w,
            dec_b,
            dropout: 0.1,
            poison_call: Cell::new(None),
            calls: Cell::new(0),
        })
    }
}

impl Classifier for Toy {
    fn logits(
        &self,
        tokens: &Tensor,
        lengths: &Tensor,
        dropout_seed: Option<u64>,
    ) -> Result<Tensor> {
        let call = self.calls.get();
        self.calls.set(call + 1);
        let (b, l) = tokens.dims2()?;
        let x = self
            .emb
            .embedding(&tokens.flatten_all()?)?
            .reshape((b, l, H))?;
        let lens = lengths.to_dtype(DType::F32)?;
        let pos = Tensor::arange(0u32, l as u32, tokens.device())?.to_dtype(DType::F32)?;
        let mask = pos
            .unsqueeze(0)?
            .broadcast_lt(&lens.unsqueeze(1)?)?
            .to_dtype(DType::F32)?;
        let pooled = x
            .broadcast_mul(&mask.unsqueeze(2)?)?
            .sum(1)?
            .broadcast_div(&lens.unsqueeze(1)?)?;
        let scale = (self.lam.exp()? + 1.0)?;
        let mut h = pooled
            .matmul(&self.mix.t()?)?
            .tanh()?
            .broadcast_mul(&scale)?;
        match dropout_seed {
            Some(seed) => {
                let mean = h.mean(0)?;
                let rm = ((self.running_mean.as_tensor() * 0.9)? + (mean.detach() * 0.1)?)?;
                self.running_mean.set(&rm)?;
                h = h.broadcast_sub(&mean)?;
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let keep = 1.0 - self.dropout;
                let m: Vec<f32> = (0..b * H)
                    .map(|_| {
                        if rng.random::<f64>() < keep {
                            (1.0 / keep) as f32
                        } else {
                            0.0
                        }
                    })
                    .collect();
                h = (h * Tensor::from_vec(m, (b, H), tokens.device())?)?;
            }
            None => h = h.broadcast_sub(self.running_mean.as_tensor())?,
        }
        let logits = h.matmul(&self.dec_w.t()?)?.broadcast_add(&self.dec_b)?;
        if self.poison_call.get() == Some(call) {
            return Ok((logits * f64::NAN)?);
        }
        Ok(logits)
    }
}

/// Synthetic task: label 1 iff token 5 occurs in the (unpadded part of the) sequence.
pub fn make_batches(seed: u64, n_batches: usize, batch: usize, len: usize) -> Vec<Batch> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n_batches)
        .map(|_| {
            let mut tokens = vec![0u32; batch * len];
            let mut lengths = Vec::with_capacity(batch);
            let mut labels = Vec::with_capacity(batch);
            for i in 0..batch {
                let n = rng.random_range(2..=len);
                for t in 0..n {
                    let mut tok = rng.random_range(1..VOCAB as u32 - 1);
                    if tok >= 5 {
                        tok += 1;
                    }
                    tokens[i * len + t] = tok;
                }
                let label = rng.random_bool(0.5);
                if label {
                    tokens[i * len + rng.random_range(0..n)] = 5;
                }
                lengths.push(n as u32);
                labels.push(label as u32);
            }
            Batch {
                tokens,
                lengths,
                labels,
                indices: (0..batch).collect(),
                batch,
                len,
            }
        })
        .collect()
}

/// A fixed set of batches reshuffled per epoch from a seed; `fail_at` makes the k-th batch
/// delivered (counted over the source's lifetime) an error, to simulate a crash.
pub struct VecSource {
    pub batches: Vec<Batch>,
    pub seed: u64,
    pub fail_at: Option<usize>,
    pub delivered: usize,
}

impl VecSource {
    pub fn new(batches: Vec<Batch>, seed: u64) -> Self {
        Self {
            batches,
            seed,
            fail_at: None,
            delivered: 0,
        }
    }
}

impl BatchSource for VecSource {
    fn num_batches(&self) -> usize {
        self.batches.len()
    }
    fn epoch(&mut self, epoch: usize) -> Result<Box<dyn Iterator<Item = Result<Batch>> + '_>> {
        let mut order: Vec<usize> = (0..self.batches.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ (epoch as u64 * 7919));
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let fail_at = self.fail_at;
        let delivered = &mut self.delivered;
        let batches = &self.batches;
        Ok(Box::new(order.into_iter().map(move |i| {
            let k = *delivered;
            *delivered += 1;
            if fail_at == Some(k) {
                return Err(s5::Error::Config("simulated crash".into()));
            }
            Ok(batches[i].clone())
        })))
    }
}

pub fn train_config() -> TrainConfig {
    TrainConfig {
        epochs: 3,
        batch_size: 8,
        lr: 0.02,
        ssm_lr: 0.01,
        weight_decay: 0.01,
        min_lr: 0.0,
        warmup_steps: 2,
        grad_clip: Some(5.0),
        seed: 17,
        bucket_batches: 100,
        checkpoint_every: 4,
        keep_checkpoints: 2,
        eval_each_epoch: true,
        log_every: 3,
        max_steps: None,
        progress: false,
        init_from: None,
        log_step_group: Default::default(),
        keep_epoch_weights_from: None,
    }
}

/// All variables of a VarMap as (name, flattened f32 values), sorted by name.
pub fn snapshot(varmap: &VarMap) -> Vec<(String, Vec<f32>)> {
    let data = varmap.data().lock().unwrap();
    let mut v: Vec<(String, Vec<f32>)> = data
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
