//! The choices of the `refit` post-step, made on **training** reviews only: which reducer to pair
//! it with, the calibration size and the ridge. For each reducer × ratio, the reduced model is
//! refitted ([`mor::refit::ModelRefit`]) on the class-balanced training sample of 16, 64 or 256
//! reviews that `sweep.refit_reviews` selects (seed 0, as the sweep with `eval.seed = 0`), with
//! each ridge, and evaluated on held-out training reviews (another seed's sample, minus every
//! calibration review): accuracy, agreement with the full model and mean logit error (2-norm of
//! the logit difference from the full model). No test review is read.
//!
//! ```text
//! cargo run --release -p bench --example refit_choice -- [CHECKPOINT] [RATIOS] [HELD_OUT]
//! ```
//!
//! Defaults: `results/imdb/model`, ratios `0.6,0.8,0.9`, 200 held-out reviews. Prints a table and
//! writes `results/imdb/refit-choice.json` (atomically, with the git commit and checkpoint
//! digest; with arguments `refit-choice-<held_out>-<ratios>.json`).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use bench::pipeline::{self, EvalSet};
use bench::sections::EvalConfig;
use faer::Mat;
use mor::Method;
use mor::refit::{ModelRefit, RefitOptions};

const REDUCERS: [Method; 4] = [Method::Modal, Method::Emodal, Method::H2, Method::Ebt];
const SIZES: [usize; 3] = [16, 64, 256];
const RIDGES: [f64; 3] = [1e-8, 1e-5, 1e-2];
/// Seed of the held-out sample (the calibration sample uses seed 0).
const HELD_OUT_SEED: u64 = 1;

#[derive(serde::Serialize)]
struct Row {
    reducer: String,
    ratio: f64,
    /// 0 = no refit (the reducer alone).
    calibration_reviews: usize,
    ridge: Option<f64>,
    accuracy: f64,
    agreement: f64,
    logit_err_mean: f64,
    /// Mean over layers of the relative calibration output error after the refit.
    calibration_error_after: Option<f64>,
}

fn compare(full: &[Vec<f64>], red: &[Vec<f64>], labels: &[u32]) -> (f64, f64, f64) {
    let argmax = |l: &Vec<f64>| {
        l.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i)
    };
    let n = full.len() as f64;
    let acc = red
        .iter()
        .zip(labels)
        .filter(|(l, y)| argmax(l) == **y as usize)
        .count() as f64
        / n;
    let agree = red
        .iter()
        .zip(full)
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count() as f64
        / n;
    let err = red
        .iter()
        .zip(full)
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f64>()
                .sqrt()
        })
        .sum::<f64>()
        / n;
    (acc, agree, err)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let ckpt = PathBuf::from(args.get(1).map_or("results/imdb/model", String::as_str));
    let ratios = common::ratios(args.get(2), &[0.6, 0.8, 0.9])?;
    let n_held = common::count(args.get(3), "HELD_OUT", 200)?;
    let t0 = Instant::now();
    let common::Setup {
        git_commit,
        imdb,
        loaded,
        tok,
    } = common::setup(&ckpt)?;
    let cfg = |n, seed| EvalConfig {
        max_samples: n,
        batch_size: 16,
        seed,
        estimate_reviews: 0,
    };
    // The reducers' own calibration set (the sweep's: 64 reviews, seed 0) and the refit sets.
    let cal = EvalSet::new(&imdb.train, tok.as_ref(), &cfg(64, 0))?;
    let refit_sets: Vec<EvalSet> = SIZES
        .iter()
        .map(|&n| EvalSet::new(&imdb.train, tok.as_ref(), &cfg(n, 0)))
        .collect::<Result<_>>()?;
    // Held-out training reviews: another seed's sample of the training split minus every
    // calibration review.
    let used: std::collections::HashSet<usize> = refit_sets
        .iter()
        .chain([&cal])
        .flat_map(|s| s.indices.iter().copied())
        .collect();
    let rest = lra::Split {
        texts: (0..imdb.train.len())
            .filter(|i| !used.contains(i))
            .map(|i| imdb.train.texts[i].clone())
            .collect(),
        labels: (0..imdb.train.len())
            .filter(|i| !used.contains(i))
            .map(|i| imdb.train.labels[i])
            .collect(),
    };
    let held = EvalSet::new(&rest, tok.as_ref(), &cfg(n_held, HELD_OUT_SEED))?;
    let full_ev = pipeline::evaluate(&loaded.model, &held, None, false)?;
    let (full_acc, _, _) = compare(&full_ev.logits, &full_ev.logits, &held.labels);
    eprintln!(
        "full model: {:.2} % on {} held-out training reviews ({:.0} s)",
        100.0 * full_acc,
        held.len(),
        t0.elapsed().as_secs_f64()
    );
    // The reducers calibrate on `cal`; this example runs the refits itself (no allocation).
    let calibration = bench::reducer::Calibration {
        reducers: cal.clone(),
        refit: cal.clone(),
        allocation: cal.clone(),
    };
    let mut reducer = bench::reducer::Reducer::new(
        &loaded.model,
        loaded.meta.max_len,
        Default::default(),
        RefitOptions::default(),
        Some(&calibration),
    )?;
    let deep = reducer.deep.clone();
    let mut rows = Vec::new();
    let mut cands = Vec::new();
    for &m in &REDUCERS {
        for &ratio in &ratios {
            let red = reducer.reduce(m.into(), ratio)?.reduction;
            let rebuilt = s5::with_reduced(&loaded.model, &red.model)?;
            let ev = pipeline::evaluate(&rebuilt, &held, None, false)?;
            let (accuracy, agreement, logit_err_mean) =
                compare(&full_ev.logits, &ev.logits, &held.labels);
            eprintln!(
                "{m} @ {ratio}: {:.2} %, logit error {logit_err_mean:.3}",
                100.0 * accuracy
            );
            rows.push(Row {
                reducer: m.to_string(),
                ratio,
                calibration_reviews: 0,
                ridge: None,
                accuracy,
                agreement,
                logit_err_mean,
                calibration_error_after: None,
            });
            cands.push((m, ratio, red.model));
        }
    }
    for (set, &size) in refit_sets.iter().zip(&SIZES) {
        let mut fits: Vec<ModelRefit> = cands
            .iter()
            .map(|(_, _, red)| ModelRefit::new(&deep, red))
            .collect::<mor::Result<_>>()?;
        for tokens in &set.tokens {
            let inputs = bench::reducer::layer_inputs(&loaded.model, tokens)?;
            let refs: Vec<_> = inputs.iter().map(Mat::as_ref).collect();
            for fit in &mut fits {
                fit.add(&refs)?;
            }
        }
        eprintln!(
            "recorded {size} calibration reviews ({:.0} s)",
            t0.elapsed().as_secs_f64()
        );
        for ((m, ratio, _), fit) in cands.iter().zip(&fits) {
            for &ridge in &RIDGES {
                let (model, reports) = fit.solve(&RefitOptions { ridge })?;
                let rebuilt = s5::with_reduced(&loaded.model, &model)?;
                let ev = pipeline::evaluate(&rebuilt, &held, None, false)?;
                let (accuracy, agreement, logit_err_mean) =
                    compare(&full_ev.logits, &ev.logits, &held.labels);
                let after =
                    reports.iter().map(|r| r.error_after).sum::<f64>() / reports.len() as f64;
                eprintln!(
                    "{m}+refit @ {ratio}, {size} reviews, ridge {ridge:e}: {:.2} %, logit error \
                     {logit_err_mean:.3}, calibration error {after:.3}",
                    100.0 * accuracy
                );
                rows.push(Row {
                    reducer: m.to_string(),
                    ratio: *ratio,
                    calibration_reviews: size,
                    ridge: Some(ridge),
                    accuracy,
                    agreement,
                    logit_err_mean,
                    calibration_error_after: Some(after),
                });
            }
        }
    }
    println!(
        "| reducer | ratio | calibration reviews | ridge | accuracy % | agreement % | mean logit error |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.3} |",
            r.reducer,
            r.ratio,
            r.calibration_reviews,
            r.ridge.map_or("—".into(), |x| format!("{x:e}")),
            100.0 * r.accuracy,
            100.0 * r.agreement,
            r.logit_err_mean
        );
    }
    let default_run = args.len() <= 1;
    let out = if default_run {
        PathBuf::from("results/imdb/refit-choice.json")
    } else {
        PathBuf::from(format!(
            "results/imdb/refit-choice-{n_held}-{}.json",
            ratios
                .iter()
                .map(f64::to_string)
                .collect::<Vec<_>>()
                .join("_")
        ))
    };
    let doc = serde_json::json!({
        "what": "refit choices on held-out training reviews (examples/refit_choice.rs)",
        "git_commit": git_commit,
        "checkpoint_sha256": loaded.sha256,
        "held_out_reviews": held.len(),
        "held_out_seed": HELD_OUT_SEED,
        "reducer_calibration": {"reviews": 64, "seed": 0},
        "refit_sets": {"reviews": SIZES, "seed": 0},
        "full_accuracy": full_acc,
        "seconds": t0.elapsed().as_secs_f64(),
        "rows": rows,
    });
    bench::results::write_atomic(&out, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    eprintln!(
        "wrote {} in {:.0} s",
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
