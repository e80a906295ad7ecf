//! Commands on one checkpoint: `bench eval`, `recalibrate-bn`, `swa`, `compress`, `perf`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::*;
use crate::pipeline::{self, EvalSet};
use crate::progress::bar;
use crate::reducer::Reducer;

/// `bench eval`.
pub fn eval_cmd(
    cfg: &RunConfig,
    checkpoint: Option<PathBuf>,
    json: bool,
    split: &str,
) -> Result<()> {
    let imdb = crate::data::load(&cfg.data)?;
    let dir = checkpoint.unwrap_or_else(|| cfg.checkpoint_dir());
    checkpoint_dir_arg(&dir, "the checkpoint")?;
    let loaded = pipeline::load(&dir)?;
    let tok = tokenizer(cfg, &loaded, &imdb.train)?;
    let reviews = if split == "train" {
        &imdb.train
    } else {
        &imdb.test
    };
    let set = EvalSet::new(reviews, tok.as_ref(), &cfg.eval)?;
    let pb = bar(set.len() as u64, "reviews");
    let ev = pipeline::evaluate(&loaded.model, &set, Some(&pb), false)?;
    pb.finish_and_clear();
    let (ssm, total) = pipeline::param_counts(&loaded.model);
    let se = crate::subset::accuracy_std_error(ev.accuracy, set.len());
    if json {
        println!(
            "{}",
            serde_json::json!({
                "checkpoint": loaded.dir.display().to_string(),
                "accuracy": ev.accuracy,
                "std_error": se,
                "n_eval": set.len(),
                "split": split,
                "ssm_params": ssm,
                "total_params": total,
                "seconds": ev.seconds,
                "reduction": loaded.reduction,
            })
        );
    } else {
        println!(
            "{}: accuracy {:.4} ± {:.4} on {} {split} reviews, {} params ({} in SSMs), {:.1} s",
            loaded.dir.display(),
            ev.accuracy,
            se,
            set.len(),
            total,
            ssm,
            ev.seconds
        );
    }
    Ok(())
}

/// `bench recalibrate-bn` (one checkpoint) and `bench swa` (the average of several): precise
/// BatchNorm statistics for the weights of `checkpoints`, written to `out` with
/// `recalibration.json`.
pub fn recalibrate_bn(
    cfg: &RunConfig,
    checkpoints: &[PathBuf],
    out: &Path,
    calibration: &CalibrationArgs,
    command: &str,
) -> Result<()> {
    let CalibrationArgs {
        reviews,
        seed,
        batch,
    } = *calibration;
    // Refuse an output that would replace a member or a directory not ours before any work.
    let sources: Vec<&Path> = checkpoints.iter().map(PathBuf::as_path).collect();
    let out_dir = crate::outdir::OutDir::prepare(out, command, &sources)?;
    // (weights directory, SHA-256 of its model.safetensors) of every member.
    let mut members = Vec::with_capacity(checkpoints.len());
    for dir in checkpoints {
        let weights = pipeline::find_weights(dir)?
            .with_context(|| format!("no checkpoint in {}", dir.display()))?;
        if weights.join(pipeline::REDUCED_BLOCKS_FILE).exists() {
            bail!(
                "{} is a compressed checkpoint; recalibrate the full model, then compress it",
                weights.display()
            );
        }
        let sha = crate::manifest::sha256_file(&weights.join(s5::checkpoint::MODEL_FILE))?;
        members.push((weights, sha));
    }
    let weights: Vec<&Path> = members.iter().map(|(w, _)| w.as_path()).collect();
    let (model, varmap, meta) = s5::checkpoint::load_average(&weights).with_context(|| {
        if weights.len() == 1 {
            format!("loading {}", weights[0].display())
        } else {
            format!("averaging the weights of {} checkpoints", weights.len())
        }
    })?;
    // The first member's tokenizer and provenance.
    let loaded = pipeline::load(weights[0])?;
    let imdb = crate::data::load(&cfg.data)?;
    let tok = tokenizer(cfg, &loaded, &imdb.train)?;
    let batch = batch
        .or(cfg.train.as_ref().map(|t| t.batch_size))
        .unwrap_or(cfg.eval.batch_size);
    // The same seeded, class-balanced subset rule as every evaluation set.
    let set = EvalSet::new(
        &imdb.train,
        tok.as_ref(),
        &crate::sections::EvalConfig {
            max_samples: reviews,
            batch_size: batch,
            seed,
            estimate_reviews: 0,
        },
    )
    .context("building the calibration set from the training reviews")?;
    let enc = lra::Encoded {
        tokens: set.tokens,
        labels: set.labels,
    };
    let pb = bar(enc.len() as u64, "reviews");
    let rec = s5::recalibrate::recalibrate_batch_norm(&model, enc, batch, seed, Some(&pb))?;
    pb.finish_and_clear();
    let tok_json = s5::checkpoint::read_tokenizer(weights[0])?;
    s5::checkpoint::write_files(out_dir.path(), &meta, &varmap, tok_json.as_deref(), None)
        .with_context(|| format!("writing {}", out.display()))?;
    let mut record = serde_json::json!({
        "source": loaded.dir.display().to_string(),
        "source_sha256": loaded.sha256,
        "seed": seed,
        "batch_size": batch,
        "git_commit": crate::manifest::git_commit(),
        "build_commit": crate::manifest::build_commit(),
        "recalibration": rec,
    });
    if members.len() > 1 {
        // SWA: the source is the uniform average of these checkpoints' weights.
        record["swa_members"] = members
            .iter()
            .map(|(w, sha)| serde_json::json!({"checkpoint": w.display().to_string(), "sha256": sha}))
            .collect();
        record["source"] =
            format!("uniform weight average of {} checkpoints", members.len()).into();
        record["source_sha256"] = serde_json::Value::Null;
    }
    crate::results::write_atomic(
        &out_dir.path().join("recalibration.json"),
        serde_json::to_string_pretty(&record)?.as_bytes(),
    )?;
    out_dir.commit()?;
    println!("{}", serde_json::to_string_pretty(&record)?);
    Ok(())
}

/// `bench compress`.
pub fn compress(cfg: &RunConfig, method: &str, ratio: f64, out: Option<PathBuf>) -> Result<()> {
    let recipe: mor::recipe::Recipe = method
        .parse()
        .map_err(|e: mor::Error| anyhow::anyhow!("--method: {e}"))?;
    crate::sections::validate_ratio(ratio).context("--ratio")?;
    let source = cfg.checkpoint_dir();
    checkpoint_dir_arg(
        &source,
        "the checkpoint (`checkpoint` in the configuration)",
    )?;
    let out = out.unwrap_or_else(|| {
        cfg.run_dir()
            .join("compressed")
            .join(format!("{recipe}-{ratio}"))
    });
    // Refuse an output directory that may not be replaced before the reduction's work (the
    // check is repeated when the result is written).
    drop(crate::outdir::OutDir::prepare(
        &out,
        "compress",
        &[&source],
    )?);
    let loaded = pipeline::load(&source)?;
    if loaded.reduction.is_some() {
        bail!(
            "{} is already compressed; compress the full checkpoint",
            loaded.dir.display()
        );
    }
    let t = Instant::now();
    let (opts, refit) = cfg.sweep.as_ref().map_or_else(Default::default, |s| {
        (s.reduce_options(), s.refit_options())
    });
    let cal = if recipe.needs_calibration() {
        let imdb = crate::data::load(&cfg.data)?;
        let tok = tokenizer(cfg, &loaded, &imdb.train)?;
        Some(calibration_sets(cfg, &imdb, tok.as_ref())?)
    } else {
        None
    };
    let mut reducer = Reducer::new(
        &loaded.model,
        loaded.meta.max_len,
        opts,
        refit,
        cal.as_ref(),
    )?;
    let red = reducer.reduce(recipe, ratio)?.reduction;
    if !red.stable {
        bail!(
            "{recipe} at ratio {ratio} gave an unstable reduction (some |λ̄| ≥ 1, kept modes {:?}); \
             nothing was written (a compressed checkpoint must be stable): choose another method \
             (e.g. h2) or ratio",
            red.kept_modes
        );
    }
    let rebuilt = s5::with_reduced(&loaded.model, &red.model)?;
    let (_, total) = pipeline::param_counts(&rebuilt);
    let info = pipeline::ReductionInfo {
        method: recipe.to_string(),
        ratio,
        kept_modes: red.kept_modes.clone(),
        stable: red.stable,
        total_params: total,
        source_sha256: loaded.sha256.clone(),
    };
    pipeline::write_compressed(&loaded.dir, &red.model, &info, &out)?;
    println!(
        "wrote {} ({} in {:.2} s: kept modes {:?}, {} params, stable {})",
        out.display(),
        recipe,
        t.elapsed().as_secs_f64(),
        red.kept_modes,
        total,
        red.stable
    );
    Ok(())
}

/// `bench perf`.
pub fn perf(
    cfg: &RunConfig,
    json: bool,
    batch: usize,
    len: Option<usize>,
    reps: usize,
) -> Result<()> {
    let model = cfg
        .model
        .as_ref()
        .context("the configuration has no [model] section to measure")?;
    if batch == 0 {
        bail!("--batch 0: the batch size must be at least 1");
    }
    if len == Some(0) {
        bail!("--len 0: the sequence length must be at least 1 token");
    }
    let len = len.unwrap_or(cfg.data.max_len);
    let r = s5::perf::measure(model, batch, len, None, reps.max(1))?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "infer_tokens_per_s": r.infer_tokens_per_s,
                "train_tokens_per_s": r.train_tokens_per_s,
                "matmul_peak_gflops": r.matmul_peak_gflops,
                "infer_gflops": r.infer_gflops,
                "train_gflops": r.train_gflops,
                "flops_per_token": r.flops_per_token,
                "batch": batch,
                "len": len,
                "threads": r.threads,
            })
        );
    } else {
        println!(
            "model {:?}, batch {batch} × len {len}, {} threads",
            model, r.threads
        );
        println!(
            "inference  {:>12.0} tokens/s  {:>8.1} GFLOP/s",
            r.infer_tokens_per_s, r.infer_gflops
        );
        println!(
            "training   {:>12.0} tokens/s  {:>8.1} GFLOP/s",
            r.train_tokens_per_s, r.train_gflops
        );
        println!("matmul peak {:>11.1} GFLOP/s", r.matmul_peak_gflops);
        println!("flops/token {:>11.0}", r.flops_per_token);
    }
    Ok(())
}
