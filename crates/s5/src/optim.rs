//! AdamW with S5's two parameter groups, global-norm gradient clipping and the learning-rate
//! schedule (linear warmup, then cosine annealing).
//!
//! The optimiser is written here rather than taken from `candle_nn::AdamW` because exact resume
//! needs the first and second moments and the step count saved to and restored from a checkpoint.
//!
//! Sources: Adam (Kingma & Ba, ICLR 2015, Algorithm 1), decoupled weight decay (Loshchilov &
//! Hutter, ICLR 2019, Algorithm 2, as in optax `adamw`: the decay term is scaled by the learning
//! rate), cosine annealing (Loshchilov & Hutter, ICLR 2017, Eq. 5); the parameter groups follow the
//! public S5 code (Smith et al., ICLR 2023): Λ, B̃ and `log_step` train with `ssm_lr` and no weight
//! decay, everything else with `lr` and `weight_decay`; S5's `--dt_global=True` moves `log_step`
//! to the regular group ([`LogStepGroup`]).

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var, backprop::GradStore};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The optimiser group a named parameter belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamGroup {
    /// SSM parameters (Λ re/im, B̃, `log_step`): learning rate `ssm_lr`, no weight decay.
    Ssm,
    /// Every other trained parameter: learning rate `lr`, weight decay `weight_decay`.
    Regular,
    /// Stored in the checkpoint but never trained (BatchNorm running statistics).
    Frozen,
}

/// The S5 grouping of a parameter by its name (see [`crate::S5Model`] for the names):
/// [`crate::is_ssm_param`] (`Lambda_re`, `Lambda_im`, `B`, `log_step`, and the discrete
/// `lambda_bar`, `b_bar` of reduced models) gives [`ParamGroup::Ssm`]; the BatchNorm running
/// statistics `running_mean` / `running_var` give [`ParamGroup::Frozen`]; anything else
/// [`ParamGroup::Regular`].
pub fn default_param_group(name: &str) -> ParamGroup {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    if crate::is_ssm_param(name) {
        ParamGroup::Ssm
    } else if matches!(leaf, "running_mean" | "running_var") {
        ParamGroup::Frozen
    } else {
        ParamGroup::Regular
    }
}

/// The optimiser group the SSM timescales `log_step` (log Δ) train in.
///
/// The public S5 code has both: by default `log_step` is an SSM parameter; its flag
/// `--dt_global=True` (help text: "treat timescale parameter as global parameter or SSM
/// parameter") moves it to the regular group, so it trains with `lr` **and weight decay**, which
/// pulls log Δ toward 0 (Δ toward 1, shorter memory). The S5 paper's LRA IMDb run
/// (`bin/run_experiments/run_lra_imdb.sh`, Smith et al., ICLR 2023) uses `--dt_global=True`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStepGroup {
    /// `log_step` in [`ParamGroup::Ssm`] (`ssm_lr`, no weight decay): S5's default.
    #[default]
    Ssm,
    /// `log_step` in [`ParamGroup::Regular`] (`lr`, `weight_decay`): S5's `--dt_global=True`.
    Regular,
}

/// [`default_param_group`], except that `log_step` goes to the group `log_step` names.
pub fn param_group(name: &str, log_step: LogStepGroup) -> ParamGroup {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    match (leaf, log_step) {
        ("log_step", LogStepGroup::Regular) => ParamGroup::Regular,
        _ => default_param_group(name),
    }
}

/// Learning rates and weight decay of one optimiser step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepRates {
    /// Learning rate of [`ParamGroup::Regular`].
    pub lr: f64,
    /// Learning rate of [`ParamGroup::Ssm`].
    pub ssm_lr: f64,
    /// Decoupled weight decay of [`ParamGroup::Regular`] (the SSM group never decays).
    pub weight_decay: f64,
}

/// Adam constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamParams {
    /// Decay of the first moment (β₁, 0.9 in optax and S5).
    pub beta1: f64,
    /// Decay of the second moment (β₂, 0.999).
    pub beta2: f64,
    /// ε added to √v̂ (1e-8).
    pub eps: f64,
}

impl Default for AdamParams {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    group: ParamGroup,
    /// First moment, same shape as the parameter, f32.
    m: Tensor,
    /// Second moment.
    v: Tensor,
}

/// AdamW over the trainable variables of a [`VarMap`], in two groups ([`ParamGroup`]).
///
/// One step (t counted from 1, g the clipped gradient, p the parameter):
/// m ← β₁ m + (1−β₁) g; v ← β₂ v + (1−β₂) g²; m̂ = m / (1−β₁ᵗ); v̂ = v / (1−β₂ᵗ);
/// p ← p − η (m̂ / (√v̂ + ε) + λ p), with η, λ per group (λ = 0 for the SSM group).
/// A trainable parameter that received no gradient is updated with g = 0.
pub struct AdamW {
    slots: Vec<Slot>,
    frozen: Vec<String>,
    adam: AdamParams,
    step: usize,
}

impl AdamW {
    /// Build the optimiser over every variable of `varmap` (sorted by name, so the order is
    /// deterministic), grouped by `classify` (usually [`default_param_group`]). Moments start at 0.
    ///
    /// # Errors
    /// Candle errors while allocating the moments.
    pub fn new(
        varmap: &VarMap,
        classify: impl Fn(&str) -> ParamGroup,
        adam: AdamParams,
    ) -> Result<Self> {
        let data = varmap.data().lock().expect("VarMap lock poisoned");
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        let mut slots = Vec::new();
        let mut frozen = Vec::new();
        for name in names {
            let var = data[name].clone();
            let group = classify(name);
            if group == ParamGroup::Frozen {
                frozen.push(name.clone());
                continue;
            }
            let m = var.as_tensor().zeros_like()?.to_dtype(DType::F32)?;
            let v = m.clone();
            slots.push(Slot {
                name: name.clone(),
                var,
                group,
                m,
                v,
            });
        }
        Ok(Self {
            slots,
            frozen,
            adam,
            step: 0,
        })
    }

    /// Number of optimiser steps taken so far (t of the bias correction).
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// Names and groups of the trained parameters, sorted by name.
    pub fn groups(&self) -> impl Iterator<Item = (&str, ParamGroup)> {
        self.slots.iter().map(|s| (s.name.as_str(), s.group))
    }

    /// Names of the frozen (never trained) variables.
    pub fn frozen(&self) -> &[String] {
        &self.frozen
    }

    /// Number of trained scalars (both groups).
    pub fn n_trainable(&self) -> usize {
        self.slots.iter().map(|s| s.var.elem_count()).sum()
    }

    /// Global L2 norm √(Σ_params Σ g²) of the gradients of the trained parameters, computed in f64.
    /// Missing gradients count as zero. Returns NaN/∞ if any gradient is not finite.
    ///
    /// # Errors
    /// Candle errors.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sum = 0f64;
        for s in &self.slots {
            if let Some(g) = grads.get(s.var.as_tensor()) {
                let sq = g
                    .to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?;
                sum += sq;
            }
        }
        Ok(sum.sqrt())
    }

    /// One AdamW step with the gradients in `grads` multiplied by `grad_scale` (the clipping
    /// factor min(1, clip / ‖g‖), 1 for no clipping).
    ///
    /// # Errors
    /// Candle errors (a gradient of the wrong shape).
    pub fn step(&mut self, grads: &GradStore, rates: StepRates, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let AdamParams { beta1, beta2, eps } = self.adam;
        let bc1 = 1.0 - beta1.powi(t);
        let bc2 = 1.0 - beta2.powi(t);
        for s in &mut self.slots {
            let p = s.var.as_tensor();
            let g = match grads.get(p) {
                Some(g) => g.to_dtype(DType::F32)?.affine(grad_scale, 0.0)?,
                None => s.m.zeros_like()?,
            };
            let (lr, wd) = match s.group {
                ParamGroup::Ssm => (rates.ssm_lr, 0.0),
                _ => (rates.lr, rates.weight_decay),
            };
            s.m = ((&s.m * beta1)? + (&g * (1.0 - beta1))?)?;
            s.v = ((&s.v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let m_hat = (&s.m / bc1)?;
            let v_hat = (&s.v / bc2)?;
            let mut update = m_hat.div(&(v_hat.sqrt()? + eps)?)?;
            let p32 = p.to_dtype(DType::F32)?;
            if wd != 0.0 {
                update = (update + (&p32 * wd)?)?;
            }
            let new = (p32 - (update * lr)?)?.to_dtype(p.dtype())?;
            s.var.set(&new)?;
        }
        Ok(())
    }

    /// The optimiser state as named tensors: `m.{param}` and `v.{param}` (f32, parameter shape).
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("m.{}", s.name), s.m.clone());
            out.insert(format!("v.{}", s.name), s.v.clone());
        }
        out
    }

    /// Restore the state written by [`AdamW::state_tensors`] and the step count.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] (with `origin` as path) naming the first missing moment or shape
    /// mismatch.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        step: usize,
        origin: &str,
    ) -> Result<()> {
        let err = |msg: String| Error::Checkpoint {
            path: origin.to_string(),
            msg,
        };
        let mut m_new = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let mut pair = Vec::with_capacity(2);
            for kind in ["m", "v"] {
                let key = format!("{kind}.{}", s.name);
                let t = tensors.get(&key).ok_or_else(|| {
                    err(format!(
                        "optimizer moment `{key}` is missing (the checkpoint was written for a \
                         different model or is damaged; start a fresh run or pick another checkpoint)"
                    ))
                })?;
                if t.dims() != s.var.dims() {
                    return Err(err(format!(
                        "optimizer moment `{key}` has shape {:?}, the parameter has {:?}",
                        t.dims(),
                        s.var.dims()
                    )));
                }
                pair.push(t.to_dtype(DType::F32)?);
            }
            m_new.push(pair);
        }
        let expected = 2 * self.slots.len();
        if tensors.len() != expected {
            let known: std::collections::HashSet<String> = self
                .slots
                .iter()
                .flat_map(|s| [format!("m.{}", s.name), format!("v.{}", s.name)])
                .collect();
            let mut extra: Vec<&String> = tensors.keys().filter(|k| !known.contains(*k)).collect();
            extra.sort();
            return Err(err(format!(
                "optimizer state holds {} tensors, expected {expected}; unexpected: {extra:?}",
                tensors.len()
            )));
        }
        for (s, mut pair) in self.slots.iter_mut().zip(m_new) {
            s.v = pair.pop().expect("two moments");
            s.m = pair.pop().expect("two moments");
        }
        self.step = step;
        Ok(())
    }
}

/// Learning-rate schedule: linear warmup from `min_lr` to the base rate over `warmup_steps`,
/// then cosine annealing to `min_lr` at `total_steps` (Loshchilov & Hutter, ICLR 2017, Eq. 5:
/// η_t = η_min + ½ (η_base − η_min)(1 + cos(π t / T))). Steps past `total_steps` stay at `min_lr`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Steps of linear warmup (0: none).
    pub warmup_steps: usize,
    /// Total number of optimiser steps of the run (warmup included).
    pub total_steps: usize,
    /// Final (and initial, with warmup) learning rate of both groups.
    pub min_lr: f64,
}

impl Schedule {
    /// The learning rate of a group with base rate `base` at step `step` (0-based: the rate used
    /// by the `step`-th update).
    pub fn rate(&self, base: f64, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.min_lr + (base - self.min_lr) * step as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps);
        if span == 0 {
            return base;
        }
        let t = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        self.min_lr + 0.5 * (base - self.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}
