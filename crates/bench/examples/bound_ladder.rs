//! The ladder of output-error bounds and estimates (issue 31; the rungs of
//! `shared/notes/bound-and-refit-review.md` §3, measured in Rust): per review and reduction, from
//! the loosest certified form to the first-order estimate, each divided by the measured logit
//! error `‖logits − logits_r‖₂`. Reporting only: nothing here chooses anything.
//!
//! Rungs (certified unless marked):
//! - `a-priori`: [`mor::bound::BoundPrep::evaluate`] (input norms only);
//! - `full trajectory`: the sweep's `bound_*` columns, from the full model's measured activations
//!   (`evaluate_measured`);
//! - `+ recorded layer errors`: each reduced SSM run on the full model's recorded layer input
//!   (`evaluate_recorded` with `InjectedError`s);
//! - `+ reduced peaks`: boxes from both models' measured SSM-output peaks (needs the reduced
//!   model run too);
//! - `conservative estimate`: `Σ_ℓ ‖J_ℓ‖ ‖(𝒮_ℓ − 𝒮̂_ℓ)u_ℓ‖` (first order, not certified);
//! - `estimate`: `‖Σ_ℓ J_ℓ (𝒮_ℓ − 𝒮̂_ℓ)u_ℓ‖` (first order, not certified).
//!
//! ```text
//! cargo run --release -p bench --example bound_ladder -- [RECIPES] [RATIOS] [REVIEWS] [CHECKPOINT]
//! ```
//!
//! Recipes reduce exactly as the sweep does ([`bench::reducer::Reducer`] with its calibration
//! sets of training reviews). Defaults: `modal,h2`, ratios `0.6,0.9`, 16 test reviews (the
//! class-balanced sample of seed 0),
//! `results/imdb/model`. Prints a Markdown table of medians (and the range) over reviews, with the
//! layers whose box is the a-priori one in the full-trajectory and recorded forms (there the box
//! and the gate constant no longer depend on the reduction's error), and the per-layer factors
//! of the first review for the first method and ratio.

mod common;

use std::path::PathBuf;

use anyhow::{Result, bail};
use bench::estimate::{EstimateSet, median};
use bench::pipeline::{bound_inputs, evaluate};
use mor::bound::{InjectedError, prepare_bound};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let methods = common::recipes(args.get(1), "METHODS", "modal,h2")?;
    let ratios = common::ratios(args.get(2), &[0.6, 0.9])?;
    let n = common::count(args.get(3), "REVIEWS", 16)?;
    let ckpt = PathBuf::from(args.get(4).map_or("results/imdb/model", String::as_str));
    let s = common::setup(&ckpt)?;
    let model = &s.loaded.model;
    let set = common::test_sample(&s, n)?;
    let Some(est_set) = EstimateSet::new(&set, set.len(), 0, 8)? else {
        bail!("no reviews");
    };
    let inputs = bound_inputs(model, &set)?;
    let full_ev = evaluate(model, &set, None, true)?;
    let cal = common::calibration(&s.imdb, s.tok.as_ref())?;
    let mut reducer = common::sweep_reducer(&s, &cal)?;
    let deep = reducer.deep.clone();
    let horizon = set.max_len();
    let full_prep = prepare_bound(&deep, None, horizon)?;
    println!(
        "git {} · {} test reviews (seed 0, lengths {}–{}) · checkpoint {}\n",
        s.git_commit,
        set.len(),
        set.tokens.iter().map(Vec::len).min().unwrap_or(0),
        horizon,
        s.loaded.sha256
    );
    println!(
        "| reduction | error (median) | a-priori | full trajectory | + recorded layer errors | + reduced peaks | conservative estimate | estimate | layers at the a-priori box: full trajectory | … recorded |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|---|");
    let mut first = true;
    for &method in &methods {
        for &ratio in &ratios {
            let red = reducer.reduce(method, ratio)?.reduction;
            let rebuilt = s5::with_reduced(model, &red.model)?;
            let red_ev = evaluate(&rebuilt, &set, None, true)?;
            let prep = full_prep.with_reduced(&deep, &red.model)?;
            let est = est_set.run(model, &rebuilt, Some(&prep), &inputs, &full_ev.measured)?;
            // One entry per rung, per review: value / error.
            let mut rungs: Vec<Vec<f64>> = vec![Vec::new(); 6];
            let mut errs = Vec::new();
            // Per review, the layers whose box is the a-priori one (full trajectory; recorded).
            let mut capped: [Vec<String>; 2] = Default::default();
            for e in &est {
                let i = e.position;
                let err = bench::sweep::logit_error(&full_ev.logits[i], &red_ev.logits[i]);
                if err <= 0.0 {
                    continue;
                }
                errs.push(err);
                let m = &full_ev.measured[i];
                let peaks: Vec<f64> = red_ev.measured[i].iter().map(|x| x.y_peak).collect();
                let lin_inj: Vec<Option<InjectedError>> = rebuilt_injected(e);
                let (both, factors) = prep.evaluate_recorded(&inputs[i], m, &lin_inj, &peaks)?;
                let apriori = prep.evaluate(&inputs[i])?;
                let (measured, measured_factors) =
                    prep.evaluate_recorded(&inputs[i], m, &[], &[])?;
                let (_, recorded_factors) = prep.evaluate_recorded(&inputs[i], m, &lin_inj, &[])?;
                for (c, f) in capped
                    .iter_mut()
                    .zip([&measured_factors, &recorded_factors])
                {
                    c.push(at_apriori_box(f, &apriori.peak_bounds));
                }
                let values = [
                    apriori.bound,
                    measured.bound,
                    e.recorded_bound,
                    both.bound,
                    e.conservative,
                    e.estimate,
                ];
                for (r, v) in rungs.iter_mut().zip(values) {
                    r.push(v / err);
                }
                if first {
                    first = false;
                    eprintln!(
                        "per-layer factors, {method} @ {ratio}, review {i} (error {err:.3}), both trajectories:"
                    );
                    for (l, f) in factors.iter().enumerate() {
                        eprintln!(
                            "  layer {}: γ {:.3e} γ_in {:.3e} ε {:.3e} ε_peak {:.3e} Y {:.3e} Lg {:.3e} inj {:.3e} δ {:.3e} | ‖J‖ {:.3e} contribution {:.3e}",
                            l + 1,
                            f.ssm_gain,
                            f.ssm_gain_in,
                            f.error_gain,
                            f.error_peak_gain,
                            f.peak_bound,
                            f.gate_lipschitz,
                            f.injected,
                            f.delta,
                            e.sensitivity[l],
                            e.contribution[l]
                        );
                    }
                }
            }
            let cell = |v: &[f64]| {
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(0.0f64, f64::max);
                format!("{:.2e} ({:.1e}–{:.1e})", median(v.iter().copied()), lo, hi)
            };
            println!(
                "| `{method}` @ {:.0} % | {:.3} | {} | {} | {} | {} | {} | {} | {} | {} |",
                100.0 * ratio,
                median(errs.iter().copied()),
                cell(&rungs[0]),
                cell(&rungs[1]),
                cell(&rungs[2]),
                cell(&rungs[3]),
                cell(&rungs[4]),
                cell(&rungs[5]),
                most_common(&capped[0]),
                most_common(&capped[1])
            );
        }
    }
    Ok(())
}

/// The recorded layer errors of one review's estimate, as the bound takes them.
fn rebuilt_injected(e: &bench::estimate::ReviewEstimate) -> Vec<Option<InjectedError>> {
    e.error_l2
        .iter()
        .zip(&e.error_peak)
        .map(|(&l2, &peak)| Some(InjectedError { l2, peak }))
        .collect()
}

/// The layers (1-based) whose box `Y_ℓ` is the a-priori one, e.g. `2,3,4,5,6` (`-` for none):
/// there the a-posteriori box exceeded the cap, so the box no longer depends on the layer errors
/// (they still enter the recursion linearly).
fn at_apriori_box(factors: &[mor::bound::LayerFactors], apriori_peaks: &[f64]) -> String {
    let layers: Vec<String> = factors
        .iter()
        .zip(apriori_peaks)
        .enumerate()
        .filter(|(_, (f, cap))| f.peak_bound >= **cap)
        .map(|(l, _)| (l + 1).to_string())
        .collect();
    if layers.is_empty() {
        "-".into()
    } else {
        layers.join(",")
    }
}

/// The most frequent entry and how many of `v` have it, e.g. `2,3,4,5,6 (16/16)`.
fn most_common(v: &[String]) -> String {
    let mut best: Option<(&String, usize)> = None;
    for x in v {
        let c = v.iter().filter(|y| *y == x).count();
        if best.is_none_or(|(_, b)| c > b) {
            best = Some((x, c));
        }
    }
    best.map_or("-".into(), |(x, c)| format!("{x} ({c}/{})", v.len()))
}
