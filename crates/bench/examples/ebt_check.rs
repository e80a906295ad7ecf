//! Does `ebt` do what it is built for? Per layer of the reference model, the relative error of
//! the reduced SSM block's output under the inputs the full model really feeds that layer,
//! `‖y − y_r‖ / ‖y‖` over all true positions of held-out training reviews (not the 64 the
//! Gramians are recorded on, never test reviews), for `modal`, `emodal`, `bt`, `ebt` and `h2` at
//! the same order in every layer. `ebt` balances with the state covariance of such inputs, so on them it
//! should beat `bt`; where it does and the model still fails, the layer error it minimises is not
//! what the accuracy needs.
//!
//! ```text
//! cargo run --release -p bench --example ebt_check -- [CHECKPOINT] [RATIOS] [REVIEWS]
//! ```
//!
//! Defaults: `results/imdb/model`, ratios `0.5,0.6,0.8`, 32 held-out reviews. Prints a table
//! (errors without the `D ⊙ u` feedthrough, which no method changes) and writes it atomically
//! to `results/imdb/ebt-check.json` (with arguments: `ebt-check-<reviews>-<ratios>.json`) with the
//! git commit and checkpoint digest.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use mor::Method;
use mor::reduce::{ReduceOptions, reduce_block};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let ckpt = PathBuf::from(args.get(1).map_or("results/imdb/model", String::as_str));
    let ratios = common::ratios(args.get(2), &[0.5, 0.6, 0.8])?;
    let n_reviews = common::count(args.get(3), "REVIEWS", 32)?;
    let t0 = Instant::now();
    let setup = common::setup(&ckpt)?;
    let (calibration, held) = common::calibration_and_held_out(&setup, n_reviews)?;
    let common::Setup {
        git_commit, loaded, ..
    } = setup;
    let deep = s5::to_mor(&loaded.model, loaded.meta.max_len)?;
    let gramians = bench::reducer::empirical_gramians(&loaded.model, &deep, &calibration)?;
    // Per layer, the full model's SSM inputs on the held-out reviews, [len, H] each.
    let inputs = common::inputs_per_layer(&loaded.model, &held)?;
    let methods = [
        Method::Modal,
        Method::Emodal,
        Method::Bt,
        Method::Ebt,
        Method::H2,
    ];
    let mut rows = Vec::new();
    println!(
        "relative layer output error on {} held-out training reviews",
        held.len()
    );
    for &ratio in &ratios {
        println!(
            "ratio {ratio}: layer  {}",
            methods.map(|m| format!("{:>8}", m.name())).join(" ")
        );
        for (l, layer) in deep.layers.iter().enumerate() {
            let n = layer.ssm.n_modes();
            let r = (((1.0 - ratio) * n as f64).round() as usize).clamp(1, n);
            // reduce_block's ebt balances with the first Gramian given: this layer's.
            let opts = ReduceOptions {
                ctrb_gramians: vec![gramians[l].clone()],
                ..ReduceOptions::default()
            };
            let mut errs = Vec::new();
            for m in methods {
                let red = reduce_block(&layer.ssm, m, r, &opts)?;
                let (mut num, mut den) = (0.0, 0.0);
                for u in &inputs[l] {
                    let y = mor::refit::state_output(&layer.ssm, u.as_ref())?;
                    let yr = mor::refit::state_output(&red.block, u.as_ref())?;
                    num += (&y - &yr).squared_norm_l2();
                    den += y.squared_norm_l2();
                }
                errs.push((num / den).sqrt());
            }
            println!(
                "            {}  {}",
                l + 1,
                errs.iter()
                    .map(|e| format!("{e:>8.4}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            rows.push(serde_json::json!({
                "ratio": ratio, "layer": l + 1, "order": r,
                "relative_output_error": methods.iter().map(|m| m.name()).zip(&errs)
                    .map(|(m, e)| (m.to_string(), serde_json::json!(e))).collect::<serde_json::Map<_, _>>(),
            }));
        }
    }
    let out = serde_json::json!({
        "what": "relative SSM-block output error per layer under the full model's inputs on held-out training reviews (D u left out)",
        "checkpoint": ckpt.display().to_string(),
        "checkpoint_sha256": loaded.sha256,
        "git_commit": git_commit,
        "calibration_reviews": calibration.len(),
        "held_out_reviews": held.len(),
        "seconds": t0.elapsed().as_secs_f64(),
        "rows": rows,
    });
    // Only the default run writes the committed file; others say what they ran in the name.
    let path = if args.len() <= 1 {
        PathBuf::from("results/imdb/ebt-check.json")
    } else {
        let r: Vec<String> = ratios.iter().map(f64::to_string).collect();
        PathBuf::from(format!(
            "results/imdb/ebt-check-{}-{}.json",
            held.len(),
            r.join("_")
        ))
    };
    common::write_report(&path, &out, t0)
}
