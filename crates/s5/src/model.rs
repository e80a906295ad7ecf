//! The S5 classifier (Smith et al., ICLR 2023, Fig. 1 and App. G; the IMDb setup of S5's code):
//! embedding encoder → `n_layers` × [prenorm → S5 SSM → gate → dropout → residual] → masked mean
//! pooling over the true lengths → linear decoder.
//!
//! Three implementations of the same map, held equal by tests: evaluation runs the fused kernel
//! of [`crate::infer`] (no autograd); training of BatchNorm + `half_glu2` models runs the layer
//! stack as one autograd node ([`crate::stack`]); [`S5Model::forward_ops`] chains the per-layer
//! autograd ops (the reference, and training of the other layer kinds).

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::fused::ChannelMask;
use crate::gate::Gate;
pub use crate::layer::S5Layer;
use crate::norm::{BatchStats, Mask, Norm};
use crate::params::{InitRng, param};
use crate::ssm::S5Ssm;
use crate::{Error, ModelConfig, Result};

/// Forward mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Evaluation: no dropout, BatchNorm uses its running statistics.
    Eval,
    /// Training: dropout masks derived deterministically from `seed` (mixed with the layer and
    /// site index; our own RNG), BatchNorm uses (and records) the statistics of the true
    /// positions of the batch.
    Train {
        /// Per-step seed of the dropout masks.
        seed: u64,
    },
}

/// The S5 classifier. Parameters (names as in S5's code): `encoder.weight` `[vocab, H]`,
/// `layers.{i}.norm.{weight,bias,running_mean,running_var}`,
/// `layers.{i}.seq.{Lambda_re,Lambda_im,B,C,C2,D,log_step}` (reduced models:
/// `layers.{i}.seq.{lambda_bar,b_bar,C,C2,D}`), `layers.{i}.gate.{weight,bias}`,
/// `decoder.{weight,bias}` (`[classes, H]`, `[classes]`).
#[derive(Clone, Debug)]
pub struct S5Model {
    cfg: ModelConfig,
    /// Embedding `[vocab, H]`.
    pub encoder: Tensor,
    /// Residual layers, input side first.
    pub layers: Vec<S5Layer>,
    /// Decoder weight `[classes, H]`.
    pub decoder_w: Tensor,
    /// Decoder bias `[classes]`.
    pub decoder_b: Tensor,
}

/// SplitMix64 finaliser: mixes a seed with an index into an independent stream seed.
fn mix(seed: u64, idx: u64) -> u64 {
    let mut z = seed
        ^ idx
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether `name` belongs to S5's SSM optimiser group (`ssm_lr`, no weight decay): Λ
/// (`Lambda_re`, `Lambda_im`), B̃ (`B`) and `log_step` (S5 code, `train_helpers.py`); the
/// discrete forms `lambda_bar`, `b_bar` of reduced models count as well.
pub fn is_ssm_param(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    matches!(
        last,
        "Lambda_re" | "Lambda_im" | "B" | "log_step" | "lambda_bar" | "b_bar"
    )
}

impl S5Model {
    /// Creates (or loads) the model under `vb` with initialisation seed 0; see
    /// [`S5Model::new_with_seed`].
    ///
    /// # Errors
    /// As [`S5Model::new_with_seed`].
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Self::new_with_seed(cfg, vb, 0)
    }

    /// Creates the model's parameters through `vb` (a `VarMap`-backed builder for training;
    /// parameters already present, e.g. loaded, are kept), initialised as S5 from `seed`:
    /// encoder lecun-normal (fan-in = vocab, as S5's dense encoder on one-hot bytes), SSMs as
    /// [`S5Ssm::new`], norms identity, gates and decoder lecun-normal with zero bias.
    ///
    /// # Errors
    /// Invalid config (zero sizes, dropout outside `[0, 1)`, bad SSM sizes) or stored tensors
    /// of the wrong shape.
    pub fn new_with_seed(cfg: &ModelConfig, vb: VarBuilder, seed: u64) -> Result<Self> {
        let h = cfg.d_model;
        if h == 0 || cfg.vocab_size == 0 || cfg.n_classes == 0 {
            return Err(Error::Config(format!(
                "d_model ({h}), vocab_size ({}) and n_classes ({}) must be positive",
                cfg.vocab_size, cfg.n_classes
            )));
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            return Err(Error::Config(format!(
                "dropout {} must be in [0, 1)",
                cfg.dropout
            )));
        }
        let mut rng = InitRng::new(seed);
        let enc = rng.lecun_normal(cfg.vocab_size * h, cfg.vocab_size);
        let encoder = param(&vb.pp("encoder"), "weight", (cfg.vocab_size, h), enc)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let lvb = vb.pp("layers").pp(i.to_string());
            let norm = Norm::new(cfg.norm, h, &lvb.pp("norm"))?;
            let ssm = S5Ssm::new(cfg, lvb.pp("seq"), &mut rng)?;
            let gate = Gate::new(cfg.gate, h, &lvb.pp("gate"), &mut rng)?;
            layers.push(S5Layer { norm, ssm, gate });
        }
        let dw = rng.lecun_normal(cfg.n_classes * h, h);
        let decoder_w = param(&vb.pp("decoder"), "weight", (cfg.n_classes, h), dw)?;
        let decoder_b = param(
            &vb.pp("decoder"),
            "bias",
            cfg.n_classes,
            vec![0.0; cfg.n_classes],
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            encoder,
            layers,
            decoder_w,
            decoder_b,
        })
    }

    /// Assembles a model from parts (used by `export::with_reduced`).
    pub fn from_parts(
        cfg: ModelConfig,
        encoder: Tensor,
        layers: Vec<S5Layer>,
        decoder_w: Tensor,
        decoder_b: Tensor,
    ) -> Self {
        Self {
            cfg,
            encoder,
            layers,
            decoder_w,
            decoder_b,
        }
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Every trainable tensor with its full name (BatchNorm running statistics excluded).
    pub fn named_trainable(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("encoder.weight".to_string(), self.encoder.clone())];
        for (i, l) in self.layers.iter().enumerate() {
            for (n, t) in l.norm.named_params() {
                out.push((format!("layers.{i}.norm.{n}"), t.clone()));
            }
            for (n, t) in l.ssm.named_params() {
                out.push((format!("layers.{i}.seq.{n}"), t.clone()));
            }
            out.push((format!("layers.{i}.gate.weight"), l.gate.weight.clone()));
            out.push((format!("layers.{i}.gate.bias"), l.gate.bias.clone()));
        }
        out.push(("decoder.weight".to_string(), self.decoder_w.clone()));
        out.push(("decoder.bias".to_string(), self.decoder_b.clone()));
        out
    }

    /// Exact number of trainable scalars: the element count of every tensor in
    /// [`S5Model::named_trainable`]. Counting rule: each complex number stored as (re, im)
    /// counts 2; full layers count `Lambda_re`, `Lambda_im` (`n` each), `B` (`n·H·2`),
    /// `log_step` (`n`), `C`/`C2` (`H·n·2` each), `D` (`H`); reduced layers count the stored
    /// `lambda_bar` (`r·2`), `b_bar` (`r·H·2`), `C`/`C2` (`H·r·2`), `D` (`H`); plus norm γ, β
    /// (`2H`), gate (`H² + H`), encoder (`vocab·H`), decoder (`classes·H + classes`).
    /// BatchNorm running statistics are not trainable and not counted.
    pub fn n_trainable_params(&self) -> usize {
        self.named_trainable()
            .iter()
            .map(|(_, t)| t.elem_count())
            .sum()
    }

    /// Logits `[b, classes]` (dtype of the parameters) for `tokens` `[b, l]` (u32, padded with
    /// 0) and true `lengths` `[b]` (u32, each in `1..=l`). Padding never influences the result.
    /// [`Mode::Eval`] runs the fused evaluation kernel ([`crate::infer`]; one sequence per
    /// thread, no autograd), [`Mode::Train`] the autograd ops ([`S5Model::forward_ops`]), which
    /// update the BatchNorm running statistics (once per call).
    ///
    /// # Errors
    /// Wrong shapes or dtypes, a length of 0 or above `l`, a token id ≥ `vocab_size`.
    pub fn forward(&self, tokens: &Tensor, lengths: &Tensor, mode: Mode) -> Result<Tensor> {
        match mode {
            Mode::Eval => {
                let (l, toks, lens) = self.checked_inputs(tokens, lengths)?;
                Ok(crate::infer::forward(&self.view(), &toks, &lens, l, false)?.0)
            }
            Mode::Train { .. } => {
                let stacked = self.layers.iter().all(|layer| {
                    matches!(layer.norm, Norm::Batch { .. })
                        && layer.gate.kind == crate::GateKind::HalfGlu2
                });
                self.forward_autograd(tokens, lengths, mode, stacked)
            }
        }
    }

    /// Evaluation-mode logits `[b, classes]` as [`S5Model::forward`], plus what the a-posteriori
    /// output-error bound (`mor::bound::BoundPrep::evaluate_measured`) needs from this forward
    /// pass: per sequence and layer (`[b][n_layers]`), `‖u_ℓ‖_2` of the SSM input over the true
    /// positions (`[len, H]`) and `‖y_ℓ‖_∞` of the SSM output (before the gate).
    ///
    /// # Errors
    /// As [`S5Model::forward`].
    pub fn forward_measured(
        &self,
        tokens: &Tensor,
        lengths: &Tensor,
    ) -> Result<(Tensor, Vec<Vec<mor::bound::MeasuredLayer>>)> {
        let (l, toks, lens) = self.checked_inputs(tokens, lengths)?;
        let (logits, stats) = crate::infer::forward(&self.view(), &toks, &lens, l, true)?;
        let measured = stats
            .into_iter()
            .map(|seq| {
                seq.into_iter()
                    .map(|s| mor::bound::MeasuredLayer {
                        u_l2: s.u_l2,
                        y_peak: s.y_peak,
                    })
                    .collect()
            })
            .collect();
        Ok((logits, measured))
    }

    /// The input `u_ℓ = norm_ℓ(x_ℓ)` of every layer's SSM for one review's true tokens
    /// (`tokens` `[len]`, no padding), in evaluation mode: `[n_layers]` row-major `[len, H]` f64
    /// matrices, computed in f64. What empirical Gramians are recorded from
    /// (`mor::empirical::EmpiricalGramian`).
    ///
    /// # Errors
    /// [`Error::Config`] for an empty sequence or a token outside the vocabulary; candle errors
    /// reading the parameters.
    pub fn ssm_inputs(&self, tokens: &[u32]) -> Result<Vec<Vec<f64>>> {
        if tokens.is_empty() {
            return Err(Error::Config("ssm_inputs: empty sequence".into()));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(Error::Config(format!(
                "ssm_inputs: token {t} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        crate::infer::ssm_inputs(&self.view(), tokens)
    }

    /// Logits `[b, classes]` in batch-statistics mode: no dropout, and every BatchNorm normalises
    /// by the mean and biased variance of this batch's true positions (as in training) without
    /// recording them; returns those statistics per layer (`None` for LayerNorm layers). With
    /// [`S5Model::set_running_stats`] and [`crate::norm::PooledStats`] this re-estimates the
    /// running statistics of the final weights (precise BatchNorm; Wu & Johnson, 2021).
    ///
    /// # Errors
    /// As [`S5Model::forward`].
    pub fn forward_batch_stats(
        &self,
        tokens: &Tensor,
        lengths: &Tensor,
    ) -> Result<(Tensor, Vec<Option<BatchStats>>)> {
        let (l, _, lens) = self.checked_inputs(tokens, lengths)?;
        let (b, h) = (lens.len(), self.cfg.d_model);
        let flat = tokens.flatten_all()?;
        let mut x = self.encoder.index_select(&flat, 0)?.reshape((b, l, h))?;
        let mask = Mask::new(&lens, l, &x)?;
        let mut stats = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let (u, s) = layer.norm.forward_batch_stats(&x, &mask)?;
            let y = layer.ssm.forward_t(&u, &lens, false)?;
            x = layer.gate.residual(&x, &y, None, None)?;
            stats.push(s);
        }
        let pooled = mask.pool.matmul(&x)?.squeeze(1)?;
        let logits = pooled
            .matmul(&self.decoder_w.t()?)?
            .broadcast_add(&self.decoder_b)?;
        Ok((logits.detach(), stats))
    }

    /// Overwrites each BatchNorm layer's running statistics with `stats[i] = (mean, variance)`
    /// (`[H]` each; `None` leaves layer `i` as it is).
    ///
    /// # Errors
    /// `stats.len()` ≠ number of layers, or a vector of the wrong length.
    pub fn set_running_stats(&self, stats: &[Option<(Vec<f64>, Vec<f64>)>]) -> Result<()> {
        if stats.len() != self.layers.len() {
            return Err(Error::Config(format!(
                "set_running_stats: {} entries for {} layers",
                stats.len(),
                self.layers.len()
            )));
        }
        for (layer, s) in self.layers.iter().zip(stats) {
            if let Some((mean, var)) = s {
                layer.norm.set_running_stats(mean, var)?;
            }
        }
        Ok(())
    }

    /// What the fused evaluation kernel reads of the model.
    fn view(&self) -> crate::infer::ModelView<'_> {
        crate::infer::ModelView {
            encoder: &self.encoder,
            layers: &self.layers,
            decoder_w: &self.decoder_w,
            decoder_b: &self.decoder_b,
            d_model: self.cfg.d_model,
            n_classes: self.cfg.n_classes,
        }
    }

    /// Checks `tokens` `[b, l]` and `lengths` `[b]`; returns `(l, tokens flat, lengths)`.
    pub(crate) fn checked_inputs(
        &self,
        tokens: &Tensor,
        lengths: &Tensor,
    ) -> Result<(usize, Vec<u32>, Vec<u32>)> {
        let (b, l) = tokens.dims2()?;
        if tokens.dtype() != DType::U32 || lengths.dtype() != DType::U32 {
            return Err(Error::Config(format!(
                "forward: tokens ({:?}) and lengths ({:?}) must be u32",
                tokens.dtype(),
                lengths.dtype()
            )));
        }
        let lens: Vec<u32> = lengths.flatten_all()?.to_vec1()?;
        if lens.len() != b {
            return Err(Error::Config(format!(
                "forward: {} lengths for a batch of {b}",
                lens.len()
            )));
        }
        if let Some((i, &bad)) = lens
            .iter()
            .enumerate()
            .find(|&(_, &x)| x == 0 || x as usize > l)
        {
            return Err(Error::Config(format!(
                "forward: length {bad} of sequence {i} is outside 1..={l} (the padded length)"
            )));
        }
        let toks: Vec<u32> = tokens.flatten_all()?.to_vec1()?;
        if let Some(&bad) = toks.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(Error::Config(format!(
                "forward: token id {bad} ≥ vocab_size {}",
                self.cfg.vocab_size
            )));
        }
        Ok((l, toks, lens))
    }

    /// The forward pass through candle ops with autograd (one node per fused op): what training
    /// differentiates, and in [`Mode::Eval`] the reference the fused evaluation kernel is tested
    /// against. Same arguments, result and errors as [`S5Model::forward`].
    ///
    /// # Errors
    /// As [`S5Model::forward`].
    pub fn forward_ops(&self, tokens: &Tensor, lengths: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_autograd(tokens, lengths, mode, false)
    }

    /// Per layer the two dropout masks `(m₁, m₂)` of a batch of `b` (none in evaluation or
    /// without dropout), drawn from the step seed mixed with the layer and site index.
    fn dropout_masks(&self, b: usize, mode: Mode) -> Result<Vec<DropMasks>> {
        let (h, p) = (self.cfg.d_model, self.cfg.dropout);
        let draw = |seed: u64, site: u64| -> Result<Option<ChannelMask>> {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, site));
            let keep = 1.0 / (1.0 - p);
            let vals: Vec<f32> = (0..b * h)
                .map(|_| {
                    if rng.random::<f64>() < p {
                        0.0
                    } else {
                        keep as f32
                    }
                })
                .collect();
            Ok(Some(ChannelMask::new(b, h, vals)?))
        };
        (0..self.layers.len() as u64)
            .map(|i| match mode {
                Mode::Train { seed } if p > 0.0 => Ok((draw(seed, 2 * i)?, draw(seed, 2 * i + 1)?)),
                _ => Ok((None, None)),
            })
            .collect()
    }

    /// The autograd forward; with `stacked` (training with BatchNorm and `half_glu2` only), the
    /// layers run as one node ([`crate::stack`]).
    fn forward_autograd(
        &self,
        tokens: &Tensor,
        lengths: &Tensor,
        mode: Mode,
        stacked: bool,
    ) -> Result<Tensor> {
        let (l, _, lens) = self.checked_inputs(tokens, lengths)?;
        let (b, h) = (lens.len(), self.cfg.d_model);
        let flat = tokens.flatten_all()?;
        let mut x = self.encoder.index_select(&flat, 0)?.reshape((b, l, h))?;
        let mask = Mask::new(&lens, l, &x)?;
        let train = matches!(mode, Mode::Train { .. });
        let masks = self.dropout_masks(b, mode)?;
        if stacked && train {
            x = self.stack_forward(&x, &mask, &lens, masks)?;
        } else {
            for (layer, (d1, d2)) in self.layers.iter().zip(masks) {
                let u = layer.norm.forward(&x, &mask, train)?;
                let y = layer.ssm.forward_t(&u, &lens, train)?;
                x = layer.gate.residual(&x, &y, d1.as_ref(), d2.as_ref())?;
            }
        }
        let pooled = mask.pool.matmul(&x)?.squeeze(1)?;
        Ok(pooled
            .matmul(&self.decoder_w.t()?)?
            .broadcast_add(&self.decoder_b)?)
    }

    /// The training-mode layers as one node ([`crate::stack::layer_stack`]); records the batch
    /// statistics into the BatchNorm running statistics as [`Norm::forward`] does.
    fn stack_forward(
        &self,
        x: &Tensor,
        mask: &Mask,
        lens: &[u32],
        masks: Vec<DropMasks>,
    ) -> Result<Tensor> {
        let mut parts = Vec::new();
        let mut layers = Vec::with_capacity(self.layers.len());
        for (layer, (drop_in, drop_out)) in self.layers.iter().zip(masks) {
            let Norm::Batch { weight, bias, .. } = &layer.norm else {
                return Err(Error::Config("layer stack: BatchNorm layers only".into()));
            };
            let (lambda_bar, w_b, w_c, direction) = layer.ssm.op_inputs()?;
            parts.extend([weight.clone(), bias.clone()]);
            parts.push(crate::ssm_op::pack_theta(
                &lambda_bar,
                &w_b,
                &w_c,
                &layer.ssm.d,
            )?);
            parts.extend([layer.gate.weight.flatten_all()?, layer.gate.bias.clone()]);
            layers.push(crate::stack::StackLayer {
                n: layer.ssm.n_modes(),
                direction,
                drop_in,
                drop_out,
            });
        }
        let theta = Tensor::cat(&parts, 0)?;
        let (out, stats) =
            crate::stack::layer_stack(x, &theta, layers, lens, &mask.rows, crate::norm::BN_EPS)?;
        for (layer, (mean, var)) in self.layers.iter().zip(stats) {
            layer.norm.record_batch_stats(mean, var)?;
        }
        Ok(out)
    }
}

/// `(m₁, m₂)`: the dropout masks of one layer.
type DropMasks = (Option<ChannelMask>, Option<ChannelMask>);

/// Forward FLOPs per token of `cfg` (a multiply and an add count 1 each). Per layer, with
/// `d` = 2 directions if bidirectional else 1: `2·H·P` (projection `u B̄ᵀ` as a real `[H, P]`
/// matmul on stacked re/im parts), `8·d·P/2` (one complex multiply-add per stored mode and
/// direction in the scan), `2·d·P·H` (read-out `2 Re(C̃ x)` as a real `[d·P, H]` matmul),
/// `2·H` (`D ⊙ u` and the residual add), `2·H²` (gate dense map); plus `H` for masked mean
/// pooling. Not counted: elementwise nonlinearities and norms, the embedding lookup (free) and
/// the per-sequence decoder. (A count that treats the encoder as a dense one-hot matmul adds
/// `2·257·H`.)
pub fn flops_per_token(cfg: &ModelConfig) -> f64 {
    let h = cfg.d_model as f64;
    let p = cfg.ssm_size as f64;
    let d = if cfg.bidirectional { 2.0 } else { 1.0 };
    let per_layer = 2.0 * h * p + 8.0 * d * p / 2.0 + 2.0 * d * p * h + 2.0 * h + 2.0 * h * h;
    cfg.n_layers as f64 * per_layer + h
}

/// Index of the largest entry (the first on ties; 0 for an empty slice): the predicted class of
/// one row of logits.
pub fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |a, (i, &x)| if x > a.1 { (i, x) } else { a },
        )
        .0
}
