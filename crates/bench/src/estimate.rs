//! What each row reports about its output error besides the measured one: the certified bound
//! per review (`mor::bound`), the first-order estimate on a fixed subset of the evaluation set
//! (`s5::sensitivity`), their row statistics (the `bound_*` and `estimate_*` columns of
//! `results.csv`) and the per-layer factors written to `bound_factors.json`.

use crate::pipeline::EvalSet;
use crate::results::{read_json_or_default, same_ratio, write_atomic};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use mor::bound::{BoundInput, BoundPrep, InjectedError, LayerFactors, MeasuredLayer};
use s5::S5Model;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File name of the per-row, per-layer factors next to `results.csv`.
pub const FACTORS_FILE: &str = "bound_factors.json";

/// The first-order estimate and the recorded-error bound of one review.
#[derive(Clone, Debug, PartialEq)]
pub struct ReviewEstimate {
    /// Position of the review in the evaluation set.
    pub position: usize,
    /// `‖Σ_ℓ J_ℓ (𝒮_ℓ − 𝒮̂_ℓ) u_ℓ‖₂` (logit units; an estimate, not a bound).
    pub estimate: f64,
    /// `Σ_ℓ ‖J_ℓ‖₂ ‖(𝒮_ℓ − 𝒮̂_ℓ) u_ℓ‖₂` (logit units; an estimate, not a bound).
    pub conservative: f64,
    /// The certified bound with every layer's error on the recorded input
    /// (`BoundPrep::evaluate_recorded`); NaN if unavailable.
    pub recorded_bound: f64,
    /// Per layer `‖J_ℓ‖₂ = ‖∂logits/∂y_ℓ‖₂`.
    pub sensitivity: Vec<f64>,
    /// Per layer `‖J_ℓ (𝒮_ℓ − 𝒮̂_ℓ) u_ℓ‖₂`.
    pub contribution: Vec<f64>,
    /// Per layer `‖(𝒮_ℓ − 𝒮̂_ℓ) u_ℓ‖₂`.
    pub error_l2: Vec<f64>,
    /// Per layer the largest entry of `|(𝒮_ℓ − 𝒮̂_ℓ) u_ℓ|`.
    pub error_peak: Vec<f64>,
}

/// A fixed subset of the evaluation set on which every row's estimate is computed. The full
/// model's linearisation of every batch (its layer inputs and logit Jacobians, f32: about
/// 3 · n_layers · Σ len · H · 4 bytes, 3 GB for 128 IMDb reviews) is computed at the first row
/// and kept, so a further row costs two SSM passes per layer on these reviews.
pub struct EstimateSet {
    /// The subset, batched.
    pub set: EvalSet,
    /// Position in the evaluation set of each review of `set`.
    pub positions: Vec<usize>,
    cache: std::cell::OnceCell<Vec<s5::sensitivity::Linearisation>>,
}

impl EstimateSet {
    /// The subset `[eval]` asks for (`estimate_reviews`, its seed and batch size).
    ///
    /// # Errors
    /// Batch size 0.
    pub fn from_config(eval: &EvalSet, cfg: &crate::sections::EvalConfig) -> Result<Option<Self>> {
        Self::new(eval, cfg.estimate_reviews, cfg.seed, cfg.batch_size)
    }

    /// `n` reviews of `eval` (a class-balanced sample drawn with `seed`, [`crate::subset`]),
    /// batched by `batch_size`; `None` for `n = 0`.
    ///
    /// # Errors
    /// Batch size 0.
    pub fn new(eval: &EvalSet, n: usize, seed: u64, batch_size: usize) -> Result<Option<Self>> {
        if n == 0 || eval.is_empty() {
            return Ok(None);
        }
        let labels: Vec<usize> = eval.labels.iter().map(|&l| l as usize).collect();
        let positions = crate::subset::balanced_subset(&labels, n, seed ^ 0xE57);
        Ok(Some(EstimateSet {
            set: eval.subset(&positions, batch_size)?,
            positions,
            cache: std::cell::OnceCell::new(),
        }))
    }

    /// Every review's estimate for `reduced`, a reduction of `full`, and its recorded-error
    /// bound from `prep` (the bound factors of this reduction) with the evaluation set's bound
    /// `inputs` and the full model's `measured` activations (both by evaluation-set position;
    /// the bound is skipped when they are missing).
    ///
    /// # Errors
    /// Candle errors.
    pub fn run(
        &self,
        full: &S5Model,
        reduced: &S5Model,
        prep: Option<&BoundPrep>,
        inputs: &[BoundInput],
        measured: &[Vec<MeasuredLayer>],
    ) -> Result<Vec<ReviewEstimate>> {
        let lins = match self.cache.get() {
            Some(l) => l,
            None => {
                let dev = Device::Cpu;
                let mut lins = Vec::with_capacity(self.set.batches.len());
                for b in &self.set.batches {
                    let tokens = Tensor::from_slice(&b.tokens, (b.batch, b.len), &dev)?;
                    let lengths = Tensor::from_slice(&b.lengths, b.batch, &dev)?;
                    lins.push(full.linearise(&tokens, &lengths)?);
                }
                self.cache.get_or_init(|| lins)
            }
        };
        let mut out = Vec::with_capacity(self.positions.len());
        for (b, lin) in self.set.batches.iter().zip(lins) {
            let est = s5::sensitivity::first_order_estimate(lin, full, reduced)?;
            for (bi, (e, &i)) in est.into_iter().zip(&b.indices).enumerate() {
                let position = self.positions[i];
                let injected: Vec<Option<InjectedError>> = e
                    .error_l2
                    .iter()
                    .zip(&e.error_peak)
                    .map(|(&l2, &peak)| Some(InjectedError { l2, peak }))
                    .collect();
                let recorded_bound = match (prep, inputs.get(position), measured.get(position)) {
                    (Some(p), Some(inp), Some(m)) => p
                        .evaluate_recorded(inp, m, &injected, &[])
                        .map(|r| r.0.bound)
                        .unwrap_or(f64::NAN),
                    _ => f64::NAN,
                };
                out.push(ReviewEstimate {
                    position,
                    estimate: e.estimate,
                    conservative: e.conservative,
                    recorded_bound,
                    sensitivity: lin.sensitivity[bi].clone(),
                    contribution: e.contributions,
                    error_l2: e.error_l2,
                    error_peak: e.error_peak,
                });
            }
        }
        out.sort_by_key(|e| e.position);
        Ok(out)
    }
}

/// Median of the finite values (NaN if there are none).
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Mean (NaN for no values).
pub fn mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for x in values {
        s += x;
        n += 1;
    }
    if n == 0 { f64::NAN } else { s / n as f64 }
}

/// JSON has no NaN: `serde_json` writes it as `null`, read back here as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One layer's factors in `bound_factors.json`: the certified bound's factors (median over the
/// evaluated reviews of [`LayerFactors`], measured-activation form) and, from the estimate
/// subset, the mean logit sensitivity, first-order contribution and recorded layer error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSummary {
    /// Medians over reviews of the certified bound's factors.
    pub certified: LayerFactorsMedian,
    /// Mean over the estimate reviews of `‖∂logits/∂y_ℓ‖₂` (NaN without estimate).
    #[serde(deserialize_with = "nan_if_null")]
    pub logit_sensitivity_mean: f64,
    /// Mean of `‖J_ℓ (𝒮_ℓ − 𝒮̂_ℓ) u_ℓ‖₂` (logit units).
    #[serde(deserialize_with = "nan_if_null")]
    pub first_order_contribution_mean: f64,
    /// Mean of `‖(𝒮_ℓ − 𝒮̂_ℓ) u_ℓ‖₂` on the recorded inputs.
    #[serde(deserialize_with = "nan_if_null")]
    pub recorded_error_l2_mean: f64,
}

/// Field-wise medians of [`LayerFactors`] (same names and meaning).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct LayerFactorsMedian {
    #[serde(deserialize_with = "nan_if_null")]
    pub ssm_gain: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub ssm_gain_in: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub norm_lipschitz: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub error_gain: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub error_peak_gain: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub peak_bound: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub gate_lipschitz: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub input_bound: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub injected: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub delta: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub sensitivity: f64,
}

impl LayerFactorsMedian {
    /// Field-wise medians over reviews.
    pub fn of(per_review: &[&LayerFactors]) -> Self {
        let m = |f: fn(&LayerFactors) -> f64| median(per_review.iter().map(|x| f(x)));
        LayerFactorsMedian {
            ssm_gain: m(|x| x.ssm_gain),
            ssm_gain_in: m(|x| x.ssm_gain_in),
            norm_lipschitz: m(|x| x.norm_lipschitz),
            error_gain: m(|x| x.error_gain),
            error_peak_gain: m(|x| x.error_peak_gain),
            peak_bound: m(|x| x.peak_bound),
            gate_lipschitz: m(|x| x.gate_lipschitz),
            input_bound: m(|x| x.input_bound),
            injected: m(|x| x.injected),
            delta: m(|x| x.delta),
            sensitivity: m(|x| x.sensitivity),
        }
    }
}

/// One row's entry in `bound_factors.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowFactors {
    /// The row's method (recipe).
    pub method: String,
    /// The row's ratio.
    pub ratio: f64,
    /// Reviews the certified factors are medians over.
    pub bound_reviews: usize,
    /// Reviews of the estimate subset (0 = no estimate).
    pub estimate_reviews: usize,
    /// Per layer, input side first.
    pub layers: Vec<LayerSummary>,
}

impl RowFactors {
    /// Summarises per-review certified factors (`[reviews][layers]`) and estimates.
    pub fn new(
        method: &str,
        ratio: f64,
        factors: &[Vec<LayerFactors>],
        estimates: &[ReviewEstimate],
    ) -> Self {
        let nl = factors
            .iter()
            .map(Vec::len)
            .chain(estimates.iter().map(|e| e.sensitivity.len()))
            .max()
            .unwrap_or(0);
        let layers = (0..nl)
            .map(|l| {
                let per: Vec<&LayerFactors> = factors.iter().filter_map(|f| f.get(l)).collect();
                let em = |f: fn(&ReviewEstimate) -> &Vec<f64>| {
                    mean(estimates.iter().filter_map(|e| f(e).get(l).copied()))
                };
                LayerSummary {
                    certified: LayerFactorsMedian::of(&per),
                    logit_sensitivity_mean: em(|e| &e.sensitivity),
                    first_order_contribution_mean: em(|e| &e.contribution),
                    recorded_error_l2_mean: em(|e| &e.error_l2),
                }
            })
            .collect();
        RowFactors {
            method: method.to_string(),
            ratio,
            bound_reviews: factors.len(),
            estimate_reviews: estimates.len(),
            layers,
        }
    }
}

/// Replaces (or adds) `row`'s entry in `dir/bound_factors.json`, written atomically; entries
/// stay sorted by method, then ratio.
///
/// # Errors
/// An unreadable or malformed existing file (named), an unwritable directory.
pub fn upsert_factors(dir: &Path, row: &RowFactors) -> Result<()> {
    let path = dir.join(FACTORS_FILE);
    let mut all: Vec<RowFactors> = read_json_or_default(&path)?;
    all.retain(|r| !(r.method == row.method && same_ratio(r.ratio, row.ratio)));
    all.push(row.clone());
    all.sort_by(|a, b| a.method.cmp(&b.method).then(a.ratio.total_cmp(&b.ratio)));
    let text = serde_json::to_string_pretty(&all).context("serialising the bound factors")?;
    write_atomic(&path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_mean_of_small_sets() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median([f64::NAN, 5.0]), 5.0);
        assert!(median(Vec::<f64>::new()).is_nan());
        assert_eq!(mean([1.0, 2.0, 6.0]), 3.0);
        assert!(mean(Vec::<f64>::new()).is_nan());
    }

    #[test]
    fn factors_file_upserts_by_key_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let f = LayerFactors {
            ssm_gain: 2.0,
            ..Default::default()
        };
        let g = LayerFactors {
            ssm_gain: 4.0,
            ..Default::default()
        };
        let a = RowFactors::new("h2", 0.6, &[vec![f.clone()], vec![g.clone()]], &[]);
        assert_eq!(a.layers[0].certified.ssm_gain, 3.0);
        assert!(a.layers[0].logit_sensitivity_mean.is_nan());
        upsert_factors(dir.path(), &a).unwrap();
        let mut b = a.clone();
        b.bound_reviews = 7;
        upsert_factors(dir.path(), &b).unwrap();
        upsert_factors(dir.path(), &RowFactors::new("bt", 0.6, &[vec![f]], &[])).unwrap();
        let all: Vec<RowFactors> =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(FACTORS_FILE)).unwrap())
                .unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].method, "bt");
        assert_eq!(all[1].bound_reviews, 7);
        std::fs::write(dir.path().join(FACTORS_FILE), "not json").unwrap();
        let err = upsert_factors(dir.path(), &a).unwrap_err();
        assert!(format!("{err:#}").contains(FACTORS_FILE), "{err:#}");
        // The garbage file was not overwritten.
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FACTORS_FILE)).unwrap(),
            "not json"
        );
    }
}
