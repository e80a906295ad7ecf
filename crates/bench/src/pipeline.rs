//! The model side of a run: checkpoints (load, train if missing, compressed checkpoints), the
//! evaluation set, evaluation with per-review logits, and the [`SweepBackend`] that reduces with
//! `mor`, rebuilds with `s5` and computes the output-error bound.

use crate::sections::EvalConfig;
use crate::subset::balanced_subset;
use crate::sweep::{Point, SweepBackend};
use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use lra::{Batch, Batcher, Encoded, Split, Tokenize};
use mor::bound::{BoundInput, MeasuredLayer, prepare_bound};
use mor::recipe::{PostStep, Recipe};
use mor::reduce::{ReduceOptions, reduce_model};
use s5::checkpoint::{self, CheckpointMeta};
use s5::{Mode, S5Model};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// File of a compressed checkpoint holding the reduced SSM blocks (`mor` safetensors layout).
pub const REDUCED_BLOCKS_FILE: &str = "reduced_ssm.safetensors";
/// File of a compressed checkpoint describing the reduction.
pub const REDUCTION_FILE: &str = "reduction.json";

/// `reduction.json` of a compressed checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReductionInfo {
    /// Reduction method.
    pub method: String,
    /// Fraction of SSM modes removed.
    pub ratio: f64,
    /// Complex modes kept per layer.
    pub kept_modes: Vec<usize>,
    /// Whether every kept mode has `|λ̄| < 1`.
    pub stable: bool,
    /// Trainable parameters of the reduced model.
    pub total_params: usize,
    /// SHA-256 of the full model's `model.safetensors`.
    pub source_sha256: String,
}

/// A loaded checkpoint: the model to run (reduced if the checkpoint is a compressed one).
pub struct Loaded {
    /// The model (f32, CPU).
    pub model: S5Model,
    /// The full model when `model` is a reduction of it.
    pub full: Option<S5Model>,
    /// `config.json`.
    pub meta: CheckpointMeta,
    /// The directory the weights came from.
    pub dir: PathBuf,
    /// SHA-256 of `model.safetensors` (and of the reduced blocks, `+`-joined, if any).
    pub sha256: String,
    /// The reduction, for a compressed checkpoint.
    pub reduction: Option<ReductionInfo>,
}

/// The directory holding the weights under a checkpoint directory: the directory itself if it
/// holds `model.safetensors`, else the newest step checkpoint of a training run in it
/// (`checkpoints/LATEST`); `None` if neither exists.
pub fn find_weights(dir: &Path) -> Result<Option<PathBuf>> {
    if dir.join(checkpoint::MODEL_FILE).exists() {
        return Ok(Some(dir.to_path_buf()));
    }
    Ok(checkpoint::latest(&dir.join("checkpoints"))?)
}

/// Loads a checkpoint directory (plain or compressed; see [`find_weights`]).
pub fn load(dir: &Path) -> Result<Loaded> {
    let weights = find_weights(dir)?.with_context(|| {
        format!(
            "no checkpoint in {} (neither {} nor checkpoints/LATEST); train one with \
             `bench train`, or point to an existing one (`checkpoint` in the config, or \
             --checkpoint)",
            dir.display(),
            checkpoint::MODEL_FILE
        )
    })?;
    let (model, _varmap, meta) = checkpoint::load_model(&weights)
        .with_context(|| format!("loading the checkpoint {}", weights.display()))?;
    let mut sha = crate::manifest::sha256_file(&weights.join(checkpoint::MODEL_FILE))?;
    let blocks_path = weights.join(REDUCED_BLOCKS_FILE);
    if !crate::compressed::is_compressed(&weights)? {
        return Ok(Loaded {
            model,
            full: None,
            meta,
            dir: weights,
            sha256: sha,
            reduction: None,
        });
    }
    let info: ReductionInfo = serde_json::from_slice(
        &std::fs::read(weights.join(REDUCTION_FILE))
            .with_context(|| format!("reading {}", weights.join(REDUCTION_FILE).display()))?,
    )
    .with_context(|| format!("{} is damaged", weights.join(REDUCTION_FILE).display()))?;
    let blocks = mor::io::read_blocks_safetensors(&blocks_path)
        .with_context(|| format!("reading the reduced blocks {}", blocks_path.display()))?;
    let mut deep = s5::to_mor(&model, meta.max_len)?;
    crate::compressed::verify(&weights, &info, &sha, &deep, &blocks)?;
    for (l, b) in deep.layers.iter_mut().zip(blocks) {
        l.ssm = b;
    }
    let reduced = s5::with_reduced(&model, &deep)
        .with_context(|| format!("rebuilding the reduced model of {}", weights.display()))?;
    sha.push('+');
    sha.push_str(&crate::manifest::sha256_file(&blocks_path)?);
    Ok(Loaded {
        model: reduced,
        full: Some(model),
        meta,
        dir: weights,
        sha256: sha,
        reduction: Some(info),
    })
}

/// Writes a compressed checkpoint into `out`: the full checkpoint's files (so it loads with the
/// same code), the reduced SSM blocks and `reduction.json`. Assembled in a temporary sibling
/// directory and renamed into place; `out` is replaced only if `bench compress` wrote it (see
/// [`crate::outdir`]), never if it is, contains or is inside `full_dir`.
pub fn write_compressed(
    full_dir: &Path,
    reduced: &mor::DeepSsm,
    info: &ReductionInfo,
    out: &Path,
) -> Result<()> {
    let dir = crate::outdir::OutDir::prepare(out, "compress", &[full_dir])?;
    let tmp = dir.path();
    for f in [
        checkpoint::MODEL_FILE,
        checkpoint::CONFIG_FILE,
        checkpoint::TOKENIZER_FILE,
    ] {
        let src = full_dir.join(f);
        if src.exists() {
            std::fs::copy(&src, tmp.join(f))
                .with_context(|| format!("copying {}", src.display()))?;
        }
    }
    let blocks: Vec<mor::DiagBlock> = reduced.layers.iter().map(|l| l.ssm.clone()).collect();
    mor::io::write_blocks_safetensors(tmp.join(REDUCED_BLOCKS_FILE), &blocks)?;
    crate::results::write_atomic(
        &tmp.join(REDUCTION_FILE),
        serde_json::to_string_pretty(info)?.as_bytes(),
    )?;
    dir.commit()?;
    Ok(())
}

/// Copies the final weights of a training run (`dir/checkpoints/LATEST`) to `dir` itself
/// (`model.safetensors`, `config.json`, `tokenizer.json`), each atomically, so that `dir` is a
/// plain checkpoint without optimiser state.
pub fn publish_latest(dir: &Path) -> Result<()> {
    let latest = checkpoint::latest(&dir.join("checkpoints"))?
        .with_context(|| format!("training left no checkpoint under {}", dir.display()))?;
    // config first, weights last: `find_weights` looks for the weights file.
    for f in [
        checkpoint::CONFIG_FILE,
        checkpoint::TOKENIZER_FILE,
        checkpoint::MODEL_FILE,
    ] {
        let src = latest.join(f);
        if src.exists() {
            let bytes =
                std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            crate::results::write_atomic(&dir.join(f), &bytes)?;
        }
    }
    Ok(())
}

/// Trains the model `[model]`/`[train]` describe into the run directory `dir` (resuming from
/// `dir/checkpoints` if a run was interrupted), then publishes the final weights into `dir`.
pub fn train(
    model_cfg: &s5::ModelConfig,
    train_cfg: &s5::train::TrainConfig,
    data_cfg: &lra::DataConfig,
    train_split: &Split,
    eval_split: Option<&Split>,
    dir: &Path,
) -> Result<s5::train::TrainSummary> {
    train_cfg.validate()?;
    let tok = lra::build_tokenizer(data_cfg, train_split)?;
    if tok.vocab_size() != model_cfg.vocab_size {
        bail!(
            "model.vocab_size = {} but the {:?} tokenizer has {} ids; set model.vocab_size = {}",
            model_cfg.vocab_size,
            data_cfg.tokenizer,
            tok.vocab_size(),
            tok.vocab_size()
        );
    }
    let tok_json = tok
        .to_hf()?
        .to_string(false)
        .map_err(|e| anyhow::anyhow!("serialising the tokenizer: {e}"))?
        .into_bytes();
    let kind = match data_cfg.tokenizer {
        lra::TokenizerKind::Byte => "byte",
        lra::TokenizerKind::Char => "char",
    };
    let meta = CheckpointMeta::new(model_cfg.clone(), kind, data_cfg.max_len);
    let train_b = Batcher::new(
        Encoded::new(tok.as_ref(), train_split),
        train_cfg.batch_size,
        train_cfg.seed,
    )?
    .with_bucket_batches(train_cfg.bucket_batches);
    let eval_b = match eval_split {
        Some(s) => Some(Batcher::new(
            Encoded::new(tok.as_ref(), s),
            train_cfg.batch_size,
            0,
        )?),
        None => None,
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the checkpoint directory {}", dir.display()))?;
    let summary = s5::train::with_large_stack(|| -> Result<s5::train::TrainSummary> {
        let varmap = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu);
        let model = S5Model::new_with_seed(model_cfg, vb, train_cfg.seed)?;
        let mut trainer = s5::train::Trainer::new(
            &model,
            varmap,
            train_cfg.clone(),
            meta.clone(),
            Some(tok_json.clone()),
            dir,
        )?;
        if let Some(from) = trainer.resumed_from() {
            tracing::info!("resuming training from {}", from.display());
        }
        let mut src = s5::train::TrainBatches(&train_b);
        let mut ev = eval_b.as_ref().map(s5::train::EvalBatches);
        Ok(trainer.run(
            &mut src,
            ev.as_mut().map(|e| e as &mut dyn s5::train::BatchSource),
        )?)
    })?;
    publish_latest(dir)?;
    Ok(summary)
}

/// The evaluation set: a deterministic subset of the test split, tokenized and batched once.
pub struct EvalSet {
    /// Indices into the test split of the evaluated reviews, `[n]`, increasing.
    pub indices: Vec<usize>,
    /// Labels, `[n]`.
    pub labels: Vec<u32>,
    /// Token ids of each review, `[n][len_i]`.
    pub tokens: Vec<Vec<u32>>,
    /// Batches in evaluation order (sorted by length); `Batch::indices` index `0..n`.
    pub batches: Vec<Batch>,
}

impl EvalSet {
    /// Builds the set `[eval]` describes from the test split.
    pub fn new(test: &Split, tok: &dyn Tokenize, cfg: &EvalConfig) -> Result<Self> {
        cfg.validate()?;
        if test.is_empty() {
            bail!("the test split is empty");
        }
        let labels: Vec<usize> = test.labels.iter().map(|&l| usize::from(l)).collect();
        let indices = balanced_subset(&labels, cfg.max_samples, cfg.seed);
        let sub = Split {
            texts: indices.iter().map(|&i| test.texts[i].clone()).collect(),
            labels: indices.iter().map(|&i| test.labels[i]).collect(),
        };
        let enc = Encoded::new(tok, &sub);
        if let Some(i) = enc.tokens.iter().position(|t| t.is_empty()) {
            bail!("test review {} is empty after tokenization", indices[i]);
        }
        let batcher = Batcher::new(enc, cfg.batch_size, 0)?;
        let batches: Vec<Batch> = batcher.eval_batches().collect();
        let enc = batcher.data().clone();
        Ok(EvalSet {
            indices,
            labels: enc.labels,
            tokens: enc.tokens,
            batches,
        })
    }

    /// Number of evaluated reviews.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Longest review (tokens).
    pub fn max_len(&self) -> usize {
        self.tokens.iter().map(Vec::len).max().unwrap_or(0)
    }
}

/// The result of evaluating one model on an [`EvalSet`].
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// Fraction of correct arg-max predictions (NaN if any logit is not finite).
    pub accuracy: f64,
    /// Logits per review `[n][classes]`, in the set's order.
    pub logits: Vec<Vec<f64>>,
    /// Per review and layer, the activations the a-posteriori bound needs (`[n][layers]`;
    /// empty unless requested).
    pub measured: Vec<Vec<MeasuredLayer>>,
    /// Wall seconds.
    pub seconds: f64,
}

/// Evaluates `model` (evaluation mode: no dropout, BatchNorm running statistics) on `set`; with
/// `measure`, also records per review the activations of the a-posteriori bound
/// ([`S5Model::forward_measured`]).
pub fn evaluate(
    model: &S5Model,
    set: &EvalSet,
    pb: Option<&indicatif::ProgressBar>,
    measure: bool,
) -> Result<Evaluation> {
    let t0 = Instant::now();
    let dev = Device::Cpu;
    let mut logits = vec![Vec::new(); set.len()];
    let mut measured = if measure {
        vec![Vec::new(); set.len()]
    } else {
        Vec::new()
    };
    for b in &set.batches {
        let tokens = Tensor::from_slice(&b.tokens, (b.batch, b.len), &dev)?;
        let lengths = Tensor::from_slice(&b.lengths, b.batch, &dev)?;
        let out = if measure {
            let (out, m) = model.forward_measured(&tokens, &lengths)?;
            for (mi, &i) in m.into_iter().zip(&b.indices) {
                measured[i] = mi;
            }
            out
        } else {
            model.forward(&tokens, &lengths, Mode::Eval)?
        };
        let out = out.to_dtype(candle_core::DType::F64)?.to_vec2::<f64>()?;
        for (row, &i) in out.into_iter().zip(&b.indices) {
            logits[i] = row;
        }
        if let Some(pb) = pb {
            pb.inc(b.batch as u64);
        }
    }
    let finite = logits.iter().flatten().all(|x| x.is_finite());
    let accuracy = if finite {
        let correct = logits
            .iter()
            .zip(&set.labels)
            .filter(|(l, y)| argmax(l) == **y as usize)
            .count();
        correct as f64 / set.len().max(1) as f64
    } else {
        f64::NAN
    };
    Ok(Evaluation {
        accuracy,
        logits,
        measured,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

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
        bail!("no calibration reviews");
    }
    let old: Vec<Option<(Vec<f64>, Vec<f64>)>> = model
        .layers
        .iter()
        .map(|l| match &l.norm {
            s5::norm::Norm::Batch {
                running_mean,
                running_var,
                ..
            } => Ok(Some((f64s(running_mean)?, f64s(running_var)?))),
            s5::norm::Norm::Layer { .. } => Ok(None),
        })
        .collect::<Result<_>>()?;
    if old.iter().all(Option::is_none) {
        bail!("the model has no BatchNorm layer to recalibrate");
    }
    let reviews = data.len();
    let batcher = Batcher::new(data, batch_size, seed)?;
    let mut pooled = vec![s5::norm::PooledStats::default(); model.layers.len()];
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
            let rows = t.to_dtype(candle_core::DType::F64)?.to_vec2::<f64>()?;
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
                    .map(|((a, b), v)| (b - a).abs() / (v + s5::norm::BN_EPS).sqrt()),
            ));
            var_log_ratio.push(fold(&mut v0.iter().zip(v1).map(|(a, b)| {
                ((b + s5::norm::BN_EPS) / (a + s5::norm::BN_EPS)).ln().abs()
            })));
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

fn f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?)
}

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |a, (i, &x)| if x > a.1 { (i, x) } else { a },
        )
        .0
}

/// Per review, what the bound needs about its embedded input `z_0 = E[tokens]` (`[L, H]`): the
/// true length, `‖z_0‖_2` (Frobenius) and `‖z_0‖_∞`, from the encoder rows.
pub fn bound_inputs(model: &S5Model, set: &EvalSet) -> Result<Vec<BoundInput>> {
    let enc = model
        .encoder
        .to_dtype(candle_core::DType::F64)?
        .to_vec2::<f64>()?;
    let row_sq: Vec<f64> = enc.iter().map(|r| r.iter().map(|x| x * x).sum()).collect();
    let row_max: Vec<f64> = enc
        .iter()
        .map(|r| r.iter().fold(0.0f64, |a, x| a.max(x.abs())))
        .collect();
    Ok(set
        .tokens
        .iter()
        .map(|t| BoundInput {
            len: t.len(),
            l2: t.iter().map(|&k| row_sq[k as usize]).sum::<f64>().sqrt(),
            linf: t.iter().map(|&k| row_max[k as usize]).fold(0.0, f64::max),
        })
        .collect())
}

/// `lqo-h2`'s layer weights from data: the first-order factors `∂bound/∂ε_ℓ` of the
/// a-posteriori output-error bound (`mor::bound::BoundPrep::evaluate_measured`) on each review of
/// `calibration`, from the full model's measured activations, averaged over the reviews.
///
/// # Errors
/// Evaluation or bound errors; an empty calibration set.
pub fn calibrated_layer_weights(
    model: &S5Model,
    deep: &mor::DeepSsm,
    calibration: &EvalSet,
) -> Result<Vec<f64>> {
    if calibration.is_empty() {
        bail!("the lqo-h2 calibration set is empty");
    }
    let ev = evaluate(model, calibration, None, true)?;
    let inputs = bound_inputs(model, calibration)?;
    let prep = prepare_bound(deep, None, calibration.max_len().max(1))?;
    let mut sum = vec![0.0; deep.layers.len()];
    for (inp, m) in inputs.iter().zip(&ev.measured) {
        let rep = prep.evaluate_measured(inp, m)?;
        for (s, w) in sum.iter_mut().zip(&rep.layer_weights) {
            *s += w;
        }
    }
    let n = inputs.len() as f64;
    Ok(sum.into_iter().map(|s| s / n).collect())
}

/// Trainable parameters of the SSM blocks (`layers.*.seq.*`) and of the whole model.
pub fn param_counts(model: &S5Model) -> (usize, usize) {
    let all = model.named_trainable();
    let ssm = all
        .iter()
        .filter(|(n, _)| n.contains(".seq."))
        .map(|(_, t)| t.elem_count())
        .sum();
    (ssm, all.iter().map(|(_, t)| t.elem_count()).sum())
}

/// The empirical controllability Gramian of every layer's SSM block (`[2n, 2n]` each, layer
/// order; `mor::empirical`): the state covariance of the block under the inputs the full model
/// feeds it on the `calibration` reviews (training reviews; their true positions, both scan
/// directions of a bidirectional layer). What `ebt` balances with and `emodal` ranks by.
///
/// # Errors
/// An empty calibration set; model or shape errors.
pub fn empirical_gramians(
    model: &S5Model,
    deep: &mor::DeepSsm,
    calibration: &EvalSet,
) -> Result<Vec<faer::Mat<f64>>> {
    if calibration.is_empty() {
        bail!("no calibration reviews to record the empirical Gramians on");
    }
    let mut acc: Vec<mor::empirical::EmpiricalGramian> = deep
        .layers
        .iter()
        .map(|l| mor::empirical::EmpiricalGramian::new(&l.ssm))
        .collect();
    for tokens in &calibration.tokens {
        let inputs = model.ssm_inputs(tokens)?;
        for (a, u) in acc.iter_mut().zip(&inputs) {
            let h = u.len() / tokens.len();
            a.add(faer::MatRef::from_row_major_slice(u, tokens.len(), h))?;
        }
    }
    Ok(acc
        .iter()
        .map(mor::empirical::EmpiricalGramian::gramian)
        .collect::<mor::Result<_>>()?)
}

/// A reduced model and what its post-step did.
pub struct Reduced {
    /// The reduction (after the post-step, if any).
    pub reduction: mor::ModelReduction,
    /// Per-layer reports of a refit post-step.
    pub refit: Option<Vec<mor::refit::BlockRefitReport>>,
}

/// Reduces an S5 model by any [`Recipe`]: computes the calibration data a recipe needs once, on
/// first need (the `lqo-h2` layer weights, the empirical Gramians of `ebt`/`emodal`), runs the
/// reducer, then the post-step on the calibration (training) reviews. Used by the sweep and by
/// `bench compress`, so both reduce identically.
pub struct Reducer<'a> {
    /// The full model.
    pub model: &'a S5Model,
    /// Its export to `mor`.
    pub deep: mor::DeepSsm,
    /// Options of the reducers (calibration data is filled in here when first computed).
    pub opts: ReduceOptions,
    /// Options of the refit post-steps.
    pub refit: mor::refit::RefitOptions,
    /// Training reviews for the data-driven parts, if any: the reducers' calibration set and
    /// the refit set.
    calibration: Option<(&'a EvalSet, &'a EvalSet)>,
}

impl<'a> Reducer<'a> {
    /// Exports `model` (sequences up to `max_len`); `calibration` holds the training reviews
    /// of the data-driven reducers and those of the refit post-steps.
    pub fn new(
        model: &'a S5Model,
        max_len: usize,
        opts: ReduceOptions,
        refit: mor::refit::RefitOptions,
        calibration: Option<(&'a EvalSet, &'a EvalSet)>,
    ) -> Result<Self> {
        refit.validate()?;
        Ok(Reducer {
            model,
            deep: s5::to_mor(model, max_len)?,
            opts,
            refit,
            calibration,
        })
    }

    fn calibration(&self, recipe: Recipe) -> Result<(&'a EvalSet, &'a EvalSet)> {
        self.calibration.with_context(|| {
            format!("{recipe} needs calibration reviews (training reviews); none were given")
        })
    }

    /// Reduces with `recipe`, removing the fraction `ratio` of the SSM modes.
    ///
    /// # Errors
    /// A recipe that needs calibration data without a calibration set; reduction errors.
    pub fn reduce(&mut self, recipe: Recipe, ratio: f64) -> Result<Reduced> {
        let m = recipe.reducer;
        if m == mor::Method::LqoH2 && self.opts.lqo.layer_weights.is_none() {
            let cal = self.calibration(recipe)?.0;
            let w = calibrated_layer_weights(self.model, &self.deep, cal)?;
            tracing::info!(
                "lqo-h2 layer weights from {} calibration reviews: {}",
                cal.len(),
                w.iter()
                    .map(|x| format!("{x:.3e}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            self.opts.lqo.layer_weights = Some(w);
        }
        if matches!(m, mor::Method::Ebt | mor::Method::Emodal) && self.opts.ctrb_gramians.is_empty()
        {
            let t0 = Instant::now();
            let cal = self.calibration(recipe)?.0;
            self.opts.ctrb_gramians = empirical_gramians(self.model, &self.deep, cal)?;
            tracing::info!(
                "{m}: empirical Gramians of {} layers from {} calibration reviews in {:.1} s",
                self.opts.ctrb_gramians.len(),
                cal.len(),
                t0.elapsed().as_secs_f64()
            );
        }
        let mut reduction = reduce_model(&self.deep, m, ratio, &self.opts)
            .with_context(|| format!("reducing with {m} at ratio {ratio}"))?;
        let refit = match recipe.post {
            None => None,
            Some(post) => {
                let t0 = Instant::now();
                let cal = self.calibration(recipe)?.1;
                let (model, reports) = match post {
                    PostStep::Refit => {
                        refit(self.model, &self.deep, &reduction.model, cal, &self.refit)?
                    }
                    PostStep::RefitSeq => refit_sequential(
                        self.model,
                        &self.deep,
                        &reduction.model,
                        cal,
                        &self.refit,
                    )?,
                };
                tracing::info!(
                    "{recipe} @ {ratio}: relative calibration output error per layer {} in {:.1} s",
                    reports
                        .iter()
                        .map(|r| format!("{:.3}→{:.3}", r.error_before, r.error_after))
                        .collect::<Vec<_>>()
                        .join(", "),
                    t0.elapsed().as_secs_f64()
                );
                reduction.model = model;
                Some(reports)
            }
        };
        Ok(Reduced { reduction, refit })
    }
}

/// Each layer's SSM input on `tokens` as `[len, m]` matrices (layer order;
/// [`S5Model::ssm_inputs`]).
///
/// # Errors
/// Model errors (an empty sequence, a token outside the vocabulary).
pub fn layer_inputs(model: &S5Model, tokens: &[u32]) -> Result<Vec<faer::Mat<f64>>> {
    let len = tokens.len();
    Ok(model
        .ssm_inputs(tokens)?
        .into_iter()
        .map(|u| {
            let h = u.len() / len;
            faer::MatRef::from_row_major_slice(&u, len, h).to_owned()
        })
        .collect())
}

/// The `refit` post-step ([`mor::refit`]): every layer of `reduced` refitted to the full model's
/// layer outputs on the layer inputs the full model records on `calibration`.
///
/// # Errors
/// An empty calibration set; model, shape or solver errors.
pub fn refit(
    model: &S5Model,
    deep: &mor::DeepSsm,
    reduced: &mor::DeepSsm,
    calibration: &EvalSet,
    opts: &mor::refit::RefitOptions,
) -> Result<(mor::DeepSsm, Vec<mor::refit::BlockRefitReport>)> {
    if calibration.is_empty() {
        bail!("no calibration reviews to refit on");
    }
    let mut fit = mor::refit::ModelRefit::new(deep, reduced)?;
    for tokens in &calibration.tokens {
        let inputs = layer_inputs(model, tokens)?;
        let refs: Vec<_> = inputs.iter().map(faer::Mat::as_ref).collect();
        fit.add(&refs)?;
    }
    Ok(fit.solve(opts)?)
}

/// The `refit-seq` post-step: layers refitted in order, layer ℓ driven by the inputs of the
/// reduced model whose layers `< ℓ` are already refitted, and fitted to the full model's layer
/// output `s_ℓ + D u_ℓ` (its target for the state output is `s_ℓ + D (u_ℓ − û_ℓ)`), so it
/// compensates the upstream error as far as a read-out can.
///
/// # Errors
/// As [`refit`].
pub fn refit_sequential(
    model: &S5Model,
    deep: &mor::DeepSsm,
    reduced: &mor::DeepSsm,
    calibration: &EvalSet,
    opts: &mor::refit::RefitOptions,
) -> Result<(mor::DeepSsm, Vec<mor::refit::BlockRefitReport>)> {
    if calibration.is_empty() {
        bail!("no calibration reviews to refit on");
    }
    let mut current = reduced.clone();
    let mut reports = Vec::with_capacity(deep.layers.len());
    for l in 0..deep.layers.len() {
        let upstream = s5::with_reduced(model, &current)?;
        let full_block = &deep.layers[l].ssm;
        let mut fit = mor::refit::BlockRefit::new(full_block, &current.layers[l].ssm)?;
        for tokens in &calibration.tokens {
            let u = layer_inputs(model, tokens)?.swap_remove(l);
            let u_hat = layer_inputs(&upstream, tokens)?.swap_remove(l);
            let mut target = mor::refit::state_output(full_block, u.as_ref())?;
            if let Some(d) = &full_block.d {
                for t in 0..target.nrows() {
                    for (o, &dk) in d.iter().enumerate() {
                        target[(t, o)] += dk * (u[(t, o)] - u_hat[(t, o)]);
                    }
                }
            }
            fit.add_target(u_hat.as_ref(), target.as_ref())?;
        }
        let (block, rep) = fit
            .solve(opts)
            .with_context(|| format!("refit-seq of layer {l}"))?;
        current.layers[l].ssm = block;
        reports.push(rep);
    }
    Ok((current, reports))
}

/// Batch size of the fixed synthetic batch every row's inference throughput is measured on.
pub const INFER_BATCH: usize = 4;
/// Sequence length of that batch (tokens).
pub const INFER_LEN: usize = 2048;
/// Timed passes (after one warm-up) of which the median is reported.
const INFER_REPS: usize = 3;

/// Inference throughput (tokens/s) of `model` on the fixed synthetic batch of every row.
pub fn infer_speed(model: &S5Model) -> Result<f64> {
    Ok(s5::perf::infer_tokens_per_s(
        model,
        model.config().vocab_size,
        INFER_BATCH,
        INFER_LEN,
        INFER_REPS,
    )?)
}

/// The sweep backend over a trained S5 model.
pub struct S5Backend<'a> {
    /// Reduces the full model by any recipe.
    pub reducer: Reducer<'a>,
    /// The evaluation set.
    pub set: &'a EvalSet,
    /// The bound inputs of the evaluation set.
    pub inputs: Vec<BoundInput>,
    /// Progress bar of the current evaluation (reviews), if drawn.
    pub pb: Option<indicatif::ProgressBar>,
    /// The full model's measured activations per evaluated review (set by `full`), for the
    /// a-posteriori bound.
    pub measured: Vec<Vec<MeasuredLayer>>,
    /// Whether to measure each point's inference throughput ([`infer_speed`]; default `true`);
    /// when `false` it is NaN (for `bench verify`, which does not compare timings).
    pub measure_speed: bool,
    /// The full model's bound factors (with its certified H∞ gains), prepared at the first
    /// reduction and reused for every other.
    full_bound: Option<mor::bound::BoundPrep>,
}

impl<'a> S5Backend<'a> {
    /// Prepares the bound inputs of `set`; `reducer` computes any calibration data a recipe
    /// needs when first asked.
    pub fn new(reducer: Reducer<'a>, set: &'a EvalSet) -> Result<Self> {
        Ok(S5Backend {
            inputs: bound_inputs(reducer.model, set)?,
            reducer,
            set,
            pb: None,
            measured: Vec::new(),
            measure_speed: true,
            full_bound: None,
        })
    }

    fn eval(&self, model: &S5Model, measure: bool) -> Result<Evaluation> {
        if let Some(pb) = &self.pb {
            pb.set_length(self.set.len() as u64);
            pb.set_position(0);
            pb.reset_eta();
        }
        evaluate(model, self.set, self.pb.as_ref(), measure)
    }

    fn speed(&self, model: &S5Model) -> Result<f64> {
        if self.measure_speed {
            infer_speed(model)
        } else {
            Ok(f64::NAN)
        }
    }
}

impl SweepBackend for S5Backend<'_> {
    fn full(&mut self) -> Result<Point> {
        let mut ev = self.eval(self.reducer.model, true)?;
        let infer_tokens_per_s = self.speed(self.reducer.model)?;
        self.measured = std::mem::take(&mut ev.measured);
        let (ssm, total) = param_counts(self.reducer.model);
        Ok(Point {
            kept_per_layer: self
                .reducer
                .deep
                .layers
                .iter()
                .map(|l| l.ssm.n_modes())
                .collect(),
            ssm_params: ssm,
            total_params: total,
            accuracy: ev.accuracy,
            logits: ev.logits,
            bounds: Vec::new(),
            stable: self
                .reducer
                .deep
                .layers
                .iter()
                .all(|l| l.ssm.max_abs_lambda() < 1.0),
            reduce_seconds: 0.0,
            eval_seconds: ev.seconds,
            infer_tokens_per_s,
        })
    }

    fn reduced(&mut self, method: &str, ratio: f64) -> Result<Point> {
        let recipe: Recipe = method
            .parse()
            .map_err(|e: mor::Error| anyhow::anyhow!("{e}"))?;
        let t0 = Instant::now();
        let red = self.reducer.reduce(recipe, ratio)?.reduction;
        let rebuilt = s5::with_reduced(self.reducer.model, &red.model)?;
        let reduce_seconds = t0.elapsed().as_secs_f64();
        let ev = self.eval(&rebuilt, false)?;
        let infer_tokens_per_s = self.speed(&rebuilt)?;
        let (ssm, total) = param_counts(&rebuilt);
        let horizon = self.set.max_len().max(1);
        if self
            .full_bound
            .as_ref()
            .is_none_or(|p| p.horizon() != horizon)
        {
            self.full_bound = Some(prepare_bound(&self.reducer.deep, None, horizon)?);
        }
        let full_bound = self.full_bound.as_ref().expect("prepared just above");
        let bounds = match full_bound.with_reduced(&self.reducer.deep, &red.model) {
            Ok(prep) => self
                .inputs
                .iter()
                .enumerate()
                .map(|(i, inp)| {
                    let r = match self.measured.get(i) {
                        Some(m) => prep.evaluate_measured(inp, m),
                        None => prep.evaluate(inp),
                    };
                    r.map(|r| r.bound).unwrap_or(f64::NAN)
                })
                .collect(),
            Err(e) => {
                tracing::warn!("{method} @ {ratio}: bound not available: {e}");
                vec![f64::NAN; self.set.len()]
            }
        };
        Ok(Point {
            kept_per_layer: red.kept_modes.clone(),
            ssm_params: ssm,
            total_params: total,
            accuracy: ev.accuracy,
            logits: ev.logits,
            bounds,
            stable: red.stable,
            reduce_seconds,
            eval_seconds: ev.seconds,
            infer_tokens_per_s,
        })
    }
}
