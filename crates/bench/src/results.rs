//! `results.csv`: one row per evaluated model (the full model first, then one per method × ratio),
//! and the side file `kept_modes.csv` with the kept modes of every layer.
//!
//! Every write rewrites the whole file into a temporary file in the same directory, fsyncs it and
//! renames it over the old one, so a run killed at any instant leaves either the old or the new
//! file, never a half-written one. A restarted sweep reads the file back and skips the rows whose
//! key (method, ratio) it already holds.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Method name of the unreduced reference row.
pub const FULL: &str = "full";

/// The columns of `results.csv`, in order.
pub const COLUMNS: [&str; 23] = [
    "method",
    "ratio",
    "kept_modes",
    "ssm_params",
    "total_params",
    "param_reduction",
    "ssm_param_reduction",
    "accuracy",
    "n_eval",
    "logit_err_mean",
    "logit_err_max",
    "bound_max",
    "bound_holds",
    "stable",
    "reduce_seconds",
    "eval_seconds",
    "infer_tokens_per_s",
    "bound_median",
    "bound_over_error_median",
    "estimate_reviews",
    "estimate_mean",
    "estimate_conservative_mean",
    "estimate_over_error_median",
];

/// One row of `results.csv`: one model (full or reduced) evaluated on the evaluation set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    /// Reduction method (`full` for the unreduced model).
    pub method: String,
    /// Fraction of SSM modes removed (0 for `full`).
    pub ratio: f64,
    /// Complex modes kept, summed over layers (each stands for a conjugate pair of real states).
    pub kept_modes: usize,
    /// Trainable parameters in the SSM blocks of the model: Λ (re, im), B̃, `log_step`, C, C2, D
    /// in the full model; `lambda_bar`, `b_bar`, C, C2, D in a reduced one (the discrete form
    /// absorbs the timescales), counted by [`s5::S5Model::n_trainable_params`]'s rule.
    pub ssm_params: usize,
    /// All trainable parameters of the model.
    pub total_params: usize,
    /// Fraction of trainable parameters removed, `1 − total_params / total_params(full)`. Never 0
    /// for a reduced model, even at ratio 0: it has no `log_step` (one parameter per mode).
    pub param_reduction: f64,
    /// Fraction of the SSM blocks' trainable parameters removed,
    /// `1 − ssm_params / ssm_params(full)`: the reading of "parameters" of Sakamoto & Sato and of
    /// LAST (≈ the fraction of modes removed). Files written before this column existed get it
    /// from `ssm_params` when read ([`read_rows`]).
    #[serde(default = "nan")]
    pub ssm_param_reduction: f64,
    /// Accuracy on the evaluation set (NaN if the logits were not finite).
    pub accuracy: f64,
    /// Number of evaluated reviews.
    pub n_eval: usize,
    /// Mean over evaluated reviews of the output (logit) error against the full model.
    pub logit_err_mean: f64,
    /// Largest output (logit) error over evaluated reviews.
    pub logit_err_max: f64,
    /// Largest a-priori output-error bound over evaluated reviews.
    pub bound_max: f64,
    /// Whether the bound held for every evaluated review.
    pub bound_holds: bool,
    /// Whether every reduced mode has `|λ̄| < 1`.
    pub stable: bool,
    /// Wall seconds spent reducing (and rebuilding) the model.
    pub reduce_seconds: f64,
    /// Wall seconds spent evaluating the model.
    pub eval_seconds: f64,
    /// Inference throughput of the model on one fixed synthetic batch, the same for every row
    /// and measured with the same threads (`s5::perf::infer_tokens_per_s` at
    /// [`crate::backend::INFER_BATCH`] × [`crate::backend::INFER_LEN`] tokens), tokens/s;
    /// empty (NaN) in files written before the column existed.
    #[serde(default = "nan")]
    pub infer_tokens_per_s: f64,
    /// Median over evaluated reviews of the certified output-error bound
    /// (`mor::bound::BoundPrep::evaluate_measured`, `crates/mor/BOUND.md`); empty (NaN) for the
    /// full model and in files written before the column existed.
    #[serde(default = "nan")]
    pub bound_median: f64,
    /// Median over evaluated reviews with a non-zero logit error of certified bound / error.
    #[serde(default = "nan")]
    pub bound_over_error_median: f64,
    /// Reviews of the estimate subset (`[eval] estimate_reviews`; a fixed, seeded, balanced
    /// subset of the evaluated ones) the `estimate_*` columns are computed on; 0 = none.
    #[serde(default)]
    pub estimate_reviews: usize,
    /// Mean over the estimate reviews of the first-order logit-error **estimate** (not a bound)
    /// `‖Σ_ℓ ∂logits/∂y_ℓ · (𝒮_ℓ − 𝒮̂_ℓ) u_ℓ‖₂` (`s5::sensitivity`), logit units.
    #[serde(default = "nan")]
    pub estimate_mean: f64,
    /// Mean of its conservative form `Σ_ℓ ‖∂logits/∂y_ℓ‖₂ ‖(𝒮_ℓ − 𝒮̂_ℓ) u_ℓ‖₂` (an estimate).
    #[serde(default = "nan")]
    pub estimate_conservative_mean: f64,
    /// Median over the estimate reviews with a non-zero logit error of estimate / error.
    #[serde(default = "nan")]
    pub estimate_over_error_median: f64,
}

fn nan() -> f64 {
    f64::NAN
}

impl Row {
    /// Whether this row has the key (method, ratio).
    pub fn has_key(&self, method: &str, ratio: f64) -> bool {
        self.method == method && same_ratio(self.ratio, ratio)
    }
}

/// Ratios are compared to 1e-9 (they come from the config and from a CSV round trip).
pub fn same_ratio(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Per-layer kept modes of one (method, ratio), the rows of `kept_modes.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeptModes {
    /// Reduction method (`full` for the unreduced model).
    pub method: String,
    /// Fraction of SSM modes removed.
    pub ratio: f64,
    /// Complex modes kept in each layer, input side first, joined by `;` (e.g. `64;60;31`).
    pub per_layer: String,
}

impl KeptModes {
    /// Builds the row from the per-layer counts.
    pub fn new(method: &str, ratio: f64, per_layer: &[usize]) -> Self {
        let per_layer = per_layer
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(";");
        KeptModes {
            method: method.to_string(),
            ratio,
            per_layer,
        }
    }

    /// The per-layer counts.
    pub fn counts(&self) -> Result<Vec<usize>> {
        if self.per_layer.is_empty() {
            return Ok(Vec::new());
        }
        self.per_layer
            .split(';')
            .map(|s| {
                s.trim()
                    .parse::<usize>()
                    .with_context(|| format!("bad per-layer mode count `{s}` in kept_modes.csv"))
            })
            .collect()
    }
}

/// Reads a CSV of records `T`; a missing file is an empty table.
pub fn read_csv<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = Vec::new();
    for (i, rec) in reader.deserialize().enumerate() {
        let rec: T = rec.with_context(|| {
            format!(
                "{}: row {} is malformed (delete the file or the row to recompute it)",
                path.display(),
                i + 2
            )
        })?;
        out.push(rec);
    }
    Ok(out)
}

/// Columns added to `results.csv` after its first layout; files without some of them are still
/// read (the missing values are derived, as [`Row::ssm_param_reduction`], or NaN), and the next
/// write adds them.
pub const ADDED_COLUMNS: [&str; 8] = [
    "ssm_param_reduction",
    "infer_tokens_per_s",
    "bound_median",
    "bound_over_error_median",
    "estimate_reviews",
    "estimate_mean",
    "estimate_conservative_mean",
    "estimate_over_error_median",
];

/// Reads `results.csv`, checking the header is exactly [`COLUMNS`], or [`COLUMNS`] without some
/// of the [`ADDED_COLUMNS`] (a file from before they existed).
pub fn read_rows(path: &Path) -> Result<Vec<Row>> {
    if path.exists() {
        let mut reader = csv::Reader::from_path(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let header: Vec<String> = reader
            .headers()
            .with_context(|| format!("cannot read the header of {}", path.display()))?
            .iter()
            .map(str::to_string)
            .collect();
        let expected: Vec<&str> = COLUMNS
            .into_iter()
            .filter(|c| !ADDED_COLUMNS.contains(c) || header.iter().any(|h| h == c))
            .collect();
        if header != expected {
            bail!(
                "{}: unexpected columns {:?}; expected {:?} (move the file away to start afresh)",
                path.display(),
                header,
                COLUMNS
            );
        }
    }
    let mut rows: Vec<Row> = read_csv(path)?;
    if let Some(full_ssm) = rows.iter().find(|r| r.method == FULL).map(|r| r.ssm_params) {
        for r in rows.iter_mut().filter(|r| r.ssm_param_reduction.is_nan()) {
            r.ssm_param_reduction = 1.0 - r.ssm_params as f64 / full_ssm as f64;
        }
    }
    Ok(rows)
}

/// Reads a JSON file written by this tool; a missing file is `T::default()`.
///
/// # Errors
/// An unreadable file, or one that is not the expected JSON (named, with how to fix it; the file
/// is left as it is).
pub fn read_json_or_default<T: for<'de> Deserialize<'de> + Default>(path: &Path) -> Result<T> {
    if !path.exists() {
        return Ok(T::default());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a file this tool wrote (move it away to start it afresh)",
            path.display()
        )
    })
}

/// Writes a whole CSV atomically: temp file in the same directory, fsync, rename.
pub fn write_csv_atomic<T: Serialize>(path: &Path, rows: &[T], header: &[&str]) -> Result<()> {
    let mut buf = Vec::new();
    {
        let mut w = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(&mut buf);
        w.write_record(header)?;
        for r in rows {
            w.serialize(r)?;
        }
        w.flush()?;
    }
    write_atomic(path, &buf)
}

/// Writes bytes to `path` atomically ([`mor::io::write_atomic`]: temp file, fsync, rename;
/// nothing is left behind on failure).
///
/// # Errors
/// The path and a hint when the directory is not writable.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    mor::io::write_atomic(path, bytes).with_context(|| {
        format!(
            "cannot write {} (is the directory writable? choose another `out_dir`)",
            path.display()
        )
    })
}

/// The result files of one run directory.
#[derive(Clone, Debug)]
pub struct ResultsStore {
    /// `results.csv`.
    pub results: PathBuf,
    /// `kept_modes.csv` (method, ratio, per-layer kept modes).
    pub kept_modes: PathBuf,
}

impl ResultsStore {
    /// The store inside `dir` (the directory must exist).
    pub fn new(dir: &Path) -> Self {
        ResultsStore {
            results: dir.join("results.csv"),
            kept_modes: dir.join("kept_modes.csv"),
        }
    }

    /// All rows written so far.
    pub fn rows(&self) -> Result<Vec<Row>> {
        read_rows(&self.results)
    }

    /// All per-layer kept-mode records written so far.
    pub fn kept(&self) -> Result<Vec<KeptModes>> {
        read_csv(&self.kept_modes)
    }

    /// Adds (or replaces, same key) one row and its per-layer modes, each file atomically.
    /// The side file is written first: a kill in between leaves a side record without a row,
    /// which the rerun recomputes and overwrites, never a row without its side record.
    /// The `full` row is kept first.
    pub fn upsert(&self, row: &Row, kept: &KeptModes) -> Result<()> {
        let mut ks = self.kept()?;
        ks.retain(|k| !(k.method == kept.method && same_ratio(k.ratio, kept.ratio)));
        ks.push(kept.clone());
        sort_full_first(&mut ks, |k| k.method == FULL);
        write_csv_atomic(&self.kept_modes, &ks, &["method", "ratio", "per_layer"])?;

        let mut rows = self.rows()?;
        rows.retain(|r| !r.has_key(&row.method, row.ratio));
        rows.push(row.clone());
        sort_full_first(&mut rows, |r| r.method == FULL);
        write_csv_atomic(&self.results, &rows, &COLUMNS)
    }
}

/// Stable sort putting the records for which `is_full` holds first.
fn sort_full_first<T>(v: &mut [T], is_full: impl Fn(&T) -> bool) {
    v.sort_by_key(|x| !is_full(x));
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A row with every column set (for tests of the modules that read rows).
    pub(crate) fn row(method: &str, ratio: f64) -> Row {
        Row {
            method: method.into(),
            ratio,
            kept_modes: 10,
            ssm_params: 100,
            total_params: 1000,
            param_reduction: 0.1,
            ssm_param_reduction: 0.2,
            accuracy: 0.5,
            n_eval: 8,
            logit_err_mean: 0.01,
            logit_err_max: 0.02,
            bound_max: 0.5,
            bound_holds: true,
            stable: false,
            reduce_seconds: 0.1,
            eval_seconds: 0.2,
            infer_tokens_per_s: 5000.0,
            bound_median: 0.3,
            bound_over_error_median: 30.0,
            estimate_reviews: 4,
            estimate_mean: 0.011,
            estimate_conservative_mean: 0.05,
            estimate_over_error_median: 1.1,
        }
    }

    #[test]
    fn upsert_round_trip_replaces_same_key_and_keeps_full_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResultsStore::new(dir.path());
        store
            .upsert(&row("bt", 0.5), &KeptModes::new("bt", 0.5, &[3, 4]))
            .unwrap();
        store
            .upsert(&row(FULL, 0.0), &KeptModes::new(FULL, 0.0, &[8, 8]))
            .unwrap();
        let mut again = row("bt", 0.5);
        again.accuracy = 0.75;
        store
            .upsert(&again, &KeptModes::new("bt", 0.5, &[2, 5]))
            .unwrap();
        let rows = store.rows().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0], row(FULL, 0.0));
        assert_eq!(rows[1], again);
        let kept = store.kept().unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[1].counts().unwrap(), vec![2, 5]);
        let text = std::fs::read_to_string(&store.results).unwrap();
        assert_eq!(text.lines().next().unwrap(), COLUMNS.join(","));
        // no temp files left behind
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn wrong_header_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("results.csv");
        std::fs::write(&p, "method,ratio\nbt,0.5\n").unwrap();
        let err = read_rows(&p).unwrap_err().to_string();
        assert!(err.contains("unexpected columns"), "{err}");
        // The first layout (without the added columns) is read; the SSM reduction is derived.
        let first: Vec<&str> = COLUMNS
            .into_iter()
            .filter(|c| !ADDED_COLUMNS.contains(c))
            .collect();
        std::fs::write(
            &p,
            format!(
                "{}\nfull,0,10,100,1000,0,0.9,4,0,0,0,true,true,0,1\nbt,0.5,5,40,940,0.06,0.8,4,1,2,3,true,true,0.1,1\n",
                first.join(",")
            ),
        )
        .unwrap();
        let rows = read_rows(&p).unwrap();
        assert!((rows[1].ssm_param_reduction - 0.6).abs() < 1e-12);
        assert!(rows[1].infer_tokens_per_s.is_nan());
        // A column order that is not a known layout is refused.
        let mut swapped = COLUMNS.to_vec();
        swapped.swap(0, 1);
        std::fs::write(&p, format!("{}\n", swapped.join(","))).unwrap();
        assert!(read_rows(&p).is_err());
    }

    #[test]
    fn unwritable_dir_gives_clear_error() {
        let err = write_atomic(Path::new("/proc/definitely/not/here.csv"), b"x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot write"), "{err}");
    }
}
