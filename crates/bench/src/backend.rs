//! The sweep backend over a trained S5 model ([`S5Backend`]): reduces by any recipe
//! ([`Reducer`]), rebuilds with `s5`, evaluates, measures the inference throughput and computes
//! the output-error bound of every row.

use crate::estimate::{EstimateSet, RowFactors};
use crate::pipeline::{EvalSet, Evaluation, bound_inputs, evaluate, param_counts};
use crate::reducer::Reducer;
use crate::sweep::{Point, SweepBackend};
use anyhow::Result;
use mor::bound::{BoundInput, MeasuredLayer, prepare_bound};
use mor::recipe::Recipe;
use s5::S5Model;
use std::time::Instant;

/// Batch size of the fixed synthetic batch every row's inference throughput is measured on.
pub const INFER_BATCH: usize = 4;
/// Sequence length of that batch (tokens).
pub const INFER_LEN: usize = 2048;
/// Timed passes (after one warm-up) of which the median is reported.
const INFER_REPS: usize = 3;

/// Inference throughput (tokens/s) of `model` on the fixed synthetic batch of every row.
pub fn infer_speed(model: &S5Model) -> Result<f64> {
    Ok(s5::perf::infer_tokens_per_s(
        model,
        model.config().vocab_size,
        INFER_BATCH,
        INFER_LEN,
        INFER_REPS,
    )?)
}

/// The sweep backend over a trained S5 model.
pub struct S5Backend<'a> {
    /// Reduces the full model by any recipe.
    pub reducer: Reducer<'a>,
    /// The evaluation set.
    pub set: &'a EvalSet,
    /// The bound inputs of the evaluation set.
    pub inputs: Vec<BoundInput>,
    /// Progress bar of the current evaluation (reviews), if drawn.
    pub pb: Option<indicatif::ProgressBar>,
    /// The full model's measured activations per evaluated review (set by `full`), for the
    /// a-posteriori bound.
    pub measured: Vec<Vec<MeasuredLayer>>,
    /// Whether to measure each point's inference throughput ([`infer_speed`]; default `true`);
    /// when `false` it is NaN (for `bench verify`, which does not compare timings).
    pub measure_speed: bool,
    /// The reviews every row's first-order estimate is computed on (`None`: no estimate).
    pub estimate: Option<EstimateSet>,
    /// The full model's bound factors (with its certified H∞ gains), prepared at the first
    /// reduction and reused for every other.
    full_bound: Option<mor::bound::BoundPrep>,
}

impl<'a> S5Backend<'a> {
    /// Prepares the bound inputs of `set`; `reducer` computes any calibration data a recipe
    /// needs when first asked.
    pub fn new(reducer: Reducer<'a>, set: &'a EvalSet) -> Result<Self> {
        Ok(S5Backend {
            inputs: bound_inputs(reducer.model, set)?,
            reducer,
            set,
            pb: None,
            measured: Vec::new(),
            measure_speed: true,
            estimate: None,
            full_bound: None,
        })
    }

    fn eval(&self, model: &S5Model, measure: bool) -> Result<Evaluation> {
        if let Some(pb) = &self.pb {
            pb.set_length(self.set.len() as u64);
            pb.set_position(0);
            pb.reset_eta();
        }
        evaluate(model, self.set, self.pb.as_ref(), measure)
    }

    fn speed(&self, model: &S5Model) -> Result<f64> {
        if self.measure_speed {
            infer_speed(model)
        } else {
            Ok(f64::NAN)
        }
    }
}

impl SweepBackend for S5Backend<'_> {
    fn full(&mut self) -> Result<Point> {
        let mut ev = self.eval(self.reducer.model, true)?;
        let infer_tokens_per_s = self.speed(self.reducer.model)?;
        self.measured = std::mem::take(&mut ev.measured);
        let (ssm, total) = param_counts(self.reducer.model);
        Ok(Point {
            kept_per_layer: self
                .reducer
                .deep
                .layers
                .iter()
                .map(|l| l.ssm.n_modes())
                .collect(),
            ssm_params: ssm,
            total_params: total,
            accuracy: ev.accuracy,
            logits: ev.logits,
            bounds: Vec::new(),
            stable: self
                .reducer
                .deep
                .layers
                .iter()
                .all(|l| l.ssm.max_abs_lambda() < 1.0),
            reduce_seconds: 0.0,
            eval_seconds: ev.seconds,
            infer_tokens_per_s,
            estimates: Vec::new(),
            factors: None,
        })
    }

    fn reduced(&mut self, method: &str, ratio: f64) -> Result<Point> {
        let recipe: Recipe = method
            .parse()
            .map_err(|e: mor::Error| anyhow::anyhow!("{e}"))?;
        let t0 = Instant::now();
        let red = self.reducer.reduce(recipe, ratio)?.reduction;
        let rebuilt = s5::with_reduced(self.reducer.model, &red.model)?;
        let reduce_seconds = t0.elapsed().as_secs_f64();
        let ev = self.eval(&rebuilt, false)?;
        let infer_tokens_per_s = self.speed(&rebuilt)?;
        let (ssm, total) = param_counts(&rebuilt);
        let horizon = self.set.max_len().max(1);
        // The bound's work (the full model's certified gains once per run, then the reduced and
        // error systems' and the per-review recursion), timed apart from the evaluation.
        let t_bound = Instant::now();
        if self
            .full_bound
            .as_ref()
            .is_none_or(|p| p.horizon() != horizon)
        {
            self.full_bound = Some(prepare_bound(&self.reducer.deep, None, horizon)?);
        }
        let full_bound = self.full_bound.as_ref().expect("prepared just above");
        let prep = full_bound
            .with_reduced(&self.reducer.deep, &red.model)
            .map_err(|e| tracing::warn!("{method} @ {ratio}: bound not available: {e}"))
            .ok();
        let (bounds, factors): (Vec<f64>, Vec<Vec<mor::bound::LayerFactors>>) = match &prep {
            Some(prep) => self
                .inputs
                .iter()
                .enumerate()
                .map(|(i, inp)| {
                    let r = match self.measured.get(i) {
                        Some(m) => prep.evaluate_recorded(inp, m, &[], &[]),
                        None => prep.evaluate(inp).map(|r| (r, Vec::new())),
                    };
                    r.map(|(r, f)| (r.bound, f))
                        .unwrap_or((f64::NAN, Vec::new()))
                })
                .unzip(),
            None => (vec![f64::NAN; self.set.len()], Vec::new()),
        };
        let bound_seconds = t_bound.elapsed().as_secs_f64();
        let t_est = Instant::now();
        let estimates = match &self.estimate {
            Some(est) => est.run(
                self.reducer.model,
                &rebuilt,
                prep.as_ref(),
                &self.inputs,
                &self.measured,
            )?,
            None => Vec::new(),
        };
        tracing::info!(
            "{method} @ {ratio}: reduction {reduce_seconds:.1} s, evaluation {:.1} s, certified \
             bound {bound_seconds:.1} s, first-order estimate on {} reviews {:.1} s",
            ev.seconds,
            estimates.len(),
            t_est.elapsed().as_secs_f64()
        );
        let factors = prep
            .as_ref()
            .map(|_| RowFactors::new(method, ratio, &factors, &estimates));
        Ok(Point {
            kept_per_layer: red.kept_modes.clone(),
            ssm_params: ssm,
            total_params: total,
            accuracy: ev.accuracy,
            logits: ev.logits,
            bounds,
            stable: red.stable,
            reduce_seconds,
            eval_seconds: ev.seconds,
            infer_tokens_per_s,
            estimates,
            factors,
        })
    }
}
