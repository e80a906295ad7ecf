//! `bench data` and `bench train`: the reviews, and the checkpoint trained when missing.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::*;
use crate::pipeline::{self};

/// `bench data`: load (fetching what is missing), verify, print the statistics.
pub fn data(cfg: &RunConfig, json: bool) -> Result<()> {
    let (imdb, stats) = lra::Imdb::load_verified(&cfg.data).with_context(|| {
        format!(
            "loading the IMDb reviews (data.source = {:?}, data.dir = {})",
            cfg.data.source,
            cfg.data.dir.display()
        )
    })?;
    if json {
        println!("{}", serde_json::to_string(&stats)?);
        return Ok(());
    }
    println!(
        "IMDb reviews from {:?}: {}, {}",
        imdb.origin,
        imdb.files[0].display(),
        imdb.files[1].display()
    );
    println!("all self-checks passed (counts, distinct texts, bytes)");
    println!("{:<28} {:>12} {:>12}", "", "train", "test");
    let rows: [(&str, usize, usize); 8] = [
        ("reviews", stats.train, stats.test),
        ("positive", stats.train_pos, stats.test_pos),
        ("distinct texts", stats.train_distinct, stats.test_distinct),
        ("UTF-8 bytes", stats.train_bytes, stats.test_bytes),
        (
            "length p50 (bytes)",
            stats.len_p50.train,
            stats.len_p50.test,
        ),
        (
            "length p90 (bytes)",
            stats.len_p90.train,
            stats.len_p90.test,
        ),
        (
            "length max (bytes)",
            stats.len_max.train,
            stats.len_max.test,
        ),
        (
            "truncated at max_len",
            stats.truncated_at_max_len.train,
            stats.truncated_at_max_len.test,
        ),
    ];
    for (name, train, test) in rows {
        println!("{name:<28} {train:>12} {test:>12}");
    }
    println!("{:<28} {:>12}", "texts in both splits", stats.overlap);
    println!("{:<28} {:>12}", "max_len", cfg.data.max_len);
    if let Some(train) = &cfg.train {
        epoch_cost(cfg, train, &imdb.train)?;
    }
    Ok(())
}

/// Prints the positions one training epoch computes (true tokens plus padding) with the
/// configured length bucketing and with plain random batches (`train.bucket_batches = 1`, as
/// the public S5 code trains), at the configured batch size and seed; epoch cost is proportional.
pub fn epoch_cost(
    cfg: &RunConfig,
    train: &s5::train::TrainConfig,
    split: &lra::Split,
) -> Result<()> {
    let tok = lra::build_tokenizer(&cfg.data, split).context("building the tokenizer")?;
    let data = lra::Encoded::new(tok.as_ref(), split);
    let true_tokens = data.num_tokens();
    let batcher = lra::Batcher::new(data, train.batch_size, train.seed)?;
    let bucketed = batcher
        .clone()
        .with_bucket_batches(train.bucket_batches)
        .computed_tokens(0);
    let random = batcher.with_bucket_batches(1).computed_tokens(0);
    println!(
        "positions per training epoch (batch {}, all {} training reviews, epoch 1):",
        train.batch_size,
        split.texts.len()
    );
    println!("{:<28} {:>12}", "  true tokens", true_tokens);
    for (name, n) in [
        (
            format!("  bucket_batches = {}", train.bucket_batches),
            bucketed,
        ),
        ("  random batches".to_string(), random),
    ] {
        println!(
            "{name:<28} {n:>12}  ({:.2}x the true tokens)",
            n as f64 / true_tokens.max(1) as f64
        );
    }
    Ok(())
}

/// Makes sure the checkpoint exists (training it if missing or if `retrain`); returns its dir.
/// With `retrain`, the previous model is never deleted: its directory is moved aside to
/// [`move_aside_for_retrain`]'s backup before training starts (the user is told where).
pub fn ensure_checkpoint(cfg: &RunConfig, imdb: &lra::Imdb, retrain: bool) -> Result<PathBuf> {
    let dir = cfg.checkpoint_dir();
    checkpoint_dir_arg(
        &dir,
        "the checkpoint directory (`checkpoint` in the configuration)",
    )?;
    let (Some(model), Some(train)) = (&cfg.model, &cfg.train) else {
        if retrain {
            bail!(
                "--retrain: the configuration has no [model] and [train] sections to train {} \
                 from; nothing was changed",
                dir.display()
            );
        }
        if dir.join(s5::checkpoint::MODEL_FILE).exists() {
            return Ok(dir);
        }
        bail!(
            "no checkpoint at {} and the configuration has no [model] and [train] sections to \
             train one; set `checkpoint` to a trained model directory or add those sections",
            dir.display()
        );
    };
    if retrain {
        move_aside_for_retrain(&dir, &cfg.run_dir())?;
    }
    if dir.join(s5::checkpoint::MODEL_FILE).exists() {
        return Ok(dir);
    }
    let slice = crate::data::slice(&imdb.train, cfg.train_samples, train.seed);
    tracing::info!(
        "training {} on {} reviews into {}",
        cfg.name,
        slice.len(),
        dir.display()
    );
    // Per-epoch test accuracy on the reviews the sweep evaluates on ([eval]: all of them or a
    // seeded class-balanced subset).
    let eval = crate::data::slice(&imdb.test, cfg.eval.max_samples, cfg.eval.seed);
    let summary = pipeline::train(model, train, &cfg.data, &slice, Some(&eval), &dir)
        .with_context(|| format!("training the model into {}", dir.display()))?;
    let loss = summary
        .last_loss
        .map_or_else(|| "n/a".to_string(), |l| format!("{l:.4}"));
    tracing::info!("trained {} steps, last loss {loss}", summary.steps);
    if !summary.epoch_accuracy.is_empty() {
        tracing::info!("test accuracy per epoch: {:?}", summary.epoch_accuracy);
    }
    Ok(dir)
}

/// `--retrain`: moves a non-empty checkpoint directory `dir` aside to the sibling
/// `<name>.before-retrain-<unix seconds>` (nothing is deleted; the new model is trained into a
/// fresh `dir`) and says so on stderr. Refused if `dir` holds the run directory `run_dir`.
pub fn move_aside_for_retrain(dir: &Path, run_dir: &Path) -> Result<()> {
    if !dir.exists() || std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
        return Ok(());
    }
    let abs = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    if abs(run_dir).starts_with(abs(dir)) {
        bail!(
            "--retrain: the checkpoint directory {} holds the run directory {}; give the \
             checkpoint its own directory (`checkpoint` in the configuration); nothing was changed",
            dir.display(),
            run_dir.display()
        );
    }
    let name = dir
        .file_name()
        .with_context(|| format!("--retrain: {} has no directory name", dir.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = dir.parent().unwrap_or(Path::new("."));
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut backup = parent.join(format!("{name}.before-retrain-{secs}"));
    let mut k = 1;
    while backup.exists() {
        backup = parent.join(format!("{name}.before-retrain-{secs}-{k}"));
        k += 1;
    }
    std::fs::rename(dir, &backup).with_context(|| {
        format!(
            "--retrain: cannot move the previous model {} aside to {}; nothing was changed",
            dir.display(),
            backup.display()
        )
    })?;
    eprintln!(
        "--retrain: moved the previous model {} to {}; it is not deleted: remove it once the new \
         model is satisfactory, or move it back to keep it",
        dir.display(),
        backup.display()
    );
    Ok(())
}
