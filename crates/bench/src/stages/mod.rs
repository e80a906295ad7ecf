//! The stages of the `bench` runner, callable from the binary and from `examples/`: data and
//! training ([`train`]), the sweep and its plots ([`sweep`]), the reproducibility check
//! ([`verify`]), and the commands on one checkpoint ([`checkpoint`]: evaluate, recalibrate,
//! compress, measure speed).

pub mod checkpoint;
pub mod sweep;
pub mod train;
pub mod verify;

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::config::RunConfig;
use crate::pipeline::Loaded;
use crate::reducer::{Calibration, Reducer};
use clap::Args;

#[derive(Debug, Args, Clone, Default)]
pub struct RunArgs {
    /// Train the checkpoint again even if it exists (the old one is moved aside to
    /// `<checkpoint>.before-retrain-<unix seconds>`, not deleted).
    #[arg(long)]
    pub retrain: bool,
    /// Stop after writing this many new result rows (for testing interruption and resume).
    #[arg(long, hide = true)]
    pub stop_after_rows: Option<usize>,
}

/// The calibration reviews of `recalibrate-bn` and `swa`.
#[derive(Debug, Args, Clone, Copy)]
pub struct CalibrationArgs {
    /// Seeded, class-balanced training reviews to calibrate on (0 = all 25,000).
    #[arg(long, default_value_t = 2000)]
    pub reviews: usize,
    /// Seed of the calibration subset and batch order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Batch size (default: the config's `[train] batch_size`).
    #[arg(long)]
    pub batch: Option<usize>,
}

/// Refuses a checkpoint *file* where a checkpoint directory is expected, naming the directory.
pub fn checkpoint_dir_arg(path: &Path, what: &str) -> Result<()> {
    if path.is_file() {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        bail!(
            "{what} {} is a file; a checkpoint is the directory holding {} and {} (pass {} \
             instead)",
            path.display(),
            s5::checkpoint::MODEL_FILE,
            s5::checkpoint::CONFIG_FILE,
            parent.display()
        );
    }
    Ok(())
}

/// The tokenizer of a checkpoint (its `tokenizer.json`), or the config's.
pub fn tokenizer(
    cfg: &RunConfig,
    loaded: &Loaded,
    train: &lra::Split,
) -> Result<Box<dyn lra::Tokenize>> {
    let p = loaded.dir.join(s5::checkpoint::TOKENIZER_FILE);
    if p.exists() {
        return lra::load_tokenizer(&p).with_context(|| format!("loading {}", p.display()));
    }
    let mut data = cfg.data.clone();
    data.max_len = loaded.meta.max_len;
    Ok(lra::build_tokenizer(&data, train)?)
}

/// The calibration (training) reviews of a run ([`Calibration`]), seeded with `eval.seed`.
pub fn calibration_sets(
    cfg: &RunConfig,
    imdb: &lra::Imdb,
    tok: &dyn lra::Tokenize,
) -> Result<Calibration> {
    let n_refit = cfg.sweep.as_ref().map_or(
        crate::sections::DEFAULT_REFIT_REVIEWS,
        crate::sections::SweepConfig::refit_reviews,
    );
    Calibration::sample(
        &imdb.train,
        tok,
        cfg.eval.batch_size,
        cfg.eval.seed,
        n_refit,
    )
}

/// The reducer of a sweep: the checkpoint's model with the `[sweep]` reduce and refit options and
/// the calibration reviews ([`calibration_sets`]); the sweep and `verify` build it alike.
///
/// # Errors
/// Invalid refit options; the model's export to `mor` failing.
pub fn sweep_reducer<'a>(
    loaded: &'a Loaded,
    sweep: &crate::sections::SweepConfig,
    calibration: &'a Calibration,
) -> Result<Reducer<'a>> {
    Reducer::new(
        &loaded.model,
        loaded.meta.max_len,
        sweep.reduce_options(),
        sweep.refit_options(),
        Some(calibration),
    )
}
