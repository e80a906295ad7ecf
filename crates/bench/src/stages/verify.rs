//! `bench verify`: the rows of a `results.csv` recomputed from the checkpoint and compared.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::*;
use crate::backend::S5Backend;
use crate::manifest::{Manifest, sha256_file};
use crate::pipeline::{self, EvalSet};
use crate::progress::bar;
use crate::sweep::SweepBackend;
use indicatif::MultiProgress;

/// `bench verify`: recomputes the full row and `n_rows` seeded reduced rows of `csv` exactly as
/// the sweep computed them and compares them ([`crate::verify`]). Reads the run directory only.
pub fn verify(cfg: &RunConfig, csv: &Path, n_rows: usize, seed: u64) -> Result<()> {
    use crate::verify::{self as v, Check};
    let sweep = cfg.sweep()?;
    if !csv.is_file() {
        bail!(
            "no results to verify: {} does not exist (run `bench sweep` first, or pass --csv)",
            csv.display()
        );
    }
    let dir = csv
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let committed = crate::results::read_rows(csv)?;
    if !committed.iter().any(|r| r.method == crate::results::FULL) {
        bail!(
            "{} has no `full` row: the reduced rows' errors cannot be checked without it",
            csv.display()
        );
    }
    let kept_path = dir.join("kept_modes.csv");
    if !kept_path.is_file() {
        bail!(
            "{} is missing: it holds the per-layer kept modes of the rows of {}",
            kept_path.display(),
            csv.display()
        );
    }
    let kept: Vec<crate::results::KeptModes> = crate::results::read_csv(&kept_path)?;
    let picked = v::sample(&committed, n_rows, seed);

    let source = cfg.checkpoint_dir();
    checkpoint_dir_arg(
        &source,
        "the checkpoint (`checkpoint` in the configuration)",
    )?;
    let loaded = pipeline::load(&source)?;
    if loaded.reduction.is_some() {
        bail!(
            "{} is a compressed checkpoint; the sweep starts from a full model",
            loaded.dir.display()
        );
    }
    let manifest = Manifest::read(dir);
    match manifest
        .as_ref()
        .and_then(|m| m.checkpoint_sha256.as_deref())
    {
        Some(sha) if sha != loaded.sha256 => bail!(
            "the configured checkpoint {} (weights sha256 {}) is not the one the rows of {} came \
             from (checkpoint_sha256 {sha} in {}); point `checkpoint` in the config at that model",
            loaded.dir.display(),
            loaded.sha256,
            csv.display(),
            dir.join(crate::manifest::MANIFEST_FILE).display()
        ),
        Some(_) => {}
        None => eprintln!(
            "note: no checkpoint_sha256 in {}: cannot confirm that {} is the model the rows came \
             from; comparing anyway",
            dir.join(crate::manifest::MANIFEST_FILE).display(),
            loaded.dir.display()
        ),
    }
    let imdb = crate::data::load(&cfg.data)?;
    if let Some(man) = &manifest {
        for f in &imdb.files {
            let name = f
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            if let Some(old) = man.data_sha256.get(&name)
                && *old != sha256_file(f)?
            {
                eprintln!(
                    "note: {} differs from the data file of the run (sha256 {old} in \
                     manifest.json); differences below may come from the data",
                    f.display()
                );
            }
        }
    }

    let tok = tokenizer(cfg, &loaded, &imdb.train)?;
    let set = EvalSet::new(&imdb.test, tok.as_ref(), &cfg.eval)?;
    let calibration = calibration_sets(cfg, &imdb, tok.as_ref())?;
    let reducer = sweep_reducer(&loaded, sweep, &calibration)?;
    let mut backend = S5Backend::new(reducer, &set)?;
    backend.measure_speed = false;
    // The estimate only where a committed row has one to compare with (rows written before the
    // estimate existed have `estimate_reviews = 0`).
    if committed.iter().any(|r| r.estimate_reviews > 0) {
        backend.estimate = crate::estimate::EstimateSet::from_config(&set, &cfg.eval)?;
    }
    let mp = MultiProgress::new();
    let rows_bar = mp.add(bar(picked.len() as u64, "verify "));
    let eval_bar = mp.add(bar(set.len() as u64, "reviews"));
    backend.pb = Some(eval_bar.clone());
    tracing::info!(
        "recomputing {} of the {} rows of {} on {} test reviews",
        picked.len(),
        committed.len(),
        csv.display(),
        set.len()
    );

    let mut checks: Vec<Check> = Vec::new();
    let full = backend.full().context("evaluating the full model")?;
    for &i in &picked {
        let row = &committed[i];
        rows_bar.set_message(v::label(row));
        let recomputed = if row.method == crate::results::FULL {
            Ok((crate::sweep::full_row(&full), full.kept_per_layer.clone()))
        } else {
            backend.reduced(&row.method, row.ratio).and_then(|p| {
                let r = crate::sweep::reduced_row(&full, &p, &row.method, row.ratio)?;
                Ok((r, p.kept_per_layer))
            })
        };
        match recomputed {
            Ok((r, k)) => checks.extend(v::compare(
                row,
                v::kept_of(&kept, &row.method, row.ratio),
                &r,
                &k,
            )),
            Err(e) => checks.push(v::failed(row, &mor::error::one_line(e.as_ref()))),
        }
        rows_bar.inc(1);
    }
    eval_bar.finish_and_clear();
    rows_bar.finish_and_clear();
    print!("{}", v::table(&checks));
    let n_reduced = committed.len() - 1;
    let bad = v::mismatches(&checks);
    if !bad.is_empty() {
        bail!(
            "verify: {} of {} checked rows of {} differ: {}",
            bad.len(),
            picked.len(),
            csv.display(),
            bad.join("; ")
        );
    }
    println!(
        "verify: all {} checked rows of {} match (full + {} of {} reduced rows, seed {seed}; \
         accuracy to {:e}, logit errors to a relative {:e}, bound_max to a relative {:e}; \
         timings not compared)",
        picked.len(),
        csv.display(),
        picked.len() - 1,
        n_reduced,
        v::ACCURACY_TOL,
        v::LOGIT_ERR_RTOL,
        v::BOUND_RTOL
    );
    Ok(())
}
