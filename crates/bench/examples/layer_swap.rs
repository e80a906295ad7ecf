//! Causal test of why `bt` and the H∞-score methods collapse on the reference model
//! (`results/imdb/README.md`, "Why `bt` and the H∞ methods collapse"): the same number of modes
//! in every layer, each layer reduced either by the H∞ score (as `uniform-hinf`), by balanced
//! truncation (as `bt`) or by the h2 contribution (as `modal`), for every mix named below. If
//! choosing by h2 in layer 1 alone restores the accuracy, what breaks a method is what it drops
//! there.
//!
//! ```text
//! cargo run --release -p bench --example layer_swap -- [CHECKPOINT] [MAX_SAMPLES] [RATIOS] [MIX]
//! ```
//!
//! Defaults: `results/imdb/model`, 1,000 reviews (the seeded class-balanced sample of
//! `configs/imdb.toml`, seed 0; 0 = all 25,000), ratios `0.4,0.5`, every mix (`MIX`: only the
//! mixes whose name contains it). Prints one line per model and writes (atomically)
//! `results/imdb/layer-swap.json` for the defaults, else `results/imdb/layer-swap-<n>.json` with
//! `n` the number of reviews, with the git commit, checkpoint digest and timings. Needs the IMDb
//! data (fetched on first use like the main command).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use bench::pipeline::{self, EvalSet};
use bench::sections::EvalConfig;
use mor::Method;
use mor::modal;
use mor::reduce::{BlockReduction, ReduceOptions, assemble, mode_budget, reduce_block};

/// Each mix: a name, the method of most layers, and the layers (0-based) reduced by `modal`
/// (h2 contribution) instead. Every layer goes through [`reduce_block`], as in the sweep.
const MIXES: [(&str, Method, &[usize]); 8] = [
    (
        "H∞ in every layer (= uniform-hinf)",
        Method::UniformHinf,
        &[],
    ),
    ("h2 in layer 1, H∞ in layers 2-6", Method::UniformHinf, &[0]),
    (
        "h2 in layers 1-2, H∞ in layers 3-6",
        Method::UniformHinf,
        &[0, 1],
    ),
    (
        "H∞ in layer 1, h2 in layers 2-6",
        Method::UniformHinf,
        &[1, 2, 3, 4, 5],
    ),
    ("h2 in every layer (= modal)", Method::Modal, &[]),
    ("bt in every layer (= bt)", Method::Bt, &[]),
    ("h2 in layer 1, bt in layers 2-6", Method::Bt, &[0]),
    ("h2 in layers 1-2, bt in layers 3-6", Method::Bt, &[0, 1]),
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let ckpt = PathBuf::from(args.get(1).map_or("results/imdb/model", String::as_str));
    let max_samples = common::count(args.get(2), "MAX_SAMPLES", 1000)?;
    let ratios = common::ratios(args.get(3), &[0.4, 0.5])?;
    let mix_filter = args.get(4).map_or("", String::as_str);
    let defaults = max_samples == 1000 && args.len() <= 3;
    let t0 = Instant::now();
    let common::Setup {
        git_commit,
        imdb,
        loaded,
        tok,
    } = common::setup(&ckpt)?;
    let eval = EvalConfig {
        max_samples,
        ..EvalConfig::default()
    };
    let set = EvalSet::new(&imdb.test, tok.as_ref(), &eval)?;
    let deep = s5::to_mor(&loaded.model, set.max_len())?;
    let full = pipeline::evaluate(&loaded.model, &set, None, false)?;
    println!(
        "full model: {:.1} % on {} reviews",
        100.0 * full.accuracy,
        set.len()
    );
    let ns: Vec<usize> = deep.layers.iter().map(|l| l.ssm.n_modes()).collect();
    let opts = ReduceOptions::default();
    let mut rows = Vec::new();
    for &ratio in &ratios {
        bench::sections::validate_ratio(ratio).context("RATIOS")?;
        let orders = modal::uniform_allocation(&ns, mode_budget(&ns, ratio)?);
        for (name, method, h2_layers) in MIXES.into_iter().filter(|m| m.0.contains(mix_filter)) {
            let reds: Vec<BlockReduction> = deep
                .layers
                .iter()
                .zip(&orders)
                .enumerate()
                .map(|(k, (l, &r))| {
                    let m = if h2_layers.contains(&k) {
                        Method::Modal
                    } else {
                        method
                    };
                    reduce_block(&l.ssm, m, r, &opts)
                })
                .collect::<mor::Result<_>>()?;
            let red = assemble(&deep, reds);
            let model = s5::with_reduced(&loaded.model, &red.model)?;
            let ev = pipeline::evaluate(&model, &set, None, false)?;
            println!(
                "{:.0} % of the modes removed, {name}: {:.1} %",
                100.0 * ratio,
                100.0 * ev.accuracy
            );
            rows.push(serde_json::json!({
                "ratio": ratio, "mix": name, "h2_layers": h2_layers,
                "kept_modes": red.kept_modes, "accuracy": ev.accuracy,
                "eval_seconds": ev.seconds,
            }));
        }
    }
    let out = serde_json::json!({
        "what": "per-layer mix of H∞-score, bt and h2-contribution mode selection (examples/layer_swap.rs)",
        "git_commit": git_commit,
        "checkpoint": ckpt.display().to_string(),
        "checkpoint_sha256": loaded.sha256,
        "eval": { "max_samples": max_samples, "seed": eval.seed, "n": set.len() },
        "ratios": ratios,
        "mix_filter": mix_filter,
        "full_accuracy": full.accuracy,
        "rows": rows,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    let path = PathBuf::from(if defaults {
        "results/imdb/layer-swap.json".to_string()
    } else {
        format!("results/imdb/layer-swap-{}.json", set.len())
    });
    bench::results::write_atomic(&path, serde_json::to_string_pretty(&out)?.as_bytes())?;
    println!("wrote {}", path.display());
    Ok(())
}
