//! Chooses between recipes on **training** reviews only: each recipe × ratio reduces the model
//! exactly as the sweep does ([`bench::reducer::Reducer`] with the sweep's calibration sets:
//! 64 calibration, 256 refit and 64 allocation training reviews, seed 0) and is evaluated on
//! held-out training reviews (seed 1, outside all three sets): accuracy, agreement with the full
//! model, mean logit error, kept modes per layer. The `sens` allocations' cost curves are saved
//! too. No test review is read.
//!
//! ```text
//! cargo run --release -p bench --example recipe_choice -- RECIPES [RATIOS] [HELD_OUT] [CHECKPOINT]
//! ```
//!
//! `RECIPES` is comma-separated (`emodal+refit,emodal@sens+refit`); defaults: ratios
//! `0.5,0.6,0.7,0.8,0.9`, 400 held-out reviews, `results/imdb/model`. Prints a table and writes
//! `results/imdb/recipe-choice-<recipes>.json` (atomically, with the git commit and the
//! checkpoint digest).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bench::pipeline::{self, EvalSet};
use bench::reducer::Reducer;
use mor::recipe::Recipe;

/// Seed of the held-out sample (the calibration sets use seed 0).
const HELD_OUT_SEED: u64 = 1;

#[derive(serde::Serialize)]
struct Row {
    recipe: String,
    ratio: f64,
    kept_per_layer: Vec<usize>,
    accuracy: f64,
    agreement: f64,
    logit_err_mean: f64,
    reduce_seconds: f64,
}

fn argmax(l: &[f64]) -> usize {
    l.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(list) = args.get(1) else {
        bail!("usage: recipe_choice RECIPES [RATIOS] [HELD_OUT] [CHECKPOINT]");
    };
    let recipes: Vec<Recipe> = list
        .split(',')
        .map(|r| {
            r.parse()
                .map_err(|e: mor::Error| anyhow::anyhow!("RECIPES: {e}"))
        })
        .collect::<Result<_>>()?;
    let ratios = common::ratios(args.get(2), &[0.5, 0.6, 0.7, 0.8, 0.9])?;
    let n_held = common::count(args.get(3), "HELD_OUT", 400)?;
    let ckpt = PathBuf::from(args.get(4).map_or("results/imdb/model", String::as_str));
    let t0 = Instant::now();
    let common::Setup {
        git_commit,
        imdb,
        loaded,
        tok,
    } = common::setup(&ckpt)?;
    let cal = common::calibration(&imdb, tok.as_ref())?;
    let used: std::collections::HashSet<usize> = [&cal.reducers, &cal.refit, &cal.allocation]
        .iter()
        .flat_map(|s| s.indices.iter().copied())
        .collect();
    let labels: Vec<usize> = imdb.train.labels.iter().map(|&l| usize::from(l)).collect();
    let rest: Vec<usize> = (0..labels.len()).filter(|i| !used.contains(i)).collect();
    let rest_labels: Vec<usize> = rest.iter().map(|&i| labels[i]).collect();
    let held_idx: Vec<usize> = bench::subset::balanced_subset(&rest_labels, n_held, HELD_OUT_SEED)
        .into_iter()
        .map(|j| rest[j])
        .collect();
    let held = EvalSet::from_indices(&imdb.train, tok.as_ref(), held_idx, 16)
        .context("building the held-out set")?;
    let full = pipeline::evaluate(&loaded.model, &held, None, false)?;
    eprintln!(
        "full model: {:.2} % on {} held-out training reviews ({:.0} s)",
        100.0 * full.accuracy,
        held.len(),
        t0.elapsed().as_secs_f64()
    );
    let mut reducer = Reducer::new(
        &loaded.model,
        loaded.meta.max_len,
        Default::default(),
        Default::default(),
        Some(&cal),
    )?;
    let mut rows = Vec::new();
    for &recipe in &recipes {
        for &ratio in &ratios {
            let t = Instant::now();
            let red = reducer.reduce(recipe, ratio)?.reduction;
            let reduce_seconds = t.elapsed().as_secs_f64();
            let rebuilt = s5::with_reduced(&loaded.model, &red.model)?;
            let ev = pipeline::evaluate(&rebuilt, &held, None, false)?;
            let n = held.len() as f64;
            let agreement = ev
                .logits
                .iter()
                .zip(&full.logits)
                .filter(|(a, b)| argmax(a) == argmax(b))
                .count() as f64
                / n;
            let logit_err_mean = ev
                .logits
                .iter()
                .zip(&full.logits)
                .map(|(a, b)| {
                    a.iter()
                        .zip(b)
                        .map(|(x, y)| (x - y).powi(2))
                        .sum::<f64>()
                        .sqrt()
                })
                .sum::<f64>()
                / n;
            eprintln!(
                "{recipe} @ {ratio}: {:.2} %, logit error {logit_err_mean:.3}, kept {:?} ({reduce_seconds:.0} s)",
                100.0 * ev.accuracy,
                red.kept_modes
            );
            rows.push(Row {
                recipe: recipe.to_string(),
                ratio,
                kept_per_layer: red.kept_modes.clone(),
                accuracy: ev.accuracy,
                agreement,
                logit_err_mean,
                reduce_seconds,
            });
        }
    }
    println!("| recipe | ratio | kept per layer | accuracy % | agreement % | mean logit error |");
    println!("|---|---:|---|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.3} |",
            r.recipe,
            r.ratio,
            r.kept_per_layer
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join("/"),
            100.0 * r.accuracy,
            100.0 * r.agreement,
            r.logit_err_mean
        );
    }
    let mut sensitivity = Vec::new();
    for &recipe in &recipes {
        if matches!(
            recipe.alloc,
            Some(mor::alloc::Allocation::Sensitivity | mor::alloc::Allocation::FirstOrder)
        ) {
            sensitivity.push(serde_json::to_value(reducer.sensitivity(recipe)?)?);
        }
    }
    let tag: String = list
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let out = PathBuf::from(format!("results/imdb/recipe-choice-{tag}.json"));
    let doc = serde_json::json!({
        "what": "recipe choices on held-out training reviews (examples/recipe_choice.rs)",
        "command": args.join(" "),
        "git_commit": git_commit,
        "checkpoint_sha256": loaded.sha256,
        "held_out_reviews": held.len(),
        "held_out_seed": HELD_OUT_SEED,
        "calibration": {
            "seed": 0,
            "reducer_reviews": cal.reducers.len(),
            "refit_reviews": cal.refit.len(),
            "allocation_reviews": cal.allocation.len(),
        },
        "full_accuracy": full.accuracy,
        "seconds": t0.elapsed().as_secs_f64(),
        "rows": rows,
        "sensitivity": sensitivity,
    });
    bench::results::write_atomic(&out, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    eprintln!(
        "wrote {} in {:.0} s",
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
