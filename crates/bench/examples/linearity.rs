//! Where the first-order estimate stops describing a reduction (issue 31): the reduction scaled
//! down. For `t ∈ (0, 1]` every layer's SSM is replaced by `𝒮_ℓ + t (𝒮̂_ℓ − 𝒮_ℓ)` (the full and
//! the reduced diagonal blocks side by side, output matrices scaled by `1 − t` and `t`; `t = 1` is
//! the reduced model). The estimate `‖Σ_ℓ J_ℓ (𝒮_ℓ − 𝒮̂_ℓ(t)) u_ℓ‖` is linear in `t` by
//! construction; the measured logit error is not. The ratio error / estimate tends to the
//! review's first-order ratio as `t → 0` (exactness to first order is tested in
//! `crates/s5/tests/sensitivity.rs`), and its drift up to `t = 1` measures how far the reduction
//! is outside the linear regime. Reporting only: nothing here chooses anything.
//!
//! ```text
//! cargo run --release -p bench --example linearity -- [RECIPES] [RATIOS] [REVIEWS] [CHECKPOINT]
//! ```
//!
//! Recipes reduce exactly as the sweep does ([`bench::reducer::Reducer`]). Defaults:
//! `ebt,h2`, ratio 0.9, 16 test reviews (the class-balanced sample of seed 0, as the ladder),
//! `results/imdb/model`. Prints a Markdown table: per reduction and `t`, the mean measured error,
//! the mean estimate and the median over reviews of error / estimate. Fails if the blend at
//! `t = 1` is not the reduced model (logits more than 1e-3 apart).

mod common;

use std::path::PathBuf;

use anyhow::{Result, bail};
use bench::estimate::{EstimateSet, mean, median};
use bench::pipeline::evaluate;
use faer::c64;
use mor::{DeepSsm, DiagBlock};

/// The scales of the reduction, smallest first.
const SCALES: [f64; 5] = [0.0625, 0.125, 0.25, 0.5, 1.0];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let recipes = common::recipes(args.get(1), "RECIPES", "ebt,h2")?;
    let ratios = common::ratios(args.get(2), &[0.9])?;
    let n = common::count(args.get(3), "REVIEWS", 16)?;
    let ckpt = PathBuf::from(args.get(4).map_or("results/imdb/model", String::as_str));
    let s = common::setup(&ckpt)?;
    let model = &s.loaded.model;
    let set = common::test_sample(&s, n)?;
    let Some(est_set) = EstimateSet::new(&set, set.len(), 0, 8)? else {
        bail!("no reviews");
    };
    let full_ev = evaluate(model, &set, None, false)?;
    let cal = common::calibration(&s.imdb, s.tok.as_ref())?;
    let mut reducer = common::sweep_reducer(&s, &cal)?;
    let deep = reducer.deep.clone();
    println!(
        "git {} · {} test reviews (seed 0) · checkpoint {}\n",
        s.git_commit,
        set.len(),
        s.loaded.sha256
    );
    println!("| reduction | t | error (mean) | estimate (mean) | error / estimate (median) |");
    println!("|---|---:|---:|---:|---:|");
    for &recipe in &recipes {
        for &ratio in &ratios {
            let red = reducer.reduce(recipe, ratio)?.reduction;
            // Check of the blend: at t = 1 it is the reduced model.
            let reduced_ev = evaluate(&s5::with_reduced(model, &red.model)?, &set, None, false)?;
            let mut blend_miss = 0.0f64;
            for t in SCALES {
                let scaled = s5::with_reduced(model, &blend(&deep, &red.model, t)?)?;
                let ev = evaluate(&scaled, &set, None, false)?;
                let est = est_set.run(model, &scaled, None, &[], &[])?;
                let mut errs = Vec::new();
                let mut ests = Vec::new();
                let mut ratios_t = Vec::new();
                if t == 1.0 {
                    for (a, b) in ev.logits.iter().zip(&reduced_ev.logits) {
                        blend_miss = blend_miss.max(bench::sweep::logit_error(a, b));
                    }
                }
                for e in &est {
                    let i = e.position;
                    let err = bench::sweep::logit_error(&full_ev.logits[i], &ev.logits[i]);
                    errs.push(err);
                    ests.push(e.estimate);
                    if e.estimate > 0.0 {
                        ratios_t.push(err / e.estimate);
                    }
                }
                println!(
                    "| `{recipe}` {:.0} % | {t} | {:.3} | {:.3} | {:.2} |",
                    ratio * 100.0,
                    mean(errs),
                    mean(ests),
                    median(ratios_t)
                );
            }
            eprintln!(
                "{recipe} @ {ratio}: blend at t = 1 against the reduced model: largest logit difference {blend_miss:.2e}"
            );
            if blend_miss > 1e-3 {
                bail!(
                    "the blend at t = 1 is not the reduced model ({blend_miss:.2e} logits apart)"
                );
            }
        }
    }
    Ok(())
}

/// The model whose layer ℓ has the SSM `(1 − t) 𝒮_ℓ + t 𝒮̂_ℓ`: the full block's modes with
/// output matrices scaled by `1 − t` beside the reduced block's scaled by `t` (so `n + r` modes).
///
/// # Errors
/// Layer counts differ, or a block has a linear-quadratic output (S5's SSMs have none).
fn blend(full: &DeepSsm, reduced: &DeepSsm, t: f64) -> Result<DeepSsm> {
    if full.layers.len() != reduced.layers.len() {
        bail!(
            "{} layers in the full model, {} in the reduced one",
            full.layers.len(),
            reduced.layers.len()
        );
    }
    let mut out = reduced.clone();
    for (l, (f, r)) in out
        .layers
        .iter_mut()
        .zip(full.layers.iter().zip(&reduced.layers))
    {
        l.ssm = side_by_side(&f.ssm, &r.ssm, t)?;
    }
    Ok(out)
}

/// `(1 − t) a + t b` as one block: [`mor::gram::difference_block`] of `a` with `C̃` scaled by
/// `1 − t` and `b` with `C̃` scaled by `−t` (modes of both, `C̃ = [(1 − t) C̃_a, t C̃_b]`, the same
/// for `C̃_rev`).
fn side_by_side(a: &DiagBlock, b: &DiagBlock, t: f64) -> Result<DiagBlock> {
    if a.linear.is_some()
        || b.linear.is_some()
        || !a.quadratic.is_empty()
        || !b.quadratic.is_empty()
    {
        bail!("a block with a linear-quadratic output cannot be blended here");
    }
    if a.c_rev.is_some() != b.c_rev.is_some() {
        bail!("one block is bidirectional, the other is not");
    }
    let scaled = |x: &DiagBlock, k: f64| DiagBlock {
        c: &x.c * faer::Scale(c64::new(k, 0.0)),
        c_rev: x.c_rev.as_ref().map(|c| c * faer::Scale(c64::new(k, 0.0))),
        ..x.clone()
    };
    Ok(mor::gram::difference_block(
        &scaled(a, 1.0 - t),
        &scaled(b, -t),
    ))
}
