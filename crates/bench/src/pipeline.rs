//! The model side of a run: checkpoints (load, train if missing, compressed checkpoints), the
//! evaluation set, evaluation with per-review logits. Reduction by a recipe is
//! [`crate::reducer`]; the sweep backend is [`crate::backend`].

use crate::sections::EvalConfig;
use crate::subset::balanced_subset;
use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use lra::{Batch, Batcher, Encoded, Split, Tokenize};
use mor::bound::{BoundInput, MeasuredLayer};
use s5::checkpoint::{self, CheckpointMeta};
use s5::model::argmax;
use s5::{Mode, S5Model};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use crate::compressed::{REDUCED_BLOCKS_FILE, REDUCTION_FILE, ReductionInfo};

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
#[derive(Clone)]
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
        Self::from_indices(test, tok, indices, cfg.batch_size)
    }

    /// The set of the reviews `indices` (increasing) of `split`, batched by `batch_size`.
    ///
    /// # Errors
    /// No indices, an index out of range, a review that tokenizes to nothing, batch size 0.
    pub fn from_indices(
        test: &Split,
        tok: &dyn Tokenize,
        indices: Vec<usize>,
        batch_size: usize,
    ) -> Result<Self> {
        if indices.is_empty() {
            bail!("no reviews selected");
        }
        if let Some(&i) = indices.iter().find(|&&i| i >= test.len()) {
            bail!(
                "review index {i} is out of range (the split has {})",
                test.len()
            );
        }
        let sub = Split {
            texts: indices.iter().map(|&i| test.texts[i].clone()).collect(),
            labels: indices.iter().map(|&i| test.labels[i]).collect(),
        };
        let enc = Encoded::new(tok, &sub);
        if let Some(i) = enc.tokens.iter().position(|t| t.is_empty()) {
            bail!("test review {} is empty after tokenization", indices[i]);
        }
        let batcher = Batcher::new(enc, batch_size, 0)?;
        let batches: Vec<Batch> = batcher.eval_batches().collect();
        let enc = batcher.data().clone();
        Ok(EvalSet {
            indices,
            labels: enc.labels,
            tokens: enc.tokens,
            batches,
        })
    }

    /// The reviews at `positions` (increasing indices into this set) as a set of their own,
    /// batched by `batch_size`; its `indices` are still indices into the test split.
    ///
    /// # Errors
    /// No positions, a position out of range, batch size 0.
    pub fn subset(&self, positions: &[usize], batch_size: usize) -> Result<Self> {
        if positions.is_empty() {
            bail!("no reviews selected");
        }
        if let Some(&p) = positions.iter().find(|&&p| p >= self.len()) {
            bail!("position {p} is out of range (the set has {})", self.len());
        }
        let enc = Encoded {
            tokens: positions.iter().map(|&p| self.tokens[p].clone()).collect(),
            labels: positions.iter().map(|&p| self.labels[p]).collect(),
        };
        let batcher = Batcher::new(enc, batch_size, 0)?;
        let batches: Vec<Batch> = batcher.eval_batches().collect();
        let enc = batcher.data().clone();
        Ok(EvalSet {
            indices: positions.iter().map(|&p| self.indices[p]).collect(),
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
