//! The gate's certified Lipschitz constant on per-position boxes against the global one, on the
//! reference model (issue 31, deliverable 1: "per-position gate-Jacobian bounds on certified
//! boxes, falling back to the crude constants where the boxes are large"). Reporting only:
//! nothing here chooses anything.
//!
//! Per review and layer, in f64: the full model's SSM output `y` and the reduced model's `ŷ` (each
//! on its own trajectory), the measured radius `R = ‖ŷ − y‖_∞`, and
//! - `global`: the bound's constant on the box `‖v‖_∞ ≤ max(‖y‖_∞, ‖ŷ‖_∞)` (the `+ reduced peaks`
//!   rung of `results/imdb/bound-ladder.md`), `1 + Y ‖W‖₂ · 1.13/4`;
//! - `box(r)`: `max_k` of [`mor::gate_box::GateBox::jacobian_bound`] on the boxes
//!   `|v − y_k|_∞ ≤ r` for a ladder of radii and at the measured `R` (a valid constant for the
//!   pair `y`, `ŷ` only at `r ≥ R`);
//! - `secant`: the measured `‖gate(ŷ) − gate(y)‖₂ / ‖ŷ − y‖₂` over the sequence.
//!
//! ```text
//! cargo run --release -p bench --example gate_boxes -- [RECIPE] [RATIO] [REVIEWS] [CHECKPOINT]
//! ```
//!
//! Defaults: `modal`, 0.6, 4 test reviews (the class-balanced sample of seed 0, as the ladder),
//! `results/imdb/model`. Prints a Markdown table of medians over reviews per layer.

mod common;

use std::path::PathBuf;

use anyhow::Result;
use bench::estimate::median;
use faer::{Mat, MatRef};
use mor::gate_box::GateBox;
use mor::recipe::Recipe;

const RADII: [f64; 6] = [0.0, 0.01, 0.1, 1.0, 3.0, 10.0];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let recipe: Recipe = args
        .get(1)
        .map_or("modal", String::as_str)
        .parse()
        .map_err(|e: mor::Error| anyhow::anyhow!("RECIPE: {e}"))?;
    let ratio = common::ratios(args.get(2), &[0.6])?[0];
    let n = common::count(args.get(3), "REVIEWS", 4)?;
    let ckpt = PathBuf::from(args.get(4).map_or("results/imdb/model", String::as_str));
    let s = common::setup(&ckpt)?;
    let model = &s.loaded.model;
    let set = common::test_sample(&s, n)?;
    let cal = common::calibration(&s.imdb, s.tok.as_ref())?;
    let mut reducer = common::sweep_reducer(&s, &cal)?;
    let deep = reducer.deep.clone();
    let red = reducer.reduce(recipe, ratio)?.reduction;
    let rebuilt = s5::with_reduced(model, &red.model)?;
    let boxes: Vec<GateBox> = deep
        .layers
        .iter()
        .map(|l| GateBox::new(&l.gate))
        .collect::<mor::Result<_>>()?;
    let wnorms: Vec<f64> = deep
        .layers
        .iter()
        .map(|l| match &l.gate {
            mor::Gate::HalfGlu2 { w, .. } | mor::Gate::Quadratic { w, .. } => w
                .singular_values()
                .map(|s| s.iter().fold(0.0f64, |a, &v| a.max(v)))
                .unwrap_or(f64::NAN),
            mor::Gate::Identity => 0.0,
        })
        .collect();
    let nl = deep.layers.len();
    // Per layer, per review: [Y, Ŷ, R, global, box(RADII..), box(R), secant].
    let mut rows: Vec<Vec<Vec<f64>>> = vec![Vec::new(); nl];
    for tokens in &set.tokens {
        let len = tokens.len();
        let (u_full, u_red) = (model.ssm_inputs(tokens)?, rebuilt.ssm_inputs(tokens)?);
        for l in 0..nl {
            let h = u_full[l].len() / len;
            let y = mor::refit::ssm_output(
                &deep.layers[l].ssm,
                MatRef::from_row_major_slice(&u_full[l], len, h),
            )?;
            let yr = mor::refit::ssm_output(
                &red.model.layers[l].ssm,
                MatRef::from_row_major_slice(&u_red[l], len, h),
            )?;
            let peak = |m: &Mat<f64>| {
                (0..m.nrows())
                    .flat_map(|k| (0..m.ncols()).map(move |c| (k, c)))
                    .fold(0.0f64, |a, (k, c)| a.max(m[(k, c)].abs()))
            };
            let diff = &yr - &y;
            let (py, pr, r) = (peak(&y), peak(&yr), peak(&diff));
            let global = 1.0 + py.max(pr) * wnorms[l] * mor::bound::GELU_TANH_DERIV_MAX / 4.0;
            let mut radii = RADII.to_vec();
            radii.push(r);
            let profile = boxes[l].lipschitz_profile(y.as_ref(), &radii);
            let gate = &deep.layers[l].gate;
            let dg = &gate.output(yr.as_ref()) - &gate.output(y.as_ref());
            let secant = dg.norm_l2() / diff.norm_l2();
            let mut row = vec![py, pr, r, global];
            row.extend(profile);
            row.push(secant);
            rows[l].push(row);
        }
    }
    println!(
        "git {} · `{recipe}` @ {:.0} % · {} test reviews (seed 0) · checkpoint {}\n",
        s.git_commit,
        100.0 * ratio,
        set.len(),
        s.loaded.sha256
    );
    let radii_head: Vec<String> = RADII.iter().map(|r| format!("box({r})")).collect();
    println!(
        "| layer | ‖y‖∞ | ‖ŷ‖∞ | R = ‖ŷ − y‖∞ | global | {} | box(R) | secant |",
        radii_head.join(" | ")
    );
    println!("|---:|{}", "---:|".repeat(6 + RADII.len()));
    for (l, per_review) in rows.iter().enumerate() {
        let cols = per_review[0].len();
        let cells: Vec<String> = (0..cols)
            .map(|c| format!("{:.3}", median(per_review.iter().map(|row| row[c]))))
            .collect();
        println!("| {} | {} |", l + 1, cells.join(" | "));
    }
    Ok(())
}
