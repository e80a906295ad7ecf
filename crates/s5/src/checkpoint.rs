//! Checkpoints: a directory with
//!
//! | file | content |
//! |---|---|
//! | `model.safetensors` | every variable of the model's `VarMap` (names as in the model, e.g. `layers.0.seq.Lambda_re`), running statistics included |
//! | `config.json` | [`CheckpointMeta`]: format version, [`ModelConfig`], tokenizer kind, `max_len` |
//! | `tokenizer.json` | the tokenizer written by `lra` (optional, copied verbatim) |
//! | `train_state.json` | [`TrainState`]: step, epoch, position in the epoch, seed, schedule length (training checkpoints only) |
//! | `optimizer.safetensors` | AdamW moments `m.{param}`, `v.{param}` (training checkpoints only) |
//!
//! Every write is atomic: the directory is assembled under a temporary name beside its target
//! and renamed into place, so a reader never sees a half-written checkpoint. Loading validates
//! every tensor name, shape and dtype against the variables of a freshly built model, and that
//! every weight is finite, and reports the first problem with the file, the tensor, what was
//! expected and what was found.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, safetensors::Load};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::{Error, ModelConfig, Result, S5Model};

/// Version of the checkpoint layout written by this crate.
pub const FORMAT_VERSION: u32 = 1;
/// File name of the model tensors.
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of the [`CheckpointMeta`].
pub const CONFIG_FILE: &str = "config.json";
/// File name of the tokenizer (written by `lra`).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// File name of the [`TrainState`].
pub const TRAIN_STATE_FILE: &str = "train_state.json";
/// File name of the optimiser moments.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Pointer file in a run's checkpoint directory naming the newest complete checkpoint.
pub const LATEST_FILE: &str = "LATEST";

/// `config.json` of a checkpoint: everything needed to rebuild the model and its input pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    /// Layout version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// Model architecture.
    pub model: ModelConfig,
    /// Tokenizer kind (e.g. `"byte"`); the tokenizer itself is `tokenizer.json`.
    pub tokenizer: String,
    /// Longest input (tokens) the model was trained with; longer inputs are truncated.
    pub max_len: usize,
}

impl CheckpointMeta {
    /// Meta for a model with the current [`FORMAT_VERSION`].
    pub fn new(model: ModelConfig, tokenizer: impl Into<String>, max_len: usize) -> Self {
        Self {
            format: FORMAT_VERSION,
            model,
            tokenizer: tokenizer.into(),
            max_len,
        }
    }
}

/// Where training stands; with the optimiser moments this is all a resumed run needs to continue
/// exactly as an uninterrupted one (dropout masks and data order derive from `seed`, the epoch
/// and the step, so there is no hidden RNG state).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// Optimiser steps completed.
    pub step: usize,
    /// Epoch the next batch belongs to (0-based).
    pub epoch: usize,
    /// Batches of `epoch` already consumed.
    pub batch_in_epoch: usize,
    /// Seed of the run (data order, dropout).
    pub seed: u64,
    /// Length of the learning-rate schedule (steps).
    pub total_steps: usize,
    /// Test accuracy after each completed epoch.
    pub epoch_accuracy: Vec<f64>,
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn ck_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

/// Write `bytes` to `path` atomically ([`mor::io::write_atomic`]), creating the directory.
///
/// # Errors
/// [`Error::Io`] with the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    mor::io::write_atomic(path, bytes).map_err(|e| match e {
        mor::Error::Io { path, source } => io_err(Path::new(&path), source),
        other => other.into(),
    })
}

fn tensors_to_bytes(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<Vec<u8>> {
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.contiguous()?)))
        .collect::<Result<_>>()?;
    safetensors::serialize(contiguous, None)
        .map_err(|e| ck_err(path, format!("cannot serialise tensors: {e}")))
}

fn varmap_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

/// The training part of a checkpoint.
pub struct TrainPart<'a> {
    /// Where training stands.
    pub state: &'a TrainState,
    /// Optimiser moments (from `AdamW::state_tensors`).
    pub optimizer: &'a HashMap<String, Tensor>,
}

/// Save a checkpoint into directory `dir` atomically (assembled in a temporary sibling directory,
/// then renamed; an existing `dir` is replaced).
///
/// # Errors
/// [`Error::Io`] / [`Error::Checkpoint`] naming the file that could not be written.
pub fn save(
    dir: &Path,
    meta: &CheckpointMeta,
    varmap: &VarMap,
    tokenizer_json: Option<&[u8]>,
    train: Option<TrainPart<'_>>,
) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    let name = dir
        .file_name()
        .ok_or_else(|| ck_err(dir, "checkpoint path has no directory name"))?
        .to_string_lossy()
        .into_owned();
    clean_stale_siblings(parent, &name);
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    if let Err(e) = write_files(&tmp, meta, varmap, tokenizer_json, train) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        fs::rename(dir, &old).map_err(|e| io_err(dir, e))?;
        fs::rename(&tmp, dir).map_err(|e| io_err(dir, e))?;
        fs::remove_dir_all(&old).map_err(|e| io_err(&old, e))?;
    } else {
        fs::rename(&tmp, dir).map_err(|e| io_err(dir, e))?;
    }
    Ok(())
}

/// Write the files of a checkpoint into the existing directory `dir` (each file atomically, the
/// directory as a whole not: use [`save`] for that, or write into a temporary directory and
/// rename it).
///
/// # Errors
/// [`Error::Io`] / [`Error::Checkpoint`] naming the file that could not be written.
pub fn write_files(
    dir: &Path,
    meta: &CheckpointMeta,
    varmap: &VarMap,
    tokenizer_json: Option<&[u8]>,
    train: Option<TrainPart<'_>>,
) -> Result<()> {
    let model_path = dir.join(MODEL_FILE);
    write_atomic(
        &model_path,
        &tensors_to_bytes(&varmap_tensors(varmap), &model_path)?,
    )?;
    let json = serde_json::to_vec_pretty(meta).expect("meta serialises");
    write_atomic(&dir.join(CONFIG_FILE), &json)?;
    if let Some(tok) = tokenizer_json {
        write_atomic(&dir.join(TOKENIZER_FILE), tok)?;
    }
    if let Some(train) = train {
        let json = serde_json::to_vec_pretty(train.state).expect("state serialises");
        write_atomic(&dir.join(TRAIN_STATE_FILE), &json)?;
        let opt_path = dir.join(OPTIMIZER_FILE);
        write_atomic(&opt_path, &tensors_to_bytes(train.optimizer, &opt_path)?)?;
    }
    Ok(())
}

/// Whether process `pid` is running (without `/proc`, every process counts as running).
fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    pid == std::process::id() || !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Removes the temporary (`.{name}.tmp-{pid}`) and replaced (`.{name}.old-{pid}`) siblings that
/// [`save`] of `parent/name` left when its process was killed; a replaced one is moved back
/// instead if `parent/name` is missing (the kill fell between the two renames).
fn clean_stale_siblings(parent: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let dest = parent.join(name);
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = file_name
            .strip_prefix('.')
            .and_then(|r| r.strip_prefix(name))
            .and_then(|r| r.strip_prefix('.'))
        else {
            continue;
        };
        let (old, pid) = if let Some(p) = rest.strip_prefix("tmp-") {
            (false, p)
        } else if let Some(p) = rest.strip_prefix("old-") {
            (true, p)
        } else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let path = e.path();
        if process_alive(pid) || !path.is_dir() {
            continue;
        }
        if old && !dest.exists() {
            let _ = fs::rename(&path, &dest);
        } else {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// Read and validate `config.json` of a checkpoint.
///
/// # Errors
/// [`Error::Checkpoint`] if the file is missing, not JSON of the expected form, or of another
/// format version.
pub fn read_meta(dir: &Path) -> Result<CheckpointMeta> {
    let path = dir.join(CONFIG_FILE);
    let bytes = fs::read(&path).map_err(|e| {
        ck_err(
            &path,
            format!("cannot read the checkpoint config ({e}); is `{}` a checkpoint directory written by `s5`?", dir.display()),
        )
    })?;
    let meta: CheckpointMeta = serde_json::from_slice(&bytes).map_err(|e| {
        ck_err(
            &path,
            format!("not a valid checkpoint config: {e} (the file is damaged or was not written by `s5`; re-save the checkpoint)"),
        )
    })?;
    if meta.format != FORMAT_VERSION {
        return Err(ck_err(
            &path,
            format!(
                "checkpoint format {} is not supported (this build reads format {FORMAT_VERSION})",
                meta.format
            ),
        ));
    }
    Ok(meta)
}

/// Read the tokenizer bytes of a checkpoint, if it has one.
///
/// # Errors
/// [`Error::Io`] if the file exists but cannot be read.
pub fn read_tokenizer(dir: &Path) -> Result<Option<Vec<u8>>> {
    let path = dir.join(TOKENIZER_FILE);
    if !path.exists() {
        return Ok(None);
    }
    fs::read(&path).map(Some).map_err(|e| io_err(&path, e))
}

/// Read a safetensors file into named tensors, with a clear message if it is missing or damaged.
///
/// # Errors
/// [`Error::Checkpoint`] naming the file.
pub fn read_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = fs::read(path).map_err(|e| {
        ck_err(
            path,
            format!("cannot read ({e}); the checkpoint is incomplete — pick another checkpoint or retrain"),
        )
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        ck_err(
            path,
            format!(
                "not a valid safetensors file ({e}); it is truncated or damaged ({} bytes) — \
                 pick another checkpoint (e.g. the previous step) or retrain",
                bytes.len()
            ),
        )
    })?;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let t = view
                .load(device)
                .map_err(|e| ck_err(path, format!("tensor `{name}` cannot be read: {e}")))?;
            Ok((name, t))
        })
        .collect()
}

/// Load `model.safetensors` of checkpoint `dir` into the variables of `varmap` (a freshly built
/// model of the checkpoint's config), after checking that the file holds exactly the model's
/// tensor names, each with the model's shape and dtype.
///
/// # Errors
/// [`Error::Checkpoint`] naming the file, the tensor, the expected and found shape, and the fix.
pub fn load_params(dir: &Path, varmap: &VarMap) -> Result<()> {
    let path = dir.join(MODEL_FILE);
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    let device = data
        .values()
        .next()
        .map(|v| v.device().clone())
        .unwrap_or(Device::Cpu);
    let tensors = read_tensors(&path, &device)?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in &names {
        let var = &data[*name];
        let t = tensors.get(*name).ok_or_else(|| {
            ck_err(
                &path,
                format!(
                    "tensor `{name}` (shape {:?}) is missing: the file was written for a different \
                     model configuration than `{CONFIG_FILE}` describes, or is damaged; re-export \
                     the checkpoint or fix `{CONFIG_FILE}`",
                    var.dims()
                ),
            )
        })?;
        if t.dims() != var.dims() {
            return Err(ck_err(
                &path,
                format!(
                    "tensor `{name}` has shape {:?}, the model of `{CONFIG_FILE}` expects {:?}; \
                     the config does not match the weights (check d_model, ssm_size, n_layers, \
                     vocab_size, n_classes)",
                    t.dims(),
                    var.dims()
                ),
            ));
        }
        if t.dtype() != var.dtype() {
            return Err(ck_err(
                &path,
                format!(
                    "tensor `{name}` has dtype {:?}, expected {:?}",
                    t.dtype(),
                    var.dtype()
                ),
            ));
        }
    }
    for name in &names {
        check_finite(&path, name, &tensors[*name])?;
    }
    let mut extra: Vec<&String> = tensors.keys().filter(|k| !data.contains_key(*k)).collect();
    if !extra.is_empty() {
        extra.sort();
        return Err(ck_err(
            &path,
            format!(
                "unexpected tensors {extra:?} not in the model of `{CONFIG_FILE}` (e.g. more layers \
                 than configured); fix `{CONFIG_FILE}` to match the weights"
            ),
        ));
    }
    for name in names {
        data[name].set(&tensors[name])?;
    }
    Ok(())
}

/// Checks that every value of a floating-point tensor is finite.
///
/// # Errors
/// [`Error::Checkpoint`] naming the file, the tensor, how many values are not finite and the
/// first of them.
fn check_finite(path: &Path, name: &str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Ok(());
    }
    let values = crate::params::to_f64_vec(t)?;
    let bad = values.iter().filter(|v| !v.is_finite()).count();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(ck_err(
            path,
            format!(
                "tensor `{name}` has {bad} non-finite values of {} (the first, at flat index {i}, \
                 is {}): the weights are damaged or training diverged; pick an earlier step \
                 checkpoint or retrain",
                values.len(),
                values[i]
            ),
        ));
    }
    Ok(())
}

/// Build a fresh [`S5Model`] of the checkpoint's config (f32, CPU) and load and validate its
/// parameters: the model, its `VarMap` (for further training or export), and the meta.
///
/// # Errors
/// [`Error::Checkpoint`] on a missing, damaged or mismatched `config.json` or `model.safetensors`.
pub fn load_model(dir: &Path) -> Result<(S5Model, VarMap, CheckpointMeta)> {
    let meta = read_meta(dir)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = S5Model::new(&meta.model, vb).map_err(|e| {
        ck_err(
            &dir.join(CONFIG_FILE),
            format!("the model config cannot be built: {e}"),
        )
    })?;
    load_params(dir, &varmap)?;
    Ok((model, varmap, meta))
}

/// Load the uniform average of the parameters of several checkpoints of one model: stochastic
/// weight averaging (SWA; Izmailov et al., 2018, "Averaging Weights Leads to Wider Optima and
/// Better Generalization", Alg. 1, `w_SWA = (1/n) Σ_i w_i`). Every tensor of `model.safetensors`
/// is averaged in f64 and stored in its own dtype (f32), in the parameterisation the model trains (Λ as
/// `Lambda_re`/`Lambda_im`, timescales as `log_step`). BatchNorm running statistics are averaged
/// too, which matches none of the averaged weights: re-estimate them before evaluating
/// (SWA's "BN update"; [`crate::recalibrate::recalibrate_batch_norm`]).
///
/// Returns the averaged model, its `VarMap` and the shared meta of `dirs` (each a plain or step
/// checkpoint directory; each is validated as by [`load_model`]).
///
/// # Errors
/// [`Error::Checkpoint`] if `dirs` is empty, a checkpoint cannot be loaded, or its `config.json`
/// differs from the first one's (another architecture, tokenizer or `max_len`).
pub fn load_average<P: AsRef<Path>>(dirs: &[P]) -> Result<(S5Model, VarMap, CheckpointMeta)> {
    let (first, rest) = dirs.split_first().ok_or_else(|| {
        ck_err(
            Path::new("."),
            "no checkpoint to average: name at least one",
        )
    })?;
    let (model, varmap, meta) = load_model(first.as_ref())?;
    if rest.is_empty() {
        return Ok((model, varmap, meta));
    }
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    let mut sums: HashMap<&String, Tensor> = data
        .iter()
        .map(|(name, var)| Ok((name, var.as_tensor().to_dtype(DType::F64)?)))
        .collect::<Result<_>>()?;
    for dir in rest {
        let dir = dir.as_ref();
        let (_, other, other_meta) = load_model(dir)?;
        if other_meta != meta {
            return Err(ck_err(
                &dir.join(CONFIG_FILE),
                format!(
                    "differs from {}: only checkpoints of one model (same architecture, \
                     tokenizer and max_len) can be averaged",
                    first.as_ref().join(CONFIG_FILE).display()
                ),
            ));
        }
        let other = other.data().lock().expect("VarMap lock poisoned");
        for (name, sum) in sums.iter_mut() {
            *sum = (&*sum + other[*name].as_tensor().to_dtype(DType::F64)?)?;
        }
    }
    let n = dirs.len() as f64;
    for (name, sum) in sums {
        let var = &data[name];
        var.set(&(sum / n)?.to_dtype(var.dtype())?)?;
    }
    drop(data);
    Ok((model, varmap, meta))
}

/// Read the training part of a checkpoint: the [`TrainState`] and the optimiser moments.
///
/// # Errors
/// [`Error::Checkpoint`] if either file is missing or damaged.
pub fn read_train_part(
    dir: &Path,
    device: &Device,
) -> Result<(TrainState, HashMap<String, Tensor>)> {
    let path = dir.join(TRAIN_STATE_FILE);
    let bytes = fs::read(&path).map_err(|e| {
        ck_err(
            &path,
            format!("cannot read ({e}); this checkpoint has no training state (an exported model?) and cannot be resumed"),
        )
    })?;
    let state: TrainState = serde_json::from_slice(&bytes)
        .map_err(|e| ck_err(&path, format!("not a valid training state: {e}")))?;
    let opt = read_tensors(&dir.join(OPTIMIZER_FILE), device)?;
    Ok((state, opt))
}

/// The newest complete checkpoint under `checkpoints_dir` (named by its [`LATEST_FILE`]), if any.
///
/// # Errors
/// [`Error::Checkpoint`] if `LATEST` names a directory that does not exist.
pub fn latest(checkpoints_dir: &Path) -> Result<Option<PathBuf>> {
    let ptr = checkpoints_dir.join(LATEST_FILE);
    let Ok(name) = fs::read_to_string(&ptr) else {
        return Ok(None);
    };
    let dir = checkpoints_dir.join(name.trim());
    if !dir.join(CONFIG_FILE).exists() {
        return Err(ck_err(
            &ptr,
            format!(
                "names checkpoint `{}`, which does not exist; delete `{}` to start over",
                dir.display(),
                ptr.display()
            ),
        ));
    }
    Ok(Some(dir))
}

/// Directory name of the checkpoint at optimiser step `step`: `step-{step:08}`.
pub fn step_dir_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// Save a step checkpoint `step-{step:08}` under `checkpoints_dir`, point [`LATEST_FILE`] at it
/// (atomically), and delete older step checkpoints beyond the newest `keep`.
///
/// # Errors
/// As [`save`].
pub fn save_step(
    checkpoints_dir: &Path,
    step: usize,
    keep: usize,
    meta: &CheckpointMeta,
    varmap: &VarMap,
    tokenizer_json: Option<&[u8]>,
    train: TrainPart<'_>,
) -> Result<PathBuf> {
    let name = step_dir_name(step);
    let dir = checkpoints_dir.join(&name);
    save(&dir, meta, varmap, tokenizer_json, Some(train))?;
    write_atomic(&checkpoints_dir.join(LATEST_FILE), name.as_bytes())?;
    let mut steps: Vec<String> = fs::read_dir(checkpoints_dir)
        .map_err(|e| io_err(checkpoints_dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-") && n.len() == 13)
        .collect();
    steps.sort();
    let keep = keep.max(1);
    if steps.len() > keep {
        for old in &steps[..steps.len() - keep] {
            if *old != name {
                let p = checkpoints_dir.join(old);
                fs::remove_dir_all(&p).map_err(|e| io_err(&p, e))?;
            }
        }
    }
    Ok(dir)
}
