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
use bench::pipeline::EvalSet;
use bench::sections::EvalConfig;
use faer::{Mat, MatRef};
use mor::reduce::{ReduceOptions, reduce_block};
use mor::{DiagBlock, Method};

/// The calibration reviews the sweep records on are the first 64 of the seed-0 sample; these
/// come from another seed's sample, minus any review among those 64.
const HELD_OUT_SEED: u64 = 1;

/// `s = Σ_scans 2 Re(C x_t)` of a block for input `u` `[len, m]` (forward scan from `x = 0`,
/// plus the reverse scan of a bidirectional block), `[len, p]`; `D ⊙ u` left out.
fn block_output(block: &DiagBlock, u: MatRef<'_, f64>) -> Result<Mat<f64>> {
    let (_, _, c_w, c_rev_w) = mor::balance::real_realization(block);
    let mut y = mor::empirical::real_states(block, u, false)? * c_w.transpose();
    if let Some(c) = c_rev_w {
        y += mor::empirical::real_states(block, u, true)? * c.transpose();
    }
    Ok(y)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let ckpt = PathBuf::from(args.get(1).map_or("results/imdb/model", String::as_str));
    let ratios = common::ratios(args.get(2), &[0.5, 0.6, 0.8])?;
    let n_reviews = common::count(args.get(3), "REVIEWS", 32)?;
    let t0 = Instant::now();
    let common::Setup {
        git_commit,
        imdb,
        loaded,
        tok,
    } = common::setup(&ckpt)?;
    let cal_cfg = |n, seed| EvalConfig {
        max_samples: n,
        batch_size: 16,
        seed,
        estimate_reviews: 0,
    };
    let calibration = EvalSet::new(&imdb.train, tok.as_ref(), &cal_cfg(64, 0))?;
    // A larger sample of another seed, minus the calibration reviews: their true tokens.
    let candidates = EvalSet::new(
        &imdb.train,
        tok.as_ref(),
        &cal_cfg(n_reviews + 64, HELD_OUT_SEED),
    )?;
    let held: Vec<&Vec<u32>> = candidates
        .indices
        .iter()
        .zip(&candidates.tokens)
        .filter(|(i, _)| !calibration.indices.contains(i))
        .map(|(_, t)| t)
        .take(n_reviews)
        .collect();
    let deep = s5::to_mor(&loaded.model, loaded.meta.max_len)?;
    let gramians = bench::reducer::empirical_gramians(&loaded.model, &deep, &calibration)?;
    // Per layer, the full model's SSM inputs on the held-out reviews, [len, H] each.
    let mut inputs: Vec<Vec<Mat<f64>>> = vec![Vec::new(); deep.layers.len()];
    for tokens in &held {
        for (l, u) in loaded.model.ssm_inputs(tokens)?.into_iter().enumerate() {
            let h = u.len() / tokens.len();
            inputs[l].push(MatRef::from_row_major_slice(&u, tokens.len(), h).to_owned());
        }
    }
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
                    let y = block_output(&layer.ssm, u.as_ref())?;
                    let yr = block_output(&red.block, u.as_ref())?;
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
    bench::results::write_atomic(&path, serde_json::to_string_pretty(&out)?.as_bytes())?;
    println!(
        "wrote {} in {:.0} s",
        path.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
