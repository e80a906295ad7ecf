//! `bench verify`: recomputes a seeded sample of the rows of a `results.csv` from the committed
//! checkpoint and compares them with the committed values.
//!
//! This module holds what needs no model: which rows are sampled ([`sample`]), how a committed
//! row is compared with its recomputation ([`compare`], with the tolerances below), the table
//! ([`table`]) and the summary of the mismatching rows ([`mismatches`]). [`crate::stages::verify`]
//! recomputes the rows with the sweep's own code path ([`crate::backend::S5Backend`] and
//! [`crate::sweep::reduced_row`]).
//!
//! Timings (`reduce_seconds`, `eval_seconds`, `infer_tokens_per_s`) are not compared; every other
//! column is, and so is the per-layer record of `kept_modes.csv`.

use crate::results::{FULL, KeptModes, Row, same_ratio};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Absolute tolerance of `accuracy`: the same reviews give the same count of correct answers, so
/// only the last bits of the division may differ.
pub const ACCURACY_TOL: f64 = 1e-12;
/// Absolute tolerance of `param_reduction` and `ssm_param_reduction` (ratios of integers).
pub const PARAM_REDUCTION_TOL: f64 = 1e-12;
/// Relative tolerance of `logit_err_mean` and `logit_err_max`: floating-point noise of the
/// evaluation (the same build, checkpoint, reviews and threads give identical values).
pub const LOGIT_ERR_RTOL: f64 = 1e-6;
/// Relative tolerance of `bound_max` (the bound goes through eigen- and norm computations whose
/// last digits may depend on the linear-algebra kernels).
pub const BOUND_RTOL: f64 = 1e-3;

/// The rows of `rows` to check: the index of the full row (if any) first, then `n` of the
/// reduced rows drawn with a ChaCha8 shuffle seeded by `seed` (all of them if `n` is at least
/// their number), in file order. The same `(rows, n, seed)` always gives the same sample.
pub fn sample(rows: &[Row], n: usize, seed: u64) -> Vec<usize> {
    let mut reduced: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].method != FULL)
        .collect();
    reduced.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    reduced.truncate(n);
    reduced.sort_unstable();
    let full = rows.iter().position(|r| r.method == FULL);
    full.into_iter().chain(reduced).collect()
}

/// The label of a row in the table and the summary: `method @ ratio`.
pub fn label(row: &Row) -> String {
    format!("{} @ {}", row.method, row.ratio)
}

/// One compared field of one row.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// The row ([`label`]).
    pub row: String,
    /// The field (a `results.csv` column, or `per_layer` for `kept_modes.csv`).
    pub field: &'static str,
    /// The committed value as text.
    pub committed: String,
    /// The recomputed value as text.
    pub recomputed: String,
    /// Whether they agree within the field's tolerance.
    pub ok: bool,
}

/// Whether `a` and `b` agree within the absolute tolerance `tol` (NaN equals NaN, an infinity
/// only itself).
pub fn close_abs(a: f64, b: f64, tol: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan()) || (a.is_finite() && b.is_finite() && (a - b).abs() <= tol)
}

/// Whether `a` and `b` agree within the relative tolerance `rtol`, `|a − b| ≤ rtol · max(|a|, |b|)`
/// (NaN equals NaN, an infinity only itself, zero only zero).
pub fn close_rel(a: f64, b: f64, rtol: f64) -> bool {
    a == b
        || (a.is_nan() && b.is_nan())
        || (a.is_finite() && b.is_finite() && (a - b).abs() <= rtol * a.abs().max(b.abs()))
}

/// Compares a committed row (and its `kept_modes.csv` record, if there is one) with its
/// recomputation (and the recomputed kept modes per layer): one [`Check`] per compared field.
pub fn compare(
    committed: &Row,
    committed_kept: Option<&KeptModes>,
    recomputed: &Row,
    recomputed_kept: &[usize],
) -> Vec<Check> {
    let row = label(committed);
    let mut out = Vec::new();
    let mut push = |field: &'static str, c: String, r: String, ok: bool| {
        out.push(Check {
            row: row.clone(),
            field,
            committed: c,
            recomputed: r,
            ok,
        });
    };
    let kept_now = KeptModes::new(&committed.method, committed.ratio, recomputed_kept);
    match committed_kept {
        Some(k) => {
            let ok = k.counts().is_ok_and(|c| c == recomputed_kept);
            push("per_layer", k.per_layer.clone(), kept_now.per_layer, ok);
        }
        None => push("per_layer", "(missing)".into(), kept_now.per_layer, false),
    }
    let (c, r) = (committed, recomputed);
    let int = |a: usize, b: usize| (a.to_string(), b.to_string(), a == b);
    let boolean = |a: bool, b: bool| (a.to_string(), b.to_string(), a == b);
    let abs = |a: f64, b: f64, tol| (a.to_string(), b.to_string(), close_abs(a, b, tol));
    let rel = |a: f64, b: f64, tol| (a.to_string(), b.to_string(), close_rel(a, b, tol));
    let fields: [(&'static str, (String, String, bool)); 12] = [
        ("kept_modes", int(c.kept_modes, r.kept_modes)),
        ("ssm_params", int(c.ssm_params, r.ssm_params)),
        ("total_params", int(c.total_params, r.total_params)),
        (
            "param_reduction",
            abs(c.param_reduction, r.param_reduction, PARAM_REDUCTION_TOL),
        ),
        (
            "ssm_param_reduction",
            abs(
                c.ssm_param_reduction,
                r.ssm_param_reduction,
                PARAM_REDUCTION_TOL,
            ),
        ),
        ("accuracy", abs(c.accuracy, r.accuracy, ACCURACY_TOL)),
        ("n_eval", int(c.n_eval, r.n_eval)),
        (
            "logit_err_mean",
            rel(c.logit_err_mean, r.logit_err_mean, LOGIT_ERR_RTOL),
        ),
        (
            "logit_err_max",
            rel(c.logit_err_max, r.logit_err_max, LOGIT_ERR_RTOL),
        ),
        ("bound_max", rel(c.bound_max, r.bound_max, BOUND_RTOL)),
        ("bound_holds", boolean(c.bound_holds, r.bound_holds)),
        ("stable", boolean(c.stable, r.stable)),
    ];
    for (field, (a, b, ok)) in fields {
        // Rows written before the bound revision of session 25 (no `bound_median`) carry the
        // older, looser bound: its value is not reproduced any more, so it is shown, not judged.
        let old_bound = field == "bound_max" && c.bound_median.is_nan();
        if old_bound && !ok {
            push(
                field,
                format!("{a} (pre-revision bound, not compared)"),
                b,
                true,
            );
        } else {
            push(field, a, b, ok);
        }
    }
    if !c.bound_median.is_nan() {
        push_rel(
            &mut out,
            c,
            "bound_median",
            c.bound_median,
            r.bound_median,
            BOUND_RTOL,
        );
        push_rel(
            &mut out,
            c,
            "estimate_mean",
            c.estimate_mean,
            r.estimate_mean,
            LOGIT_ERR_RTOL,
        );
    }
    out
}

/// Adds the relative comparison of one field to `out`.
fn push_rel(out: &mut Vec<Check>, row: &Row, field: &'static str, a: f64, b: f64, tol: f64) {
    out.push(Check {
        row: label(row),
        field,
        committed: a.to_string(),
        recomputed: b.to_string(),
        ok: close_rel(a, b, tol),
    });
}

/// A row whose recomputation failed: one failing [`Check`] carrying the error.
pub fn failed(committed: &Row, error: &str) -> Check {
    Check {
        row: label(committed),
        field: "recompute",
        committed: "(row)".into(),
        recomputed: format!("error: {error}"),
        ok: false,
    }
}

/// The comparison table: row, field, committed, recomputed, `ok` or `MISMATCH`.
pub fn table(checks: &[Check]) -> String {
    let w = |f: &dyn Fn(&Check) -> usize, head: &str| {
        checks.iter().map(f).chain([head.len()]).max().unwrap_or(0)
    };
    let wr = w(&|c| c.row.chars().count(), "row");
    let wf = w(&|c| c.field.len(), "field");
    let wc = w(&|c| c.committed.chars().count(), "committed");
    let wn = w(&|c| c.recomputed.chars().count(), "recomputed");
    let mut s = format!(
        "{:<wr$}  {:<wf$}  {:>wc$}  {:>wn$}  result\n",
        "row", "field", "committed", "recomputed"
    );
    for c in checks {
        s.push_str(&format!(
            "{:<wr$}  {:<wf$}  {:>wc$}  {:>wn$}  {}\n",
            c.row,
            c.field,
            c.committed,
            c.recomputed,
            if c.ok { "ok" } else { "MISMATCH" }
        ));
    }
    s
}

/// The mismatching rows in table order, each with its mismatching fields:
/// `bt @ 0.5 (accuracy, logit_err_mean)`.
pub fn mismatches(checks: &[Check]) -> Vec<String> {
    let mut rows: Vec<(String, Vec<&str>)> = Vec::new();
    for c in checks.iter().filter(|c| !c.ok) {
        match rows.iter_mut().find(|(r, _)| *r == c.row) {
            Some((_, fields)) => fields.push(c.field),
            None => rows.push((c.row.clone(), vec![c.field])),
        }
    }
    rows.into_iter()
        .map(|(r, f)| format!("{r} ({})", f.join(", ")))
        .collect()
}

/// The `kept_modes.csv` record of (`method`, `ratio`), if any.
pub fn kept_of<'a>(kept: &'a [KeptModes], method: &str, ratio: f64) -> Option<&'a KeptModes> {
    kept.iter()
        .find(|k| k.method == method && same_ratio(k.ratio, ratio))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(method: &str, ratio: f64) -> Row {
        Row {
            method: method.into(),
            ratio,
            kept_modes: 8,
            ssm_params: 100,
            total_params: 1000,
            param_reduction: 0.1,
            ssm_param_reduction: 0.2,
            accuracy: 0.625,
            n_eval: 40,
            logit_err_mean: 0.5,
            logit_err_max: 1.5,
            bound_max: f64::NAN,
            bound_holds: false,
            stable: true,
            reduce_seconds: 0.1,
            eval_seconds: 0.2,
            infer_tokens_per_s: 5000.0,
            bound_median: f64::NAN,
            bound_over_error_median: f64::NAN,
            estimate_reviews: 0,
            estimate_mean: f64::NAN,
            estimate_conservative_mean: f64::NAN,
            estimate_over_error_median: f64::NAN,
        }
    }

    #[test]
    fn sample_is_seeded_full_first_and_in_file_order() {
        let mut rows = vec![row(FULL, 0.0)];
        for m in ["bt", "modal", "h2"] {
            for r in [0.25, 0.5, 0.75] {
                rows.push(row(m, r));
            }
        }
        let a = sample(&rows, 4, 0);
        assert_eq!(a, sample(&rows, 4, 0));
        assert_eq!(a.len(), 5);
        assert_eq!(a[0], 0);
        assert!(a[1..].windows(2).all(|w| w[0] < w[1]), "{a:?}");
        assert!((1..=9).any(|s| sample(&rows, 4, s) != a));
        assert_eq!(sample(&rows, 100, 3), (0..10).collect::<Vec<_>>());
        assert_eq!(sample(&rows, 0, 3), vec![0]);
        assert_eq!(sample(&rows[1..], 2, 0).len(), 2);
    }

    #[test]
    fn compare_tolerances_and_summary() {
        let c = row("bt", 0.5);
        let kept = KeptModes::new("bt", 0.5, &[4, 4]);
        let mut r = c.clone();
        r.reduce_seconds = 9.0; // timings are not compared
        r.eval_seconds = 9.0;
        r.infer_tokens_per_s = f64::NAN;
        r.logit_err_mean *= 1.0 + 1e-8;
        r.bound_max = f64::NAN; // NaN equals NaN
        let checks = compare(&c, Some(&kept), &r, &[4, 4]);
        assert!(checks.iter().all(|k| k.ok), "{}", table(&checks));
        assert_eq!(checks.len(), 13);

        r.accuracy += 0.025;
        r.logit_err_max *= 1.0 + 1e-4;
        let checks = compare(&c, Some(&kept), &r, &[4, 3]);
        let bad: Vec<&str> = checks.iter().filter(|k| !k.ok).map(|k| k.field).collect();
        assert_eq!(bad, ["per_layer", "accuracy", "logit_err_max"]);
        assert_eq!(
            mismatches(&checks),
            ["bt @ 0.5 (per_layer, accuracy, logit_err_max)"]
        );
        let t = table(&checks);
        assert!(t.lines().next().unwrap().starts_with("row"), "{t}");
        assert!(t.contains("MISMATCH") && t.contains("  ok\n"), "{t}");
        assert!(t.contains("4;4") && t.contains("4;3"), "{t}");

        let checks = compare(&c, None, &c, &[4, 4]);
        assert_eq!(mismatches(&checks), ["bt @ 0.5 (per_layer)"]);
    }

    #[test]
    fn closeness() {
        assert!(close_rel(0.0, 0.0, 1e-6));
        assert!(!close_rel(0.0, 1e-300, 1e-6));
        assert!(close_rel(f64::INFINITY, f64::INFINITY, 1e-3));
        assert!(!close_rel(f64::INFINITY, 1e300, 1e-3));
        assert!(!close_rel(f64::NAN, 1.0, 1e-3));
        assert!(close_rel(1000.0, 1000.9, 1e-3));
        assert!(!close_rel(1000.0, 1001.1, 1e-3));
        assert!(close_abs(0.5, 0.5 + 1e-13, ACCURACY_TOL));
        assert!(!close_abs(0.5, 0.525, ACCURACY_TOL));
    }
}
