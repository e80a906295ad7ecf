//! Training loop: AdamW in S5's two parameter groups ([`crate::optim`]), cosine schedule with
//! optional warmup, global-norm gradient clipping, a NaN/Inf guard, atomic checkpoints every N
//! steps and at each epoch end, exact resume, a CSV log, test accuracy after each epoch, and a
//! progress bar with ETA.
//!
//! Determinism: the data order of epoch `e` comes from the [`BatchSource`] (seeded by the caller),
//! the dropout masks of step `s` from [`dropout_seed`]`(seed, s)`; there is no other random state,
//! so a run resumed from a checkpoint continues exactly as the uninterrupted run would.
//!
//! Stack: candle's backward pass sorts the graph recursively; deep graphs (many layers, long
//! sequences of ops) need a large thread stack. Run training inside [`with_large_stack`].

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use indicatif::{ProgressBar, ProgressStyle};

use crate::checkpoint::{self, CheckpointMeta, TrainPart, TrainState};
use crate::optim::{AdamParams, AdamW, ParamGroup, Schedule, StepRates, param_group};
use crate::{Error, Result};

mod config;
mod log;
mod source;

pub use config::TrainConfig;
use log::{CsvLog, EVAL_LOG_HEADER, TRAIN_LOG_HEADER, Window, last_seconds_total, truncate_logs};
pub use log::{EPOCHS_DIR, EVAL_LOG, TRAIN_LOG};
pub use source::{Batch, BatchSource, EvalBatches, TrainBatches, batch_tensors};

/// A model the trainer can train: token batches in, class logits out.
pub trait Classifier {
    /// Logits `[batch, classes]` f32 for tokens `[batch, len]` u32 with true lengths `[batch]`
    /// u32. `dropout_seed`: `None` for evaluation, `Some(seed)` for a training pass whose dropout
    /// masks derive deterministically from `seed`.
    ///
    /// # Errors
    /// Candle errors.
    fn logits(
        &self,
        tokens: &Tensor,
        lengths: &Tensor,
        dropout_seed: Option<u64>,
    ) -> Result<Tensor>;
}

impl Classifier for crate::S5Model {
    fn logits(
        &self,
        tokens: &Tensor,
        lengths: &Tensor,
        dropout_seed: Option<u64>,
    ) -> Result<Tensor> {
        let mode = match dropout_seed {
            Some(seed) => crate::Mode::Train { seed },
            None => crate::Mode::Eval,
        };
        self.forward(tokens, lengths, mode)
    }
}

/// Seed of the dropout masks of optimiser step `step` of a run seeded `seed` (SplitMix64 of the
/// pair; Steele, Lea & Flood, OOPSLA 2014).
pub fn dropout_seed(seed: u64, step: usize) -> u64 {
    let mut z = seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Run `f` on a thread with a 256 MiB stack (candle's recursive backward pass on deep graphs)
/// and return its result. Panics in `f` are propagated.
pub fn with_large_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name("s5-train".into())
            .stack_size(256 << 20)
            .spawn_scoped(s, f)
            .expect("spawn the training thread");
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// Mean cross-entropy of logits `[batch, classes]` against labels `[batch]` u32, as a scalar
/// tensor (differentiable), and the number of correct arg-max predictions.
///
/// # Errors
/// Candle errors on shape mismatch.
pub fn loss_and_correct(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, usize)> {
    let logits = logits.to_dtype(DType::F32)?;
    let loss = candle_nn::loss::cross_entropy(&logits, labels)?;
    let pred = logits.argmax(1)?;
    let correct = pred
        .eq(labels)?
        .to_dtype(DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()? as usize;
    Ok((loss, correct))
}

/// Statistics of one optimiser step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy of the batch (before the update).
    pub loss: f64,
    /// Correct predictions in the batch.
    pub correct: usize,
    /// Sequences in the batch.
    pub n: usize,
    /// Tokens processed (batch × padded length).
    pub tokens: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rates used.
    pub rates: StepRates,
    /// Wall time of the step (forward, backward, update).
    pub seconds: f64,
}

/// Result of an evaluation pass.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalStats {
    /// Mean cross-entropy over all sequences.
    pub loss: f64,
    /// Fraction of correct arg-max predictions.
    pub accuracy: f64,
    /// Number of sequences.
    pub n: usize,
    /// Wall time.
    pub seconds: f64,
}

/// Evaluate `model` (no dropout; BatchNorm uses running statistics) on epoch 0 of `source`.
///
/// # Errors
/// Data and candle errors.
pub fn evaluate<M: Classifier + ?Sized>(
    model: &M,
    source: &mut dyn BatchSource,
    device: &Device,
) -> Result<EvalStats> {
    let t0 = Instant::now();
    let (mut loss_sum, mut correct, mut n) = (0f64, 0usize, 0usize);
    for batch in source.epoch(0)? {
        let batch = batch?;
        let (tokens, lengths, labels) = batch_tensors(&batch, device)?;
        let logits = model.logits(&tokens, &lengths, None)?;
        let (loss, c) = loss_and_correct(&logits, &labels)?;
        loss_sum += loss.to_scalar::<f32>()? as f64 * batch.batch as f64;
        correct += c;
        n += batch.batch;
    }
    let d = n.max(1) as f64;
    Ok(EvalStats {
        loss: loss_sum / d,
        accuracy: correct as f64 / d,
        n,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// How a call to [`Trainer::run`] ended.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSummary {
    /// Optimiser steps completed in total (resumed steps included).
    pub steps: usize,
    /// Epochs completed.
    pub epochs_completed: usize,
    /// Test accuracy after each completed epoch (empty without evaluation).
    pub epoch_accuracy: Vec<f64>,
    /// Mean training loss of the last logged window.
    pub last_loss: Option<f64>,
    /// Directory of the newest checkpoint.
    pub checkpoint: Option<PathBuf>,
}

/// Trains a [`Classifier`] whose variables live in a [`VarMap`], writing checkpoints and logs to a
/// run directory: `checkpoints/step-XXXXXXXX/` (see [`crate::checkpoint`]), `train_log.csv`
/// (step, epoch, loss, accuracy, tokens_per_s, lr, ssm_lr, grad_norm, seconds_total; one row per
/// `log_every` steps, means over the window; tokens = batch × padded length), `eval_log.csv`.
pub struct Trainer<'m, M: Classifier + ?Sized> {
    model: &'m M,
    varmap: VarMap,
    cfg: TrainConfig,
    meta: CheckpointMeta,
    tokenizer_json: Option<Vec<u8>>,
    run_dir: PathBuf,
    opt: AdamW,
    state: TrainState,
    device: Device,
    resumed_from: Option<PathBuf>,
    last_checkpoint: Option<PathBuf>,
    seconds_before: f64,
}

impl<'m, M: Classifier + ?Sized> Trainer<'m, M> {
    /// A fresh run in `run_dir`, or — if `run_dir/checkpoints` holds a checkpoint — its
    /// continuation: parameters, running statistics, optimiser moments, step and data position are
    /// restored from the newest checkpoint, and log rows written after it are dropped.
    /// Parameters are grouped by [`param_group`] with the config's `log_step_group`.
    ///
    /// `varmap` must hold the variables of `model` (freshly initialised; a resumed run overwrites
    /// them). `tokenizer_json` is copied into every checkpoint.
    ///
    /// # Errors
    /// [`Error::Config`] on bad hyperparameters or a checkpoint from a different run (seed);
    /// checkpoint errors on damaged files.
    pub fn new(
        model: &'m M,
        varmap: VarMap,
        cfg: TrainConfig,
        meta: CheckpointMeta,
        tokenizer_json: Option<Vec<u8>>,
        run_dir: impl Into<PathBuf>,
    ) -> Result<Self> {
        let log_step = cfg.log_step_group;
        Self::with_groups(
            model,
            varmap,
            cfg,
            meta,
            tokenizer_json,
            run_dir,
            move |name| param_group(name, log_step),
        )
    }

    /// As [`Trainer::new`] with a custom parameter grouping.
    ///
    /// # Errors
    /// As [`Trainer::new`].
    pub fn with_groups(
        model: &'m M,
        varmap: VarMap,
        cfg: TrainConfig,
        meta: CheckpointMeta,
        tokenizer_json: Option<Vec<u8>>,
        run_dir: impl Into<PathBuf>,
        classify: impl Fn(&str) -> ParamGroup,
    ) -> Result<Self> {
        cfg.validate()?;
        let run_dir = run_dir.into();
        let device = {
            let data = varmap.data().lock().expect("VarMap lock poisoned");
            data.values()
                .next()
                .map(|v| v.device().clone())
                .unwrap_or(Device::Cpu)
        };
        let mut opt = AdamW::new(&varmap, classify, AdamParams::default())?;
        let mut state = TrainState {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            seed: cfg.seed,
            total_steps: 0,
            epoch_accuracy: Vec::new(),
        };
        let ck_dir = run_dir.join("checkpoints");
        let mut resumed_from = None;
        if let Some(dir) = checkpoint::latest(&ck_dir)? {
            let stored = checkpoint::read_meta(&dir)?;
            if stored.model != meta.model {
                return Err(Error::Config(format!(
                    "{} holds a checkpoint of a different model ({:?}); use another run directory",
                    dir.display(),
                    stored.model
                )));
            }
            checkpoint::load_params(&dir, &varmap)?;
            let (st, moments) = checkpoint::read_train_part(&dir, &device)?;
            if st.seed != cfg.seed {
                return Err(Error::Config(format!(
                    "{} was trained with seed {}, the config says {}; resume with the same config \
                     or use another run directory",
                    dir.display(),
                    st.seed,
                    cfg.seed
                )));
            }
            opt.load_state(
                &moments,
                st.step,
                &dir.join(checkpoint::OPTIMIZER_FILE).display().to_string(),
            )?;
            state = st;
            truncate_logs(&run_dir, state.step, state.epoch)?;
            resumed_from = Some(dir);
        } else {
            if let Some(from) = &cfg.init_from {
                let stored = checkpoint::read_meta(from)?;
                if stored.model != meta.model {
                    return Err(Error::Config(format!(
                        "train.init_from = {} holds a different model ({:?}) than the one being \
                         trained ({:?}); point init_from at a checkpoint of this [model]",
                        from.display(),
                        stored.model,
                        meta.model
                    )));
                }
                checkpoint::load_params(from, &varmap)?;
            }
            truncate_logs(&run_dir, 0, 0)?;
        }
        let last_checkpoint = resumed_from.clone();
        let seconds_before = last_seconds_total(&run_dir.join(TRAIN_LOG));
        Ok(Self {
            model,
            varmap,
            cfg,
            meta,
            tokenizer_json,
            run_dir,
            opt,
            state,
            device,
            resumed_from,
            last_checkpoint,
            seconds_before,
        })
    }

    /// The checkpoint this trainer resumed from, if any.
    pub fn resumed_from(&self) -> Option<&Path> {
        self.resumed_from.as_deref()
    }

    /// Where training stands.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// The optimiser (groups, moments).
    pub fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    /// The variables being trained.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Learning rates of step `step` under the run's schedule.
    pub fn rates_at(&self, step: usize) -> StepRates {
        let sched = Schedule {
            warmup_steps: self.cfg.warmup_steps,
            total_steps: self.state.total_steps,
            min_lr: self.cfg.min_lr,
        };
        StepRates {
            lr: sched.rate(self.cfg.lr, step),
            ssm_lr: sched.rate(self.cfg.ssm_lr, step),
            weight_decay: self.cfg.weight_decay,
        }
    }

    fn diverged(&self, msg: String) -> Error {
        let keep = match &self.last_checkpoint {
            Some(d) => format!("the last good checkpoint is {}", d.display()),
            None => "no checkpoint was written yet".to_string(),
        };
        Error::Diverged {
            step: self.state.step,
            msg: format!("{msg}; {keep} (lower lr/ssm_lr or set grad_clip, then resume)"),
        }
    }

    /// One optimiser step on `batch`: forward (dropout seeded by [`dropout_seed`]), mean
    /// cross-entropy, backward, global-norm clipping, AdamW update.
    ///
    /// # Errors
    /// [`Error::Diverged`] if the loss, the gradient norm or an updated parameter is not finite
    /// (the parameters may then be damaged in memory; checkpoints on disk are not touched).
    pub fn step(&mut self, batch: &Batch) -> Result<StepStats> {
        let t0 = Instant::now();
        let (tokens, lengths, labels) = batch_tensors(batch, &self.device)?;
        let step = self.state.step;
        let logits =
            self.model
                .logits(&tokens, &lengths, Some(dropout_seed(self.cfg.seed, step)))?;
        let (loss, correct) = loss_and_correct(&logits, &labels)?;
        let loss_v = loss.to_scalar::<f32>()? as f64;
        if !loss_v.is_finite() {
            return Err(self.diverged(format!("loss is {loss_v}")));
        }
        let grads = loss.backward()?;
        let grad_norm = self.opt.grad_norm(&grads)?;
        if !grad_norm.is_finite() {
            return Err(self.diverged(format!("gradient norm is {grad_norm}")));
        }
        let scale = match self.cfg.grad_clip {
            Some(c) if grad_norm > c => c / grad_norm,
            _ => 1.0,
        };
        let rates = self.rates_at(step);
        self.opt.step(&grads, rates, scale)?;
        if let Some(name) = self.first_non_finite_param()? {
            return Err(self.diverged(format!("parameter `{name}` is not finite after the update")));
        }
        self.state.step += 1;
        self.state.batch_in_epoch += 1;
        Ok(StepStats {
            loss: loss_v,
            correct,
            n: batch.batch,
            tokens: batch.batch * batch.len,
            grad_norm,
            rates,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    fn first_non_finite_param(&self) -> Result<Option<String>> {
        for (name, _) in self.opt.groups() {
            let data = self.varmap.data().lock().expect("VarMap lock poisoned");
            let s = data[name]
                .as_tensor()
                .to_dtype(DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?;
            if !s.is_finite() {
                return Ok(Some(name.to_string()));
            }
        }
        Ok(None)
    }

    /// Save a checkpoint of the current state now (also done automatically by [`Trainer::run`]).
    ///
    /// # Errors
    /// I/O and checkpoint errors.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let moments = self.opt.state_tensors();
        let dir = checkpoint::save_step(
            &self.run_dir.join("checkpoints"),
            self.state.step,
            self.cfg.keep_checkpoints,
            &self.meta,
            &self.varmap,
            self.tokenizer_json.as_deref(),
            TrainPart {
                state: &self.state,
                optimizer: &moments,
            },
        )?;
        self.last_checkpoint = Some(dir.clone());
        Ok(dir)
    }

    /// The weights now as a plain checkpoint in `<run dir>/epochs/step-NNNNNNNN/` (see
    /// [`TrainConfig::keep_epoch_weights_from`]).
    fn save_epoch_weights(&self) -> Result<PathBuf> {
        let dir = self
            .run_dir
            .join(EPOCHS_DIR)
            .join(checkpoint::step_dir_name(self.state.step));
        checkpoint::save(
            &dir,
            &self.meta,
            &self.varmap,
            self.tokenizer_json.as_deref(),
            None,
        )?;
        Ok(dir)
    }

    /// Train until all epochs are done (or `max_steps`), starting where the state stands.
    /// `eval`, if given, is evaluated after every epoch when `eval_each_epoch` is set.
    ///
    /// # Errors
    /// [`Error::Diverged`] (the newest checkpoint on disk stays the last good one), data,
    /// candle, I/O errors; [`Error::Config`] if the number of batches per epoch changed since
    /// the checkpoint.
    pub fn run(
        &mut self,
        train: &mut dyn BatchSource,
        mut eval: Option<&mut dyn BatchSource>,
    ) -> Result<TrainSummary> {
        let spe = train.num_batches();
        if spe == 0 {
            return Err(Error::Config("the training source has no batches".into()));
        }
        let total = self.cfg.epochs * spe;
        if self.state.total_steps == 0 {
            self.state.total_steps = total;
        } else if self.state.total_steps != total {
            return Err(Error::Config(format!(
                "the checkpoint's schedule spans {} steps, this config and data give {total} \
                 ({} epochs × {spe} batches); resume with the same config and data",
                self.state.total_steps, self.cfg.epochs
            )));
        }
        let stop_at = self.cfg.max_steps.map_or(total, |m| m.min(total));
        fs::create_dir_all(&self.run_dir).map_err(|e| Error::Io {
            path: self.run_dir.display().to_string(),
            source: e,
        })?;
        let mut log = CsvLog::open(&self.run_dir.join(TRAIN_LOG), TRAIN_LOG_HEADER)?;
        let mut eval_log = CsvLog::open(&self.run_dir.join(EVAL_LOG), EVAL_LOG_HEADER)?;

        let pb = if self.cfg.progress {
            let pb = ProgressBar::new(stop_at as u64);
            pb.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} steps, ETA {eta_precise} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            pb
        } else {
            ProgressBar::hidden()
        };
        pb.set_position(self.state.step as u64);
        pb.reset_eta();

        let run_start = Instant::now();
        let mut win = Window::default();
        let mut last_loss = None;
        while self.state.step < stop_at && self.state.epoch < self.cfg.epochs {
            let epoch = self.state.epoch;
            let skip = self.state.batch_in_epoch;
            let mut exhausted = false;
            {
                let mut it = train.epoch(epoch)?.skip(skip);
                while self.state.step < stop_at && self.state.batch_in_epoch < spe {
                    let Some(batch) = it.next() else {
                        exhausted = true;
                        break;
                    };
                    let st = self.step(&batch?)?;
                    win.add(&st);
                    pb.inc(1);
                    let step = self.state.step;
                    if step.is_multiple_of(self.cfg.log_every) {
                        last_loss = Some(win.flush(
                            &mut log,
                            step,
                            epoch,
                            &st,
                            self.seconds_before + run_start.elapsed().as_secs_f64(),
                            &pb,
                        )?);
                    }
                    if self.cfg.checkpoint_every > 0
                        && step.is_multiple_of(self.cfg.checkpoint_every)
                        && self.state.batch_in_epoch < spe
                    {
                        self.save_checkpoint()?;
                    }
                }
            }
            if exhausted || self.state.batch_in_epoch >= spe {
                if win.n > 0 {
                    last_loss = Some(win.flush_last(
                        &mut log,
                        self.state.step,
                        epoch,
                        self.rates_at(self.state.step.saturating_sub(1)),
                        self.seconds_before + run_start.elapsed().as_secs_f64(),
                        &pb,
                    )?);
                }
                if self.cfg.eval_each_epoch
                    && let Some(ev) = eval.as_deref_mut()
                {
                    let stats = pb.suspend(|| evaluate(self.model, ev, &self.device))?;
                    self.state.epoch_accuracy.push(stats.accuracy);
                    eval_log.row(&format!(
                        "{},{},{:.6},{:.6},{},{:.3}",
                        epoch + 1,
                        self.state.step,
                        stats.loss,
                        stats.accuracy,
                        stats.n,
                        stats.seconds
                    ))?;
                    pb.println(format!(
                        "epoch {} test accuracy {:.4} (loss {:.4}, {:.0} s)",
                        epoch + 1,
                        stats.accuracy,
                        stats.loss,
                        stats.seconds
                    ));
                }
                self.state.epoch += 1;
                self.state.batch_in_epoch = 0;
                if self
                    .cfg
                    .keep_epoch_weights_from
                    .is_some_and(|from| self.state.epoch >= from)
                {
                    self.save_epoch_weights()?;
                }
                self.save_checkpoint()?;
            } else if self.state.step >= stop_at {
                if win.n > 0 {
                    last_loss = Some(win.flush_last(
                        &mut log,
                        self.state.step,
                        epoch,
                        self.rates_at(self.state.step.saturating_sub(1)),
                        self.seconds_before + run_start.elapsed().as_secs_f64(),
                        &pb,
                    )?);
                }
                self.save_checkpoint()?;
            }
        }
        pb.finish_and_clear();
        Ok(TrainSummary {
            steps: self.state.step,
            epochs_completed: self.state.epoch,
            epoch_accuracy: self.state.epoch_accuracy.clone(),
            last_loss,
            checkpoint: self.last_checkpoint.clone(),
        })
    }
}
