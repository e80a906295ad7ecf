//! The runner's own config sections: `[eval]` and `[sweep]` (documented field by field in
//! `configs/imdb.toml`).

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// `[eval]`: which test reviews every model is evaluated on, and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Reviews evaluated per model: 0 = the whole test split; otherwise a fixed, seeded,
    /// class-balanced subset of that size.
    #[serde(default)]
    pub max_samples: usize,
    /// Reviews per forward pass.
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// Seed of the subset.
    #[serde(default)]
    pub seed: u64,
    /// Reviews of the evaluation set (a seeded, class-balanced subset of it, the same for every
    /// row) on which each row's first-order logit-error estimate is computed
    /// (`s5::sensitivity`; `estimate_*` columns of `results.csv`); 0 = no estimate.
    #[serde(default = "default_estimate_reviews")]
    pub estimate_reviews: usize,
}

fn default_estimate_reviews() -> usize {
    128
}

fn default_eval_batch() -> usize {
    16
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            max_samples: 0,
            batch_size: default_eval_batch(),
            seed: 0,
            estimate_reviews: default_estimate_reviews(),
        }
    }
}

impl EvalConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            bail!("eval.batch_size must be ≥ 1");
        }
        Ok(())
    }
}

/// `[sweep]`: the reduction methods and ratios to evaluate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// Reduction recipes: a method of `mor::Method::ALL`, optionally followed by a post-step,
    /// `<method>+refit` or `<method>+refit-seq` (`mor::recipe`). Default: every method, in the
    /// order of `mor::Method::ALL`.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Fractions of SSM modes removed, each in `[0, 1)`.
    pub ratios: Vec<f64>,
    /// `lqo-h2` only: every layer keeps at least this fraction of the uniform share of modes
    /// before the bound-weighted greedy allocates the rest, in `[0, 1]` (default
    /// `mor::lqo::LqoOptions`'s 0.5; 1 = uniform allocation, 0 = pure greedy on the bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lqo_floor_fraction: Option<f64>,
    /// `last`, `global-hinf`, `uniform-hinf` only: horizon in steps (≥ 1) of the per-mode H∞
    /// scores, the time-limited score `mor::modes::mode_hinf_scores_horizon` (each mode's gain
    /// bound on sequences of at most this many steps; e.g. `data.max_len`). Default: none, LAST's
    /// infinite-horizon score as published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hinf_horizon: Option<usize>,
    /// `+refit` and `+refit-seq` only: the relative ridge of the least-squares refit
    /// (`mor::refit::RefitOptions::ridge`, default 1e-5; finite, ≥ 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refit_ridge: Option<f64>,
    /// `+refit` and `+refit-seq` only: training reviews the refit is fitted on (a seeded,
    /// class-balanced sample with `eval.seed`; never test reviews). Default
    /// [`DEFAULT_REFIT_REVIEWS`]; ≥ 1. The reducers' own calibration (`lqo-h2`'s layer weights,
    /// the Gramians of `ebt`/`emodal`) always uses [`CALIBRATION_REVIEWS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refit_reviews: Option<usize>,
}

/// Training reviews that calibrate the data-driven reducers (`lqo-h2`, `ebt`, `emodal`).
pub const CALIBRATION_REVIEWS: usize = 64;
/// Training reviews on which the `sens` allocation measures its per-layer costs, drawn outside
/// the refit set ([`crate::reducer::Calibration`]).
pub const ALLOCATION_REVIEWS: usize = 64;
/// Default `sweep.refit_reviews`, chosen on held-out training reviews
/// (`results/imdb/refit-choice.json`: 16 / 64 / 256 reviews gave mean logit errors 6.26 / 6.21 /
/// 6.19 for `emodal+refit` over 60 / 80 / 90 % of the modes removed).
pub const DEFAULT_REFIT_REVIEWS: usize = 256;

fn default_methods() -> Vec<String> {
    mor::Method::ALL
        .iter()
        .map(|m| m.name().to_string())
        .collect()
}

impl SweepConfig {
    /// Checks the recipe names and the ratios; returns the parsed recipes.
    pub fn validate(&self) -> Result<Vec<mor::recipe::Recipe>> {
        if self.methods.is_empty() {
            bail!("sweep.methods is empty; list at least one method");
        }
        if self.ratios.is_empty() {
            bail!("sweep.ratios is empty; list at least one ratio in [0, 1)");
        }
        let mut out = Vec::new();
        for m in &self.methods {
            let parsed: mor::recipe::Recipe = m
                .parse()
                .map_err(|e: mor::Error| anyhow::anyhow!("sweep.methods: {e}"))?;
            if out.contains(&parsed) {
                bail!("sweep.methods lists `{m}` twice");
            }
            out.push(parsed);
        }
        if let Some(f) = self.lqo_floor_fraction
            && !(f.is_finite() && (0.0..=1.0).contains(&f))
        {
            bail!(
                "sweep.lqo_floor_fraction = {f} must be in [0, 1] (the fraction of the uniform \
                 share of modes every layer keeps; 1 = uniform)"
            );
        }
        if self.refit_reviews == Some(0) {
            bail!(
                "sweep.refit_reviews = 0: the refit needs at least one training review \
                 (default {DEFAULT_REFIT_REVIEWS})"
            );
        }
        self.refit_options()
            .validate()
            .map_err(|e| anyhow::anyhow!("sweep.refit_ridge: {e}"))?;
        if self.hinf_horizon == Some(0) {
            bail!(
                "sweep.hinf_horizon = 0: the H∞ score horizon is a number of steps ≥ 1 (e.g. \
                 data.max_len); remove the key for LAST's infinite-horizon score"
            );
        }
        for (i, &r) in self.ratios.iter().enumerate() {
            validate_ratio(r).map_err(|e| anyhow::anyhow!("sweep.ratios[{i}]: {e}"))?;
            if self.ratios[..i].iter().any(|&q| (q - r).abs() < 1e-9) {
                bail!("sweep.ratios lists {r} twice");
            }
        }
        Ok(out)
    }

    /// The reduction options this section asks for (mor's defaults otherwise).
    pub fn reduce_options(&self) -> mor::reduce::ReduceOptions {
        let mut opts = mor::reduce::ReduceOptions::default();
        if let Some(f) = self.lqo_floor_fraction {
            opts.lqo.floor_fraction = f;
        }
        opts.hinf_horizon = self.hinf_horizon;
        opts
    }

    /// Training reviews of the refit.
    pub fn refit_reviews(&self) -> usize {
        self.refit_reviews.unwrap_or(DEFAULT_REFIT_REVIEWS)
    }

    /// The refit options this section asks for (mor's defaults otherwise).
    pub fn refit_options(&self) -> mor::refit::RefitOptions {
        let mut opts = mor::refit::RefitOptions::default();
        if let Some(r) = self.refit_ridge {
            opts.ridge = r;
        }
        opts
    }
}

/// A ratio (fraction of SSM modes removed) must be finite and in `[0, 1)`.
pub fn validate_ratio(r: f64) -> Result<()> {
    if !(r.is_finite() && (0.0..1.0).contains(&r)) {
        bail!(
            "ratio {r} is impossible: it is the fraction of SSM modes removed and must be in \
             [0, 1) (e.g. 0.6 removes 60 % of the modes)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ratio_and_method_are_named() {
        let s = SweepConfig {
            methods: vec!["bt".into()],
            ratios: vec![0.5, 1.0],
            lqo_floor_fraction: None,
            hinf_horizon: None,
            refit_ridge: None,
            refit_reviews: None,
        };
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("sweep.ratios[1]") && e.contains("[0, 1)"), "{e}");
        let s = SweepConfig {
            methods: vec!["bt".into(), "pca".into()],
            ratios: vec![0.5],
            lqo_floor_fraction: None,
            hinf_horizon: None,
            refit_ridge: None,
            refit_reviews: None,
        };
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("pca") && e.contains("lqo-h2"), "{e}");
        let s = SweepConfig {
            methods: default_methods(),
            ratios: vec![0.0, 0.5, 0.95],
            lqo_floor_fraction: None,
            hinf_horizon: None,
            refit_ridge: None,
            refit_reviews: None,
        };
        assert_eq!(s.validate().unwrap().len(), mor::Method::ALL.len());
        assert_eq!(
            s.reduce_options().lqo.floor_fraction,
            mor::lqo::LqoOptions::default().floor_fraction
        );
        assert!(validate_ratio(-0.1).is_err());
        assert!(validate_ratio(f64::NAN).is_err());
    }

    #[test]
    fn recipes_and_refit_ridge_are_checked_and_passed_on() {
        let mut s = SweepConfig {
            methods: vec![
                "emodal+refit".into(),
                "h2+refit-seq".into(),
                "emodal".into(),
            ],
            ratios: vec![0.5],
            lqo_floor_fraction: None,
            hinf_horizon: None,
            refit_ridge: Some(1e-3),
            refit_reviews: None,
        };
        let r = s.validate().unwrap();
        assert_eq!(r[0].to_string(), "emodal+refit");
        assert_eq!(r[1].post, Some(mor::recipe::PostStep::RefitSeq));
        assert_eq!(s.refit_options().ridge, 1e-3);
        s.refit_ridge = Some(-1.0);
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("sweep.refit_ridge") && e.contains("≥ 0"), "{e}");
        s.refit_ridge = None;
        s.methods.push("emodal+refit".into());
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
        s.methods = vec!["emodal+refti".into()];
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("refti") && e.contains("refit-seq"), "{e}");
    }

    #[test]
    fn lqo_floor_fraction_is_checked_and_passed_on() {
        let mut s = SweepConfig {
            methods: vec!["lqo-h2".into()],
            ratios: vec![0.5],
            lqo_floor_fraction: Some(1.5),
            hinf_horizon: None,
            refit_ridge: None,
            refit_reviews: None,
        };
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("lqo_floor_fraction") && e.contains("[0, 1]"),
            "{e}"
        );
        s.lqo_floor_fraction = Some(1.0);
        s.validate().unwrap();
        assert_eq!(s.reduce_options().lqo.floor_fraction, 1.0);
    }

    #[test]
    fn hinf_horizon_is_checked_and_passed_on() {
        let mut s = SweepConfig {
            methods: vec!["last".into()],
            ratios: vec![0.5],
            lqo_floor_fraction: None,
            hinf_horizon: None,
            refit_ridge: None,
            refit_reviews: None,
        };
        assert_eq!(s.reduce_options().hinf_horizon, None);
        s.hinf_horizon = Some(0);
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("hinf_horizon") && e.contains("≥ 1"), "{e}");
        s.hinf_horizon = Some(4096);
        s.validate().unwrap();
        assert_eq!(s.reduce_options().hinf_horizon, Some(4096));
    }
}
