//! The sweep stage (`bench run`, `bench sweep`) and the plots (`bench plot`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::train::ensure_checkpoint;
use super::*;
use crate::backend::S5Backend;
use crate::manifest::{Manifest, sha256_file};
use crate::outdir::RunGuard;
use crate::pipeline::{self, EvalSet};
use crate::progress::bar;
use crate::reducer::Reducer;
use crate::results::{ResultsStore, write_atomic};
use crate::sweep::{SweepOptions, run_sweep, summary_table};
use indicatif::MultiProgress;

/// The main command.
pub fn run(cfg: &RunConfig, config_path: &Path, args: &RunArgs) -> Result<()> {
    sweep_stage(cfg, config_path, args, true)
}

/// Data → checkpoint (trained if `train_if_missing`) → full model → sweep → plots → manifest.
pub fn sweep_stage(
    cfg: &RunConfig,
    config_path: &Path,
    args: &RunArgs,
    train_if_missing: bool,
) -> Result<()> {
    let sweep = cfg.sweep()?.clone();
    let out = cfg.run_dir();
    let _run = RunGuard::acquire(&out, if train_if_missing { "run" } else { "sweep" })?;
    // The previous run's manifest records what the rows in results.csv were computed with; this
    // run's inputs are checked against it stage by stage (the configuration before any work),
    // and the new manifest is written only once all of them are known to match.
    let store = ResultsStore::new(&out);
    let existing = store.rows()?;
    let previous = match Manifest::read_checked(&out) {
        Ok(m) => m,
        Err(e) if !existing.is_empty() => {
            return Err(e.context(format!(
                "{} holds rows, but what they were computed with cannot be read; nothing was \
                 changed: restore {} or start a new run (another `name`, or move \
                 results.csv and kept_modes.csv out of {})",
                store.results.display(),
                crate::manifest::MANIFEST_FILE,
                out.display()
            )));
        }
        Err(e) => {
            tracing::warn!("{e:#}; it is replaced by this run's (results.csv has no rows)");
            None
        }
    };
    let check = crate::manifest::RowCheck::new(&out, previous.as_ref(), &existing);
    let sweep_opts = crate::manifest::SweepRowOptions::of(&sweep);
    check.config(&cfg.eval, &sweep_opts)?;
    let mut man = Manifest::start(&cfg.name, config_path, cfg.n_threads())?;

    let t = Instant::now();
    let imdb = crate::data::load(&cfg.data)?;
    for f in &imdb.files {
        let name = f.file_name().map_or_else(
            || f.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        man.data_sha256.insert(name, sha256_file(f)?);
    }
    check.data(&man.data_sha256)?;
    man.add_stage("data", t);

    let t = Instant::now();
    let dir = if train_if_missing {
        ensure_checkpoint(cfg, &imdb, args.retrain)?
    } else {
        let dir = cfg.checkpoint_dir();
        checkpoint_dir_arg(&dir, "the checkpoint (`checkpoint` in the configuration)")?;
        dir
    };
    man.add_stage("checkpoint", t);
    let t = Instant::now();
    let loaded = pipeline::load(&dir)?;
    if loaded.reduction.is_some() {
        bail!(
            "{} is a compressed checkpoint; the sweep starts from a full model",
            dir.display()
        );
    }
    check.checkpoint(&loaded.sha256)?;
    let tok = tokenizer(cfg, &loaded, &imdb.train)?;
    let tok_inputs = crate::manifest::TokenizerInputs::of(tok.as_ref());
    check.tokenizer(&tok_inputs)?;
    if let Some(prev) = previous.as_ref().filter(|_| !existing.is_empty()) {
        man.keep_history(prev);
    }
    man.checkpoint = Some(loaded.dir.display().to_string());
    man.checkpoint_sha256 = Some(loaded.sha256.clone());
    man.row_inputs = Some(crate::manifest::RowInputs {
        eval: cfg.eval.clone(),
        data_sha256: man.data_sha256.clone(),
        checkpoint_sha256: loaded.sha256.clone(),
        tokenizer: tok_inputs,
        sweep: sweep_opts,
    });
    man.write(&out)?;
    let set = EvalSet::new(&imdb.test, tok.as_ref(), &cfg.eval)?;
    man.add_stage("eval_set", t);
    man.write(&out)?;
    tracing::info!(
        "evaluating on {} test reviews (of {}), {} methods × {} ratios",
        set.len(),
        imdb.test.len(),
        sweep.methods.len(),
        sweep.ratios.len()
    );

    let t = Instant::now();
    let mp = MultiProgress::new();
    let sweep_bar = mp.add(bar(
        (sweep.methods.len() * sweep.ratios.len()) as u64,
        "sweep  ",
    ));
    let eval_bar = mp.add(bar(set.len() as u64, "reviews"));
    let calibration = calibration_sets(cfg, &imdb, tok.as_ref())?;
    let reducer = sweep_reducer(&loaded, &sweep, &calibration)?;
    let mut backend = S5Backend::new(reducer, &set)?;
    backend.pb = Some(eval_bar.clone());
    backend.estimate = crate::estimate::EstimateSet::from_config(&set, &cfg.eval)?;
    let summary = run_sweep(
        &store,
        &mut backend,
        &sweep.methods,
        &sweep.ratios,
        &SweepOptions {
            stop_after_rows: args.stop_after_rows,
            bar: Some(sweep_bar.clone()),
        },
    )?;
    eval_bar.finish_and_clear();
    sweep_bar.finish_and_clear();
    man.add_stage("sweep", t);
    write_calibration_report(&out, &backend.reducer)?;
    if summary.stopped_early {
        man.write(&out)?;
        eprintln!(
            "stopped after {} new rows as asked; rerun to complete {}",
            summary.written,
            store.results.display()
        );
        return Ok(());
    }

    let t = Instant::now();
    let files = plot(&store.results)?;
    man.add_stage("plot", t);
    man.finish(&out)?;
    let rows = store.rows()?;
    println!("{}", summary_table(&rows));
    println!(
        "{} new rows, {} already present; wrote {}, {}, {} and {}",
        summary.written,
        summary.skipped,
        store.results.display(),
        store.kept_modes.display(),
        out.join(crate::manifest::MANIFEST_FILE).display(),
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Re-draws the plots and `summary.md` next to `csv` (reading `kept_modes.csv` beside it).
pub fn plot(csv: &Path) -> Result<Vec<PathBuf>> {
    plot_merged(csv, &[], None)
}

/// The directory of a CSV path (`.` for a bare file name).
pub fn dir_of(csv: &Path) -> PathBuf {
    csv.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Re-draws the plots and `summary.md` of the rows of `csv` and of every CSV in `also` (each
/// with the `kept_modes.csv` beside it) into `out` (default: next to `csv`). The CSVs must hold
/// the same full model on the same reviews (equal `full` rows) and no (method, ratio) twice.
pub fn plot_merged(csv: &Path, also: &[PathBuf], out: Option<&Path>) -> Result<Vec<PathBuf>> {
    let mut rows = crate::results::read_rows(csv)?;
    if rows.is_empty() {
        bail!(
            "{} has no rows to plot (run the sweep first)",
            csv.display()
        );
    }
    let mut kept: Vec<crate::results::KeptModes> =
        crate::results::read_csv(&dir_of(csv).join("kept_modes.csv"))?;
    let full_of = |rows: &[crate::results::Row]| {
        rows.iter()
            .find(|r| r.method == crate::results::FULL)
            .map(|r| (r.accuracy, r.n_eval, r.total_params))
    };
    for other in also {
        let more = crate::results::read_rows(other)?;
        if full_of(&more) != full_of(&rows) {
            bail!(
                "{} and {} do not hold the same full model on the same reviews (their `full` \
                 rows differ: {:?} vs {:?} as (accuracy, n_eval, total_params)); plot them apart",
                csv.display(),
                other.display(),
                full_of(&rows),
                full_of(&more)
            );
        }
        for r in more
            .into_iter()
            .filter(|r| r.method != crate::results::FULL)
        {
            if rows.iter().any(|q| q.has_key(&r.method, r.ratio)) {
                bail!(
                    "{} @ {} is in both {} and {}; plot them apart",
                    r.method,
                    r.ratio,
                    csv.display(),
                    other.display()
                );
            }
            rows.push(r);
        }
        let more_kept: Vec<crate::results::KeptModes> =
            crate::results::read_csv(&dir_of(other).join("kept_modes.csv"))?;
        kept.extend(
            more_kept
                .into_iter()
                .filter(|k| k.method != crate::results::FULL),
        );
    }
    let dir = match out {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.to_path_buf()
        }
        None => dir_of(csv),
    };
    let mut files = crate::plot::plot_all(&rows, &kept, &dir)?;
    let md = dir.join("summary.md");
    write_atomic(&md, crate::sweep::markdown_summary(&rows).as_bytes())?;
    files.push(md);
    Ok(files)
}

/// Merges what the reducer's data-driven parts measured in this sweep (the `sens` cost curves,
/// the `lqo-h2` gate fits) into `<run>/calibration.json`, keeping the entries of earlier runs of
/// the same directory; nothing is written when nothing was measured.
pub fn write_calibration_report(run_dir: &Path, reducer: &Reducer<'_>) -> Result<()> {
    let new = reducer.calibration_report();
    if new.is_empty() {
        return Ok(());
    }
    let path = run_dir.join("calibration.json");
    let mut all = match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => bail!(
                "{} is not a JSON object; move it away (it is rewritten by every sweep)",
                path.display()
            ),
        },
        Err(_) => serde_json::Map::new(),
    };
    all.extend(new);
    crate::results::write_atomic(
        &path,
        serde_json::to_string_pretty(&serde_json::Value::Object(all))?.as_bytes(),
    )
}
