//! The sweep: the full model, then every method × ratio, one row each, resumable.
//!
//! The model-specific work (reduce, rebuild, evaluate, bound) is behind [`SweepBackend`]; this
//! module owns what every backend shares: the order of points, skipping rows already in the CSV,
//! the measured output error against the full model, whether the bound held, the parameter
//! reduction, and writing each row at once.

use crate::estimate::{self, ReviewEstimate, RowFactors, median, upsert_factors};
use crate::results::{FULL, KeptModes, ResultsStore, Row, same_ratio};
use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use std::time::Instant;

/// Relative slack when checking `error ≤ bound` (floating-point noise of the two computations).
pub const BOUND_SLACK: f64 = 1e-6;

/// One evaluated model, as a backend reports it.
#[derive(Clone, Debug)]
pub struct Point {
    /// Complex modes kept in each layer.
    pub kept_per_layer: Vec<usize>,
    /// Trainable parameters of the SSM blocks.
    pub ssm_params: usize,
    /// All trainable parameters.
    pub total_params: usize,
    /// Fraction of correct predictions over the evaluated reviews (NaN if logits not finite).
    pub accuracy: f64,
    /// Logits of each evaluated review, `[n_eval][classes]`, in the evaluation set's order.
    pub logits: Vec<Vec<f64>>,
    /// The a-priori output-error bound for each evaluated review, `[n_eval]` (empty for the
    /// full model).
    pub bounds: Vec<f64>,
    /// Whether every mode has `|λ̄| < 1`.
    pub stable: bool,
    /// Wall seconds of reduction and rebuild.
    pub reduce_seconds: f64,
    /// Wall seconds of evaluation.
    pub eval_seconds: f64,
    /// Inference throughput on one fixed synthetic batch (tokens/s; NaN if not measured).
    pub infer_tokens_per_s: f64,
    /// First-order estimates on the estimate subset (empty if none).
    pub estimates: Vec<ReviewEstimate>,
    /// Per-layer bound factors and sensitivities (`bound_factors.json`); `None` for the full
    /// model or when the bound was not available.
    pub factors: Option<RowFactors>,
}

/// What a sweep needs from the model side.
pub trait SweepBackend {
    /// Evaluates the unreduced model.
    fn full(&mut self) -> Result<Point>;
    /// Reduces the model by `method` removing the fraction `ratio` of SSM modes, rebuilds it and
    /// evaluates it (with the bound per review).
    fn reduced(&mut self, method: &str, ratio: f64) -> Result<Point>;
}

/// Output (logit) error of one review: the Euclidean norm of the logit difference, the norm the
/// output-error bound is stated in.
pub fn logit_error(full: &[f64], reduced: &[f64]) -> f64 {
    full.iter()
        .zip(reduced)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        .sqrt()
}

/// Mean and max logit error over reviews, and whether `error_i ≤ bound_i` for every review
/// (with [`BOUND_SLACK`]). Non-finite errors give NaN statistics and `holds = false`.
pub fn error_stats(full: &[Vec<f64>], reduced: &[Vec<f64>], bounds: &[f64]) -> (f64, f64, bool) {
    if full.is_empty() {
        return (0.0, 0.0, true);
    }
    let errs: Vec<f64> = full
        .iter()
        .zip(reduced)
        .map(|(a, b)| logit_error(a, b))
        .collect();
    let mean = errs.iter().sum::<f64>() / errs.len() as f64;
    let max = errs.iter().copied().fold(0.0, |m: f64, e| {
        if e.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.max(e)
        }
    });
    let holds = bounds.len() == errs.len()
        && errs
            .iter()
            .zip(bounds)
            .all(|(e, b)| e.is_finite() && *e <= b * (1.0 + BOUND_SLACK) + 1e-12);
    (mean, max, holds)
}

/// The `results.csv` row of the full model's point (no error against itself, no bound).
pub fn full_row(full: &Point) -> Row {
    Row {
        method: FULL.into(),
        ratio: 0.0,
        kept_modes: full.kept_per_layer.iter().sum(),
        ssm_params: full.ssm_params,
        total_params: full.total_params,
        param_reduction: 0.0,
        ssm_param_reduction: 0.0,
        accuracy: full.accuracy,
        n_eval: full.logits.len(),
        logit_err_mean: 0.0,
        logit_err_max: 0.0,
        bound_max: 0.0,
        bound_holds: true,
        stable: full.stable,
        reduce_seconds: 0.0,
        eval_seconds: full.eval_seconds,
        infer_tokens_per_s: full.infer_tokens_per_s,
        bound_median: f64::NAN,
        bound_over_error_median: f64::NAN,
        estimate_reviews: 0,
        estimate_mean: f64::NAN,
        estimate_conservative_mean: f64::NAN,
        estimate_over_error_median: f64::NAN,
    }
}

/// The `results.csv` row of the reduced point `p` of (`method`, `ratio`): its logit errors
/// against the full model's logits ([`error_stats`]), the largest bound (NaN if any review's
/// bound is NaN), and its parameter reductions relative to `full`.
///
/// # Errors
/// When `p` and `full` were evaluated on different numbers of reviews.
pub fn reduced_row(full: &Point, p: &Point, method: &str, ratio: f64) -> Result<Row> {
    if p.logits.len() != full.logits.len() {
        bail!(
            "method {method}, ratio {ratio}: {} reviews evaluated, the full model had {}",
            p.logits.len(),
            full.logits.len()
        );
    }
    let (mean, max, holds) = error_stats(&full.logits, &p.logits, &p.bounds);
    let bound_max = if p.bounds.iter().any(|b| b.is_nan()) {
        f64::NAN
    } else {
        p.bounds.iter().copied().fold(0.0, f64::max)
    };
    let errs: Vec<f64> = full
        .logits
        .iter()
        .zip(&p.logits)
        .map(|(a, b)| logit_error(a, b))
        .collect();
    let nan_free = |v: &[f64]| !v.is_empty() && v.iter().all(|x| !x.is_nan());
    let (bound_median, bound_over_error_median) = if nan_free(&p.bounds) {
        (
            median(p.bounds.iter().copied()),
            median(
                errs.iter()
                    .zip(&p.bounds)
                    .filter(|(e, _)| **e > 0.0)
                    .map(|(e, b)| b / e),
            ),
        )
    } else {
        (f64::NAN, f64::NAN)
    };
    let est = &p.estimates;
    let estimate_over_error_median = median(
        est.iter()
            .filter_map(|e| errs.get(e.position).map(|&err| (e, err)))
            .filter(|(_, err)| *err > 0.0)
            .map(|(e, err)| e.estimate / err),
    );
    Ok(Row {
        method: method.to_string(),
        ratio,
        kept_modes: p.kept_per_layer.iter().sum(),
        ssm_params: p.ssm_params,
        total_params: p.total_params,
        param_reduction: 1.0 - p.total_params as f64 / full.total_params as f64,
        ssm_param_reduction: 1.0 - p.ssm_params as f64 / full.ssm_params as f64,
        accuracy: p.accuracy,
        n_eval: p.logits.len(),
        logit_err_mean: mean,
        logit_err_max: max,
        bound_max,
        bound_holds: holds,
        stable: p.stable,
        reduce_seconds: p.reduce_seconds,
        eval_seconds: p.eval_seconds,
        infer_tokens_per_s: p.infer_tokens_per_s,
        bound_median,
        bound_over_error_median,
        estimate_reviews: est.len(),
        estimate_mean: estimate::mean(est.iter().map(|e| e.estimate)),
        estimate_conservative_mean: estimate::mean(est.iter().map(|e| e.conservative)),
        estimate_over_error_median,
    })
}

/// Options of a sweep run.
#[derive(Clone, Debug, Default)]
pub struct SweepOptions {
    /// Stop (with an error) after writing this many new rows — for testing kill/restart.
    pub stop_after_rows: Option<usize>,
    /// Progress bar over points (its length is set here); `None` draws nothing.
    pub bar: Option<ProgressBar>,
}

/// How a sweep ended.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepSummary {
    /// Rows computed in this run.
    pub written: usize,
    /// Rows that were already in the CSV and were skipped.
    pub skipped: usize,
    /// Whether the sweep stopped early because of `stop_after_rows`.
    pub stopped_early: bool,
}

/// Runs the sweep: the full model (always evaluated, since its logits are the reference of every
/// error; its row is written if missing), then each (method, ratio) whose row is missing.
pub fn run_sweep(
    store: &ResultsStore,
    backend: &mut dyn SweepBackend,
    methods: &[String],
    ratios: &[f64],
    opts: &SweepOptions,
) -> Result<SweepSummary> {
    let existing = store.rows()?;
    let todo: Vec<(String, f64)> = methods
        .iter()
        .flat_map(|m| ratios.iter().map(move |&r| (m.clone(), r)))
        .filter(|(m, r)| !existing.iter().any(|row| row.has_key(m, *r)))
        .collect();
    let n_points = methods.len() * ratios.len();
    let skipped = n_points - todo.len();
    let has_full = existing.iter().any(|r| r.method == FULL);

    let full = backend.full().context("evaluating the full model")?;
    if !full.accuracy.is_finite() {
        bail!("the full model's logits are not finite: the checkpoint is damaged; retrain it");
    }
    let full_row = full_row(&full);
    if let Some(old) = existing.iter().find(|r| r.method == FULL)
        && (old.n_eval != full_row.n_eval || old.total_params != full_row.total_params)
    {
        bail!(
            "{} was made with another model or evaluation set (full model: {} params on {} \
             reviews there, {} on {} now); move it away or change `name`",
            store.results.display(),
            old.total_params,
            old.n_eval,
            full_row.total_params,
            full_row.n_eval
        );
    }
    let mut written = 0;
    if !has_full {
        store.upsert(&full_row, &KeptModes::new(FULL, 0.0, &full.kept_per_layer))?;
        written += 1;
    }

    let pb = opts.bar.clone().unwrap_or_else(ProgressBar::hidden);
    pb.set_length(n_points as u64);
    pb.set_position(skipped as u64);
    pb.reset_eta();

    let mut failures: Vec<String> = Vec::new();
    for (method, ratio) in todo {
        if opts.stop_after_rows.is_some_and(|n| written >= n) {
            pb.abandon();
            return Ok(SweepSummary {
                written,
                skipped,
                stopped_early: true,
            });
        }
        pb.set_message(format!("{method} @ {ratio}"));
        let t0 = Instant::now();
        let p = match backend.reduced(&method, ratio) {
            Ok(p) => p,
            Err(e) => {
                // Keep going: the other points are independent; report all failures at the end.
                let msg = format!("{method} @ {ratio}: {e:#}");
                pb.println(format!("failed: {msg}"));
                tracing::warn!("{msg}");
                failures.push(msg);
                pb.inc(1);
                continue;
            }
        };
        let row = reduced_row(&full, &p, &method, ratio)?;
        if let (Some(f), Some(dir)) = (&p.factors, store.results.parent()) {
            upsert_factors(dir, f)?;
        }
        store.upsert(&row, &KeptModes::new(&method, ratio, &p.kept_per_layer))?;
        written += 1;
        pb.inc(1);
        tracing::debug!(%method, ratio, secs = t0.elapsed().as_secs_f64(), "point done");
    }
    pb.finish_and_clear();
    if !failures.is_empty() {
        bail!(
            "{} of {} points failed (the {} rows written are kept; rerun to retry the rest):\n  {}",
            failures.len(),
            n_points,
            written,
            failures.join("\n  ")
        );
    }
    Ok(SweepSummary {
        written,
        skipped,
        stopped_early: false,
    })
}

/// The summary table printed at the end of a run: one line per row.
pub fn summary_table(rows: &[Row]) -> String {
    let mut s = format!(
        "{:<13} {:>5} {:>6} {:>9} {:>7} {:>8} {:>10} {:>10} {:>6} {:>6}\n",
        "method",
        "ratio",
        "modes",
        "params",
        "p.red%",
        "acc%",
        "err_max",
        "bound_max",
        "holds",
        "stable"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<13} {:>5.2} {:>6} {:>9} {:>7.1} {:>8.2} {:>10.3e} {:>10.3e} {:>6} {:>6}\n",
            r.method,
            r.ratio,
            r.kept_modes,
            r.total_params,
            r.param_reduction * 100.0,
            r.accuracy * 100.0,
            r.logit_err_max,
            r.bound_max,
            r.bound_holds,
            r.stable
        ));
    }
    s
}

/// `summary.md`: accuracy (%) per method (rows) and ratio (columns) as a Markdown table, with
/// the parameter reduction of each ratio, the full model's accuracy and its standard error
/// `sqrt(a (1 − a) / n)` (binomial, `n` evaluated reviews); then the same table of the mean
/// logit error against the full model. Empty cells: rows not (yet) in the CSV; `NaN`:
/// non-finite logits (an unstable reduction).
pub fn markdown_summary(rows: &[Row]) -> String {
    let mut ratios: Vec<f64> = rows
        .iter()
        .filter(|r| r.method != FULL)
        .map(|r| r.ratio)
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios.dedup_by(|a, b| same_ratio(*a, *b));
    let mut methods: Vec<&str> = Vec::new();
    for r in rows.iter().filter(|r| r.method != FULL) {
        if !methods.contains(&r.method.as_str()) {
            methods.push(&r.method);
        }
    }
    let mut s = String::new();
    if let Some(f) = rows.iter().find(|r| r.method == FULL) {
        let se = crate::subset::accuracy_std_error(f.accuracy, f.n_eval);
        s.push_str(&format!(
            "Full model: {:.2} % ± {:.2} (standard error) on {} test reviews, {} trainable \
             parameters ({} in the SSMs).\n\n",
            f.accuracy * 100.0,
            se * 100.0,
            f.n_eval,
            f.total_params,
            f.ssm_params
        ));
    }
    // Column header and alignment row of both tables.
    let header = |s: &mut String| {
        s.push_str("| method |");
        for r in &ratios {
            s.push_str(&format!(" {:.0} % of modes removed |", r * 100.0));
        }
        s.push_str("\n|---|");
        s.push_str(&"---:|".repeat(ratios.len()));
    };
    header(&mut s);
    s.push_str("\n| *parameters removed* |");
    for &ratio in &ratios {
        match rows
            .iter()
            .find(|r| r.method != FULL && same_ratio(r.ratio, ratio))
        {
            Some(r) => s.push_str(&format!(" *{:.1} %* |", r.param_reduction * 100.0)),
            None => s.push_str(" |"),
        }
    }
    s.push('\n');
    let table = |s: &mut String, cell: &dyn Fn(&Row) -> String| {
        for m in &methods {
            s.push_str(&format!("| {m} |"));
            for &ratio in &ratios {
                match rows.iter().find(|r| r.has_key(m, ratio)) {
                    Some(r) => s.push_str(&format!(" {} |", cell(r))),
                    None => s.push_str(" |"),
                }
            }
            s.push('\n');
        }
    };
    table(&mut s, &|r| format!("{:.2}", r.accuracy * 100.0));
    // The logit error is measured on the same reviews for every method, so it ranks methods
    // without the sampling noise of the accuracy.
    s.push_str("\nMean logit error against the full model (2-norm, logit units):\n\n");
    header(&mut s);
    s.push('\n');
    table(&mut s, &|r| format!("{:.3}", r.logit_err_mean));
    s.push_str(&calibration_summary(rows));
    s
}

/// Spearman's rank correlation of two equally long samples (average ranks for ties); NaN for
/// fewer than 3 pairs or a constant sample.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    fn ranks(v: &[f64]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
                j += 1;
            }
            for &k in &idx[i..=j] {
                r[k] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        r
    }
    if a.len() != b.len() || a.len() < 3 {
        return f64::NAN;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        return f64::NAN;
    }
    cov / (va * vb).sqrt()
}

/// The section of `summary.md` on the certified bound and the first-order estimate, over the
/// rows that have them (issue 31's criteria): whether the bound held everywhere, the median over
/// rows of `bound_over_error_median`, the share of rows whose `estimate_over_error_median` lies
/// in [1/3, 3], and Spearman's correlation across rows of `bound_median` and of
/// `estimate_mean` with `logit_err_mean`, the latter also on the rows within
/// [`ESTIMATE_STRATA_POINTS`] of the full model's accuracy. Empty when no row has the columns.
pub fn calibration_summary(rows: &[Row]) -> String {
    let with_bound: Vec<&Row> = rows
        .iter()
        .filter(|r| r.method != FULL && r.bound_median.is_finite())
        .collect();
    let with_est: Vec<&Row> = rows
        .iter()
        .filter(|r| r.method != FULL && r.estimate_mean.is_finite())
        .collect();
    // A bound that overflows to infinity holds vacuously: such rows are counted, not hidden.
    let infinite_median = rows
        .iter()
        .filter(|r| r.method != FULL && r.bound_median == f64::INFINITY)
        .count();
    if with_bound.is_empty() && with_est.is_empty() && infinite_median == 0 {
        return String::new();
    }
    let mut s =
        String::from("\nOutput-error bound and first-order estimate (rows that have them):\n\n");
    if !with_bound.is_empty() {
        let err: Vec<f64> = with_bound.iter().map(|r| r.logit_err_mean).collect();
        let bm: Vec<f64> = with_bound.iter().map(|r| r.bound_median).collect();
        let infinite_somewhere = with_bound
            .iter()
            .filter(|r| r.bound_max == f64::INFINITY)
            .count();
        let vacuous = if infinite_somewhere > 0 {
            format!(
                " (on {infinite_somewhere} of them it overflowed to infinity on some review, \
                 where it holds vacuously)"
            )
        } else {
            String::new()
        };
        s.push_str(&format!(
            "- certified bound ({} rows): held on every review of {} rows{vacuous}; median over \
             rows of `bound_over_error_median` {:.2e}; Spearman(`bound_median`, \
             `logit_err_mean`) {:.3}\n",
            with_bound.len(),
            with_bound.iter().filter(|r| r.bound_holds).count(),
            crate::estimate::median(with_bound.iter().map(|r| r.bound_over_error_median)),
            spearman(&bm, &err)
        ));
    }
    if infinite_median > 0 {
        s.push_str(&format!(
            "- certified bound infinite (overflowed) on at least half the reviews, left out \
             above: {infinite_median} rows\n"
        ));
    }
    if !with_est.is_empty() {
        let err: Vec<f64> = with_est.iter().map(|r| r.logit_err_mean).collect();
        let em: Vec<f64> = with_est.iter().map(|r| r.estimate_mean).collect();
        let within = with_est
            .iter()
            .filter(|r| (1.0 / 3.0..=3.0).contains(&r.estimate_over_error_median))
            .count();
        s.push_str(&format!(
            "- first-order estimate ({} rows, not a bound): `estimate_over_error_median` in \
             [1/3, 3] on {} rows ({:.0} %), range {:.2}–{:.2}; Spearman(`estimate_mean`, \
             `logit_err_mean`) {:.3}\n",
            with_est.len(),
            within,
            100.0 * within as f64 / with_est.len() as f64,
            with_est
                .iter()
                .map(|r| r.estimate_over_error_median)
                .fold(f64::INFINITY, f64::min),
            with_est
                .iter()
                .map(|r| r.estimate_over_error_median)
                .fold(0.0f64, f64::max),
            spearman(&em, &err)
        ));
        // The estimate is first order: it cannot follow the logit error where a reduction has
        // collapsed the model (the error saturates near the size of the logits), so the
        // correlation is also given on the rows that kept the model's accuracy.
        let full_acc = rows.iter().find(|r| r.method == FULL).map(|r| r.accuracy);
        let mut previous = 0;
        for points in ESTIMATE_STRATA_POINTS {
            let Some(full_acc) = full_acc else { break };
            let kept: Vec<&&Row> = with_est
                .iter()
                .filter(|r| r.accuracy >= full_acc - points / 100.0)
                .collect();
            // Nested strata: a wider one with no more rows says nothing new.
            if kept.len() < 3 || kept.len() == previous || kept.len() == with_est.len() {
                continue;
            }
            previous = kept.len();
            let err: Vec<f64> = kept.iter().map(|r| r.logit_err_mean).collect();
            let em: Vec<f64> = kept.iter().map(|r| r.estimate_mean).collect();
            let ec: Vec<f64> = kept.iter().map(|r| r.estimate_conservative_mean).collect();
            s.push_str(&format!(
                "  - on the {} rows within {points} points of the full model's accuracy: \
                 Spearman(`estimate_mean`, `logit_err_mean`) {:.3} (conservative form {:.3})\n",
                kept.len(),
                spearman(&em, &err),
                spearman(&ec, &err)
            ));
        }
    }
    s
}

/// Accuracy margins (points below the full model) of the rows on which [`calibration_summary`]
/// also reports the estimate's rank correlation.
pub const ESTIMATE_STRATA_POINTS: [f64; 2] = [5.0, 10.0];

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic fake model: the reduction perturbs the logits by `ratio / 10` and the
    /// bound is twice that.
    struct Fake {
        calls: Vec<(String, f64)>,
    }

    fn logits(n: usize, shift: f64) -> Vec<Vec<f64>> {
        (0..n)
            .map(|i| vec![i as f64 * 0.1 + shift, -(i as f64) * 0.1])
            .collect()
    }

    impl SweepBackend for Fake {
        fn full(&mut self) -> Result<Point> {
            Ok(Point {
                kept_per_layer: vec![8, 8],
                ssm_params: 100,
                total_params: 1000,
                accuracy: 0.9,
                logits: logits(10, 0.0),
                bounds: vec![],
                stable: true,
                reduce_seconds: 0.0,
                eval_seconds: 0.1,
                infer_tokens_per_s: f64::NAN,
                estimates: vec![],
                factors: None,
            })
        }
        fn reduced(&mut self, method: &str, ratio: f64) -> Result<Point> {
            self.calls.push((method.to_string(), ratio));
            let k = ((1.0 - ratio) * 8.0).round() as usize;
            Ok(Point {
                kept_per_layer: vec![k, k],
                ssm_params: 100 - 10 * (8 - k),
                total_params: 1000 - 10 * (8 - k),
                accuracy: 0.9 - ratio / 10.0,
                logits: logits(10, ratio / 10.0),
                bounds: vec![ratio / 5.0; 10],
                stable: method != "tlh2",
                reduce_seconds: 0.01,
                eval_seconds: 0.01,
                infer_tokens_per_s: f64::NAN,
                estimates: vec![],
                factors: None,
            })
        }
    }

    /// Fails for one method; the others must still be written, and the error must name it.
    struct Flaky(Fake);

    impl SweepBackend for Flaky {
        fn full(&mut self) -> Result<Point> {
            self.0.full()
        }
        fn reduced(&mut self, method: &str, ratio: f64) -> Result<Point> {
            if method == "bt" {
                bail!("decomposition failed");
            }
            self.0.reduced(method, ratio)
        }
    }

    #[test]
    fn a_failing_point_does_not_lose_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResultsStore::new(dir.path());
        let methods: Vec<String> = ["modal", "bt", "h2"].map(String::from).to_vec();
        let mut b = Flaky(Fake { calls: vec![] });
        let err = run_sweep(&store, &mut b, &methods, &[0.5], &SweepOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bt @ 0.5") && err.contains("decomposition failed"),
            "{err}"
        );
        let rows = store.rows().unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().any(|r| r.has_key("h2", 0.5)));
        assert!(!rows.iter().any(|r| r.method == "bt"));
    }

    #[test]
    fn markdown_summary_has_every_cell() {
        let row = |m: &str, ratio: f64, acc: f64, red: f64| Row {
            method: m.into(),
            ratio,
            kept_modes: 1,
            ssm_params: 10,
            total_params: 100,
            param_reduction: red,
            ssm_param_reduction: red,
            accuracy: acc,
            n_eval: 400,
            logit_err_mean: red / 10.0,
            logit_err_max: 0.0,
            bound_max: 1.0,
            bound_holds: true,
            stable: true,
            reduce_seconds: 0.0,
            eval_seconds: 0.0,
            infer_tokens_per_s: 1.0,
            bound_median: f64::NAN,
            bound_over_error_median: f64::NAN,
            estimate_reviews: 0,
            estimate_mean: f64::NAN,
            estimate_conservative_mean: f64::NAN,
            estimate_over_error_median: f64::NAN,
        };
        let rows = vec![
            row(FULL, 0.0, 0.5, 0.0),
            row("bt", 0.5, 0.75, 0.25),
            row("bt", 0.9, 0.625, 0.45),
            row("modal", 0.9, f64::NAN, 0.45),
        ];
        let md = markdown_summary(&rows);
        let lines: Vec<&str> = md.lines().collect();
        assert!(lines[0].contains("50.00 % ± 2.50"), "{md}");
        assert!(
            md.contains("| method | 50 % of modes removed | 90 % of modes removed |"),
            "{md}"
        );
        assert!(
            md.contains("| *parameters removed* | *25.0 %* | *45.0 %* |"),
            "{md}"
        );
        assert!(md.contains("| bt | 75.00 | 62.50 |"), "{md}");
        // A missing row leaves an empty cell; NaN accuracy is shown, not hidden.
        assert!(md.contains("| modal | | NaN |"), "{md}");
        assert!(md.contains("| bt | 0.025 | 0.045 |"), "{md}");
    }

    #[test]
    fn estimate_columns_pair_each_estimate_with_its_review() {
        let mut fake = Fake { calls: vec![] };
        let full = fake.full().unwrap();
        let mut p = fake.reduced("modal", 0.5).unwrap();
        // Review 2's error is 0 (excluded from the ratio), the others 0.05.
        p.logits[2] = full.logits[2].clone();
        let est = |position: usize, estimate: f64| ReviewEstimate {
            position,
            estimate,
            conservative: 2.0 * estimate,
            recorded_bound: f64::NAN,
            sensitivity: vec![],
            contribution: vec![],
            error_l2: vec![],
            error_peak: vec![],
        };
        p.estimates = vec![est(1, 0.1), est(2, 0.3), est(7, 0.025)];
        let r = reduced_row(&full, &p, "modal", 0.5).unwrap();
        assert_eq!(r.estimate_reviews, 3);
        assert!((r.estimate_mean - 0.425 / 3.0).abs() < 1e-12);
        assert!((r.estimate_conservative_mean - 0.85 / 3.0).abs() < 1e-12);
        // Ratios 2.0 and 0.5 (review 2 has no error): median 1.25.
        assert!((r.estimate_over_error_median - 1.25).abs() < 1e-9);
        // The bound ratio also skips the error-free review: 9 ratios of 2.0.
        assert!((r.bound_over_error_median - 2.0).abs() < 1e-9);
    }

    #[test]
    fn calibration_summary_reports_the_estimate_on_rows_that_kept_the_accuracy() {
        let at = |method: &str, acc: f64, err: f64, est: f64| {
            let mut r = crate::results::tests::row(method, 0.5);
            (r.accuracy, r.logit_err_mean, r.estimate_mean) = (acc, err, est);
            r.estimate_conservative_mean = 2.0 * est;
            r
        };
        let mut rows = vec![at(FULL, 0.85, 0.0, f64::NAN)];
        // Four rows within 5 points, ranked alike by error and estimate; two collapsed rows
        // whose saturated errors the estimate ranks the other way round.
        for (i, acc) in [0.84, 0.83, 0.82, 0.81].into_iter().enumerate() {
            rows.push(at("modal", acc, 1.0 + i as f64, 1.1 + i as f64));
        }
        rows.push(at("bt", 0.52, 10.0, 30.0));
        rows.push(at("last", 0.50, 10.1, 20.0));
        let s = calibration_summary(&rows);
        assert!(
            s.contains(
                "on the 4 rows within 5 points of the full model's accuracy: \
                        Spearman(`estimate_mean`, `logit_err_mean`) 1.000 (conservative form 1.000)"
            ),
            "{s}"
        );
        assert!(!s.contains("within 10 points"), "{s}");
        let all = spearman(
            &[1.1, 2.1, 3.1, 4.1, 30.0, 20.0],
            &[1.0, 2.0, 3.0, 4.0, 10.0, 10.1],
        );
        assert!(
            all < 0.95 && s.contains(&format!("`logit_err_mean`) {all:.3}\n")),
            "{s}"
        );
    }

    #[test]
    fn calibration_summary_counts_rows_where_the_bound_overflowed() {
        let at = |method: &str, median: f64, max: f64| {
            let mut r = crate::results::tests::row(method, 0.5);
            (r.bound_median, r.bound_max, r.bound_over_error_median) = (median, max, median);
            (r.logit_err_mean, r.bound_holds) = (1.0, true);
            r
        };
        let rows = vec![
            at(FULL, f64::NAN, 0.0),
            at("modal", 1e10, 1e12),
            at("bt", 1e11, f64::INFINITY),
            at("last", f64::INFINITY, f64::INFINITY),
        ];
        let s = calibration_summary(&rows);
        assert!(
            s.contains(
                "certified bound (2 rows): held on every review of 2 rows (on 1 of them it \
                 overflowed to infinity on some review, where it holds vacuously)"
            ),
            "{s}"
        );
        assert!(s.contains("left out above: 1 rows"), "{s}");
        // Without overflow the line says nothing about it.
        let s = calibration_summary(&rows[..2]);
        assert!(
            s.contains("held on every review of 1 rows;") && !s.contains("infin"),
            "{s}"
        );
    }

    #[test]
    fn spearman_matches_hand_computed_ranks() {
        // Monotone transforms keep the rank correlation.
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let b = [1e1, 1e3, 1e2, 1e5, 1e4];
        // d = (0, 1, -1, 1, -1): 1 − 6·4 / (5·24) = 0.8.
        assert!((spearman(&a, &b) - 0.8).abs() < 1e-12);
        assert!((spearman(&a, &a.map(|x: f64| x.exp())) - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &a.map(|x| -x)) + 1.0).abs() < 1e-12);
        // Ties get average ranks.
        let t = spearman(&[1.0, 1.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]);
        assert!((t - 0.9486832980505138).abs() < 1e-12, "{t}");
        assert!(spearman(&[1.0, 2.0], &[1.0, 2.0]).is_nan());
        assert!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_nan());
    }

    #[test]
    fn error_stats_closed_form() {
        let full = vec![vec![0.0, 0.0], vec![1.0, 1.0]];
        let red = vec![vec![3.0, 4.0], vec![1.0, 1.0]];
        let (mean, max, holds) = error_stats(&full, &red, &[5.0, 0.0]);
        assert_eq!((mean, max, holds), (2.5, 5.0, true));
        let (_, _, holds) = error_stats(&full, &red, &[4.9, 1.0]);
        assert!(!holds);
        let red_nan = vec![vec![f64::NAN, 0.0], vec![1.0, 1.0]];
        let (mean, max, holds) = error_stats(&full, &red_nan, &[1e9, 1e9]);
        assert!(mean.is_nan() && max.is_nan() && !holds);
    }

    #[test]
    fn interrupted_sweep_resumes_without_duplicates_or_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResultsStore::new(dir.path());
        let methods: Vec<String> = ["modal", "bt", "tlh2"].map(String::from).to_vec();
        let ratios = [0.25, 0.5, 0.75];
        let mut fake = Fake { calls: vec![] };
        let stop = SweepOptions {
            stop_after_rows: Some(4),
            bar: None,
        };
        let s1 = run_sweep(&store, &mut fake, &methods, &ratios, &stop).unwrap();
        assert!(s1.stopped_early);
        assert_eq!(s1.written, 4); // full + 3 points
        assert_eq!(store.rows().unwrap().len(), 4);
        let s2 = run_sweep(
            &store,
            &mut fake,
            &methods,
            &ratios,
            &SweepOptions::default(),
        )
        .unwrap();
        assert_eq!((s2.written, s2.skipped, s2.stopped_early), (6, 3, false));
        // every point computed exactly once over both runs
        assert_eq!(fake.calls.len(), 9);
        let rows = store.rows().unwrap();
        assert_eq!(rows.len(), 10);
        assert_eq!(rows[0].method, FULL);
        for m in &methods {
            for r in ratios {
                assert_eq!(
                    rows.iter().filter(|x| x.has_key(m, r)).count(),
                    1,
                    "{m} {r}"
                );
            }
        }
        let r = rows.iter().find(|x| x.has_key("bt", 0.5)).unwrap();
        assert!((r.logit_err_max - 0.05).abs() < 1e-12);
        assert!((r.bound_max - 0.1).abs() < 1e-12);
        assert!((r.bound_median - 0.1).abs() < 1e-12);
        assert!((r.bound_over_error_median - 2.0).abs() < 1e-9);
        assert_eq!(r.estimate_reviews, 0);
        assert!(r.estimate_mean.is_nan());
        assert!(r.bound_holds);
        assert!((r.param_reduction - 0.04).abs() < 1e-12);
        assert!(!rows.iter().find(|x| x.method == "tlh2").unwrap().stable);
        assert_eq!(store.kept().unwrap().len(), 10);
        // a third run has nothing to do
        let s3 = run_sweep(
            &store,
            &mut fake,
            &methods,
            &ratios,
            &SweepOptions::default(),
        )
        .unwrap();
        assert_eq!((s3.written, s3.skipped), (0, 9));
        assert_eq!(fake.calls.len(), 9);
    }
}
